//! What the engine reports on its own: a link's engine-owned lock reasons
//! (`Reasons`) and its log records (`Log`). Each is checked against the
//! parent's config first; an impossible one is the engine's failure (the
//! caller locks every link and exits).

use super::Parent;
use super::changed::Changed;
use super::keys;
use super::links::OpenedBy;
use crate::imsg::{self, LinkReasons, LogRecord, SourceLost};
use crate::lock::{LockReason, Owner};
use crate::log::{self, Event, Prio};
use std::time::Instant;

/// Every link of a QBER section lost its source at once: locked together
/// (one transaction where the firewall can), before their own reasons
/// arrive. A section that feeds no link is the engine's failure.
pub(super) fn source_lost(p: &mut Parent, s: SourceLost) -> Result<Changed, String> {
    let feeds = p.links.targets().iter().any(|t| *t.qber == *s.source);
    if !feeds {
        return Err(format!(
            "source_lost for a section with no link {:?}",
            s.source
        ));
    }
    let changed = p
        .links
        .lock_source(&s.source, Some(s.found_ns), p.bundle.as_ref());
    let mut out = Changed::none();
    for (name, _) in changed {
        out.state(&name);
    }
    Ok(out)
}

/// A link's engine-owned reasons: the link converges on them, and a newly
/// reported `key-stale` randomizes its PSK. Only this link's state is sent.
pub(super) fn reasons(p: &mut Parent, r: LinkReasons) -> Result<Changed, String> {
    if !p.links.links.contains_key(&r.link) {
        return Err(format!("reasons for unknown link {:?}", r.link));
    }
    if r.reasons.iter().any(|x| x.owner() != Owner::Engine) {
        return Err(format!("engine claimed parent-owned reasons {}", r.reasons));
    }
    if r.qber.is_some_and(|q| !(0.0..=0.5).contains(&q))
        || r.threshold.is_some_and(|t| !(0.0..=0.5).contains(&t))
    {
        return Err("qber out of range".into());
    }
    let was_stale = p.links.links[&r.link]
        .engine
        .is_some_and(|e| e.contains(LockReason::KeyStale));
    let newly_stale = r.reasons.contains(LockReason::KeyStale) && !was_stale;
    p.links
        .set_engine_reasons(&r.link, r.reasons, r.qber, r.threshold);
    let ran = p.operator_unlocks.get(&r.link).copied();
    let by = opened_by(r.by_operator, ran, Instant::now());
    p.links.committed_ns = None;
    let flipped = p.links.converge(&r.link, p.bundle.as_ref(), by, false);
    if let (Some(to), Some(t0)) = (flipped, r.sampled_ns) {
        // Sample received by the engine -> the kernel committed the flip,
        // and -> read back and persisted.
        // The firewall call's own time is the kernel's share (and, on a
        // slow path, the tool's).
        let done = imsg::monotonic_ns();
        let (start, commit) = p.links.committed_ns.unwrap_or((done, done));
        log::event(Event::Flip)
            .kv("link", &r.link)
            .kv("to", to)
            .kv("commit_us", commit.saturating_sub(start) / 1000)
            .kv("sample_to_commit_us", commit.saturating_sub(t0) / 1000)
            .kv("sample_to_kernel_us", done.saturating_sub(t0) / 1000)
            .send();
    }
    // The firewall first (it stops traffic now), then the PSK.
    if newly_stale {
        keys::key_stale(p, &r.link);
    }
    if p.reapply_on_report.remove(&r.link) {
        p.reapply.push_back(r.link.clone());
    }
    // Only this link changed: all states per report made start-up
    // with 1,000 links queue a million messages (BENCHMARKS.md).
    let mut out = Changed::none();
    out.state(&r.link);
    Ok(out)
}

/// Who opened a link the engine's report releases: the operator only if
/// the engine says so and the parent ran an unlock for it just before
/// (`ran`): the audit trail is the parent's record, not the engine's word.
fn opened_by(engine_says_operator: bool, ran: Option<Instant>, now: Instant) -> OpenedBy {
    let lately = ran.is_some_and(|t| now.duration_since(t) < super::links::RELEASE_WINDOW);
    match engine_says_operator && lately {
        true => OpenedBy::Operator,
        false => OpenedBy::Auto,
    }
}

/// One of the engine's log lines, logged by the parent (the engine has no
/// syslog in its chroot).
pub(super) fn log_record(rec: LogRecord) -> Result<Changed, String> {
    let prio = Prio::from_u8(rec.prio).ok_or("bad log priority")?;
    if rec.line.len() > 4096 {
        return Err("oversized log record".into());
    }
    log::emit(prio, &log::from_engine(&rec.line));
    Ok(Changed::none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unlock_the_parent_ran_is_the_operators() {
        let t0 = Instant::now();
        let said = |says, ran, now| matches!(opened_by(says, ran, now), OpenedBy::Operator);
        assert!(said(
            true,
            Some(t0),
            t0 + std::time::Duration::from_millis(10)
        ));
        assert!(!said(true, None, t0), "the engine's word alone");
        assert!(!said(false, Some(t0), t0), "the engine's own release");
        let late = t0 + crate::parent::links::RELEASE_WINDOW;
        assert!(!said(true, Some(t0), late), "an unlock long before");
    }
}
