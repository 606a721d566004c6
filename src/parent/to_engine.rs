//! The loop's sending side of the engine channel: what the handlers
//! returned ([`Changed`]) becomes frames, in order. Only `run.rs` uses this;
//! handlers never hold the channel.

use super::Parent;
use super::changed::{Changed, Tell};
use crate::imsg::{ActivePolicy, LinkState, ToEngine};

pub(super) type Tx = crate::imsg::Sender;

/// Tells the engine what a handler changed, in the handler's order.
pub(super) fn send(p: &Parent, tx: &Tx, changed: Changed) {
    for t in changed.into_tells() {
        match t {
            Tell::Frame(mut f) => {
                let _ = tx.send(std::mem::take(&mut *f));
            }
            Tell::Policy => send_policy(p, tx),
            Tell::State(link) => send_state(p, tx, &link),
            Tell::AllStates => send_all_states(p, tx),
            Tell::Msg(m) => {
                let _ = tx.send(m.encode());
            }
            Tell::Event(ev) => ev.send(),
        }
    }
    // The links of a shared interface that a handler's link moved.
    for name in p.links.take_moved() {
        if p.links.links.get(&name).is_some_and(|l| l.untold()) {
            send_state(p, tx, &name);
        }
    }
}

pub(super) fn send_policy(p: &Parent, tx: &Tx) {
    let msg = p.bundle.as_ref().map(|b| ActivePolicy {
        serial: b.policy.serial,
        not_after: b.policy.not_after,
        expiry_warning: p.conf.policy.expiry_warning.as_secs(),
        signer: b.signer.clone(),
        links: p
            .conf
            .link
            .keys()
            .map(|n| (n.clone(), b.policy.for_link(n)))
            .collect(),
    });
    let _ = tx.send(ToEngine::Policy(msg).encode());
}

pub(super) fn send_all_states(p: &Parent, tx: &Tx) {
    for name in p.links.links.keys() {
        send_state(p, tx, name);
    }
}

fn send_state(p: &Parent, tx: &Tx, name: &str) {
    let Some(l) = p.links.links.get(name) else {
        return;
    };
    let now = l.tell();
    let st = LinkState {
        link: name.to_string(),
        enforcement: now.enforcement,
        lockdown_failed: now.lock_failed,
        wg_peer_removed: now.peer_removed,
        parent_reasons: now.parent,
    };
    let _ = tx.send(ToEngine::LinkState(st).encode());
}
