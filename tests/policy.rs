//! Policy bundles end to end with the real signify-openbsd and minisign:
//! what is accepted, each rejection by its reason code, the store and the
//! state file.

mod common;

use common::bundle::*;
use qkdpfd::lock::{Enforcement, LockReason, Reasons};
use qkdpfd::policy::verify::RejectWord;
use qkdpfd::policy::{
    AcceptAll, Bundle, Files, Floor, Reject, Store, Verified, VerifyOpts, read_bytes, read_dir,
    verify,
};
use qkdpfd::state::{self, ActivePolicy, LinkRecord, State};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const NFT: AcceptAll = AcceptAll("nft");

fn opts() -> VerifyOpts {
    VerifyOpts {
        now_unix: 1_800_000_000,
        floor: None,
        check_expiry: true,
        links: vec!["dr".into(), "branch".into()],
    }
}

fn accept(files: &Files, keys: &TestKeys) -> Bundle {
    match verify(files, &[keys.public_key()], &opts(), &NFT) {
        Ok(Verified::New(b)) => b,
        other => panic!("expected a new bundle, got {other:?}"),
    }
}

fn reject_with(files: &Files, keys: &TestKeys, o: &VerifyOpts) -> Reject {
    match verify(files, &[keys.public_key()], o, &NFT) {
        Err(r) => r,
        Ok(v) => panic!("expected a rejection, got {v:?}"),
    }
}

/// The sample with one file replaced, signed.
fn variant(keys: &TestKeys, name: &'static str, text: &str) -> (tempfile::TempDir, Files) {
    let mut files = sample_files();
    files.retain(|(n, _)| *n != name);
    files.push((name, text.to_string()));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let (tmp, dir) = signed_bundle(keys, &refs);
    let read = read_dir(&dir).unwrap();
    (tmp, read)
}

#[test]
fn valid_bundle_accepted_from_dir() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let b = accept(&read_dir(&dir).unwrap(), &keys);
    assert_eq!(b.policy.serial, 42);
    assert_eq!(b.signer, keys.pubkey.display().to_string());
    assert_eq!(b.policy.for_link("dr").qber_lockdown, 0.06);
    assert_eq!(b.policy.for_link("branch").qber_lockdown, 0.08);
    assert_eq!(b.ruleset(Enforcement::Open, "nft"), Some(OPEN_NFT));
    assert_eq!(b.ruleset(Enforcement::Lockdown, "nft"), Some(LOCKDOWN_NFT));
    assert_eq!(b.ruleset(Enforcement::Open, "pf"), None);
    assert!(b.warnings.is_empty());
    assert!(b.files.contains("SHA256.sig"));
    let mut o = opts();
    o.links = vec!["branch".into()];
    let Verified::New(b) = verify(&b.files, &[keys.public_key()], &o, &NFT).unwrap() else {
        panic!("expected a new bundle");
    };
    assert_eq!(b.warnings, ["[link.dr] names a link not configured here"]);
}

#[test]
fn signify_check_accepts_what_we_accept() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    accept(&read_dir(&dir).unwrap(), &keys);
    let out = Command::new(SIGNIFY)
        .arg("-C")
        .arg("-p")
        .arg(&keys.pubkey)
        .args(["-x", "SHA256.sig"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("anchors/lockdown.nft: OK"), "{stdout}");
}

#[test]
fn valid_bundle_accepted_from_tgz_both_layouts() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let from_dir = accept(&read_dir(&dir).unwrap(), &keys);
    for tgz in [tgz_of_contents(&dir), tgz_of_dir(&dir)] {
        assert_eq!(&tgz[..2], &[0x1f, 0x8b]);
        let files = read_bytes(&tgz).unwrap();
        assert_eq!(files, from_dir.files);
        assert_eq!(accept(&files, &keys).digest, from_dir.digest);
    }
    // A plain (uncompressed) tar too.
    let out = Command::new("tar")
        .args(["cf", "-", "-C"])
        .arg(&dir)
        .arg(".")
        .output()
        .unwrap();
    assert_eq!(read_bytes(&out.stdout).unwrap(), from_dir.files);
    // pax format (long names and attributes in extension headers).
    let out = Command::new("tar")
        .args(["--format=pax", "-czf", "-", "-C"])
        .arg(&dir)
        .arg(".")
        .output()
        .unwrap();
    assert_eq!(read_bytes(&out.stdout).unwrap(), from_dir.files);
}

#[test]
fn tampered_file_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    fs::write(dir.join("anchors/open.nft"), "accept\naccept\n").unwrap();
    let r = reject_with(&read_dir(&dir).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "digest-mismatch");
    assert_eq!(
        r.to_string(),
        "digest: anchors/open.nft does not match its SHA256 entry"
    );
}

#[test]
fn tampered_signed_list_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let sig = fs::read_to_string(dir.join("SHA256.sig")).unwrap();
    fs::write(
        dir.join("SHA256.sig"),
        sig.replacen("SHA256 (", "SHA256  (", 1),
    )
    .unwrap();
    let r = reject_with(&read_dir(&dir).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "bad-signature", "{r}");
}

#[test]
fn wrong_key_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let Some(other) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let r = reject_with(&read_dir(&dir).unwrap(), &other, &opts());
    assert_eq!(r.reason(), "unknown-signer");
    assert!(
        r.to_string()
            .starts_with("signature: SHA256.sig is not signed by any configured key"),
        "{r}"
    );
    // Key rotation: the bundle's key among several configured ones.
    let keyring = [other.public_key(), keys.public_key()];
    let v = verify(&read_dir(&dir).unwrap(), &keyring, &opts(), &NFT).unwrap();
    assert!(matches!(v, Verified::New(_)));
}

#[test]
fn no_signature_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    fs::remove_file(dir.join("SHA256.sig")).unwrap();
    let r = reject_with(&read_dir(&dir).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "no-signature");
}

#[test]
fn serial_floor() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let files = read_dir(&dir).unwrap();
    let b = accept(&files, &keys);
    let mut o = opts();

    o.floor = Some(Floor {
        serial: 43,
        digest: [9; 32],
    });
    let r = reject_with(&files, &keys, &o);
    assert_eq!(r.reason(), "rollback");
    assert_eq!(
        r.to_string(),
        "serial: serial 42 is not greater than active 43"
    );

    // The same bundle again: harmless.
    o.floor = Some(Floor {
        serial: 42,
        digest: b.digest,
    });
    let v = verify(&files, &[keys.public_key()], &o, &NFT).unwrap();
    assert_eq!(v, Verified::Unchanged { serial: 42 });

    // Same serial, other content.
    o.floor = Some(Floor {
        serial: 42,
        digest: [9; 32],
    });
    assert_eq!(reject_with(&files, &keys, &o).reason(), "rollback");

    o.floor = Some(Floor {
        serial: 41,
        digest: [9; 32],
    });
    assert!(matches!(
        verify(&files, &[keys.public_key()], &o, &NFT).unwrap(),
        Verified::New(_)
    ));
}

#[test]
fn expired_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let files = read_dir(&dir).unwrap();
    let mut o = opts();
    o.now_unix = 4_102_444_800; // 2100-01-01
    let r = reject_with(&files, &keys, &o);
    assert_eq!(r.reason(), "expired");
    assert!(r.to_string().contains("2099-01-31T00:00:00Z"), "{r}");
    o.check_expiry = false;
    assert!(verify(&files, &[keys.public_key()], &o, &NFT).is_ok());
}

#[test]
fn extra_and_missing_files_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    fs::write(dir.join("anchors/extra.nft"), "accept\n").unwrap();
    let r = reject_with(&read_dir(&dir).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "extra-file");
    assert!(r.to_string().contains("anchors/extra.nft"));

    fs::remove_file(dir.join("anchors/extra.nft")).unwrap();
    fs::remove_file(dir.join("anchors/lockdown.nft")).unwrap();
    let r = reject_with(&read_dir(&dir).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "missing-file");
    assert!(r.to_string().contains("anchors/lockdown.nft"));
}

#[test]
fn bad_file_name_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    fs::write(dir.join("read me.txt"), "x").unwrap();
    assert_eq!(read_dir(&dir).unwrap_err().reason(), "bad-name");
    fs::remove_file(dir.join("read me.txt")).unwrap();
    fs::create_dir_all(dir.join("anchors/deeper")).unwrap();
    assert_eq!(read_dir(&dir).unwrap_err().reason(), "bad-name");
}

#[test]
fn symlink_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("anchors/link.nft")).unwrap();
    let r = read_dir(&dir).unwrap_err();
    assert_eq!(r.reason(), "not-regular");
    assert!(r.to_string().contains("symlink"), "{r}");
}

#[test]
fn oversized_file_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    fs::write(dir.join("big.bin"), vec![b'x'; (1 << 20) + 1]).unwrap();
    let r = read_dir(&dir).unwrap_err();
    assert_eq!(r.reason(), "too-large");
    assert!(r.to_string().contains("big.bin"), "{r}");
}

#[test]
fn tar_with_parent_entry_rejected() {
    // The tar crate's builder refuses "..", so write the header by hand.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    let name = b"../evil.nft";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, &b"drop"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    let r = read_bytes(&bytes).unwrap_err();
    assert_eq!(r.reason(), "bad-name", "{r}");
}

#[test]
fn tar_with_symlink_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    let r = read_bytes(&tgz_of_contents(&dir)).unwrap_err();
    assert_eq!(r.reason(), "not-regular", "{r}");
}

#[test]
fn unparsable_policy_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_t, files) = variant(&keys, "policy.toml", "serial = \n");
    assert_eq!(
        reject_with(&files, &keys, &opts()).reason(),
        "policy-syntax"
    );
}

#[test]
fn unknown_key_rejected_with_position() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let text = POLICY_TOML.replace("[rulesets]", "[rulesets]\nbackup = \"x\"");
    let (_t, files) = variant(&keys, "policy.toml", &text);
    let r = reject_with(&files, &keys, &opts());
    assert_eq!(r.reason(), "policy-syntax");
    assert!(
        r.to_string()
            .contains("policy.toml:21:1: unknown key \"backup\" in [rulesets]"),
        "{r}"
    );
}

#[test]
fn qber_above_eleven_percent_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let text = POLICY_TOML.replace("qber_lockdown = 0.08", "qber_lockdown = 0.12");
    let (_t, files) = variant(&keys, "policy.toml", &text);
    let r = reject_with(&files, &keys, &opts());
    assert_eq!(r.reason(), "policy-invalid");
    assert!(r.to_string().contains("no secure key above 11 %"), "{r}");
}

#[test]
fn ruleset_failing_check_rejected() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_t, files) = variant(&keys, "anchors/lockdown.nft", "bogus\n");
    let checker = RejectWord {
        ext: "nft",
        word: "bogus".into(),
    };
    let r = verify(&files, &[keys.public_key()], &opts(), &checker).unwrap_err();
    assert_eq!(r.reason(), "ruleset-check");
    assert!(
        r.to_string()
            .contains("anchors/lockdown.nft for link dr (lockdown)"),
        "{r}"
    );
    // The sample itself passes the same checker.
    let (_tmp, dir) = sample_bundle(&keys);
    assert!(
        verify(
            &read_dir(&dir).unwrap(),
            &[keys.public_key()],
            &opts(),
            &checker
        )
        .is_ok()
    );
    // A pf backend finds no .pf rulesets in an nft-only bundle.
    let r = verify(&files, &[keys.public_key()], &opts(), &AcceptAll("pf")).unwrap_err();
    assert_eq!(r.reason(), "ruleset-missing");
}

#[test]
fn minisign_bundle_accepted() {
    let Some(keys) = TestKeys::minisign() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let files = sample_files();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    make_bundle(tmp.path(), &refs);
    sign_minisign(tmp.path(), &keys);
    let files = read_dir(tmp.path()).unwrap();
    assert!(files.contains("SHA256") && files.contains("SHA256.minisig"));
    let b = accept(&files, &keys);
    assert_eq!(b.policy.serial, 42);
    fs::write(tmp.path().join("anchors/open.nft"), "drop\n").unwrap();
    let r = reject_with(&read_dir(tmp.path()).unwrap(), &keys, &opts());
    assert_eq!(r.reason(), "digest-mismatch");
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn store_install_read_round_trip() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let b = accept(&read_dir(&dir).unwrap(), &keys);
    let state_dir = tempfile::tempdir().unwrap();
    let store = Store::new(state_dir.path().join("policy"));
    assert_eq!(store.highest_serial().unwrap(), None);

    let path = store.install(&b).unwrap();
    assert_eq!(path, store.dir.join("42"));
    assert_eq!(mode(&store.dir), 0o755);
    assert_eq!(mode(&path), 0o555);
    assert_eq!(mode(&path.join("anchors")), 0o555);
    assert_eq!(mode(&path.join("policy.toml")), 0o444);
    assert_eq!(mode(&path.join("SHA256.sig")), 0o444);
    assert_eq!(store.highest_serial().unwrap(), Some(42));
    let names: Vec<String> = fs::read_dir(&store.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["42"], "no temporary directory left");

    // Read back, it verifies again as the same bundle.
    let back = store.read(42).unwrap();
    assert_eq!(back, b.files);
    assert_eq!(accept(&back, &keys).digest, b.digest);

    // Idempotent re-install; a different bundle under the same serial is refused.
    assert_eq!(store.install(&b).unwrap(), path);
    let (_t2, other) = variant(&keys, "anchors/open.nft", "accept\ncounter\n");
    let other = accept(&other, &keys);
    assert_eq!(other.policy.serial, 42);
    assert!(store.install(&other).is_err());
    assert_eq!(store.read(42).unwrap(), b.files);
}

#[test]
fn state_round_trip_and_floor() {
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("qkdpfd.state");
    assert_eq!(state::load(&path).unwrap(), None);

    let mut st = State {
        active: Some(ActivePolicy::new(41, &[0xab; 32])),
        ..State::default()
    };
    let reasons: Reasons = [LockReason::Operator, LockReason::SourceLost]
        .into_iter()
        .collect();
    st.links.insert(
        "dr".into(),
        LinkRecord {
            reasons,
            epoch: 0,
            verifier: None,
            installed_at: None,
        },
    );
    state::save(&path, &st).unwrap();
    assert_eq!(mode(&path), 0o600);
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["qkdpfd.state"], "no temporary file left");

    let back = state::load(&path).unwrap().unwrap();
    assert_eq!(back.active, st.active);
    assert_eq!(back.links["dr"].reasons.to_string(), "operator");
    state::save(&path, &back).unwrap();
    assert_eq!(state::load(&path).unwrap().unwrap(), back);

    // Floor: the active serial, until a higher store directory exists.
    let store = Store::new(d.path().join("policy"));
    let f = state::floor(Some(&back), &store).unwrap().unwrap();
    assert_eq!((f.serial, f.digest), (41, [0xab; 32]));
    let (_tmp, dir) = sample_bundle(&keys);
    let b = accept(&read_dir(&dir).unwrap(), &keys);
    store.install(&b).unwrap();
    let f = state::floor(Some(&back), &store).unwrap().unwrap();
    assert_eq!((f.serial, f.digest), (42, b.digest));
    assert_eq!(state::floor(None, &store).unwrap().unwrap().serial, 42);
    assert_eq!(
        state::floor(None, &Store::new(d.path().join("none"))).unwrap(),
        None
    );
}

/// The spool's files (fail-closed issue item 5): a symlink, a FIFO with no
/// writer, an endless device, or an oversized file is refused at once,
/// never followed, blocked on or read without end.
#[test]
fn spool_archives_are_opened_without_following_or_blocking() {
    use qkdpfd::policy::read_archive_file;
    let t = tempfile::tempdir().unwrap();
    let real = t.path().join("real.tgz");
    std::fs::write(&real, b"bytes").unwrap();
    assert_eq!(read_archive_file(&real, 1 << 20).unwrap(), b"bytes");
    let link = t.path().join("link.tgz");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(
        read_archive_file(&link, 1 << 20).is_err(),
        "symlink followed"
    );
    let fifo = t.path().join("fifo.tgz");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let e = read_archive_file(&fifo, 1 << 20).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "blocked on a FIFO"
    );
    assert!(
        e.to_string().contains("fifo") || e.to_string().contains("regular"),
        "{e}"
    );
    let zero = t.path().join("zero.tgz");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    assert!(read_archive_file(&zero, 1 << 20).is_err());
    assert!(read_archive_file(std::path::Path::new("/dev/zero"), 1 << 20).is_err());
    std::fs::write(&real, vec![0u8; 2048]).unwrap();
    assert!(read_archive_file(&real, 1024).is_err(), "limit not kept");
}

/// The dry-run backend and the two sample links, as the parent holds them.
struct Parent {
    dir: tempfile::TempDir,
    fw: Box<dyn qkdpfd::parent::fw::Firewall>,
    targets: std::collections::BTreeMap<String, qkdpfd::ruleset::LinkTarget>,
}

impl Parent {
    fn new() -> Parent {
        use qkdpfd::conf::{FirewallBackend, FirewallConf};
        let dir = tempfile::tempdir().unwrap();
        let conf = FirewallConf {
            backend: FirewallBackend::DryRun,
            anchor: "qkdpfd".into(),
            pfctl: "/sbin/pfctl".into(),
            nft: "/usr/sbin/nft".into(),
            handshakes: false,
        };
        let fw = qkdpfd::parent::fw::new(&conf, dir.path());
        let targets = ["dr", "branch"]
            .into_iter()
            .map(|n| {
                let t = qkdpfd::ruleset::LinkTarget {
                    name: n.into(),
                    wg_if: "wg0".into(),
                    wg_port: 51820,
                    rdomain: 0,
                    udp_rdomain: 0,
                    addrs4: vec!["198.51.100.2".parse().unwrap()],
                    addrs6: vec![],
                    qber: "sim".into(),
                };
                (n.to_string(), t)
            })
            .collect();
        Parent { dir, fw, targets }
    }

    fn load(
        &self,
        files: &Files,
        keys: &TestKeys,
        state: &mut State,
        state_path: &Path,
        in_force: Option<u64>,
    ) -> Result<qkdpfd::parent::activate::Outcome, Reject> {
        let checker = qkdpfd::ruleset::Checker {
            fw: self.fw.as_ref(),
            targets: &self.targets,
        };
        qkdpfd::parent::activate::load(
            files,
            &[keys.public_key()],
            &Store::new(self.dir.path().join("policy")),
            state,
            state_path,
            in_force,
            &checker,
            "test",
        )
    }
}

/// DESIGN §4 "a rejected bundle changes nothing": a state file that cannot
/// be written leaves the state in memory as it was, so a later write does
/// not name the rejected bundle, and the same bundle pushed again is
/// activated, not `policy_unchanged`.
#[test]
fn state_write_failure_changes_no_memory() {
    use qkdpfd::parent::activate::Outcome;
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let files = read_dir(&dir).unwrap();
    let p = Parent::new();
    let mut st = State::default();
    let unwritable = p.dir.path().join("missing/state");
    assert!(p.load(&files, &keys, &mut st, &unwritable, None).is_err());
    assert_eq!(st, State::default());

    let path = p.dir.path().join("state");
    match p.load(&files, &keys, &mut st, &path, None) {
        Ok(Outcome::Loaded(b)) => assert_eq!(b.policy.serial, 42),
        Ok(Outcome::Unchanged(s)) => panic!("policy_unchanged serial={s}"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(st.active.as_ref().map(|a| a.serial), Some(42));
    assert_eq!(state::load(&path).unwrap().unwrap().active, st.active);
}

/// The bundle the state file names is `policy_unchanged` only while it is
/// in force. With none in force (its start-up re-check failed), the same
/// bundle is verified and activated again; an older one still is not.
#[test]
fn active_bundle_not_in_force_is_activated_again() {
    use qkdpfd::parent::activate::Outcome;
    let Some(keys) = TestKeys::signify() else {
        return;
    };
    let (_tmp, dir) = sample_bundle(&keys);
    let files = read_dir(&dir).unwrap();
    let p = Parent::new();
    let path = p.dir.path().join("state");
    let mut st = State::default();
    assert!(matches!(
        p.load(&files, &keys, &mut st, &path, None),
        Ok(Outcome::Loaded(_))
    ));
    // In force: a re-push is harmless.
    assert!(matches!(
        p.load(&files, &keys, &mut st, &path, Some(42)),
        Ok(Outcome::Unchanged(42))
    ));
    // Not in force: applied again.
    match p.load(&files, &keys, &mut st, &path, None) {
        Ok(Outcome::Loaded(b)) => assert_eq!(b.policy.serial, 42),
        Ok(Outcome::Unchanged(s)) => panic!("policy_unchanged serial={s}"),
        Err(e) => panic!("{e}"),
    }
    // Nothing older, nor another bundle of the same serial, ever applies.
    let (_t1, older) = variant(&keys, "policy.toml", &policy_with_serial(41));
    let (_t2, same) = variant(&keys, "anchors/open.nft", "accept\ncounter\n");
    for f in [&older, &same] {
        let r = p.load(f, &keys, &mut st, &path, None);
        assert!(matches!(&r, Err(Reject::Rollback { .. })), "{:?}", r.err());
    }
    assert_eq!(st.active.as_ref().map(|a| a.serial), Some(42));
}
