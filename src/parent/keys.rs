//! The parent's half of key agreement (DESIGN §5 "WireGuard", §6): it
//! persists epochs and installs PSKs when the engine asks (checking the
//! link is keyed), re-reads every installed PSK once per rotation period
//! (`psk-drift`), and replaces the PSK with random bytes when the engine
//! reports `key-stale`. What the engine needs to agree on keys (peering
//! key, KME credentials, link_ids) is read in `engine_conf.rs`.
//!
//! Runs in the privileged parent; touches the state file and WireGuard
//! through [`super::wg::WgBackend`] only, never with a key on a command
//! line, in a log line or in an error.

use super::Parent;
use super::changed::Changed;
use super::links::OpenedBy;
use super::wg::{self, Drift, WgBackend, WgError, WgPeer};
use crate::conf::Config;
use crate::imsg::{InstallPsk, KeyAck, KeyStep, PersistEpoch};
use crate::lock::LockReason;
use crate::log::{self, Prio};
use crate::policy::params::LinkPolicy;
use crate::secret::Psk;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// WireGuard as the parent drives it for keyed links.
pub struct Wg {
    backend: wg::SharedBackend,
    links: BTreeMap<String, WgLink>,
}

struct WgLink {
    peer: WgPeer,
    /// What we last wrote (and read back): the drift check compares with it.
    installed: Option<Psk>,
    next_check: Instant,
}

impl Wg {
    pub fn new(conf: &Config, backend: wg::SharedBackend, now: Instant) -> Wg {
        let links = conf
            .link
            .values()
            .filter(|l| l.kme.is_some())
            .filter_map(|l| {
                let peer = WgPeer::from_conf(&l.wg_interface, l.wg_peer.as_deref()?).ok()?;
                let w = WgLink {
                    peer,
                    installed: None,
                    next_check: now,
                };
                Some((l.name.clone(), w))
            })
            .collect();
        Wg { backend, links }
    }

    pub fn backend(&self) -> std::sync::MutexGuard<'_, Box<dyn WgBackend>> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_keyed(&self, link: &str) -> bool {
        self.links.contains_key(link)
    }

    /// Writes `psk` to the link's peer and reads it back.
    pub fn install(
        &mut self,
        link: &str,
        psk: Psk,
        period: Duration,
        now: Instant,
    ) -> Result<(), WgError> {
        let w = self.links.get_mut(link).ok_or(WgError::NoSuchPeer)?;
        self.backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_psk(&w.peer, &psk)?;
        w.installed = Some(psk);
        w.next_check = now + period;
        Ok(())
    }

    /// Whether the PSK on the link's interface is the one whose verifier
    /// the state file holds (a restart's proof of a QKD-derived key); if
    /// so it becomes the installed PSK the drift check compares with.
    pub fn verify_persisted(&mut self, link: &str, verifier: &str, now: Instant) -> bool {
        let Some(w) = self.links.get_mut(link) else {
            return false;
        };
        let got = self
            .backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_psk(&w.peer);
        let Ok(psk) = got else {
            return false;
        };
        let same = wg::ct_eq_str(&psk.verifier(), verifier);
        if same {
            w.installed = Some(psk);
            w.next_check = now;
        }
        same
    }

    /// `key-stale`: no fresh key, so no key at all that anyone could know.
    pub fn randomize(&mut self, link: &str, now: Instant) -> Result<(), WgError> {
        self.install(link, Psk::random(), Duration::from_secs(60), now)
    }

    /// Re-reads the PSK of every link due (once per rotation period);
    /// returns the links that drifted (or could not be read) and why.
    pub fn check_drift(
        &mut self,
        period_of: impl Fn(&str) -> Duration,
        now: Instant,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, w) in &mut self.links {
            let Some(installed) = &w.installed else {
                continue;
            };
            if now < w.next_check {
                continue;
            }
            w.next_check = now + period_of(name);
            let mut b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
            match wg::check_drift(b.as_mut(), &w.peer, installed) {
                Ok(Drift::Same) => {}
                Ok(Drift::Changed) => out.push((name.clone(), "changed".to_string())),
                Err(e) => out.push((name.clone(), e.reason().to_string())),
            }
        }
        out
    }
}

/// Logs `psk_drift` (the caller sets the reason and flips the link).
pub fn log_drift(link: &str, why: &str) {
    log::event(Prio::Alert, "psk_drift")
        .kv("link", link)
        .kv("reason", why)
        .send();
}

// What the parent answers the engine's key requests with (dispatched by
// `run::dispatch_engine`), and its own periodic PSK re-read.

/// How far past the persisted epoch the engine may ask to persist: room
/// for a master jumping past its slave's NACK, never near u64::MAX.
pub const EPOCH_WINDOW: u64 = 1 << 32;

/// The engine asks to make an epoch durable: queued for the next
/// [`flush_epochs`] (one write for the batch), or refused when it is past
/// the window. Only a keyed link has epochs.
pub(super) fn persist_epoch(p: &mut Parent, e: PersistEpoch) -> Result<Changed, String> {
    if !p.wg.is_keyed(&e.link) || e.epoch == 0 {
        return Err(format!("epoch {} for unkeyed link {:?}", e.epoch, e.link));
    }
    // Epochs only move forward, by less than a window: an engine
    // asking for u64::MAX would end key agreement on the link for good.
    let floor = p.links.epoch(&e.link);
    if e.epoch > floor.saturating_add(EPOCH_WINDOW) {
        return Ok(refuse_epoch(&e.link, e.epoch, floor));
    }
    p.pending_epochs.push((e.link, e.epoch));
    Ok(Changed::none())
}

/// Answers a PersistEpoch beyond [`EPOCH_WINDOW`] with a refusal (the
/// round fails; nothing is written).
fn refuse_epoch(link: &str, epoch: u64, floor: u64) -> Changed {
    log::event(Prio::Err, "epoch_refused")
        .kv("link", link)
        .kv("epoch", epoch)
        .kv("persisted", floor)
        .send();
    let ack = KeyAck {
        link: link.to_string(),
        epoch,
        step: KeyStep::Persist,
        error: Some(format!(
            "epoch {epoch} is more than {EPOCH_WINDOW} past the persisted {floor}"
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
    let written = p.links.update_state(|st| {
        // Epochs only grow.
        for (name, epoch) in &batch {
            let rec = st.links.entry(name.clone()).or_default();
            rec.epoch = rec.epoch.max(*epoch);
        }
        for (name, verifier) in verifiers {
            st.links.entry(name).or_default().verifier = Some(verifier);
        }
    });
    let error = written.err().map(|e| {
        log::event(Prio::Crit, "state_write_failed")
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
        let period = p
            .conf
            .testing
            .psk_check
            .unwrap_or_else(|| rotate_period(p, &link));
        p.wg.install(&link, psk.clone(), period, Instant::now())
            .map_err(|e| e.reason().to_string())
    };
    let mut out = Changed::none();
    if result.is_ok() {
        installed(p, &mut out, &link, &psk);
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
        p.links
            .converge(link, p.bundle.as_ref(), OpenedBy::Auto, false);
        out.state(link);
    }
    // Written with the others of this batch (one fsync for a `rotate all`).
    p.pending_verifiers.push((link.to_string(), psk.verifier()));
}

/// The link's rotation period (policy `rotate`, or the test override).
fn rotate_period(p: &Parent, link: &str) -> Duration {
    p.conf
        .testing
        .rotate
        .or_else(|| p.bundle.as_ref().map(|b| b.policy.for_link(link).rotate))
        .unwrap_or(LinkPolicy::DEFAULT.rotate)
}

/// `key-stale` newly set: the PSK becomes random bytes nobody knows.
pub(super) fn key_stale(p: &mut Parent, link: &str) {
    // Random bytes are no QKD key: no-key holds until the next install.
    p.links.set_parent_reason(link, LockReason::NoKey, true);
    let r = p.wg.randomize(link, Instant::now());
    let mut ev = log::event(Prio::Alert, "key_stale").kv("link", link);
    ev = match &r {
        Ok(()) => ev.kv("psk", "random"),
        Err(e) => ev.kv("psk", "unchanged").kv("reason", e.reason()),
    };
    ev.send();
}

/// The once-per-period re-read of every installed PSK: a change, or a
/// peer that cannot be read, locks the link with `psk-drift`.
pub(super) fn check_drift(p: &mut Parent) -> Vec<(String, crate::lock::Enforcement)> {
    let periods: std::collections::BTreeMap<String, Duration> = p
        .conf
        .link
        .keys()
        .map(|n| {
            let every = p
                .conf
                .testing
                .psk_check
                .unwrap_or_else(|| rotate_period(p, n));
            (n.clone(), every)
        })
        .collect();
    let drifted = p.wg.check_drift(
        |n| {
            periods
                .get(n)
                .copied()
                .unwrap_or(LinkPolicy::DEFAULT.rotate)
        },
        Instant::now(),
    );
    let mut changed = Vec::new();
    for (link, why) in drifted {
        log_drift(&link, &why);
        p.links.set_parent_reason(&link, LockReason::PskDrift, true);
        if let Some(to) = p
            .links
            .converge(&link, p.bundle.as_ref(), OpenedBy::Auto, false)
        {
            changed.push((link, to));
        }
    }
    changed
}
