//! The PSK writer of keyed links (DESIGN §5 "WireGuard", §6): installs a
//! PSK on a link's peer and reads it back, proves after a restart that the
//! interface still holds the persisted one, replaces it with random bytes
//! (`key-stale`), and re-reads every installed PSK once per period: the
//! drift check. The parent's handlers (`parent/keys.rs`) decide what a
//! drift or a failed install does to the link.

use super::{Peers, SharedBackend, WgBackend, WgError, WgPeer, ct_eq, ct_eq_str};
use crate::conf::Config;
use crate::secret::Psk;
use std::time::{Duration, Instant};

/// The persistent keepalive (seconds) a re-created peer gets when it had
/// none, until its own is restored in the next call: wg(8)'s usual value.
/// Its first keepalive needs a session, so the peer handshakes at once.
pub const SESSION_KEEPALIVE: u16 = 25;

/// WireGuard as the parent drives it for keyed links: the PSK of each
/// keyed link's peer, what was last installed there, and when to re-read it.
pub struct PskWriter {
    backend: SharedBackend,
    peers: Peers,
    /// Beside each of `peers`: its link's PSK state when the link is keyed.
    links: Vec<Option<WgLink>>,
}

struct WgLink {
    /// What we last wrote (and read back): the drift check compares with it.
    installed: Option<Psk>,
    next_check: Instant,
}

impl PskWriter {
    /// The keyed links (a `kme`) of `conf` among `peers`.
    pub fn new(conf: &Config, peers: Peers, backend: SharedBackend, now: Instant) -> PskWriter {
        let keyed = |name: &str| conf.link.get(name).is_some_and(|l| l.kme.is_some());
        let links = (peers.iter())
            .map(|(name, _)| {
                keyed(name).then_some(WgLink {
                    installed: None,
                    next_check: now,
                })
            })
            .collect();
        PskWriter {
            backend,
            peers,
            links,
        }
    }

    /// A keyed link's peer and PSK state.
    fn link(&mut self, link: &str) -> Option<(&WgPeer, &mut WgLink)> {
        let i = self.peers.position(link)?;
        let w = self.links[i].as_mut()?;
        Some((self.peers.get(link)?, w))
    }

    pub fn backend(&self) -> std::sync::MutexGuard<'_, Box<dyn WgBackend>> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_keyed(&self, link: &str) -> bool {
        (self.peers.position(link)).is_some_and(|i| self.links[i].is_some())
    }

    /// Writes `psk` to the link's peer and reads it back. A PSK of one
    /// byte repeated is refused: only a broken or hostile engine sends one,
    /// and all zeros is WireGuard's "no PSK" (a tunnel on its classical
    /// keys alone) that the install would count as a QKD key in force.
    pub fn install(
        &mut self,
        link: &str,
        psk: Psk,
        period: Duration,
        now: Instant,
    ) -> Result<(), WgError> {
        if psk.is_degenerate() {
            return Err(WgError::WeakPsk);
        }
        let backend = self.backend.clone();
        let (peer, w) = self.link(link).ok_or(WgError::NoSuchPeer)?;
        backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_psk(peer, &psk)?;
        w.installed = Some(psk);
        w.next_check = now + period;
        Ok(())
    }

    /// Whether the PSK on the link's interface is the one whose verifier
    /// the state file holds (a restart's proof of a QKD-derived key); if
    /// so it becomes the installed PSK the drift check compares with.
    pub fn verify_persisted(&mut self, link: &str, verifier: &str, now: Instant) -> bool {
        let backend = self.backend.clone();
        let Some((peer, w)) = self.link(link) else {
            return false;
        };
        let got = backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_psk(peer);
        let Ok(psk) = got else {
            return false;
        };
        let same = ct_eq_str(&psk.verifier(), verifier);
        if same {
            w.installed = Some(psk);
            w.next_check = now;
        }
        same
    }

    /// Puts the link's installed PSK in force at once: its peer re-created
    /// for a new session ([`WgBackend::new_session`]), with a keepalive
    /// of [`SESSION_KEEPALIVE`] seconds for the moment if it has none.
    pub fn new_session(&mut self, link: &str) -> Result<(), WgError> {
        let backend = self.backend.clone();
        let (peer, _) = self.link(link).ok_or(WgError::NoSuchPeer)?;
        backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .new_session(peer, SESSION_KEEPALIVE)
            .map(|_| ())
    }

    /// Has the link's PSK re-read at the next tick rather than after its
    /// period: a re-creation that failed may have left the peer gone.
    pub fn recheck_soon(&mut self, link: &str, now: Instant) {
        if let Some((_, w)) = self.link(link) {
            w.next_check = now;
        }
    }

    /// When the link's peer last completed a handshake (wall clock).
    pub fn last_handshake(&mut self, link: &str) -> Result<Option<std::time::SystemTime>, WgError> {
        let backend = self.backend.clone();
        let (peer, _) = self.link(link).ok_or(WgError::NoSuchPeer)?;
        backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_handshake(peer)
    }

    /// `key-stale`: no fresh key, so no key at all that anyone could know.
    pub fn randomize(&mut self, link: &str, now: Instant) -> Result<(), WgError> {
        self.install(link, Psk::random(), Duration::from_secs(60), now)
    }

    /// Re-reads the PSK of every link due ([`check_drift`]; next due
    /// `period_of(link)` from now); returns the links that drifted (or
    /// could not be read) and why.
    pub fn reread_due(
        &mut self,
        period_of: impl Fn(&str) -> Duration,
        now: Instant,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let keyed = self.peers.iter().zip(&mut self.links);
        for ((name, peer), w) in keyed.filter_map(|(p, w)| Some((p, w.as_mut()?))) {
            let Some(installed) = &w.installed else {
                continue;
            };
            if now < w.next_check {
                continue;
            }
            w.next_check = now + period_of(name);
            let mut b = self.backend.lock().unwrap_or_else(|e| e.into_inner());
            match check_drift(b.as_mut(), peer, installed) {
                Ok(Drift::Same) => {}
                Ok(Drift::Changed) => out.push((name.clone(), "changed".to_string())),
                Err(e) => out.push((name.clone(), e.reason().to_string())),
            }
        }
        out
    }
}

/// What the periodic re-read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The peer still has the PSK we installed.
    Same,
    /// Someone else changed it (`wg setconf`, netstart, another tool): lock
    /// the link with `psk-drift`.
    Changed,
}

/// The periodic drift check: re-reads the peer's PSK and compares it with
/// the one installed, in constant time. Errors (peer gone, interface gone)
/// are the caller's to treat as failures, not as "no drift".
pub fn check_drift(
    backend: &mut dyn WgBackend,
    peer: &WgPeer,
    installed: &Psk,
) -> Result<Drift, WgError> {
    let now = backend.get_psk(peer)?;
    Ok(if ct_eq(now.expose(), installed.expose()) {
        Drift::Same
    } else {
        Drift::Changed
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Fake, peer};
    use super::*;

    #[test]
    fn drift_compares_with_installed() {
        let mut f = Fake(None);
        let p = peer();
        let k = Psk::from_bytes([5; 32]);
        assert_eq!(check_drift(&mut f, &p, &k), Err(WgError::NoSuchPeer));
        f.set_psk(&p, &k).unwrap();
        assert_eq!(check_drift(&mut f, &p, &k), Ok(Drift::Same));
        f.0 = Some(Psk::from_bytes([6; 32]));
        assert_eq!(check_drift(&mut f, &p, &k), Ok(Drift::Changed));
    }

    /// A PSK whose bytes differ (`install` refuses one byte repeated).
    fn key(seed: u8) -> Psk {
        Psk::from_bytes(std::array::from_fn(|i| seed.wrapping_add(i as u8)))
    }

    fn writer(psk: Option<Psk>) -> PskWriter {
        let backend: Box<dyn WgBackend> = Box::new(Fake(psk));
        let links = vec![Some(WgLink {
            installed: None,
            next_check: Instant::now(),
        })];
        PskWriter {
            backend: std::sync::Arc::new(std::sync::Mutex::new(backend)),
            peers: Peers::from_list(vec![("dr".to_string(), peer())]),
            links,
        }
    }

    #[test]
    fn reread_when_due_and_report_drift() {
        let t0 = Instant::now();
        let period = Duration::from_secs(300);
        let mut w = writer(None);
        assert!(w.is_keyed("dr") && !w.is_keyed("other"));
        // Nothing installed: nothing to compare with.
        assert!(w.reread_due(|_| period, t0).is_empty());
        w.install("dr", key(5), period, t0).unwrap();
        w.backend()
            .set_psk(&peer(), &Psk::from_bytes([6; 32]))
            .unwrap();
        // Not due before the period is over.
        assert!(w.reread_due(|_| period, t0 + period / 2).is_empty());
        let at = t0 + period;
        assert_eq!(
            w.reread_due(|_| period, at),
            [("dr".into(), "changed".into())]
        );
        // Next due a period later.
        assert!(w.reread_due(|_| period, at + period / 2).is_empty());
        assert_eq!(w.reread_due(|_| period, at + period).len(), 1);
    }

    /// A re-creation that fails may leave the peer gone: its re-read is
    /// then due at once, not a period later.
    #[test]
    fn a_failed_recreation_has_the_peer_reread_at_once() {
        let t0 = Instant::now();
        let period = Duration::from_secs(300);
        let mut w = writer(None);
        w.install("dr", key(5), period, t0).unwrap();
        *w.backend() = Box::new(Fake(None));
        assert!(w.reread_due(|_| period, t0 + period / 2).is_empty());
        w.recheck_soon("dr", t0 + period / 2);
        assert_eq!(
            w.reread_due(|_| period, t0 + period / 2),
            [("dr".into(), "no-such-peer".into())]
        );
        w.recheck_soon("other", t0);
    }

    #[test]
    fn persisted_verifier_proves_the_installed_psk() {
        let k = Psk::from_bytes([7; 32]);
        let now = Instant::now();
        let mut w = writer(Some(k.clone()));
        assert!(!w.verify_persisted("dr", &Psk::from_bytes([8; 32]).verifier(), now));
        assert!(w.verify_persisted("dr", &k.verifier(), now));
        // Proven: it is what the drift check compares with, due at once.
        assert!(w.reread_due(|_| Duration::from_secs(60), now).is_empty());
        w.randomize("dr", now).unwrap();
        assert!(!w.verify_persisted("dr", &k.verifier(), now));
        assert_eq!(
            w.install("other", key(7), Duration::ZERO, now),
            Err(WgError::NoSuchPeer)
        );
    }

    /// No PSK (all zeros) or any byte repeated is never written: the
    /// interface keeps what it had and nothing counts as installed.
    #[test]
    fn a_psk_of_one_byte_repeated_is_never_written() {
        let now = Instant::now();
        let mut w = writer(None);
        for b in [0u8, 0xab, 0xff] {
            let weak = Psk::from_bytes([b; 32]);
            assert_eq!(
                w.install("dr", weak, Duration::ZERO, now),
                Err(WgError::WeakPsk)
            );
            assert_eq!(w.backend().get_psk(&peer()), Err(WgError::NoSuchPeer));
        }
        assert!(w.reread_due(|_| Duration::ZERO, now).is_empty());
        let mut almost = [0u8; 32];
        almost[31] = 1;
        w.install("dr", Psk::from_bytes(almost), Duration::ZERO, now)
            .unwrap();
        assert_eq!(w.backend().get_psk(&peer()), Ok(Psk::from_bytes(almost)));
    }
}
