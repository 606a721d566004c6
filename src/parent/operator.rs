//! The operator's word on a link (DESIGN §7): `qkdctl lockdown` and
//! `qkdctl unlock [-f]`, run by the parent after it has asked the kernel
//! who the client is (see `ctl.rs`).

use super::Parent;
use super::links::OpenedBy;
use crate::lock::LockReason;
use crate::log::{self, Event};
use crate::proto::ctl::{ErrorCode, Reply, Target};

/// The links a ctl target names.
fn targets_of(p: &Parent, t: &Target) -> Result<Vec<String>, Reply> {
    match t {
        Target::All => Ok(p.links.links.keys().cloned().collect()),
        Target::Link(l) if p.links.links.contains_key(l) => Ok(vec![l.clone()]),
        Target::Link(l) => Err(Reply::error(
            ErrorCode::NoSuchLink,
            format!("no such link: {l}"),
        )),
    }
}

/// `qkdctl lockdown LINK|all`: the parent-owned reason `operator`; an
/// error when the kernel does not read back every link named locked.
pub(super) fn lock(p: &mut Parent, t: &Target) -> Reply {
    let names = match targets_of(p, t) {
        Ok(n) => n,
        Err(r) => return r,
    };
    if *t == Target::All {
        // One kernel transaction for all of them where the firewall can.
        p.links
            .lock_all(LockReason::Operator, p.bundle.as_ref(), OpenedBy::Operator);
    } else {
        for n in &names {
            p.links.set_parent_reason(n, LockReason::Operator, true);
            p.links
                .converge(n, p.bundle.as_ref(), OpenedBy::Operator, false);
        }
    }
    // What the kernel shows, not what was asked: a lockdown it refused is
    // `lockdown_failed`, retried every tick with the reason kept.
    let failed: Vec<String> = (names.iter())
        .filter_map(|n| {
            let l = &p.links.links[n];
            let shown = (l.kernel.locked() || l.peer_removed) && !l.lock_failed;
            (!shown).then(|| format!("{n} (kernel shows {})", l.kernel.state))
        })
        .collect();
    if !failed.is_empty() {
        return Reply::error(
            ErrorCode::Failed,
            format!(
                "lockdown failed: {}; reason operator kept and the lockdown retried every \
                 second (see lockdown_failed in the log)",
                failed.join(", ")
            ),
        );
    }
    // Locked, but a restart keeps the reason only once it is on disk (the
    // state in memory is what was written): said, so an operator whose
    // disk is full does not count on a lock a restart would lose.
    let unwritten: Vec<&str> = (names.iter())
        .filter(|n| {
            let on_disk = p.links.state.links.get(n.as_str());
            !on_disk.is_some_and(|r| r.reasons.contains(LockReason::Operator))
        })
        .map(String::as_str)
        .collect();
    if !unwritten.is_empty() && !p.links.persist_disabled {
        return Reply::error(
            ErrorCode::Failed,
            format!(
                "locked in the kernel, but the state file could not record the operator \
                 reason for {} (see state_write_failed in the log): a restart before a \
                 write succeeds would not keep this lockdown; the write is retried every second",
                unwritten.join(", ")
            ),
        );
    }
    Reply::ok(format!("lockdown: {}", names.join(" ")))
}

/// `qkdctl unlock [-f] LINK|all`: clears `operator`; `-f` also every
/// other parent-owned reason but `no-policy` (logged at alert priority).
/// Answers with what the kernel now shows for each link, or, for `all`,
/// `opening` for a link the main loop opens next (its `unlock` event
/// follows, or `unlock_failed`).
pub(super) fn unlock(p: &mut Parent, t: &Target, force: bool) -> Reply {
    let names = match targets_of(p, t) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut lines = Vec::new();
    let now = std::time::Instant::now();
    p.operator_unlocks
        .retain(|_, t| now.duration_since(*t) < super::links::RELEASE_WINDOW);
    // Every named link's reasons first, and their interfaces' holds: with
    // `all`, a link whose interface another one shares is then judged
    // without the reasons this same request clears from that one.
    for n in &names {
        p.operator_unlocks.insert(n.clone(), now);
        p.links.set_parent_reason(n, LockReason::Operator, false);
        p.links.release_manual(n, force);
        if force {
            p.links
                .set_parent_reason(n, LockReason::ProcessFailure, false);
            p.links.set_parent_reason(n, LockReason::PskDrift, false);
            p.links.set_parent_reason(n, LockReason::NoKey, false);
            log::event(Event::UnlockForced).kv("link", n).send();
        }
    }
    (p.links).regroup_all(&names, p.bundle.as_ref(), OpenedBy::Operator);
    for n in &names {
        // `all`: each open waits for the kernel (about 10 ms at 10,000
        // links), so they open a few per turn of the main loop (together,
        // in one transaction on nftables), as a tick's do; inline,
        // `unlock all` at 10,000 links held the loop 137 s, the dead-man
        // switch dropped everything and the engine was declared lost.
        if *t == Target::All && p.links.queue_open(n, OpenedBy::Operator, p.bundle.as_ref()) {
            lines.push(format!("{n}: opening"));
            continue;
        }
        p.links
            .converge(n, p.bundle.as_ref(), OpenedBy::Operator, false);
        let l = &p.links.links[n];
        lines.push(match l.enforcement() {
            crate::lock::Enforcement::Open => format!("{n}: open"),
            _ => format!("{n}: locked ({})", l.reasons()),
        });
    }
    Reply::ok(lines.join("\n"))
}
