//! `qkdctl policy verify [-p pubkey] PATH` (DESIGN §7): the daemon's own
//! checks, run locally with no daemon. Keys come from `-p` or the config's
//! `[policy] pubkeys`; with a config, every configured link's rulesets are
//! rendered and checked as its firewall backend would check them
//! ([`crate::ruleset::Check`]) and the serial is compared with the local
//! state file when it is readable.

use super::VerifyArgs;
use crate::conf::{self, Config, FirewallBackend};
use crate::policy::bundle::MAX_ARCHIVE;
use crate::policy::{self, Files, Reject, Store, Verified, VerifyOpts};
use crate::ruleset::{self, Check, Checker};
use crate::state;
use crate::utc::now_unix;
use std::collections::BTreeMap;
use std::path::Path;

/// A directory is read as `policy load` packs it; any other path is
/// opened as the daemon opens its spool's archives: no final symlink
/// followed, no FIFO blocked on, a regular file only, read up to
/// [`MAX_ARCHIVE`] (a device such as /dev/zero never ends).
fn read_bundle(path: &Path) -> Result<Files, Reject> {
    let md = std::fs::metadata(path).map_err(|e| Reject::Unreadable {
        what: path.display().to_string(),
        msg: e.to_string(),
    })?;
    if md.is_dir() {
        return policy::read_dir(path);
    }
    if md.len() > MAX_ARCHIVE {
        return Err(Reject::TooLarge {
            what: format!("{} (over {} MiB)", path.display(), MAX_ARCHIVE >> 20),
        });
    }
    policy::read_bytes(&policy::read_archive_file(path, MAX_ARCHIVE)?)
}

/// pledge(2) before the bundle, which anyone may have made, is read:
/// files to read (keys, state file, bundle) and, when the config's backend
/// checks with a tool, `pfctl -n` or `nft -c` to run.
fn pledge(config: Option<&Config>) -> Result<(), String> {
    let tool = config.is_some_and(|c| !matches!(c.firewall.backend, FirewallBackend::DryRun));
    if !tool {
        return crate::sandbox::pledge("stdio rpath");
    }
    // OpenBSD runs the tool unpledged (no execpromises). The Linux test
    // emulation is a seccomp filter, which would follow it across exec
    // and kill it: there this case stays unpledged.
    if cfg!(target_os = "openbsd") {
        crate::sandbox::pledge("stdio rpath proc exec")
    } else {
        Ok(())
    }
}

/// No config names a backend: the rulesets this system's own backend
/// reads (pf on OpenBSD, nftables on Linux, as a fresh install's config
/// would say) must be present, and are not checked.
fn unchecked() -> policy::AcceptAll {
    policy::AcceptAll(ruleset::Flavor::native().extension())
}

fn fail(json: bool, reason: &str, msg: &str) -> i32 {
    if json {
        let v = serde_json::json!({ "ok": false, "reason": reason, "message": msg });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprintln!("qkdctl: policy verify: {msg}");
    }
    1
}

/// Exit status 0 when the bundle would be accepted, 1 otherwise.
pub fn run(a: &VerifyArgs) -> i32 {
    let config_path = a.config.clone().unwrap_or_else(|| conf::CONFFILE.into());
    // A config is needed for the keys unless -p names one; with -p it is
    // still used (rulesets, state file) when present and valid.
    let config: Option<Config> = match conf::load(&config_path) {
        Ok(c) => Some(c),
        Err(e) if a.pubkey.is_none() || a.config.is_some() => {
            return fail(a.json, "config", e.to_string().trim_end());
        }
        Err(_) => None,
    };
    if let Err(e) = pledge(config.as_ref()) {
        return fail(a.json, "pledge", &e);
    }
    let key_paths: Vec<std::path::PathBuf> = match (&a.pubkey, &config) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(c)) => c.policy.pubkeys.clone(),
        (None, None) => return fail(a.json, "config", "no public key: use -p or -f"),
    };
    let mut keys = Vec::new();
    for p in &key_paths {
        match policy::read_pubkey(p) {
            Ok(k) => keys.push(k),
            Err(e) => return fail(a.json, "pubkey", &format!("{}: {e}", p.display())),
        }
    }
    let files = match read_bundle(&a.path) {
        Ok(f) => f,
        Err(e) => return fail(a.json, e.reason(), &e.to_string()),
    };
    let (check, targets, floor) = match &config {
        Some(c) => {
            let st = state::load(&c.daemon.state_dir.join("state"))
                .ok()
                .flatten();
            let store = Store::new(c.policy.dir.clone());
            let floor = state::floor(st.as_ref(), &store).ok().flatten();
            (Some(Check::new(&c.firewall)), ruleset::targets(c), floor)
        }
        None => (None, BTreeMap::new(), None),
    };
    let opts = VerifyOpts {
        now_unix: now_unix(),
        floor,
        check_expiry: true,
        links: targets.keys().cloned().collect(),
    };
    let result = match &check {
        Some(check) => policy::verify(
            &files,
            &keys,
            &opts,
            &Checker {
                fw: check,
                targets: &targets,
            },
        ),
        None => policy::verify(&files, &keys, &opts, &unchecked()),
    };
    match result {
        Ok(Verified::New(b)) => {
            if a.json {
                let v = serde_json::json!({
                    "ok": true, "serial": b.policy.serial, "signer": b.signer,
                    "warnings": b.warnings, "links_checked": opts.links,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for w in &b.warnings {
                    eprintln!("qkdctl: warning: {w}");
                }
                println!("OK serial={}", b.policy.serial);
            }
            0
        }
        Ok(Verified::Unchanged { serial }) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "serial": serial, "unchanged": true })
                );
            } else {
                println!("OK serial={serial} (already active)");
            }
            0
        }
        Err(e) => fail(a.json, e.reason(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Reads `path` on a thread of its own: a read that blocks or never
    /// ends is a failure, not a hung test.
    fn read_within(path: &Path, limit: Duration) -> Result<Files, Reject> {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(read_bundle(&p));
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("{} was not refused at once", path.display()))
    }

    #[test]
    fn without_a_config_the_native_rulesets_are_required() {
        use crate::policy::RulesetChecker;
        let want = if cfg!(target_os = "openbsd") {
            "pf"
        } else {
            "nft"
        };
        assert_eq!(unchecked().extension(), want);
    }

    /// As the daemon's spool: no FIFO blocked on, no final symlink
    /// followed (one to /dev/zero never ends), no device read.
    #[test]
    fn bundle_path_is_opened_as_the_spool_opens_it() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo.tgz");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_within(&fifo, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.reason(), "not-regular", "{e}");
        let zero = t.path().join("zero.tgz");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_within(&zero, Duration::from_secs(5)).is_err());
        let e = read_within(Path::new("/dev/zero"), Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.reason(), "not-regular", "{e}");
    }
}
