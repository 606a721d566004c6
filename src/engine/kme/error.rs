//! Errors of the ETSI 014 client (engine). Every error names the KME and the
//! call; text that came from the KME is cut short, and escaped only where
//! it is shown (the log's `msg=`), so that it is escaped once. No
//! variant can carry key bytes: keys are never formatted, and bodies of
//! successful answers (which hold keys) are never quoted.

use std::fmt;

/// Which ETSI 014 call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Connect,
    Status,
    EncKeys,
    DecKeys,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Call::Connect => "connect",
            Call::Status => "status",
            Call::EncKeys => "enc_keys",
            Call::DecKeys => "dec_keys",
        })
    }
}

/// What went wrong, one variant per way a KME (or the path to it) can fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KmeErrorKind {
    /// Our own settings are unusable (URL, PEM, limits, a bad argument).
    Config(String),
    /// TCP connect or name resolution failed.
    Connect(String),
    /// TLS handshake failed (certificate, name, protocol).
    Tls(String),
    /// The whole request, or one read, took too long (slow-loris).
    Timeout(&'static str),
    /// The HTTP exchange broke (closed connection, bad framing).
    Http(String),
    /// A non-200 answer; `message` from `{"message": ...}` or an excerpt.
    Status { status: u16, message: String },
    /// The body exceeded the size cap.
    BodyTooLarge { limit: usize },
    /// A 200 answer that is not JSON.
    NotJson,
    /// JSON of the wrong shape (missing or mistyped field).
    BadShape(String),
    /// More or fewer keys than asked for.
    KeyCount { expected: usize, got: usize },
    /// A key whose decoded length is under size/8 bytes.
    KeySize {
        key_id: String,
        expected: usize,
        got: usize,
    },
    /// The same key_ID twice in one answer.
    DuplicateKeyId(String),
    /// dec_keys returned a key_ID we did not ask for.
    UnknownKeyId(String),
    /// A key_ID that is not 1..=64 of [A-Za-z0-9-]: what is wrong with
    /// it, never the key_ID itself.
    MalformedKeyId(String),
    /// A key that is not valid base64.
    BadBase64 { key_id: String },
}

/// An ETSI 014 failure: `kme <name>: <call>: <what>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmeError {
    pub kme: String,
    pub call: Call,
    pub kind: KmeErrorKind,
}

impl KmeError {
    pub fn new(kme: &str, call: Call, kind: KmeErrorKind) -> KmeError {
        KmeError {
            kme: kme.to_string(),
            call,
            kind,
        }
    }

    /// The HTTP status, for answers that had one.
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            KmeErrorKind::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

impl fmt::Display for KmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kme {}: {}: {}", self.kme, self.call, self.kind)
    }
}

/// What went wrong, without the KME and call (a status answer whose body
/// could not be read quotes why).
impl fmt::Display for KmeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmeErrorKind::Config(m) => write!(f, "configuration: {m}"),
            KmeErrorKind::Connect(m) => write!(f, "cannot connect: {m}"),
            KmeErrorKind::Tls(m) => write!(f, "TLS: {m}"),
            KmeErrorKind::Timeout(what) => write!(f, "timeout: {what}"),
            KmeErrorKind::Http(m) => write!(f, "HTTP: {m}"),
            KmeErrorKind::Status { status, message } if message.is_empty() => {
                write!(f, "HTTP {status}: (no message)")
            }
            KmeErrorKind::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            KmeErrorKind::BodyTooLarge { limit } => {
                write!(f, "answer larger than {limit} bytes")
            }
            KmeErrorKind::NotJson => f.write_str("answer is not JSON"),
            KmeErrorKind::BadShape(m) => write!(f, "malformed answer: {m}"),
            KmeErrorKind::KeyCount { expected, got } => {
                write!(f, "asked for {expected} keys, got {got}")
            }
            KmeErrorKind::KeySize {
                key_id,
                expected,
                got,
            } => write!(
                f,
                "key {key_id} is {got} bytes, at least {expected} expected"
            ),
            KmeErrorKind::DuplicateKeyId(id) => write!(f, "duplicate key_ID {id}"),
            KmeErrorKind::UnknownKeyId(id) => write!(f, "key_ID {id} was not requested"),
            KmeErrorKind::MalformedKeyId(why) => write!(f, "malformed key_ID {why}"),
            KmeErrorKind::BadBase64 { key_id } => write!(f, "key {key_id} is not valid base64"),
        }
    }
}

impl std::error::Error for KmeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kme_call_and_status() {
        let e = KmeError::new(
            "site",
            Call::EncKeys,
            KmeErrorKind::Status {
                status: 503,
                message: "keys exhausted".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "kme site: enc_keys: HTTP 503: keys exhausted"
        );
        assert_eq!(e.status(), Some(503));
    }
}
