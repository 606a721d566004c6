//! One link's key-agreement round (DESIGN §6 "Key agreement"): the master
//! fetches a key with `enc_keys`, OFFERs its key_ID under a fresh epoch,
//! and installs the derived PSK once the slave's CONFIRM tag checks out;
//! the slave fetches the same key with `dec_keys`, installs, CONFIRMs and
//! caches its answer for retransmitted OFFERs.
//!
//! Runs in the engine and is pure, like [`crate::engine::link`]: no
//! sockets, no clock, no KME, no files. The engine feeds [`Input`]s stamped
//! with a monotonic `now`, calls `handle` with [`Input::Tick`] at
//! [`Rotation::next_deadline`], and carries out the returned [`Action`]s
//! **in order**. [`Action::PersistEpoch`] must be durable (fsync) before
//! any later action of the same batch is carried out; if it fails, the
//! caller drops the rest of the batch and feeds [`Input::PersistFailed`].
//! [`Action::InstallPsk`] ends its batch; the parent's answer is fed back
//! as [`Input::Installed`] or [`Input::InstallFailed`], and only then does
//! the slave CONFIRM and either side count the round done.
//! Datagrams arrive here already checked by
//! [`crate::proto::peer::Keyring::open`] (signature, keys, link_id);
//! [`Action::Send`] carries an unsigned [`Message`] the engine signs with
//! the peering key and sends (the slave answers to the datagram's source).
//!
//! Choices where DESIGN §6 is silent:
//! - Retransmits of an OFFER back off 1 s, 2 s, 4 s … 30 s; the round is
//!   abandoned `max(rotate, 30 s)` after its first OFFER. A failed round
//!   (KME error, short key, bad tag, no CONFIRM, persist failure) is retried
//!   after 1 s, 2 s … 30 s with a new key; success returns to the period.
//! - The first round starts at once, or within 10 % of `rotate` when
//!   jittered; later rounds come every `rotate` ± 10 %.
//! - The slave persists an epoch when it accepts the OFFER, before
//!   `dec_keys`: an epoch, hence a key_ID, is never fetched twice, even
//!   across a restart. A `dec_keys` (or install) that fails is not retried
//!   for that OFFER: its retransmits are answered NACK(last), the master
//!   counts the round failed and its backoff brings a new key (keys are
//!   single-use at the KME).
//! - A NACK of the master's own epoch (a slave that accepted the OFFER,
//!   then restarted before it confirmed) fails the round, retried after
//!   the backoff; any other NACK jumps the master's epoch to `last` and
//!   starts a new round at once; the next OFFER uses `last + 1`.
//! - Under a hold (`on_qber = hold`) no OFFER leaves: a key being fetched
//!   when the hold comes is dropped, and a NACK starts no round. An OFFER
//!   already out completes (the slave may have installed it).
//! - The nonce only has to be unique (epochs never repeat anyway): it
//!   comes from the link's seeded generator, like the jitter. A small,
//!   non-cryptographic one (xoshiro, 32 bytes) serves both: ChaCha's 320
//!   bytes a link were 3 MB of a 10,000-link hub's engine.

mod master;
mod round;
mod slave;
#[cfg(test)]
mod tests;

pub use crate::conf::Role;
pub use round::{Action, Input, MAX_BACKOFF, MIN_BACKOFF, MIN_ROUND, Params, Schedule};

use crate::proto::peer::{KeyId, Message};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use round::Ctx;
use std::time::{Duration, Instant};

/// A snapshot for `qkdctl show link` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateStatus {
    pub role: Role,
    /// Master: last epoch used; slave: last epoch accepted.
    pub epoch: u64,
    /// The epoch and key_ID of the PSK this side installed last.
    pub installed: Option<(u64, KeyId)>,
    pub rounds_ok: u64,
    pub rounds_failed: u64,
    pub in_round: bool,
    pub held: bool,
}

enum Side {
    Master(master::Master),
    Slave(slave::Slave),
}

/// One link's key agreement.
pub struct Rotation {
    ctx: Ctx,
    side: Side,
}

impl Rotation {
    /// `epoch`: the persisted epoch (0 if none): for the master the last
    /// one it used, for the slave the last one it accepted.
    pub fn new(
        role: Role,
        params: Params,
        schedule: Schedule,
        epoch: u64,
        now: Instant,
    ) -> Rotation {
        let mut ctx = Ctx {
            params,
            period: schedule.period,
            jitter: schedule.jitter,
            rng: SmallRng::seed_from_u64(schedule.seed),
            now,
            installed_epoch: 0,
            installed_key: None,
            ok: 0,
            failed: 0,
            held: false,
        };
        let side = match role {
            Role::Master => Side::Master(master::Master::new(&mut ctx, epoch)),
            Role::Slave => Side::Slave(slave::Slave::new(epoch)),
        };
        Rotation { ctx, side }
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        // Instants are monotonic; a caller mixing clocks must not rewind us.
        self.ctx.now = now.max(self.ctx.now);
        let mut out = Vec::new();
        if let Input::Received(m) = &input {
            if let Some(why) = self.foreign(m) {
                out.push(Action::AuthFailed { why });
                return out;
            }
        }
        if let Input::Hold(on) = input {
            self.ctx.held = on;
        }
        match &mut self.side {
            Side::Master(m) => m.handle(&mut self.ctx, input, &mut out),
            Side::Slave(s) => s.handle(&mut self.ctx, input, &mut out),
        }
        for a in &out {
            match a {
                Action::RoundDone { epoch, key_id, .. } => {
                    self.ctx.installed_epoch = *epoch;
                    self.ctx.installed_key = Some(key_id.clone());
                    self.ctx.ok = self.ctx.ok.saturating_add(1);
                }
                Action::RoundFailed { .. } => self.ctx.failed = self.ctx.failed.saturating_add(1),
                _ => {}
            }
        }
        out
    }

    /// Defence in depth: `Keyring::open` already routed the datagram here.
    fn foreign(&self, m: &Message) -> Option<&'static str> {
        let p = &self.ctx.params;
        if m.link_id != p.link_id {
            Some("wrong-link")
        } else if m.sender != p.peer {
            Some("wrong-peer")
        } else if m.receiver != p.ours {
            Some("not-for-us")
        } else {
            None
        }
    }

    /// A new `rotate` from the policy; it applies from the next round.
    /// The link id and keys it was made with.
    pub fn params(&self) -> &Params {
        &self.ctx.params
    }

    pub fn set_period(&mut self, period: Duration) {
        self.ctx.period = period;
    }

    /// The epoch [`Rotation::status`] reports, without the rest of it.
    pub fn epoch(&self) -> u64 {
        match &self.side {
            Side::Master(m) => m.epoch(),
            Side::Slave(s) => s.epoch(),
        }
    }

    /// Whether `m` repeats the OFFER of the slave's round that is still
    /// fetching its key or installing it: handed in, it would be ignored
    /// (the CONFIRM leaves once the PSK is installed), so the peer port's
    /// door drops it before its signature is checked. A master retransmits
    /// every second while a hub's slave works through thousands of
    /// `dec_keys`, and each such check cost an Ed25519 verification.
    pub fn repeats_busy_offer(&self, m: &Message) -> bool {
        match &self.side {
            Side::Master(_) => false,
            Side::Slave(s) => s.busy_with(m),
        }
    }

    /// Whether rounds are held ([`Input::Hold`]).
    pub fn held(&self) -> bool {
        self.ctx.held
    }

    /// When the next [`Input::Tick`] is due (None: only inputs matter).
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.side {
            Side::Master(m) => m.next_deadline(&self.ctx),
            Side::Slave(_) => None,
        }
    }

    pub fn status(&self) -> RotateStatus {
        let (role, epoch, in_round) = match &self.side {
            Side::Master(m) => (Role::Master, m.epoch(), m.in_round()),
            Side::Slave(s) => (Role::Slave, s.epoch(), s.in_round()),
        };
        RotateStatus {
            role,
            epoch,
            installed: (self.ctx.installed_key.clone()).map(|k| (self.ctx.installed_epoch, k)),
            rounds_ok: self.ctx.ok.into(),
            rounds_failed: self.ctx.failed.into(),
            in_round,
            held: self.ctx.held,
        }
    }
}
