//! The per-link state machine (DESIGN §6): QBER bands, trips and recovery,
//! and the engine-owned lock reasons `qber`, `source-lost`, `key-stale` and
//! `peer-lost`.
//!
//! Runs in the engine and is pure: no sockets, no clock, no logging. The
//! engine feeds it [`Input`]s stamped with a monotonic `now`, calls
//! `handle` again with [`Input::Tick`] at [`Link::next_deadline`], and carries
//! out the [`Action`]s: [`Action::Report`] goes to the parent (which unions it
//! with the reasons it owns and flips the firewall), [`Action::Hold`] to key
//! rotation, and the rest are events to log.
//!
//! Start-up: a link says nothing about its reasons until it knows something
//! — its first fresh sample, or `qber_timeout` without one — so that a
//! restart neither opens a locked link nor locks an open one; the parent
//! keeps the kernel state meanwhile.

use crate::engine::qber;
use crate::lock::{Band, LockReason, Reasons};
use crate::policy::params::{LinkPolicy, OnQber, UnlockMode};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
mod trailing;

/// `trip_samples` above this is treated as this (policy checks bound it
/// far lower); it caps the sample history a link keeps.
pub const MAX_TRIP_SAMPLES: usize = 256;

/// What the engine tells a link.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A range-checked reading and whether its source's sequence advanced.
    Sample { qber: f64, fresh: bool },
    /// A deadline from [`Link::next_deadline`] has passed (or any time).
    Tick,
    /// The active policy for this link changed (None: no active bundle).
    Policy(Option<Arc<LinkPolicy>>),
    /// `qkdctl unlock [-f] LINK`.
    Unlock { force: bool },
    /// A PSK from a fresh QKD key was installed; this end learned the key
    /// at `fetched` (the master's `enc_keys` answer, the slave's OFFER).
    KeyInstalled { fetched: Instant },
    /// An authenticated round with the far qkdpfd completed.
    PeerRound,
}

/// Who released a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockBy {
    /// The recovery rule, or the input the reason waited for.
    Auto,
    /// `qkdctl unlock` with the recovery condition met.
    Operator,
    /// `qkdctl unlock -f`.
    Forced,
}

impl UnlockBy {
    pub fn as_str(self) -> &'static str {
        match self {
            UnlockBy::Auto => "auto",
            UnlockBy::Operator => "operator",
            UnlockBy::Forced => "forced",
        }
    }
}

/// What the engine must do after an input, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The engine-owned reason set changed (or is known for the first time):
    /// send it to the parent. At most one per `handle`, always last.
    Report(Reasons),
    /// The QBER band changed (`from` is None for the first reading).
    Band {
        from: Option<Band>,
        to: Band,
        qber: f64,
    },
    /// A reason was set.
    Lock {
        reason: LockReason,
        qber: Option<f64>,
        threshold: Option<f64>,
    },
    /// A reason was cleared.
    Unlock { reason: LockReason, by: UnlockBy },
    /// `on_qber = "alert"` tripped: log only.
    Alert { qber: f64, threshold: f64 },
    /// `on_qber = "hold"`: stop (on) or resume (off) key rotation.
    Hold { on: bool },
    /// `qkdctl unlock` asked for a release the recovery rule does not allow.
    UnlockRefused { why: &'static str },
}

/// A snapshot for `qkdctl status` and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkStatus {
    pub name: String,
    pub band: Option<Band>,
    /// Last fresh reading.
    pub qber: Option<f64>,
    pub reasons: Reasons,
    /// Trips since start (any `on_qber` action).
    pub trips: u64,
    /// Consecutive fresh samples at or above `qber_lockdown`.
    pub over_threshold: u32,
    /// The action of a trip not yet recovered or released.
    pub tripped: Option<OnQber>,
    /// A trip is held and `qkdctl unlock` would release it now.
    pub releasable: bool,
    /// How long QBER has been below `recover_below`.
    pub below_for: Option<Duration>,
    /// Since the last fresh sample (or since start / a forced unlock).
    pub since_sample: Duration,
    /// The link has reported its reasons at least once.
    pub reporting: bool,
}

/// One protected link.
#[derive(Clone, Debug)]
pub struct Link {
    /// Shared with the engine's other records of the link.
    name: Arc<str>,
    /// Shared with the links whose policy is the same ([`super::policy`]).
    policy: Option<Arc<LinkPolicy>>,
    /// Key agreement runs on this link: key-stale, peer-lost and the
    /// fresh-key recovery condition apply.
    keys: bool,
    reasons: Reasons,
    /// What the parent was last told; None until the first determination.
    reported: Option<Reasons>,
    determined: bool,
    trip: Option<OnQber>,
    trips: u64,
    /// Last fresh readings, as much as a trip needs of them.
    history: trailing::Trailing,
    qber: Option<f64>,
    band: Option<Band>,
    /// Start of the current run of fresh samples below `recover_below`.
    below_since: Option<Instant>,
    key_since_below: bool,
    last_sample: Instant,
    last_key: Instant,
    /// How old the installed key already was at `last_key` (a key installed
    /// before a restart: [`Link::key_aged`]); zero once a key is installed.
    key_age_then: Duration,
    last_peer: Instant,
    now: Instant,
}

impl Link {
    /// `persisted`: reasons from the state file; only `qber` is the
    /// engine's, and it starts the link locked under the usual recovery rules.
    pub fn new(
        name: impl Into<Arc<str>>,
        policy: Option<Arc<LinkPolicy>>,
        keys: bool,
        persisted: Reasons,
        now: Instant,
    ) -> Link {
        let qber_held = persisted.contains(LockReason::Qber);
        let mut reasons = Reasons::EMPTY;
        if qber_held {
            reasons.insert(LockReason::Qber);
        }
        // Until an authenticated round shows the peer is back.
        if keys && persisted.contains(LockReason::PeerLost) {
            reasons.insert(LockReason::PeerLost);
        }
        Link {
            name: name.into(),
            policy,
            keys,
            reasons,
            reported: None,
            determined: false,
            trip: qber_held.then_some(OnQber::Lockdown),
            trips: 0,
            history: trailing::Trailing::new(),
            qber: None,
            band: None,
            below_since: None,
            key_since_below: false,
            last_sample: now,
            last_key: now,
            key_age_then: Duration::ZERO,
            last_peer: now,
            now,
        }
    }

    /// The installed key was installed `age` before now (by the process
    /// before a restart, as the state file says): `key-stale` comes when it
    /// is `max_key_age` old, not `max_key_age` after this start.
    pub fn key_aged(&mut self, age: Duration) {
        self.key_age_then = age;
    }

    /// How long the key may still serve after `last_key`.
    fn key_left(&self, max_key_age: Duration) -> Duration {
        max_key_age.saturating_sub(self.key_age_then)
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        // Instants are monotonic; a caller mixing clocks must not rewind us.
        let now = now.max(self.now);
        self.now = now;
        let mut out = Vec::new();
        // A sample's timers run before it: one that ends a gap longer than
        // qber_timeout (an engine that stalled, the deadline and the
        // reading in one turn) must not hide it, the gap is no part of
        // "continuously below"; and it moves no other timer, so they need
        // no second look after it. Every other input's run after it: a key
        // or a round that comes as its timer expires clears that timer,
        // never sets its lock first.
        let sample = matches!(input, Input::Sample { .. });
        if sample {
            self.check_timers(now, &mut out);
        }
        match input {
            Input::Sample { qber, fresh } => self.on_sample(now, qber, fresh, &mut out),
            Input::Tick => {}
            Input::Policy(p) => self.on_policy(p, &mut out),
            Input::Unlock { force: false } => self.on_unlock(now, &mut out),
            Input::Unlock { force: true } => self.on_forced_unlock(now, &mut out),
            Input::KeyInstalled { fetched } => self.on_key(now, fetched, &mut out),
            Input::PeerRound => self.on_peer(now, &mut out),
        }
        if !sample {
            self.check_timers(now, &mut out);
        }
        self.check_recovery(now, &mut out);
        self.report(&mut out);
        out
    }

    /// Whether the link's QBER is known: a fresh reading came, its source
    /// was found lost, or an operator's forced unlock set a baseline.
    pub fn determined(&self) -> bool {
        self.determined
    }

    /// The action of a trip not yet recovered or released.
    pub fn tripped(&self) -> Option<OnQber> {
        self.trip
    }

    /// Engine-owned reasons only.
    pub fn reasons(&self) -> Reasons {
        self.reasons
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> Option<&LinkPolicy> {
        self.policy.as_deref()
    }

    /// When the next [`Input::Tick`] is due; always later than the last `now`.
    pub fn next_deadline(&self) -> Option<Instant> {
        let p = self.policy.as_ref()?;
        let mut due = Vec::with_capacity(4);
        if !self.reasons.contains(LockReason::SourceLost) {
            due.push(self.last_sample.checked_add(p.qber_timeout));
        }
        if self.keys && !self.reasons.contains(LockReason::KeyStale) {
            due.push(self.last_key.checked_add(self.key_left(p.max_key_age)));
        }
        if self.peer_watched() && !self.reasons.contains(LockReason::PeerLost) {
            due.push(self.last_peer.checked_add(p.peer_timeout));
        }
        if self.auto_recovers() {
            let end = self
                .below_since
                .and_then(|s| s.checked_add(p.recover_after));
            // Past its end the window waits for a key, which arrives as an input.
            due.push(end.filter(|e| *e > self.now));
        }
        due.into_iter().flatten().min()
    }

    pub fn status(&self, now: Instant) -> LinkStatus {
        let now = now.max(self.now);
        LinkStatus {
            name: self.name.to_string(),
            band: self.band,
            qber: self.qber,
            reasons: self.reasons,
            trips: self.trips,
            over_threshold: self.over_threshold(),
            tripped: self.trip,
            releasable: matches!(self.trip, Some(OnQber::Lockdown | OnQber::Hold))
                && self.recovery_blocker(now).is_none(),
            below_for: self.below_since.map(|s| now.duration_since(s)),
            since_sample: now.duration_since(self.last_sample),
            reporting: self.determined,
        }
    }

    fn on_sample(&mut self, now: Instant, q: f64, fresh: bool, out: &mut Vec<Action>) {
        // A stale or out-of-range reading is no evidence of anything: it
        // neither counts towards a trip nor keeps source-lost away.
        if !fresh || qber::validate(q).is_err() {
            return;
        }
        self.determined = true;
        self.last_sample = now;
        self.qber = Some(q);
        self.history.push(q);
        self.update_band(out);
        self.clear(LockReason::SourceLost, UnlockBy::Auto, out);
        self.track_below(now, q);
        self.check_trip(out);
    }

    fn on_policy(&mut self, p: Option<Arc<LinkPolicy>>, out: &mut Vec<Action>) {
        if p == self.policy {
            return;
        }
        self.policy = p;
        // Old evidence was measured against other numbers: start over.
        self.below_since = None;
        self.update_band(out);
        let Some(on_qber) = self.policy.as_ref().map(|p| p.on_qber) else {
            // Without a policy there are no timeouts; the parent holds
            // no-policy. A qber trip stays: a bundle gap must not open it.
            for r in [
                LockReason::SourceLost,
                LockReason::KeyStale,
                LockReason::PeerLost,
            ] {
                self.clear(r, UnlockBy::Auto, out);
            }
            return;
        };
        // A hold or alert latch must not hide a trip the new action would
        // take (say alert -> lockdown while QBER is high); a lockdown stays.
        if self
            .trip
            .is_some_and(|t| t != OnQber::Lockdown && t != on_qber)
        {
            self.release_trip(UnlockBy::Auto, out);
        }
        self.check_trip(out);
    }

    fn on_unlock(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.check_recovery(now, out);
        match self.trip {
            None | Some(OnQber::Alert) => {}
            Some(_) => match self.recovery_blocker(now) {
                Some(why) => out.push(Action::UnlockRefused { why }),
                None => self.release_trip(UnlockBy::Operator, out),
            },
        }
    }

    fn on_forced_unlock(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.release_trip(UnlockBy::Forced, out);
        for r in self.reasons.iter() {
            self.clear(r, UnlockBy::Forced, out);
        }
        // Every timer and count restarts: the operator's word is the new
        // baseline, and a still-high QBER must trip afresh.
        self.history.clear();
        self.below_since = None;
        self.last_sample = now;
        self.last_key = now;
        self.key_age_then = Duration::ZERO;
        self.last_peer = now;
        self.determined = true;
    }

    fn on_key(&mut self, now: Instant, fetched: Instant, out: &mut Vec<Action>) {
        self.last_key = now;
        self.key_age_then = Duration::ZERO;
        // Only a key learned after the QBER came down: an OFFER of a key
        // fetched during the incident, held back on the path and let
        // through after, installs now but is no post-incident key.
        if self.below_since.is_some_and(|since| fetched >= since) {
            self.key_since_below = true;
        }
        self.clear(LockReason::KeyStale, UnlockBy::Auto, out);
    }

    fn on_peer(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.last_peer = now;
        self.clear(LockReason::PeerLost, UnlockBy::Auto, out);
    }

    fn update_band(&mut self, out: &mut Vec<Action>) {
        let Some(q) = self.qber else { return };
        let to = Band::of(q, &self.band_edges());
        if self.band != Some(to) {
            out.push(Action::Band {
                from: self.band,
                to,
                qber: q,
            });
            self.band = Some(to);
        }
    }

    /// Without a policy the band is still shown, with the HIP-71 edges.
    fn band_edges(&self) -> [f64; 4] {
        match &self.policy {
            Some(p) => p.bands,
            None => LinkPolicy::default().bands,
        }
    }

    fn track_below(&mut self, now: Instant, q: f64) {
        let below = self.policy.as_ref().is_some_and(|p| q < p.recover_below);
        if !below {
            self.below_since = None;
        } else if self.below_since.is_none() {
            self.below_since = Some(now);
            self.key_since_below = false;
        }
    }

    fn trip_samples(&self) -> usize {
        self.policy
            .as_ref()
            .map_or(1, |p| (p.trip_samples as usize).clamp(1, MAX_TRIP_SAMPLES))
    }

    fn over_threshold(&self) -> u32 {
        let Some(p) = &self.policy else { return 0 };
        self.history.at_or_above(p.qber_lockdown) as u32
    }

    fn check_trip(&mut self, out: &mut Vec<Action>) {
        let Some(p) = &self.policy else { return };
        if self.trip.is_some() || (self.over_threshold() as usize) < self.trip_samples() {
            return;
        }
        let (kind, threshold) = (p.on_qber, p.qber_lockdown);
        let q = self.qber.unwrap_or(threshold);
        self.trips += 1;
        self.trip = Some(kind);
        self.below_since = None;
        match kind {
            OnQber::Lockdown => self.set(LockReason::Qber, Some(q), Some(threshold), out),
            OnQber::Hold => out.push(Action::Hold { on: true }),
            OnQber::Alert => out.push(Action::Alert { qber: q, threshold }),
        }
    }

    /// Whether the recovery rule may release the current trip by itself.
    fn auto_recovers(&self) -> bool {
        match (self.trip, &self.policy) {
            (Some(OnQber::Alert), Some(_)) => true,
            (Some(_), Some(p)) => p.unlock == UnlockMode::Auto,
            _ => false,
        }
    }

    /// None when the recovery condition holds now; otherwise why not.
    fn recovery_blocker(&self, now: Instant) -> Option<&'static str> {
        let Some(p) = &self.policy else {
            return Some("no active policy");
        };
        if self.reasons.contains(LockReason::SourceLost) {
            return Some("the QBER source is lost");
        }
        let Some(since) = self.below_since else {
            return Some("QBER is not below recover_below");
        };
        if since
            .checked_add(p.recover_after)
            .is_none_or(|end| now < end)
        {
            return Some("QBER has not stayed below recover_below for recover_after");
        }
        // Hold stops rotation and alert changes nothing: only a lockdown
        // waits for a key distilled after the QBER came down.
        if self.keys && self.trip == Some(OnQber::Lockdown) && !self.key_since_below {
            return Some("no key installed since QBER recovered");
        }
        None
    }

    fn check_recovery(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.auto_recovers() && self.recovery_blocker(now).is_none() {
            self.release_trip(UnlockBy::Auto, out);
        }
    }

    fn release_trip(&mut self, by: UnlockBy, out: &mut Vec<Action>) {
        match self.trip.take() {
            Some(OnQber::Lockdown) => self.clear(LockReason::Qber, by, out),
            Some(OnQber::Hold) => {
                // No round was due while held: the peer's silence counts
                // from here.
                self.last_peer = self.now;
                out.push(Action::Hold { on: false })
            }
            Some(OnQber::Alert) | None => {}
        }
    }

    /// A hold stops the rounds at both ends: the peer's silence then is
    /// ours, not a lost peer.
    fn peer_watched(&self) -> bool {
        self.keys && self.trip != Some(OnQber::Hold)
    }

    fn check_timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(p) = &self.policy else { return };
        let (qt, ka, pt) = (p.qber_timeout, self.key_left(p.max_key_age), p.peer_timeout);
        if expired(self.last_sample, qt, now) {
            // A silent source is not "continuously below" either.
            self.below_since = None;
            self.determined = true;
            self.set(LockReason::SourceLost, None, None, out);
        }
        if self.keys && expired(self.last_key, ka, now) {
            self.set(LockReason::KeyStale, None, None, out);
        }
        if self.peer_watched() && expired(self.last_peer, pt, now) {
            self.set(LockReason::PeerLost, None, None, out);
        }
    }

    fn set(&mut self, r: LockReason, q: Option<f64>, t: Option<f64>, out: &mut Vec<Action>) {
        if self.reasons.insert(r) {
            out.push(Action::Lock {
                reason: r,
                qber: q,
                threshold: t,
            });
        }
    }

    fn clear(&mut self, r: LockReason, by: UnlockBy, out: &mut Vec<Action>) {
        if r == LockReason::Qber {
            self.trip = None;
        }
        if self.reasons.remove(r) {
            out.push(Action::Unlock { reason: r, by });
        }
    }

    fn report(&mut self, out: &mut Vec<Action>) {
        if self.determined && self.reported != Some(self.reasons) {
            self.reported = Some(self.reasons);
            out.push(Action::Report(self.reasons));
        }
    }
}

fn expired(since: Instant, after: Duration, now: Instant) -> bool {
    since.checked_add(after).is_some_and(|end| now >= end)
}
