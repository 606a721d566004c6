//! Every check on a bundle, in order, before anything changes (DESIGN §4).
//! Run by the parent before activation and by `qkdctl policy verify`.
//!
//! Order: names and limits (done by [`Files`]) → signature → listed files
//! present with the right digests → nothing else present → `policy.toml`
//! parses → fields consistent → serial against the floor → expiry →
//! rulesets present and accepted by the firewall backend for every link in
//! both states. The first failure is returned; nothing is written here.

use super::bundle::Files;
use super::document::{self, POLICY_FILE, Policy, format_utc};
use super::reject::Reject;
use super::signify::{self, LIST_FILE, MINISIG_FILE, PublicKey, SIG_FILE};
use crate::lock::Enforcement;
use sha2::{Digest, Sha256};

/// The firewall backend's own check of a ruleset (`nft -c`, `pfctl -n`),
/// rendered with the link's macros. Implemented by the firewall backends.
pub trait RulesetChecker {
    /// The bundle file extension this backend loads: `"nft"` or `"pf"`.
    fn extension(&self) -> &'static str;
    /// `Err` carries the backend's message.
    fn check(&self, link: &str, state: Enforcement, ruleset: &str) -> Result<(), String>;
    /// [`RulesetChecker::check`] for every link of `links`: the first
    /// failing link and its message. Backends that check many links in one
    /// tool run override it.
    fn check_links(
        &self,
        links: &[String],
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), (String, String)> {
        for link in links {
            self.check(link, state, ruleset)
                .map_err(|msg| (link.clone(), msg))?;
        }
        Ok(())
    }
    /// [`RulesetChecker::check_links`] for each `(state, ruleset)` of
    /// `sets`: the place in `sets` of the first failing one, its link and
    /// message. Backends that can check the sets side by side override it.
    fn check_sets(
        &self,
        links: &[String],
        sets: &[(Enforcement, &str)],
    ) -> Result<(), (usize, String, String)> {
        sets_in_turn(self, links, sets)
    }
}

/// [`RulesetChecker::check_sets`] one set after the other.
pub fn sets_in_turn<C: RulesetChecker + ?Sized>(
    c: &C,
    links: &[String],
    sets: &[(Enforcement, &str)],
) -> Result<(), (usize, String, String)> {
    for (i, (state, ruleset)) in sets.iter().enumerate() {
        (c.check_links(links, *state, ruleset)).map_err(|(l, m)| (i, l, m))?;
    }
    Ok(())
}

/// Accepts everything (dry-run, or `qkdctl policy verify` without a backend).
#[derive(Clone, Copy, Debug)]
pub struct AcceptAll(pub &'static str);

impl RulesetChecker for AcceptAll {
    fn extension(&self) -> &'static str {
        self.0
    }
    fn check(&self, _: &str, _: Enforcement, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Refuses any ruleset containing a word (for tests of the check step).
#[derive(Clone, Debug)]
pub struct RejectWord {
    pub ext: &'static str,
    pub word: String,
}

impl RulesetChecker for RejectWord {
    fn extension(&self) -> &'static str {
        self.ext
    }
    fn check(&self, link: &str, _: Enforcement, ruleset: &str) -> Result<(), String> {
        match ruleset.contains(&self.word) {
            true => Err(format!("\"{}\" is not allowed (link {link})", self.word)),
            false => Ok(()),
        }
    }
}

/// The rollback floor: the active bundle (or the highest stored one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Floor {
    pub serial: u64,
    /// SHA-256 of its signed list; all zeros when unknown (then an equal
    /// serial is always a rollback).
    pub digest: [u8; 32],
}

#[derive(Clone, Debug)]
pub struct VerifyOpts {
    /// Wall clock, for `not_after` only.
    pub now_unix: u64,
    pub floor: Option<Floor>,
    pub check_expiry: bool,
    /// Configured link names: each ruleset is checked for each of them.
    pub links: Vec<String>,
}

// Made once per load and moved straight into activation: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Verified {
    New(Bundle),
    /// The active bundle pushed again (`policy_unchanged`).
    Unchanged {
        serial: u64,
    },
}

/// A verified bundle, ready to install.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub policy: Policy,
    /// Every file, signature files included (the store keeps them).
    pub files: Files,
    /// SHA-256 of the signed list: the bundle's identity.
    pub digest: [u8; 32],
    /// Path of the public key that verified it.
    pub signer: String,
    pub warnings: Vec<String>,
}

impl Bundle {
    /// The ruleset text for a state, with the backend's extension.
    pub fn ruleset(&self, state: Enforcement, ext: &str) -> Option<&str> {
        let name = format!("{}.{ext}", self.policy.rulesets.for_state(state));
        std::str::from_utf8(self.files.get(&name)?).ok()
    }

    pub fn digest_hex(&self) -> String {
        crate::text::hex(&self.digest)
    }

    /// Past its `not_after` at `now` (Unix seconds), and saying to lock
    /// every link then.
    pub fn expiry_locks(&self, now: u64) -> bool {
        self.policy.expired_action == super::ExpiredAction::Lockdown
            && self.policy.not_after.is_some_and(|na| now > na)
    }
}

/// Runs every check; see the module docs for the order.
pub fn verify(
    files: &Files,
    keys: &[PublicKey],
    opts: &VerifyOpts,
    checker: &dyn RulesetChecker,
) -> Result<Verified, Reject> {
    let (list_bytes, signer) = check_signature(files, keys)?;
    let list = signify::parse_list(list_bytes)?;
    check_contents(files, &list)?;
    let text = std::str::from_utf8(files.get(POLICY_FILE).unwrap_or_default()).map_err(|_| {
        Reject::PolicySyntax {
            errors: vec![format!("{POLICY_FILE}: not UTF-8")],
        }
    })?;
    let (policy, warnings) = document::parse(text)?;
    let digest: [u8; 32] = Sha256::digest(list_bytes).into();
    if let Some(floor) = opts.floor {
        if policy.serial == floor.serial && digest == floor.digest {
            return Ok(Verified::Unchanged {
                serial: policy.serial,
            });
        }
        check_serial(policy.serial, floor)?;
    }
    if opts.check_expiry {
        check_expiry(&policy, opts.now_unix)?;
    }
    check_rulesets(files, &policy, &opts.links, checker)?;
    let mut warnings = warnings;
    if !opts.links.is_empty() {
        // A fleet-wide bundle may name links of other gateways: say so, no more.
        for name in policy.links.keys().filter(|n| !opts.links.contains(n)) {
            warnings.push(format!("[link.{name}] names a link not configured here"));
        }
    }
    Ok(Verified::New(Bundle {
        policy,
        files: files.clone(),
        digest,
        signer: signer.path.clone(),
        warnings,
    }))
}

/// Whether one of `keys` made the signature of `files` (a bundle already
/// checked whole; a reload asks it of new keys).
pub fn signed_by(files: &Files, keys: &[PublicKey]) -> Result<(), Reject> {
    check_signature(files, keys).map(|_| ())
}

/// Finds the signature, verifies it, and returns the signed list.
fn check_signature<'f, 'k>(
    files: &'f Files,
    keys: &'k [PublicKey],
) -> Result<(&'f [u8], &'k PublicKey), Reject> {
    if let Some(sig) = files.get(SIG_FILE) {
        let emb = signify::parse_embedded(sig)?;
        let signer = signify::verify_embedded(&emb, keys)?;
        if let Some(plain) = files.get(LIST_FILE)
            && plain != emb.message
        {
            return Err(Reject::BadList {
                line: 0,
                msg: format!("{LIST_FILE} differs from the list embedded in {SIG_FILE}"),
            });
        }
        return Ok((emb.message, signer));
    }
    let Some(minisig) = files.get(MINISIG_FILE) else {
        return Err(Reject::NoSignature);
    };
    let list = files.get(LIST_FILE).ok_or_else(|| Reject::MissingFile {
        name: format!("{LIST_FILE} (signed by {MINISIG_FILE})"),
    })?;
    let signer = super::minisign::verify(list, minisig, keys)?;
    Ok((list, signer))
}

/// Listed files present with the right digest, then nothing else present.
fn check_contents(files: &Files, list: &signify::List) -> Result<(), Reject> {
    for (name, want) in list {
        let data = files
            .get(name)
            .ok_or_else(|| Reject::MissingFile { name: name.clone() })?;
        let got: [u8; 32] = Sha256::digest(data).into();
        if &got != want {
            return Err(Reject::DigestMismatch { name: name.clone() });
        }
    }
    let sig_names: &[&str] = match files.contains(SIG_FILE) {
        true => &[SIG_FILE, LIST_FILE],
        false => &[LIST_FILE, MINISIG_FILE],
    };
    if let Some(extra) = files
        .names()
        .find(|n| !list.contains_key(*n) && !sig_names.contains(n))
    {
        return Err(Reject::ExtraFile {
            name: extra.to_string(),
        });
    }
    if !list.contains_key(POLICY_FILE) {
        return Err(Reject::MissingFile {
            name: POLICY_FILE.into(),
        });
    }
    Ok(())
}

fn check_serial(serial: u64, floor: Floor) -> Result<(), Reject> {
    if serial > floor.serial {
        return Ok(());
    }
    Err(Reject::Rollback {
        serial,
        active: floor.serial,
        same_serial: serial == floor.serial,
    })
}

fn check_expiry(policy: &Policy, now: u64) -> Result<(), Reject> {
    match policy.not_after {
        Some(t) if now > t => Err(Reject::Expired {
            not_after: format_utc(t),
            now: format_utc(now),
        }),
        _ => Ok(()),
    }
}

/// Both rulesets exist; each passes the backend's check for every link.
fn check_rulesets(
    files: &Files,
    policy: &Policy,
    links: &[String],
    checker: &dyn RulesetChecker,
) -> Result<(), Reject> {
    let mut sets = Vec::with_capacity(2);
    for state in [Enforcement::Open, Enforcement::Lockdown] {
        let name = format!(
            "{}.{}",
            policy.rulesets.for_state(state),
            checker.extension()
        );
        let data = files
            .get(&name)
            .ok_or_else(|| Reject::RulesetMissing { name: name.clone() })?;
        let text = std::str::from_utf8(data).map_err(|_| Reject::RulesetCheck {
            link: "-".into(),
            state: state.to_string(),
            file: name.clone(),
            msg: "not UTF-8".into(),
        })?;
        sets.push((name, state, text));
    }
    let states: Vec<(Enforcement, &str)> = sets.iter().map(|(_, s, t)| (*s, *t)).collect();
    checker
        .check_sets(links, &states)
        .map_err(|(i, link, msg)| {
            let (file, state) = sets.get(i).map_or(("-".into(), "-".into()), |(f, s, _)| {
                (f.clone(), s.to_string())
            });
            Reject::RulesetCheck {
                link,
                state,
                file,
                msg,
            }
        })
}

/// The identity of an already-verified bundle (e.g. a stored one): SHA-256
/// of its signed list, without checking the signature again.
pub fn signed_list_digest(files: &Files) -> Option<[u8; 32]> {
    let list = match files.get(SIG_FILE) {
        Some(sig) => signify::parse_embedded(sig).ok()?.message,
        None => files.get(LIST_FILE)?,
    };
    Some(Sha256::digest(list).into())
}
