//! Byte fields of the fd-3 vocabulary as base64 strings (serde `with`
//! modules), not JSON arrays of numbers: a PEM took 3.5 times its size as
//! numbers (megabytes of TLS files overflowed a frame), and the text a key
//! passes through on the way in and out is held in `Zeroizing` buffers, so
//! no copy of it is left behind (the frame itself is wiped by the reader
//! and the writer).

use base64::Engine as _;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn put<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let text = Zeroizing::new(B64.encode(bytes));
    s.serialize_str(&text)
}

/// Decodes the string a visitor is given, borrowed or owned; an owned one
/// is wiped.
struct B64Visitor;

impl Visitor<'_> for B64Visitor {
    type Value = Zeroizing<Vec<u8>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("base64 bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        B64.decode(v)
            .map(Zeroizing::new)
            .map_err(|_| E::custom("bad base64"))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        let v = Zeroizing::new(v);
        self.visit_str(&v)
    }
}

fn take<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
    d.deserialize_str(B64Visitor)
}

/// `Vec<u8>` (certificates: not secret, but large).
pub mod vec {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        put(v, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        take(d).map(|z| z.to_vec())
    }
}

/// `Option<Vec<u8>>`.
pub mod opt_vec {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Wrap(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(<Option<Unwrap> as serde::Deserialize>::deserialize(d)?.map(|u| u.0.to_vec()))
    }
}

/// `Zeroizing<Vec<u8>>` (private keys).
pub mod secret {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        put(v, s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        take(d)
    }
}

/// `Option<Zeroizing<Vec<u8>>>`.
pub mod opt_secret {
    use super::*;
    pub fn serialize<S: Serializer>(
        v: &Option<Zeroizing<Vec<u8>>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Wrap(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, D::Error> {
        Ok(<Option<Unwrap> as serde::Deserialize>::deserialize(d)?.map(|u| u.0))
    }
}

/// `Zeroizing<[u8; 32]>` (the peering key's seed, a PSK).
pub mod secret32 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Zeroizing<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        put(&v[..], s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<[u8; 32]>, D::Error> {
        let v = take(d)?;
        let mut out = Zeroizing::new([0u8; 32]);
        if v.len() != 32 {
            return Err(de::Error::custom("not 32 bytes"));
        }
        out.copy_from_slice(&v);
        Ok(out)
    }
}

struct Wrap<'a>(&'a [u8]);

impl serde::Serialize for Wrap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        put(self.0, s)
    }
}

struct Unwrap(Zeroizing<Vec<u8>>);

impl<'de> serde::Deserialize<'de> for Unwrap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unwrap, D::Error> {
        take(d).map(Unwrap)
    }
}
