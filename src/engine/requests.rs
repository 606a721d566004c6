//! Answers to control requests (DESIGN §7), in the engine: `show`/`status`
//! from the engine's own state plus the parent's view of each link; what
//! only the parent may do (lockdown, unlock, reload, policy load, log level)
//! is forwarded over fd 3 and answered when the parent replies.

use super::control::{Asked, CtlCall};
use super::link::Input;
use super::qber::SimControl;
use super::{Engine, LinkSlot};
use crate::imsg::{CtlRequest, ParentCommand, ToParent};
use crate::lock::{Enforcement, LockReason};
use crate::log::{self, Event};
use crate::policy::params::{OnQber, UnlockMode};
use crate::proto::ctl::{
    DaemonStatus, ErrorCode, KeyInfo, LinkInfo, PolicyInfo, Reply, Request, Target,
};
use std::time::Instant;
use tokio::sync::oneshot;

impl Engine {
    pub(super) fn control(&mut self, call: CtlCall) {
        let CtlCall {
            uid,
            asked,
            reply,
            client,
        } = call;
        let request = match asked {
            Asked::Line(r) => r,
            Asked::PolicyLoad => {
                let command = ParentCommand::PolicyLoad;
                return self.forward(uid, client, command, Vec::new(), reply);
            }
        };
        let now = Instant::now();
        let answer = match request {
            Request::Status => Reply::Status(self.status(now)),
            Request::ShowLinks => {
                Reply::Links(self.links.keys().map(|n| self.info(n, now)).collect())
            }
            Request::ShowLink { link } if self.links.contains_key(&link) => {
                Reply::Links(vec![self.info(&link, now)])
            }
            Request::ShowLink { link } => no_such_link(&link),
            Request::ShowPolicy => Reply::Policy(self.policy_info()),
            Request::Monitor => Reply::error(ErrorCode::BadRequest, "monitor is a stream"),
            Request::Log { verbose } => {
                let Some((id, reply)) = self.pass(client, reply) else {
                    return;
                };
                log::set_verbose(verbose);
                return self.ask(id, uid, ParentCommand::Log, Vec::new(), reply);
            }
            Request::SimEve { link, fraction } => {
                return self.sim(&link, SimControl::Eve(fraction), reply);
            }
            Request::SimNoise { link, qber } => {
                return self.sim(&link, SimControl::Noise(qber), reply);
            }
            Request::Lockdown { .. } => {
                return self.forward(uid, client, ParentCommand::Lockdown, Vec::new(), reply);
            }
            Request::Unlock { target, force } => {
                let names = match self.target_names(&target) {
                    Ok(n) => n,
                    Err(r) => {
                        let _ = reply.send(r);
                        return;
                    }
                };
                // The client's connection reaches the parent first: an
                // unlock that cannot be handed on releases nothing here.
                let Some((id, reply)) = self.pass(client, reply) else {
                    return;
                };
                let mut notes = Vec::new();
                for n in names {
                    for why in self.feed(&n, now, Input::Unlock { force }) {
                        notes.push(format!("{n}: qber hold kept: {why}"));
                    }
                }
                return self.ask(id, uid, ParentCommand::Unlock, notes, reply);
            }
            Request::Rotate { target } => self.rotate(&target, now),
            Request::Reload => {
                return self.forward(uid, client, ParentCommand::Reload, Vec::new(), reply);
            }
            Request::PolicyLoad { .. } => {
                let command = ParentCommand::PolicyLoad;
                return self.forward(uid, client, command, Vec::new(), reply);
            }
        };
        let _ = reply.send(answer);
    }

    /// Hands a request only the parent runs on: the client's connection,
    /// with the request still unread on it, then the command's name. The
    /// parent learns who asks from the kernel and what from the client.
    fn forward(
        &mut self,
        uid: u32,
        client: Option<std::os::fd::OwnedFd>,
        command: ParentCommand,
        notes: Vec<String>,
        reply: oneshot::Sender<Reply>,
    ) {
        if let Some((id, reply)) = self.pass(client, reply) {
            self.ask(id, uid, command, notes, reply);
        }
    }

    /// Passes the client's connection to the parent under a new request
    /// id; when it cannot be, answers the client and gives None.
    fn pass(
        &mut self,
        client: Option<std::os::fd::OwnedFd>,
        reply: oneshot::Sender<Reply>,
    ) -> Option<(u64, oneshot::Sender<Reply>)> {
        let id = self.next_id;
        self.next_id += 1;
        let passed = match (&self.creds, &client) {
            (Some(chan), Some(c)) => {
                use std::os::fd::AsFd;
                crate::imsg::creds::send(chan.as_fd(), id, c.as_fd())
            }
            _ => Err("no client connection to pass to the parent".to_string()),
        };
        match passed {
            Ok(()) => Some((id, reply)),
            Err(e) => {
                let _ = reply.send(Reply::error(ErrorCode::Failed, e));
                None
            }
        }
    }

    /// Names the command of the connection passed under `id`; the parent's
    /// answer goes to `reply`.
    fn ask(
        &mut self,
        id: u64,
        uid: u32,
        command: ParentCommand,
        notes: Vec<String>,
        reply: oneshot::Sender<Reply>,
    ) {
        self.pending.insert(id, (reply, notes));
        let _ = self
            .tx
            .send(ToParent::CtlRequest(CtlRequest { id, uid, command }).encode());
    }

    /// `qkdctl rotate`: a round now on every keyed link named (masters
    /// start rounds; a slave follows its master).
    fn rotate(&mut self, t: &Target, now: Instant) -> Reply {
        let names = match self.target_names(t) {
            Ok(n) => n,
            Err(r) => return r,
        };
        let keyed: Vec<String> = names
            .into_iter()
            .filter(|n| self.keys.is_keyed(n))
            .collect();
        if keyed.is_empty() {
            let what = match t {
                Target::All => "no link has key agreement".to_string(),
                Target::Link(l) => format!("{l} has no key agreement (no kme)"),
            };
            return Reply::error(ErrorCode::Refused, what);
        }
        let inputs = self.keys.rotate_now(&keyed, now);
        self.feed_keys(inputs, now);
        let done: Vec<(String, bool)> = keyed
            .iter()
            .map(|n| {
                let st = self.keys.view(n, now).map(|v| v.status);
                match st {
                    Some(s) if s.role == crate::conf::Role::Slave => {
                        (format!("{n}: slave (the master starts rounds)"), false)
                    }
                    Some(s) if s.held => (
                        format!("{n}: held (on_qber = hold, or its QBER not known yet)"),
                        false,
                    ),
                    Some(s) if s.in_round => (
                        format!("{n}: round started (epoch after {})", s.epoch),
                        true,
                    ),
                    _ => (format!("{n}: not started"), false),
                }
            })
            .collect();
        rotate_reply(done)
    }

    fn target_names(&self, t: &Target) -> Result<Vec<String>, Reply> {
        match t {
            Target::All => Ok(self.links.keys().map(String::from).collect()),
            Target::Link(l) if self.links.contains_key(l) => Ok(vec![l.clone()]),
            Target::Link(l) => Err(no_such_link(l)),
        }
    }

    /// `qkdctl sim eve|noise`: the built-in simulator in line; a network
    /// source (qkdsim) gets the control forwarded to its `/sim/<qber_id>/`.
    fn sim(&mut self, link: &str, c: SimControl, reply: oneshot::Sender<Reply>) {
        let Some(slot) = self.links.get_mut(link) else {
            let _ = reply.send(no_such_link(link));
            return;
        };
        let (what, v, body) = match c {
            SimControl::Eve(f) => ("eve", f, serde_json::json!({ "fraction": f })),
            SimControl::Noise(q) => ("noise", q, serde_json::json!({ "qber": q })),
        };
        let done = {
            let link = link.to_string();
            move |r: Result<(), String>| match r {
                Ok(()) => {
                    log::event(Event::SimControl)
                        .kv("link", &link)
                        .kv(what, v)
                        .send();
                    Reply::ok(format!("{link}: sim {what} {v}"))
                }
                // A network source's error quotes qkdsim unescaped (the
                // log escapes its own values); a reply is shown, so it is
                // escaped here, once.
                Err(e) => Reply::error(ErrorCode::Refused, crate::text::printable(&e, 512)),
            }
        };
        if let Some(source) = slot.source.as_mut() {
            let _ = reply.send(done(source.control(c)));
            return;
        }
        let Some(control) = slot.sim_control.clone() else {
            let why = format!("{link}: its QBER source takes no sim controls");
            let _ = reply.send(Reply::error(ErrorCode::Refused, why));
            return;
        };
        let qber_id = slot.qber_id.clone();
        tokio::spawn(async move {
            let suffix = format!("/{what}");
            let r = control
                .post(&qber_id, &suffix, body.to_string().into_bytes())
                .await;
            let _ = reply.send(done(r.map(drop)));
        });
    }

    pub(super) fn enforcement(slot: &LinkSlot) -> Enforcement {
        slot.parent
            .as_ref()
            .map(|p| p.enforcement)
            .unwrap_or(Enforcement::Lockdown)
    }

    pub(super) fn info(&self, name: &str, now: Instant) -> LinkInfo {
        let slot = &self.links[name];
        let st = slot.link.status(now);
        let parent = slot
            .parent
            .as_ref()
            .map(|p| p.parent_reasons)
            .unwrap_or_default();
        let policy = slot.link.policy();
        LinkInfo {
            name: name.to_string(),
            enforcement: Self::enforcement(slot),
            lockdown_failed: slot.parent.as_ref().is_some_and(|p| p.lockdown_failed),
            wg_peer_removed: slot.parent.as_ref().is_some_and(|p| p.wg_peer_removed),
            reasons: st.reasons.union(parent),
            band: st.band,
            qber: st.qber,
            sample_age_secs: st.qber.map(|_| st.since_sample.as_secs_f64()),
            threshold: policy.map(|p| p.qber_lockdown),
            trip_count: st.over_threshold,
            manual_hold: st.tripped == Some(OnQber::Lockdown)
                && st.reasons.contains(LockReason::Qber)
                && policy.is_some_and(|p| p.unlock == UnlockMode::Manual),
            qber_source: slot.qber_name.to_string(),
            keys: self.keys.view(name, now).map(|v| KeyInfo {
                role: match v.status.role {
                    crate::conf::Role::Master => "master".into(),
                    crate::conf::Role::Slave => "slave".into(),
                },
                epoch: v.status.epoch,
                installed_epoch: v.status.installed.as_ref().map(|(e, _)| *e),
                installed_key_id: (v.status.installed.as_ref())
                    .map(|(_, k)| k.as_str().to_string()),
                psk_fingerprint: v.psk_fingerprint,
                key_age_secs: v.key_age.map(|d| d.as_secs_f64()),
                rotations_ok: v.status.rounds_ok,
                rotations_failed: v.status.rounds_failed,
                in_round: v.status.in_round,
                held: v.status.held,
                stored_key_count: v.stored_key_count,
            }),
        }
    }

    fn status(&self, _now: Instant) -> DaemonStatus {
        let open = self
            .links
            .values()
            .filter(|s| Self::enforcement(s) == Enforcement::Open)
            .count();
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            policy_serial: self.policy.as_ref().map(|p| p.serial),
            links_open: open,
            links_locked: self.links.len() - open,
            verbose: log::verbose(),
        }
    }

    fn policy_info(&self) -> Option<PolicyInfo> {
        let p = self.policy.as_ref()?;
        let now = crate::utc::now_unix();
        Some(PolicyInfo {
            serial: p.serial,
            not_after: p.not_after,
            expired: p.expired(now),
            signer: p.signer.clone(),
            links: (p.links.iter())
                .map(|(n, lp)| (n.to_string(), (**lp).clone()))
                .collect(),
        })
    }
}

fn no_such_link(l: &str) -> Reply {
    Reply::error(ErrorCode::NoSuchLink, format!("no such link: {l}"))
}

impl Engine {
    /// Refreshes the Prometheus view (plain data, no key material).
    pub(super) fn publish_metrics(&self, now: Instant) {
        let Some(tx) = &self.metrics else { return };
        let mut snap = super::metrics::Snapshot::empty(tx.borrow().started_unix, now);
        snap.policy_serial = self.policy.as_ref().map(|p| p.serial);
        let now_unix = crate::utc::now_unix();
        snap.policy_expired = (self.policy.as_ref()).is_some_and(|p| p.expired(now_unix));
        snap.policy_not_after = self.policy.as_ref().and_then(|p| p.not_after);
        snap.policy_expiry_warning = self.policy.as_ref().map(|p| p.expiry_warning);
        for name in self.links.keys() {
            let info = self.info(name, now);
            let st = self.links[name].link.status(now);
            let policy = self.links[name].link.policy();
            let mut m = super::metrics::LinkMetrics::new(name);
            m.qber = info.qber;
            m.band = info.band;
            m.threshold = info.threshold;
            m.locked = info.enforcement == Enforcement::Lockdown;
            m.lockdown_failed = info.lockdown_failed;
            m.wg_peer_removed = info.wg_peer_removed;
            m.reasons = info.reasons;
            m.trips = st.trips;
            m.sample_age_secs = info.sample_age_secs;
            m.keys = self
                .keys
                .view(name, now)
                .map(|v| super::metrics::KeyMetrics {
                    age_secs: v.key_age.map(|d| d.as_secs_f64()),
                    max_age_secs: policy.map(|p| p.max_key_age.as_secs_f64()),
                    epoch: v.status.installed.map(|(e, _)| e),
                    rotations_ok: v.status.rounds_ok,
                    rotations_failed: v.status.rounds_failed,
                    kme_stored_keys: v.stored_key_count,
                    kme_keys_low: v.keys_low,
                    generation_halted: v.halted,
                });
            snap.links.push(m);
        }
        tx.send_replace(snap);
    }
}

/// `qkdctl rotate`'s answer from each link's line and whether its round
/// started: refused (exit 1) when none did — a link named alone on the
/// slave end, held or not ready — and for `all` a success as soon as one
/// did, listing the others with why not (qkdctl.8).
fn rotate_reply(done: Vec<(String, bool)>) -> Reply {
    let started = done.iter().any(|(_, s)| *s);
    let text: Vec<String> = done.into_iter().map(|(line, _)| line).collect();
    match started {
        true => Reply::ok(text.join("\n")),
        false => Reply::error(ErrorCode::Refused, text.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(l: &str, started: bool) -> (String, bool) {
        (l.to_string(), started)
    }

    #[test]
    fn rotate_is_refused_unless_a_round_started() {
        let slave = line("dr: slave (the master starts rounds)", false);
        let held = line(
            "br: held (on_qber = hold, or its QBER not known yet)",
            false,
        );
        let started = line("hq: round started (epoch after 4)", true);
        for alone in [&slave, &held] {
            let r = rotate_reply(vec![alone.clone()]);
            assert_eq!(r, Reply::error(ErrorCode::Refused, alone.0.clone()));
        }
        assert_eq!(
            rotate_reply(vec![started.clone()]),
            Reply::ok(started.0.clone())
        );
        // `all`: one round is enough; the others are listed.
        let all = rotate_reply(vec![held.clone(), slave.clone(), started.clone()]);
        assert_eq!(
            all,
            Reply::ok(format!("{}\n{}\n{}", held.0, slave.0, started.0))
        );
        let r = rotate_reply(vec![held.clone(), slave.clone()]);
        assert_eq!(
            r,
            Reply::error(ErrorCode::Refused, format!("{}\n{}", held.0, slave.0))
        );
    }
}
