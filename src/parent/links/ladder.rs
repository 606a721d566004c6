//! The lockdown ladder of `links.rs` (see its module docs): the steps a
//! lockdown walks until a read-back shows the link locked — the bundle's
//! lockdown, qkdpfd's own drop, the skeleton rebuilt and the drop again, a
//! guard outside the link's chain, the link's WireGuard peer removed — and
//! the guard's and the removed peer's bookkeeping.

use super::Links;
use crate::lock::{Enforcement, LockReason, Reasons};
use crate::log::{self, Event, Prio};
use crate::parent::fw::Observed;
use crate::policy::Bundle;
use crate::ruleset::LinkTarget;
use crate::tool::FwError;

impl Links {
    /// The lockdown ladder (links.rs's module docs). Stops at the first step the
    /// kernel shows; otherwise the link is `lockdown_failed`.
    pub(super) fn lock(&mut self, name: &str, bundle: Option<&Bundle>) {
        let ruleset = bundle
            .and_then(|b| b.ruleset(Enforcement::Lockdown, self.fw.extension()))
            .map(str::to_string);
        let target = super::target_of(&self.targets, name).clone();
        let mut errors: Vec<String> = Vec::new();
        for step in 0..4 {
            let started = crate::imsg::monotonic_ns();
            let (what, r): (&str, Result<(), FwError>) = match step {
                0 => match &ruleset {
                    Some(r) => (
                        "lockdown ruleset",
                        self.fw.apply(&target, Enforcement::Lockdown, r),
                    ),
                    // No policy: qkdpfd's own drop is the lockdown.
                    None => ("drop", self.fw.clear(&target)),
                },
                1 => ("drop", self.fw.clear(&target)),
                2 => (
                    "rebuild and drop",
                    self.fw
                        .init_shared(&self.targets)
                        .and_then(|_| self.fw.clear(&target)),
                ),
                _ => {
                    self.guard.insert(name.to_string());
                    let g = self.guard_targets();
                    ("guard", self.fw.set_guard(&g))
                }
            };
            self.stamp_commit(started, &r);
            if let Err(e) = &r {
                if e.timed_out() {
                    errors.push(format!("{what}: {e}"));
                    break;
                }
            }
            self.observe_one(name);
            let kernel = &self.links[name].kernel;
            let shown = if step == 3 {
                kernel.locked()
            } else {
                kernel.state == Observed::Locked
            };
            if r.is_ok() && shown {
                if step < 3 {
                    self.release_guard(name);
                }
                if step > 0 || self.links[name].lock_failed {
                    log::event(Event::LockdownFallback)
                        .kv("link", name)
                        .kv("step", what)
                        .msg(errors.join("; "))
                        .send();
                }
                self.mark_locked(name, true);
                return;
            }
            errors.push(match r {
                Err(e) => format!("{what}: {e}"),
                Ok(()) => format!("{what}: kernel shows {}", self.links[name].kernel.state),
            });
        }
        match self.cut_tunnel(name) {
            Ok(newly) => {
                // Once: every tick walks the firewall steps again until
                // one holds, and the peer stays gone meanwhile.
                if newly {
                    log::event(Event::LockdownFallback)
                        .at(Prio::Alert)
                        .kv("link", name)
                        .kv("step", "remove WireGuard peer")
                        .msg(errors.join("; "))
                        .send();
                }
                self.mark_locked(name, true);
                return;
            }
            Err(e) => errors.push(format!("remove WireGuard peer: {e}")),
        }
        self.mark_locked(name, false);
        let l = &self.links[name];
        log::event(Event::LockdownFailed)
            .kv("link", name)
            .kv("kernel", &l.kernel.state)
            .msg(errors.join("; "))
            .send();
    }

    /// The last rung: the link's WireGuard peer removed and read back gone.
    /// True when this call removed it (false: it was gone already).
    fn cut_tunnel(&mut self, name: &str) -> Result<bool, String> {
        let tunnel = self
            .tunnel
            .as_ref()
            .filter(|t| t.has_peer(name))
            .ok_or("no WireGuard peer configured for the link")?;
        let was = self.links[name].peer_removed;
        tunnel.cut(name)?;
        if let Some(l) = self.links.get_mut(name) {
            l.peer_removed = true;
        }
        if !was {
            log::event(Event::WgPeerRemoved)
                .kv("link", name)
                .msg(
                    "no firewall step could lock the link: its WireGuard peer was removed; \
                     restore the peer (ifconfig/wg) once the firewall is repaired",
                )
                .send();
        }
        Ok(!was)
    }

    /// A removed peer back on the interface (an operator restored it).
    pub(super) fn check_restored_peers(&mut self) {
        let Some(t) = &self.tunnel else { return };
        let mut back = Vec::new();
        for (name, l) in &self.links {
            if l.peer_removed && t.present(name) == Ok(true) {
                back.push(name.clone());
            }
        }
        for name in back {
            if let Some(l) = self.links.get_mut(&name) {
                l.peer_removed = false;
            }
            log::event(Event::WgPeerRestored).kv("link", &name).send();
        }
    }

    pub(super) fn mark_locked(&mut self, name: &str, locked: bool) {
        if let Some(l) = self.links.get_mut(name) {
            if l.lock_failed && locked {
                log::event(Event::LockdownRepaired).kv("link", name).send();
            }
            l.lock_failed = !locked;
        }
        if locked {
            self.say_lockdowns(name);
        }
    }

    /// The reasons added to `name` and not said yet, said now that the
    /// kernel shows it locked.
    fn say_lockdowns(&mut self, name: &str) {
        let Some(l) = self.links.get_mut(name) else {
            return;
        };
        for r in std::mem::replace(&mut l.unsaid, Reasons::EMPTY).iter() {
            let mut ev = log::event(Event::Lockdown).kv("link", name).kv("reason", r);
            if r == LockReason::Qber {
                if let Some(q) = l.qber {
                    ev = ev.kv("qber", format!("{q:.4}"));
                }
                if let Some(t) = l.threshold {
                    ev = ev.kv("threshold", t);
                }
            }
            ev.send();
        }
    }

    pub(super) fn guard_targets(&self) -> Vec<LinkTarget> {
        self.guard
            .iter()
            .filter_map(|n| super::find_target(&self.targets, n).cloned())
            .collect()
    }

    /// The link's own chain shows its state again: its guard goes.
    pub(super) fn release_guard(&mut self, name: &str) {
        if !self.guard.remove(name) {
            return;
        }
        let g = self.guard_targets();
        match self.fw.set_guard(&g) {
            Ok(()) => {
                if let Some(l) = self.links.get_mut(name) {
                    l.kernel.guarded = false;
                }
            }
            Err(e) => {
                // Keeps dropping: fail closed, try again next tick.
                self.guard.insert(name.to_string());
                log::event(Event::GuardReleaseFailed)
                    .kv("link", name)
                    .msg(e)
                    .send();
            }
        }
    }
}
