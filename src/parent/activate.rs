//! Policy activation in the parent (DESIGN §4): verify, write the immutable
//! `policy/<serial>/` directory, name it active in the state file, then
//! re-apply every link's rulesets. A rejected bundle changes nothing.

use crate::log::{self, Event};
use crate::parent::fw::Firewall;
use crate::policy::{Bundle, Files, PublicKey, Reject, Store, Verified, VerifyOpts};
use crate::ruleset::{Checker, LinkTarget};
use crate::state::{self, State};
use std::collections::BTreeMap;

use crate::text::hex;

fn unreadable(what: &str, msg: impl std::fmt::Display) -> Reject {
    Reject::Unreadable {
        what: what.to_string(),
        msg: msg.to_string(),
    }
}

/// What happened to a pushed bundle.
pub enum Outcome {
    Loaded(Box<Bundle>),
    Unchanged(u64),
}

/// Verifies `files` against the floor and activates it. Logs the result.
/// `in_force` is the serial of the bundle the links run under, which is
/// not the state file's when its start-up re-check failed.
#[allow(clippy::too_many_arguments)]
pub fn load(
    files: &Files,
    keys: &[PublicKey],
    store: &Store,
    state: &mut State,
    state_path: &std::path::Path,
    in_force: Option<u64>,
    checker: &Checker<'_, dyn Firewall>,
    source: &str,
) -> Result<Outcome, Reject> {
    let floor = state::floor(Some(state), store).map_err(|e| unreadable("policy store", e))?;
    let verified = verify_against(files, keys, floor, in_force, checker, source)?;
    finish(verified, store, state, state_path, source)
}

/// Every check of DESIGN §4 against `floor`. The bundle the floor names is
/// `policy_unchanged` only while it is in force; otherwise (activation cut
/// off before the state file was written, or its start-up re-check failed)
/// that same bundle — the same serial and signed list, never an older
/// one — is checked again without the floor and activated.
fn verify_against(
    files: &Files,
    keys: &[PublicKey],
    floor: Option<crate::policy::Floor>,
    in_force: Option<u64>,
    checker: &Checker<'_, dyn Firewall>,
    source: &str,
) -> Result<Verified, Reject> {
    let mut opts = VerifyOpts {
        now_unix: crate::utc::now_unix(),
        floor,
        check_expiry: true,
        links: checker.targets.keys().cloned().collect(),
    };
    let verified = verify_logged(files, keys, &opts, checker, source)?;
    if let Verified::Unchanged { serial } = verified {
        if in_force != Some(serial) {
            opts.floor = None;
            return verify_logged(files, keys, &opts, checker, source);
        }
    }
    Ok(verified)
}

/// What a background verification found.
pub type Checked = Result<Verified, Reject>;

/// Everything a verification needs, owned, for a thread of its own.
pub struct VerifyJob {
    pub files: Files,
    pub keys: Vec<PublicKey>,
    pub floor: Option<crate::policy::Floor>,
    /// The serial of the bundle in force (see [`load`]).
    pub in_force: Option<u64>,
    pub firewall: crate::conf::FirewallConf,
    pub state_dir: std::path::PathBuf,
    pub targets: BTreeMap<String, LinkTarget>,
    pub source: String,
}

/// Runs the verification — signature, digests, and two tool checks per
/// link (`nft -c`, `pfctl -n`) — on a thread with its own firewall
/// backend, so the parent's loop goes on applying lockdowns meanwhile
/// (DESIGN §5). Only [`finish`] then touches the store and the state file.
pub fn verify_in_background(job: VerifyJob) -> tokio::sync::oneshot::Receiver<Checked> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let fw = crate::parent::fw::new(&job.firewall, &job.state_dir);
        let checker = Checker {
            fw: fw.as_ref(),
            targets: &job.targets,
        };
        let r = verify_against(
            &job.files,
            &job.keys,
            job.floor,
            job.in_force,
            &checker,
            &job.source,
        );
        let _ = tx.send(r);
    });
    rx
}

/// The rest of an activation, after verification: the immutable
/// `policy/<serial>/` copy, then the state file names it. Logs the result.
pub fn finish(
    verified: Verified,
    store: &Store,
    state: &mut State,
    state_path: &std::path::Path,
    source: &str,
) -> Result<Outcome, Reject> {
    let bundle = match verified {
        Verified::Unchanged { serial } => {
            log::event(Event::PolicyUnchanged)
                .kv("serial", serial)
                .kv("source", source)
                .send();
            return Ok(Outcome::Unchanged(serial));
        }
        Verified::New(b) => b,
    };
    // The floor may have moved while the worker ran (another bundle
    // activated): never go back below it.
    if let Some(a) = &state.active
        && bundle.policy.serial < a.serial
    {
        let e = unreadable(
            &format!("policy {}", bundle.policy.serial),
            format!("serial {} became active meanwhile", a.serial),
        );
        log::event(Event::PolicyRejected)
            .kv("reason", "rollback")
            .kv("serial", bundle.policy.serial)
            .kv("source", source)
            .msg(&e)
            .send();
        return Err(e);
    }
    if let Err(e) = store.install(&bundle) {
        log::event(Event::PolicyRejected)
            .kv("reason", "store")
            .kv("serial", bundle.policy.serial)
            .kv("source", source)
            .msg(&e)
            .send();
        return Err(unreadable(
            &format!("writing policy/{}", bundle.policy.serial),
            e,
        ));
    }
    // Memory follows the file only once it is written: a rejected bundle
    // must not be named active by the next, unrelated state write.
    let mut next = state.clone();
    next.active = Some(state::ActivePolicy::new(
        bundle.policy.serial,
        &bundle.digest,
    ));
    if let Err(e) = state::save(state_path, &next) {
        log::event(Event::StateWriteFailed).msg(&e).send();
        return Err(unreadable("writing the state file", e));
    }
    *state = next;
    for w in &bundle.warnings {
        log::event(Event::PolicyWarning)
            .kv("serial", bundle.policy.serial)
            .msg(w)
            .send();
    }
    log::event(Event::PolicyLoaded)
        .kv("serial", bundle.policy.serial)
        .kv("signer", &bundle.signer)
        .kv("source", source)
        .send();
    Ok(Outcome::Loaded(Box::new(bundle)))
}

fn verify_logged(
    files: &Files,
    keys: &[PublicKey],
    opts: &VerifyOpts,
    checker: &Checker<'_, dyn Firewall>,
    source: &str,
) -> Result<Verified, Reject> {
    crate::policy::verify(files, keys, opts, checker).inspect_err(|e| {
        log::event(Event::PolicyRejected)
            .kv("reason", e.reason())
            .kv("source", source)
            .msg(e)
            .send();
    })
}

/// Start-up: re-verify the bundle the state file names (signature, digests,
/// rulesets; expiry does not unload an active bundle).
pub fn restore(
    keys: &[PublicKey],
    store: &Store,
    state: &State,
    checker: &Checker<'_, dyn Firewall>,
) -> Result<Option<Bundle>, Reject> {
    let Some(active) = &state.active else {
        return Ok(None);
    };
    let files = store.read(active.serial)?;
    let opts = VerifyOpts {
        now_unix: crate::utc::now_unix(),
        floor: None,
        check_expiry: false,
        links: checker.targets.keys().cloned().collect(),
    };
    // Not logged here: the caller says it (LOG_ALERT at start-up, stderr
    // for qkdpfd -n).
    match crate::policy::verify(&files, keys, &opts, checker)? {
        Verified::New(b) if hex(&b.digest) == active.digest && b.policy.serial == active.serial => {
            Ok(Some(b))
        }
        _ => Err(unreadable(
            &format!("policy/{}", active.serial),
            "does not match the state file's digest",
        )),
    }
}
