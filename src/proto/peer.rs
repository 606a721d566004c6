//! The peer protocol between two qkdpfds (DESIGN §6 "Key agreement"):
//! OFFER / CONFIRM / NACK datagrams, their Ed25519 signatures, and the
//! checks every received datagram passes before the engine looks at it.
//! Pure code, run by the engine (the UDP glue and the per-link round in
//! [`crate::engine::rotate`] are elsewhere); it touches no socket or file.
//!
//! # Wire format, version 1 (all integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"QKDP"` |
//! | 4 | 1 | version = 1 |
//! | 5 | 1 | type: OFFER = 1, CONFIRM = 2, NACK = 3 |
//! | 6 | 32 | link_id |
//! | 38 | 32 | sender's Ed25519 peering public key |
//! | 70 | 32 | receiver's Ed25519 peering public key |
//! | 102 | 8 | epoch (u64) |
//! | 110 | 16 | nonce (the OFFER's; CONFIRM and NACK echo it) |
//! | 126 | 1 | key_ID length n, 1..=64 |
//! | 127 | n | key_ID, `[A-Za-z0-9-]` |
//! | 127+n | 0/32/8 | body: OFFER none, CONFIRM tag\[32\], NACK last epoch (u64) |
//! | end-64 | 64 | Ed25519 signature |
//!
//! The signature (checked with `verify_strict`) covers
//! `"qkdpfd-peer-v1\0" ‖ bytes[5 .. end-64]`, that is `type ‖ link_id ‖
//! sender key ‖ receiver key ‖ epoch ‖ nonce ‖ n ‖ key_ID ‖ body`: the
//! DESIGN's list with the key_ID's length byte kept in, as on the wire. The
//! context string keeps these signatures from ever verifying as a signify
//! bundle signature or anything else made with the same key.
//!
//! A NACK answers an OFFER: it echoes the OFFER's epoch, nonce and key_ID
//! so the master can tell it is about its current round.

mod crypto;
mod error;
mod ids;

pub use crypto::{
    ConfirmKey, KDF_INFO, MIN_QKD_KEY, TAG_LABEL, check_tag, confirm_tag, derive, link_id,
};
pub use error::WireError;
pub use ids::{ByLink, KeyId, LinkId, MAX_KEY_ID, Nonce, PeerKey, hex};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use std::collections::HashMap;

pub const MAGIC: &[u8; 4] = b"QKDP";
pub const VERSION: u8 = 1;
/// Domain separation for the peer signatures.
pub const SIG_CONTEXT: &[u8] = b"qkdpfd-peer-v1\0";
/// Bytes before the key_ID.
const HEADER: usize = 127;
const SIG: usize = 64;
/// The largest valid datagram (a CONFIRM with a 64-byte key_ID): 287.
pub const MAX_DATAGRAM: usize = HEADER + MAX_KEY_ID + 32 + SIG;

/// The type-specific part of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Offer,
    Confirm { tag: [u8; 32] },
    Nack { last: u64 },
}

impl Body {
    pub fn type_byte(&self) -> u8 {
        match self {
            Body::Offer => 1,
            Body::Confirm { .. } => 2,
            Body::Nack { .. } => 3,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Body::Offer => "offer",
            Body::Confirm { .. } => "confirm",
            Body::Nack { .. } => "nack",
        }
    }

    fn len_for(t: u8) -> Option<usize> {
        match t {
            1 => Some(0),
            2 => Some(32),
            3 => Some(8),
            _ => None,
        }
    }
}

/// One datagram, before signing or after every check passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub link_id: LinkId,
    pub sender: PeerKey,
    pub receiver: PeerKey,
    pub epoch: u64,
    pub nonce: Nonce,
    pub key_id: KeyId,
    pub body: Body,
}

impl Message {
    /// The bytes the signature covers, after [`SIG_CONTEXT`].
    fn put_signed(&self, out: &mut Vec<u8>) {
        out.push(self.body.type_byte());
        out.extend_from_slice(&self.link_id.0);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.receiver);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.push(self.key_id.len() as u8);
        out.extend_from_slice(self.key_id.as_bytes());
        match self.body {
            Body::Offer => {}
            Body::Confirm { tag } => out.extend_from_slice(&tag),
            Body::Nack { last } => out.extend_from_slice(&last.to_be_bytes()),
        }
    }

    /// Encodes and signs with `key`, which should be the key `sender`
    /// names (a different one makes the far end drop it: BadSignature).
    pub fn encode(&self, key: &SigningKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_DATAGRAM);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        self.put_signed(&mut out);
        let sig = key.sign(&signed_message(&out[5..]));
        out.extend_from_slice(&sig.to_bytes());
        out
    }
}

fn signed_message(covered: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_CONTEXT.len() + covered.len());
    m.extend_from_slice(SIG_CONTEXT);
    m.extend_from_slice(covered);
    m
}

/// Parses a datagram's structure without checking keys or the signature.
/// Returns the message and the signature.
pub fn parse(buf: &[u8]) -> Result<(Message, Signature), WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::Oversize);
    }
    if buf.len() < 6 {
        return Err(WireError::Truncated);
    }
    if &buf[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(WireError::BadVersion);
    }
    let body_len = Body::len_for(buf[5]).ok_or(WireError::BadType)?;
    if buf.len() < HEADER {
        return Err(WireError::Truncated);
    }
    let n = buf[HEADER - 1] as usize;
    if n == 0 || n > MAX_KEY_ID {
        return Err(WireError::KeyIdLength);
    }
    let want = HEADER + n + body_len + SIG;
    if buf.len() < want {
        return Err(WireError::Truncated);
    }
    if buf.len() > want {
        return Err(WireError::TrailingBytes);
    }
    let key_id = KeyId::from_bytes(&buf[HEADER..HEADER + n])?;
    let b = &buf[HEADER + n..HEADER + n + body_len];
    let body = match buf[5] {
        1 => Body::Offer,
        2 => Body::Confirm {
            tag: b.try_into().expect("32"),
        },
        _ => Body::Nack {
            last: u64::from_be_bytes(b.try_into().expect("8")),
        },
    };
    let arr32 = |o: usize| -> [u8; 32] { buf[o..o + 32].try_into().expect("32") };
    let m = Message {
        link_id: LinkId(arr32(6)),
        sender: arr32(38),
        receiver: arr32(70),
        epoch: u64::from_be_bytes(buf[102..110].try_into().expect("8")),
        nonce: buf[110..126].try_into().expect("16"),
        key_id,
        body,
    };
    let sig = Signature::from_bytes(&buf[want - SIG..].try_into().expect("64"));
    Ok((m, sig))
}

/// Who may talk to us about what: our own peering key and, per link_id,
/// the far qkdpfd's key.
#[derive(Clone, Debug)]
pub struct Keyring {
    ours: PeerKey,
    /// Each link's far key, as its place in `peers`: a hub's links mostly
    /// share one far key, kept once (a decompressed key is 192 bytes, its
    /// bytes 32 where the place is 4, at 10,000 links 0.4 MB).
    links: ByLink<u32>,
    peers: Vec<VerifyingKey>,
    /// The place of each far key in `peers`, by its bytes.
    by_key: HashMap<PeerKey, u32>,
}

impl Keyring {
    pub fn new(ours: &VerifyingKey) -> Keyring {
        Keyring {
            ours: ours.to_bytes(),
            links: ByLink::default(),
            peers: Vec::new(),
            by_key: HashMap::new(),
        }
    }

    /// Room for `n` more links, exactly.
    pub fn reserve_links(&mut self, n: usize) {
        self.links.reserve_exact(n);
    }

    /// Admits `link_id`'s datagrams signed by `peer`. Links added in id
    /// order are added at the end of the map, without a search.
    pub fn add_link(&mut self, link_id: LinkId, peer: VerifyingKey) {
        let peers = &mut self.peers;
        let place = *self.by_key.entry(peer.to_bytes()).or_insert_with(|| {
            peers.push(peer);
            u32::try_from(peers.len() - 1).expect("fewer far keys than links")
        });
        self.links.insert(link_id, place);
    }

    pub fn ours(&self) -> &PeerKey {
        &self.ours
    }

    /// Every check of a received datagram, cheapest first; the signature
    /// is verified last, only for a known sender on its own link.
    pub fn open(&self, buf: &[u8]) -> Result<Message, WireError> {
        self.check(buf)?.verify()
    }

    /// Every check but the signature: structure, receiver, sender, link.
    /// The engine adds its own (source address, epoch, budgets) before it
    /// spends an Ed25519 verification on [`Unverified::verify`], so a
    /// datagram it would drop anyway costs a parse and a few lookups.
    pub fn check<'a>(&'a self, buf: &'a [u8]) -> Result<Unverified<'a>, WireError> {
        let (m, sig) = parse(buf)?;
        if m.receiver != self.ours {
            return Err(WireError::NotForUs);
        }
        let Some(&place) = self.by_key.get(&m.sender) else {
            return Err(WireError::UnknownSender);
        };
        let theirs = self.links.get(&m.link_id).ok_or(WireError::UnknownLink)?;
        if *theirs != place {
            return Err(WireError::WrongPeer);
        }
        let peer = &self.peers[place as usize];
        Ok(Unverified {
            msg: m,
            sig,
            covered: &buf[5..buf.len() - SIG],
            peer,
        })
    }
}

/// A datagram that passed every [`Keyring`] check but its signature. Its
/// fields are the sender's claims until [`Unverified::verify`]: good enough
/// to refuse it on (an epoch nobody would send now), never to act on.
pub struct Unverified<'a> {
    msg: Message,
    sig: Signature,
    covered: &'a [u8],
    peer: &'a VerifyingKey,
}

impl Unverified<'_> {
    /// What the datagram claims.
    pub fn claims(&self) -> &Message {
        &self.msg
    }

    /// The one Ed25519 verification (`verify_strict`) a datagram gets.
    pub fn verify(self) -> Result<Message, WireError> {
        self.peer
            .verify_strict(&signed_message(self.covered), &self.sig)
            .map_err(|_| WireError::BadSignature)?;
        Ok(self.msg)
    }
}

#[cfg(test)]
mod tests;
