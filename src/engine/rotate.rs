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
//!   across a restart. A `dec_keys` that fails is not retried for that
//!   OFFER (retransmits are ignored); the master's round times out and
//!   the next round brings a new key. Keys are single-use at the KME.
//! - A NACK jumps the master's epoch to `last` and starts a new round at
//!   once; the next OFFER uses `last + 1`.
//! - The nonce only has to be unique (epochs never repeat anyway): it
//!   comes from the link's seeded generator, like the jitter.

mod master;
mod slave;
#[cfg(test)]
mod tests;

use crate::proto::peer::{KeyId, LinkId, Message, PeerKey};
use crate::secret::{Psk, QkdKey};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::{Duration, Instant};

pub use crate::conf::Role;

/// First retransmit / retry delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A round is given up this long after its first OFFER at the least.
pub const MIN_ROUND: Duration = Duration::from_secs(30);

/// What both ends agreed on for the link: link_id and the two peering keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub link_id: LinkId,
    /// Our Ed25519 peering public key.
    pub ours: PeerKey,
    /// The far qkdpfd's peering public key (`peer_pubkey`).
    pub peer: PeerKey,
}

/// Timing of rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// `rotate` from the policy.
    pub period: Duration,
    /// ± 10 % on every period (off only for benchmarks).
    pub jitter: bool,
    /// Seeds jitter and nonces (the engine draws it from the OS).
    pub seed: u64,
}

/// What the engine tells a link's rotation.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A deadline from [`Rotation::next_deadline`] has passed (or any time).
    Tick,
    /// `qkdctl rotate LINK|all`: start a round now (master only).
    RotateNow,
    /// The KME answered the last [`Action::FetchEncKey`] / [`Action::FetchDecKey`].
    KeyReady { key_id: KeyId, key: QkdKey },
    /// The KME call failed (`key_id` is the one asked for with `dec_keys`).
    KeyFailed { key_id: Option<KeyId>, why: String },
    /// A datagram for this link that passed `Keyring::open`.
    Received(Message),
    /// [`Action::PersistEpoch`] could not be made durable.
    PersistFailed { epoch: u64, why: String },
    /// The parent installed and read back the PSK of [`Action::InstallPsk`].
    Installed { epoch: u64 },
    /// The parent could not install it (the previous PSK stays).
    InstallFailed { epoch: u64, why: String },
    /// `on_qber = "hold"` stopped (true) or resumed (false) rotation.
    Hold(bool),
}

/// What the engine must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write the epoch to the state file (fsync) before going on.
    PersistEpoch(u64),
    /// Master: `enc_keys` for one 256-bit key.
    FetchEncKey,
    /// Slave: `dec_keys` for this key_ID.
    FetchDecKey { key_id: KeyId },
    /// Sign with the peering key and send to the peer.
    Send(Message),
    /// Give the PSK to the parent to install on the WireGuard peer; always
    /// the last action of its batch. The answer comes back as
    /// [`Input::Installed`] or [`Input::InstallFailed`]: the slave CONFIRMs
    /// only a PSK that is in the kernel.
    InstallPsk { epoch: u64, psk: Psk },
    /// The round completed (log `key_rotated`; the link gets KeyInstalled).
    RoundDone { epoch: u64, key_id: KeyId },
    /// The round failed; the previous PSK stays (log `key_rotation_failed`).
    RoundFailed { why: String },
    /// An authenticated, fresh exchange with the peer (feeds peer-lost).
    PeerRound,
    /// A datagram was dropped (log `peer_auth_failed`, rate-limited).
    AuthFailed { why: &'static str },
    /// An input that changes nothing (log at debug level at most).
    Ignored { why: &'static str },
}

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

/// What both roles share.
struct Ctx {
    params: Params,
    schedule: Schedule,
    rng: StdRng,
    now: Instant,
    installed: Option<(u64, KeyId)>,
    ok: u64,
    failed: u64,
    held: bool,
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
            schedule,
            rng: StdRng::seed_from_u64(schedule.seed),
            now,
            installed: None,
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
                Action::RoundDone { epoch, key_id } => {
                    self.ctx.installed = Some((*epoch, key_id.clone()));
                    self.ctx.ok += 1;
                }
                Action::RoundFailed { .. } => self.ctx.failed += 1,
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
    pub fn set_period(&mut self, period: Duration) {
        self.ctx.schedule.period = period;
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
            installed: self.ctx.installed.clone(),
            rounds_ok: self.ctx.ok,
            rounds_failed: self.ctx.failed,
            in_round,
            held: self.ctx.held,
        }
    }
}

impl Ctx {
    /// The n-th delay (from 0) of 1 s, 2 s, 4 s … capped at 30 s.
    fn backoff(n: u32) -> Duration {
        MIN_BACKOFF
            .checked_mul(1u32 << n.min(16))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }

    /// `period` ± 10 % (or exactly, with jitter off).
    fn jittered(&mut self, period: Duration) -> Duration {
        if !self.schedule.jitter {
            return period;
        }
        let f: f64 = rand::Rng::gen_range(&mut self.rng, -0.1..=0.1);
        period.mul_f64(1.0 + f)
    }

    fn nonce(&mut self) -> [u8; 16] {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut self.rng, &mut n);
        n
    }

    fn message(
        &self,
        epoch: u64,
        nonce: [u8; 16],
        key_id: KeyId,
        body: crate::proto::peer::Body,
    ) -> Message {
        Message {
            link_id: self.params.link_id,
            sender: self.params.ours,
            receiver: self.params.peer,
            epoch,
            nonce,
            key_id,
            body,
        }
    }
}
