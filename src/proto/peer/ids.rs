//! The identifiers of the peer protocol, shared with the engine's KME
//! client: [`LinkId`], [`PeerKey`], [`Nonce`] and the one [`KeyId`], the
//! ETSI GS QKD 014 `key_ID` that a KME hands out and the master OFFERs.

use super::error::WireError;
use serde::{Deserialize, Serialize};

/// Longest key_ID accepted, on the wire and from a KME (a UUID is 36).
pub const MAX_KEY_ID: usize = 64;

pub type Nonce = [u8; 16];
/// An Ed25519 public key as it appears on the wire.
pub type PeerKey = [u8; 32];

/// Identifies a link on both ends (see [`super::link_id`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(pub [u8; 32]);

impl LinkId {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl std::fmt::Debug for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkId({})", self.hex())
    }
}

/// Values by [`LinkId`], in one vector sorted by id. A hash map of
/// 10,000 links takes 16,384 buckets (hashbrown keeps an eighth free and
/// rounds up to a power of two): 0.6-0.8 MB for each of the two maps an
/// engine kept by link id, where the links fill this exactly. Links are
/// added when the config changes, in id order by the engine (each then
/// lands at the end), and found by binary search.
#[derive(Clone, Debug)]
pub struct ByLink<V> {
    rows: Vec<(LinkId, V)>,
}

impl<V> Default for ByLink<V> {
    fn default() -> Self {
        ByLink { rows: Vec::new() }
    }
}

impl<V> ByLink<V> {
    /// As a map's insert: a link added again keeps its last value.
    pub fn insert(&mut self, id: LinkId, v: V) {
        // Sorted adds go to the end without a search.
        if self.rows.last().is_none_or(|(last, _)| last.0 < id.0) {
            return self.rows.push((id, v));
        }
        match self.find(&id) {
            Ok(i) => self.rows[i].1 = v,
            Err(i) => self.rows.insert(i, (id, v)),
        }
    }

    pub fn get(&self, id: &LinkId) -> Option<&V> {
        self.find(id).ok().map(|i| &self.rows[i].1)
    }

    /// Room for `n` more links, exactly (a vector grown by pushes alone
    /// ends with up to twice the room it needs).
    pub fn reserve_exact(&mut self, n: usize) {
        self.rows.reserve_exact(n);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn find(&self, id: &LinkId) -> Result<usize, usize> {
        self.rows.binary_search_by(|(k, _)| k.0.cmp(&id.0))
    }
}

/// A KME key_ID: opaque, 1..=[`MAX_KEY_ID`] bytes of `[A-Za-z0-9-]` (no
/// RFC 4122 version is insisted on). Not secret: it crosses the network
/// in the peer protocol. Checked once where it enters the engine, a KME's
/// answer (`engine::kme`) or a peer's datagram ([`super::parse`]), and
/// carried as it is from there: what one end's KME gave, the other end's
/// KME is asked for.
///
/// Held inline, not on the heap: every keyed link keeps its round's
/// key_ID from one round to the next, and at 10,000 links those small
/// chunks, each made during a round among that round's short-lived
/// buffers, kept pages of freed heap resident.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId {
    len: u8,
    bytes: [u8; MAX_KEY_ID],
}

impl KeyId {
    pub fn new(s: &str) -> Result<KeyId, WireError> {
        KeyId::from_bytes(s.as_bytes())
    }

    /// The key_ID field of a datagram.
    pub(super) fn from_bytes(b: &[u8]) -> Result<KeyId, WireError> {
        if b.is_empty() || b.len() > MAX_KEY_ID {
            return Err(WireError::KeyIdLength);
        }
        if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
            return Err(WireError::KeyIdCharset);
        }
        let mut bytes = [0u8; MAX_KEY_ID];
        bytes[..b.len()].copy_from_slice(b);
        Ok(KeyId {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("checked ASCII")
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// As the text it is: the bytes past `len` are no part of it.
impl PartialEq for KeyId {
    fn eq(&self, other: &KeyId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyId {}

impl std::hash::Hash for KeyId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h);
    }
}

impl PartialOrd for KeyId {
    fn partial_cmp(&self, other: &KeyId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyId {
    fn cmp(&self, other: &KeyId) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({:?})", self.as_str())
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for KeyId {
    type Error = String;
    fn try_from(s: String) -> Result<KeyId, String> {
        KeyId::new(&s).map_err(|_| "malformed key_ID".to_string())
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.as_str().to_string()
    }
}

pub use crate::text::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_found_in_any_order_of_adding_and_the_last_value_stays() {
        let ids: Vec<LinkId> = [7u8, 3, 9, 1, 5].iter().map(|b| LinkId([*b; 32])).collect();
        let mut m = ByLink::default();
        for (i, id) in ids.iter().enumerate() {
            m.insert(*id, i);
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.get(id), Some(&i), "{id:?}");
        }
        assert_eq!(m.get(&LinkId([4; 32])), None);
        m.insert(ids[2], 99);
        assert_eq!((m.get(&ids[2]), m.len()), (Some(&99), 5));
        // Added in id order, each at the end; and sorted either way.
        let mut sorted = ByLink::default();
        for b in 0..=255u8 {
            sorted.insert(LinkId([b; 32]), b);
        }
        assert!(m.rows.windows(2).all(|w| w[0].0.0 < w[1].0.0));
        assert!(sorted.rows.windows(2).all(|w| w[0].0.0 < w[1].0.0));
        assert_eq!(sorted.get(&LinkId([200; 32])), Some(&200));
        assert!(ByLink::<u8>::default().is_empty());
    }

    #[test]
    fn key_ids() {
        assert!(KeyId::new("abc-DEF-123").is_ok());
        assert!(KeyId::new("bc490419-7d60-487f-adc1-4ddcc177c139").is_ok());
        assert!(KeyId::new(&"a".repeat(64)).is_ok());
        assert_eq!(KeyId::new(""), Err(WireError::KeyIdLength));
        assert_eq!(KeyId::new(&"a".repeat(65)), Err(WireError::KeyIdLength));
        assert_eq!(KeyId::new("a b"), Err(WireError::KeyIdCharset));
        assert_eq!(KeyId::new("a/b"), Err(WireError::KeyIdCharset));
        assert_eq!(KeyId::new("é"), Err(WireError::KeyIdCharset));
        assert!(serde_json::from_str::<KeyId>("\"x y\"").is_err());
        let k: KeyId = serde_json::from_str("\"k-1\"").unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"k-1\"");
        // Equal, ordered and shown as the text, whatever lies past it.
        let long = KeyId::new("k-10").unwrap();
        assert_eq!(k, KeyId::new("k-1").unwrap());
        assert_ne!(k, long);
        assert!(k < long && long < KeyId::new("k-2").unwrap());
        assert_eq!(format!("{long} {long:?}"), "k-10 KeyId(\"k-10\")");
        assert_eq!((long.len(), long.as_bytes()), (4, &b"k-10"[..]));
    }
}
