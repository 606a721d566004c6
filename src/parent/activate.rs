//! Policy activation in the parent (DESIGN §4): verify, write the immutable
//! `policy/<serial>/` directory, name it active in the state file, then
//! re-apply every link's rulesets. A rejected bundle changes nothing.

use crate::lock::Enforcement;
use crate::log::{self, Prio};
use crate::parent::fw::{Firewall, LinkTarget};
use crate::parent::state::{self, State};
use crate::policy::{
    Bundle, Files, PublicKey, Reject, RulesetChecker, Store, Verified, VerifyOpts,
};
use std::collections::BTreeMap;

/// Adapts a firewall backend to the verifier: render for a link, check.
pub struct Checker<'a> {
    pub fw: &'a dyn Firewall,
    pub targets: &'a BTreeMap<String, LinkTarget>,
}

impl RulesetChecker for Checker<'_> {
    fn extension(&self) -> &'static str {
        self.fw.extension()
    }
    fn check(&self, link: &str, state: Enforcement, ruleset: &str) -> Result<(), String> {
        let t = self
            .targets
            .get(link)
            .ok_or_else(|| format!("unknown link {link}"))?;
        self.fw.check(t, state, ruleset)
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

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
pub fn load(
    files: &Files,
    keys: &[PublicKey],
    store: &Store,
    state: &mut State,
    state_path: &std::path::Path,
    checker: &Checker<'_>,
    source: &str,
) -> Result<Outcome, Reject> {
    let floor = state::floor(Some(state), store).map_err(|e| unreadable("policy store", e))?;
    let mut opts = VerifyOpts {
        now_unix: now_unix(),
        floor,
        check_expiry: true,
        links: checker.targets.keys().cloned().collect(),
    };
    let mut verified = verify_logged(files, keys, &opts, checker, source)?;
    // Stored but never named active (activation cut off before the state
    // file was written): the same bundle again completes the activation.
    if let Verified::Unchanged { serial } = verified {
        if state.active.as_ref().map(|a| a.serial) != Some(serial) {
            opts.floor = None;
            verified = verify_logged(files, keys, &opts, checker, source)?;
        }
    }
    let bundle = match verified {
        Verified::Unchanged { serial } => {
            log::event(Prio::Info, "policy_unchanged")
                .kv("serial", serial)
                .kv("source", source)
                .send();
            return Ok(Outcome::Unchanged(serial));
        }
        Verified::New(b) => b,
    };
    if let Err(e) = store.install(&bundle) {
        log::event(Prio::Err, "policy_rejected")
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
    state.active = Some(state::ActivePolicy::new(
        bundle.policy.serial,
        &bundle.digest,
    ));
    if let Err(e) = state::save(state_path, state) {
        log::event(Prio::Crit, "state_write_failed").msg(&e).send();
        return Err(unreadable("writing the state file", e));
    }
    for w in &bundle.warnings {
        log::event(Prio::Warning, "policy_warning")
            .kv("serial", bundle.policy.serial)
            .msg(w)
            .send();
    }
    log::event(Prio::Notice, "policy_loaded")
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
    checker: &Checker<'_>,
    source: &str,
) -> Result<Verified, Reject> {
    crate::policy::verify(files, keys, opts, checker).inspect_err(|e| {
        log::event(Prio::Err, "policy_rejected")
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
    checker: &Checker<'_>,
) -> Result<Option<Bundle>, Reject> {
    let Some(active) = &state.active else {
        return Ok(None);
    };
    let files = store.read(active.serial)?;
    let opts = VerifyOpts {
        now_unix: now_unix(),
        floor: None,
        check_expiry: false,
        links: checker.targets.keys().cloned().collect(),
    };
    match verify_logged(&files, keys, &opts, checker, "state")? {
        Verified::New(b) if hex(&b.digest) == active.digest && b.policy.serial == active.serial => {
            Ok(Some(b))
        }
        _ => Err(unreadable(
            &format!("policy/{}", active.serial),
            "does not match the state file's digest",
        )),
    }
}
