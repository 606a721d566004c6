//! Why the peer protocol drops a received datagram ([`WireError`]), each
//! reason its own `reason=` word in the engine's `peer_auth_failed` line.

/// Why a received datagram was dropped; each is its own variant so the
/// engine's rate-limited `peer_auth_failed` line can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Oversize,
    Truncated,
    TrailingBytes,
    BadMagic,
    BadVersion,
    BadType,
    KeyIdLength,
    KeyIdCharset,
    NotForUs,
    UnknownSender,
    UnknownLink,
    /// The link exists but belongs to another peer.
    WrongPeer,
    BadSignature,
}

impl WireError {
    /// The `why=` value of `peer_auth_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            WireError::Oversize => "oversize",
            WireError::Truncated => "truncated",
            WireError::TrailingBytes => "trailing-bytes",
            WireError::BadMagic => "bad-magic",
            WireError::BadVersion => "bad-version",
            WireError::BadType => "bad-type",
            WireError::KeyIdLength => "key-id-length",
            WireError::KeyIdCharset => "key-id-charset",
            WireError::NotForUs => "not-for-us",
            WireError::UnknownSender => "unknown-sender",
            WireError::UnknownLink => "unknown-link",
            WireError::WrongPeer => "wrong-peer",
            WireError::BadSignature => "bad-signature",
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
