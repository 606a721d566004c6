//! The parent's half of key agreement (DESIGN §5 "WireGuard", §6): it
//! persists epochs and installs PSKs when the engine asks (checking the
//! link is keyed), re-reads every installed PSK once per rotation period
//! (`psk-drift`), and replaces the PSK with random bytes when the engine
//! reports `key-stale`. What the engine needs to agree on keys (peering
//! key, KME credentials, link_ids) is read in `engine_conf.rs`.
//!
//! Runs in the privileged parent; touches the state file, and WireGuard
//! through the PSK writer ([`super::wg::psk::PskWriter`]) only, never with
//! a key on a command line, in a log line or in an error.

use super::Parent;
use super::changed::Changed;
use super::links::OpenedBy;
use crate::conf::Config;
use crate::imsg::{InstallPsk, KeyAck, KeyStep, PersistEpoch};
use crate::lock::{Enforcement, LockReason};
use crate::log::{self, Event};
use crate::policy::Bundle;
use crate::policy::params::LinkPolicy;
use crate::state::journal::Entry;
use std::time::{Duration, Instant};

// What the parent answers the engine's key requests with (dispatched by
// `run::dispatch_engine`), and its own periodic PSK re-read.

/// How far past the persisted epoch the engine may ask to persist, once
/// past [`EPOCH_FREE`]: room for a master jumping past its slave's NACK,
/// never near u64::MAX.
pub const EPOCH_WINDOW: u64 = 1 << 32;

/// Epochs up to here are taken whatever the persisted one. A far master's
/// epochs may start anywhere (DESIGN §6: u64, owned by the master; one may
/// count from a clock in milliseconds or nanoseconds), and a slave that
/// refused its first OFFER would never key; at least 2^63 epochs remain.
pub const EPOCH_FREE: u64 = 1 << 63;

/// Whether an engine may persist `epoch` over `floor` (the persisted one).
fn epoch_allowed(floor: u64, epoch: u64) -> bool {
    epoch <= floor.saturating_add(EPOCH_WINDOW).max(EPOCH_FREE)
}

/// The engine asks to make an epoch durable: queued for the next
/// [`flush_epochs`] (one write for the batch), or refused when it is past
/// the window. Only a keyed link has epochs.
pub(super) fn persist_epoch(p: &mut Parent, e: PersistEpoch) -> Result<Changed, String> {
    if !p.wg.is_keyed(&e.link) || e.epoch == 0 {
        return Err(format!("epoch {} for unkeyed link {:?}", e.epoch, e.link));
    }
    // Epochs past 2^63 only move forward by less than a window: an engine
    // asking for u64::MAX would end key agreement on the link for good.
    let floor = p.links.epoch(&e.link);
    if !epoch_allowed(floor, e.epoch) {
        return Ok(refuse_epoch(&e.link, e.epoch, floor));
    }
    p.pending_epochs.push((e.link, e.epoch));
    Ok(Changed::none())
}

/// Answers a PersistEpoch [`epoch_allowed`] refuses with a refusal (the
/// round fails; nothing is written).
fn refuse_epoch(link: &str, epoch: u64, floor: u64) -> Changed {
    log::event(Event::EpochRefused)
        .kv("link", link)
        .kv("epoch", epoch)
        .kv("persisted", floor)
        .send();
    let ack = KeyAck {
        link: link.to_string(),
        epoch,
        step: KeyStep::Persist,
        error: Some(format!(
            "epoch {epoch} is past 2^63 and more than {EPOCH_WINDOW} past the persisted {floor}"
        )),
    };
    let mut out = Changed::none();
    out.key_ack(ack);
    out
}

/// Makes the epochs asked for and the verifiers of the PSKs installed
/// since the last call durable in one write, and answers each epoch
/// request; on failure every one of them is refused (and a restart holds
/// `no-key` until the next round).
pub(super) fn flush_epochs(p: &mut Parent) -> Changed {
    let mut out = Changed::none();
    if p.pending_epochs.is_empty() && p.pending_verifiers.is_empty() {
        return out;
    }
    let batch = std::mem::take(&mut p.pending_epochs);
    let verifiers = std::mem::take(&mut p.pending_verifiers);
    // Journal entries: a `rotate all` on a large hub would otherwise write
    // the whole state file per group commit.
    let entries = batch
        .iter()
        .map(|(name, epoch)| Entry::epoch(name, *epoch))
        .chain((verifiers.iter()).map(|(name, v, at)| Entry::verifier(name, v, *at)))
        .collect();
    let written = match p.links.journal(entries) {
        true => Ok(()),
        // The journal refused them: the whole file, with its own error.
        false => p.links.update_state(|st| {
            // Epochs only grow.
            for (name, epoch) in &batch {
                let rec = st.links.entry(name.clone()).or_default();
                rec.epoch = rec.epoch.max(*epoch);
            }
            for (name, verifier, at) in verifiers {
                let rec = st.links.entry(name).or_default();
                rec.verifier = Some(verifier);
                rec.installed_at = Some(at);
            }
        }),
    };
    let error = written.err().map(|e| {
        log::event(Event::StateWriteFailed)
            .kv("path", p.links.state_path.display())
            .msg(&e)
            .send();
        format!("state file: {e}")
    });
    for (link, epoch) in batch {
        let ack = KeyAck {
            link,
            epoch,
            step: KeyStep::Persist,
            error: error.clone(),
        };
        out.key_ack(ack);
    }
    out
}

/// Installs a PSK the engine agreed on, if its epoch is durable; a
/// successful install clears `no-key` and `psk-drift`. Only a keyed link
/// has a PSK.
pub(super) fn install_psk(p: &mut Parent, i: InstallPsk) -> Result<Changed, String> {
    if !p.wg.is_keyed(&i.link) {
        return Err(format!("PSK for unkeyed link {:?}", i.link));
    }
    let InstallPsk {
        link, epoch, psk, ..
    } = i;
    let psk = crate::secret::Psk::from_bytes(*psk);
    // An epoch is persisted before it is used (DESIGN §6).
    let result = if epoch == 0 || epoch > p.links.epoch(&link) {
        Err(format!("epoch {epoch} was never persisted"))
    } else {
        let period = check_period(&p.conf, p.bundle.as_ref(), &link);
        // The reason word first (the engine's `reason=`), then what failed.
        p.wg.install(&link, psk.clone(), period, Instant::now())
            .map_err(|e| format!("{}: {e}", e.reason()))
    };
    let mut out = Changed::none();
    if result.is_ok() {
        installed(p, &mut out, &link, &psk);
        p.pending_sessions.push((link.clone(), epoch));
    }
    let ack = KeyAck {
        link,
        epoch,
        step: KeyStep::Install,
        error: result.err(),
    };
    out.key_ack(ack);
    Ok(out)
}

/// The open links installed in this batch, once their answers are out: the
/// master installs last (after the slave's CONFIRM says its end holds the
/// PSK), so both ends have it now, and the master re-creates its peer so
/// that the new session's handshake uses the new PSK on both ends. A
/// failure changes nothing installed: the PSK is in force from
/// WireGuard's next rekey, as without `new_session`.
pub(super) fn new_sessions(p: &mut Parent) {
    for (link, epoch) in std::mem::take(&mut p.pending_sessions) {
        let role = p.conf.link.get(&link).and_then(|l| l.role);
        if role != Some(crate::conf::Role::Master) || !p.conf.wireguard.new_session {
            continue;
        }
        // A locked link's peer is re-created when it is about to open
        // (parent/session.rs), where the firewall lets handshakes through:
        // doing it here too would only cost a second session.
        let open = p.links.links.get(&link).map(|l| l.enforcement());
        if open != Some(Enforcement::Open) {
            continue;
        }
        if let Err(e) = p.wg.new_session(&link) {
            // A peer removed and not added back carries nothing: the next
            // tick's re-read finds it gone and locks the link psk-drift.
            p.wg.recheck_soon(&link, Instant::now());
            log::event(Event::WgSessionKept)
                .kv("link", &link)
                .kv("epoch", epoch)
                .kv("reason", e.reason())
                .msg(e.to_string())
                .send();
        }
    }
}

/// A QKD-derived PSK is on the interface and read back: `no-key` and
/// `psk-drift` clear, and its verifier is made durable for a restart
/// (if that write fails the restart holds `no-key` until the next round:
/// closed, not open).
fn installed(p: &mut Parent, out: &mut Changed, link: &str, psk: &crate::secret::Psk) {
    let l = &p.links.links[link];
    let held = [LockReason::NoKey, LockReason::PskDrift]
        .into_iter()
        .any(|r| l.parent.contains(r));
    if held {
        p.links.set_parent_reason(link, LockReason::NoKey, false);
        p.links.set_parent_reason(link, LockReason::PskDrift, false);
        // In the daemon's loop the open waits for the installs queued
        // behind this one, to be made with theirs (`Links::open_queued`).
        if !(p.links).queue_open(link, OpenedBy::Auto, p.bundle.as_ref()) {
            p.links
                .converge(link, p.bundle.as_ref(), OpenedBy::Auto, false);
        }
        out.state(link);
    }
    // Written with the others of this batch (one fsync for a `rotate all`).
    let at = crate::utc::now_unix();
    p.pending_verifiers
        .push((link.to_string(), psk.verifier(), at));
    p.sessions.psk_changed(link, std::time::Instant::now());
}

/// How often a link's installed PSK is re-read: the test override
/// `psk_check`, else the link's rotation period (the test override
/// `rotate`, else policy `rotate`, else the default).
fn check_period(conf: &Config, bundle: Option<&Bundle>, link: &str) -> Duration {
    conf.testing.psk_check.unwrap_or_else(|| {
        conf.testing
            .rotate
            .or_else(|| bundle.map(|b| b.policy.for_link(link).rotate))
            .unwrap_or(LinkPolicy::DEFAULT.rotate)
    })
}

/// `key-stale` newly set: the PSK becomes random bytes nobody knows.
pub(super) fn key_stale(p: &mut Parent, link: &str) {
    // Random bytes are no QKD key: no-key holds until the next install.
    p.links.set_parent_reason(link, LockReason::NoKey, true);
    let r = p.wg.randomize(link, Instant::now());
    let mut ev = log::event(Event::KeyStale).kv("link", link);
    ev = match &r {
        Ok(()) => ev.kv("psk", "random"),
        Err(e) => ev.kv("psk", "unchanged").kv("reason", e.reason()),
    };
    ev.send();
}

/// The tick's drift check: every installed PSK due is re-read
/// ([`super::wg::psk::PskWriter::reread_due`], each link every
/// [`check_period`]); one changed behind our back, or a peer that cannot
/// be read, locks the link with `psk-drift`. Returns the links whose
/// state the engine has not heard (a new reason, a lockdown, a lockdown
/// that failed or was repaired).
pub(super) fn lock_drifted(p: &mut Parent) -> Vec<String> {
    let (conf, bundle) = (&p.conf, p.bundle.as_ref());
    let drifted =
        p.wg.reread_due(|n| check_period(conf, bundle, n), Instant::now());
    let mut changed = Vec::new();
    for (link, why) in drifted {
        // Once per drift: the re-read finds it every psk_check until a new
        // PSK is installed (or unlock -f), and the link stays locked.
        let known = p
            .links
            .links
            .get(&link)
            .is_some_and(|l| l.parent.contains(LockReason::PskDrift));
        if !known {
            log_drift(&link, &why);
        }
        p.links.set_parent_reason(&link, LockReason::PskDrift, true);
        (p.links).converge(&link, p.bundle.as_ref(), OpenedBy::Auto, false);
        if p.links.links.get(&link).is_some_and(|l| l.untold()) {
            changed.push(link);
        }
    }
    changed
}

/// Logs `psk_drift` (the caller sets the reason and flips the link).
fn log_drift(link: &str, why: &str) {
    log::event(Event::PskDrift)
        .kv("link", link)
        .kv("reason", why)
        .send();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A far master's first epoch may be anywhere below 2^63 (a clock in
    /// nanoseconds is 1.8e18); past it, epochs move by less than a window,
    /// so u64::MAX is never reached in a step.
    #[test]
    fn epochs_are_free_below_two_to_the_63_and_windowed_above() {
        let ns_clock = 1_800_000_000_000_000_000;
        assert!(epoch_allowed(0, ns_clock));
        assert!(epoch_allowed(0, EPOCH_FREE));
        assert!(epoch_allowed(5, 6));
        assert!(!epoch_allowed(0, EPOCH_FREE + 1));
        assert!(epoch_allowed(EPOCH_FREE, EPOCH_FREE + EPOCH_WINDOW));
        assert!(!epoch_allowed(EPOCH_FREE, EPOCH_FREE + EPOCH_WINDOW + 1));
        assert!(!epoch_allowed(0, u64::MAX));
        assert!(epoch_allowed(u64::MAX - 1, u64::MAX));
    }
}
