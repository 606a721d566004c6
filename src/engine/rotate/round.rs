//! The vocabulary of one link's key-agreement round, shared by the
//! [`Rotation`](super::Rotation) and its two roles (`master.rs`,
//! `slave.rs`): the engine's [`Input`]s and the [`Action`]s it carries
//! out, the link's [`Params`] and [`Schedule`], and the context ([`Ctx`])
//! each role's step runs with. Pure, like the rest of the rotation.

use crate::proto::peer::{KeyId, LinkId, Message, PeerKey};
use crate::secret::{Psk, QkdKey};
use rand::rngs::SmallRng;
use std::time::{Duration, Instant};

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
    /// A deadline from
    /// [`Rotation::next_deadline`](super::Rotation::next_deadline) has
    /// passed (or any time).
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
    RoundDone {
        epoch: u64,
        key_id: KeyId,
        /// When this end learned the key: the master's `enc_keys` answer,
        /// the slave's acceptance of the OFFER. A QBER recovery counts
        /// only a key learned after the QBER came down.
        fetched: Instant,
    },
    /// The round failed; the previous PSK stays (log `key_rotation_failed`).
    RoundFailed { why: String },
    /// An authenticated, fresh exchange with the peer (feeds peer-lost).
    PeerRound,
    /// A datagram was dropped (log `peer_auth_failed`, rate-limited).
    AuthFailed { why: &'static str },
    /// An input that changes nothing (log at debug level at most).
    Ignored { why: &'static str },
}

/// What both roles share. Every keyed link has one: the schedule is kept
/// without the seed the generator was made from, the last install as its
/// key_ID (align 1) beside its epoch, the counters in 32 bits (a round a
/// second for 136 years).
pub(super) struct Ctx {
    pub(super) params: Params,
    pub(super) period: Duration,
    pub(super) jitter: bool,
    pub(super) rng: SmallRng,
    pub(super) now: Instant,
    /// The epoch and key_ID of the PSK this side installed last.
    pub(super) installed_epoch: u64,
    pub(super) installed_key: Option<KeyId>,
    pub(super) ok: u32,
    pub(super) failed: u32,
    pub(super) held: bool,
}

impl Ctx {
    /// The n-th delay (from 0) of 1 s, 2 s, 4 s … capped at 30 s.
    pub(super) fn backoff(n: u32) -> Duration {
        MIN_BACKOFF
            .checked_mul(1u32 << n.min(16))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }

    /// `period` ± 10 % (or exactly, with jitter off), never below the
    /// policy's least period (WireGuard's 120 s rekey, which the policy's
    /// minimum is about): `rotate = "120s"` jitters upwards only.
    pub(super) fn jittered(&mut self, period: Duration) -> Duration {
        if !self.jitter {
            return period;
        }
        let f: f64 = rand::Rng::gen_range(&mut self.rng, -0.1..=0.1);
        let floor = period.min(crate::policy::document::MIN_ROTATE);
        period.mul_f64(1.0 + f).max(floor)
    }

    pub(super) fn nonce(&mut self) -> [u8; 16] {
        let mut n = [0u8; 16];
        rand::RngCore::fill_bytes(&mut self.rng, &mut n);
        n
    }

    pub(super) fn message(
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
