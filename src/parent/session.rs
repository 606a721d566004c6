//! A new WireGuard session before a locked link opens (issue 13; DESIGN §6
//! `no-session`). A session made before or during a lockdown may run on a
//! PSK from before the incident, and WireGuard keeps using it for up to two
//! minutes; so a gated link ([`Links::session_gate`]) that was locked opens
//! only once a handshake newer than its hold has completed, and the master
//! has re-created its peer for it (no session from before left at that
//! end, so none can carry traffic: the slave's old keys find no partner).
//! A handshake that completes needs the same PSK at both ends: after the
//! hold, that is the key each end installed last. Meanwhile the lockdown
//! lets handshake messages and empty keepalives through, never a packet
//! (`ruleset::nft::handshake_statements`).
//!
//! The master's re-created peer handshakes at once (a keepalive set on
//! it); the slave waits for that handshake (a session newer than its hold)
//! and re-creates its own peer only if none came within 1 s. If the far
//! end is not ready (still locked by a firewall that drops handshakes, or
//! not yet holding the new PSK), the peer is re-created again after 1 s,
//! then 2 s, 4 s, 5 s... (WireGuard itself would retry only every 5 s);
//! a new PSK installed meanwhile re-creates it at the next poll.
//! While a wait runs the loop polls the handshake time every [`POLL`].
//!
//! [`Links::session_gate`]: crate::parent::links::Links::session_gate

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::Parent;
use super::changed::Changed;
use crate::conf::Role;
use crate::lock::LockReason;
use crate::log::{self, Event};

/// How often a waiting link's handshake time is read.
pub const POLL: Duration = Duration::from_millis(20);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// The links held for `no-session`, and where each one's wait stands.
#[derive(Default)]
pub struct Waits {
    links: BTreeMap<String, Wait>,
}

struct Wait {
    /// When the wait began (for `after_ms`).
    began: Instant,
    /// The wall clock just before the last re-creation (the slave's hold,
    /// until it re-creates): a handshake after it is a new session.
    since: Option<SystemTime>,
    next_try: Instant,
    retry: Duration,
    tries: u32,
    failed_said: bool,
}

impl Waits {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// A new PSK was installed on a waiting link's peer: a handshake under
    /// way used the old one and fails at whichever end has the new one
    /// first, so the peer is re-created again at the next poll instead of
    /// after the retry's second.
    pub fn psk_changed(&mut self, link: &str, now: Instant) {
        if let Some(w) = self.links.get_mut(link) {
            w.next_try = now;
        }
    }
}

/// One poll: begins the waits the links asked for, re-creates the peers
/// that are due, and opens each link whose new session has been seen.
pub fn poll(p: &mut Parent, now: Instant) -> Changed {
    let mut out = Changed::none();
    for name in std::mem::take(&mut p.links.session_due) {
        // Only the master re-creates at once: were both ends to re-create
        // and initiate together, each could end on a session the other
        // dropped (seen: ~1 recovery in 35 stalled until WireGuard's own
        // 15 s). The slave waits for the handshake the master's re-created
        // peer starts (its answer to it completes when the master's
        // keepalive arrives) and re-creates its own only on the retry.
        let master = p.conf.link.get(&name).and_then(|l| l.role) == Some(Role::Master);
        p.sessions.links.entry(name).or_insert(Wait {
            began: now,
            since: (!master).then(SystemTime::now),
            next_try: if master { now } else { now + FIRST_RETRY },
            retry: FIRST_RETRY,
            tries: 0,
            failed_said: false,
        });
    }
    let names: Vec<String> = p.sessions.links.keys().cloned().collect();
    for name in names {
        let Some(l) = p.links.links.get(&name) else {
            p.sessions.links.remove(&name);
            continue;
        };
        let mut others = l.reasons();
        others.remove(LockReason::NoSession);
        if !l.parent.contains(LockReason::NoSession) || !others.is_empty() {
            // Another reason holds the link (or none does any more): the
            // wait ends here, and the next open after those reasons will
            // re-create the peer again.
            p.links
                .set_parent_reason(&name, LockReason::NoSession, false);
            p.sessions.links.remove(&name);
            out.state(&name);
            continue;
        }
        let w = p.sessions.links.get_mut(&name).expect("listed");
        if now >= w.next_try {
            w.next_try = now + w.retry;
            w.retry = (w.retry * 2).min(LAST_RETRY);
            w.since = Some(SystemTime::now());
            w.tries += 1;
            if let Err(e) = p.wg.new_session(&name) {
                w.since = None;
                if !w.failed_said {
                    w.failed_said = true;
                    log::event(Event::SessionFailed)
                        .kv("link", &name)
                        .kv("reason", e.reason())
                        .msg(e.to_string())
                        .send();
                }
            }
            continue;
        }
        let Some(since) = w.since else { continue };
        match p.wg.last_handshake(&name) {
            Ok(Some(t)) if t > since => {}
            Ok(_) => continue,
            Err(e) => {
                log::debug(format_args!("session: {name}: handshake time: {e}"));
                continue;
            }
        }
        let (began, tries) = (w.began, w.tries);
        p.sessions.links.remove(&name);
        log::event(Event::SessionMade)
            .kv("link", &name)
            .kv("after_ms", now.duration_since(began).as_millis())
            .kv("tries", tries)
            .send();
        p.links.session_made(&name, p.bundle.as_ref());
        out.state(&name);
    }
    out
}
