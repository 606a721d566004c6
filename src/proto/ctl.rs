//! The control socket protocol (DESIGN §7), engine <-> qkdctl.
//!
//! One JSON document per line. The client sends one [`Request`]; the server
//! answers with one [`Reply`] line, or for `monitor` a stream of
//! [`Reply::Event`] lines until either side closes. Key material never
//! appears in any of these types.

use crate::lock::{Band, Enforcement, Reasons};
use crate::policy::params::LinkPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest request line the server reads (a 4 MiB bundle in base64 plus slack).
pub const MAX_REQUEST: usize = 6 << 20;

/// How a `policy-load` request line starts (serde's externally tagged form,
/// as qkdctl writes it): the only request longer than a short line, so the
/// engine can tell it from its first bytes and leave the rest unread.
pub const POLICY_LOAD_PREFIX: &[u8] = br#"{"policy-load":"#;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Target {
    All,
    Link(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::All => f.write_str("all"),
            Target::Link(l) => f.write_str(l),
        }
    }
}

/// Parses one request line (its newline may be there or not): the one
/// parser of both readers, the engine's control server and the parent's
/// reader of a root client's line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Request {
    Status,
    ShowLinks,
    ShowLink {
        link: String,
    },
    ShowPolicy,
    Monitor,
    Lockdown {
        target: Target,
    },
    Unlock {
        target: Target,
        force: bool,
    },
    /// Start a key-agreement round now on each keyed link (master side).
    Rotate {
        target: Target,
    },
    Reload,
    /// The bundle as bytes (a tar or gzip'd tar; qkdctl packs a directory),
    /// read by qkdctl as the invoking user: the daemon opens no client path.
    PolicyLoad {
        bundle_b64: String,
    },
    Log {
        verbose: bool,
    },
    SimEve {
        link: String,
        fraction: f64,
    },
    SimNoise {
        link: String,
        qber: f64,
    },
}

impl Request {
    /// The read-only allow-list for `socket_group` members; all else is denied.
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::ShowLinks
                | Request::ShowLink { .. }
                | Request::ShowPolicy
                | Request::Monitor
        )
    }

    /// A short name for `ctl_command command=` log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::ShowLinks => "show-links",
            Request::ShowLink { .. } => "show-link",
            Request::ShowPolicy => "show-policy",
            Request::Monitor => "monitor",
            Request::Lockdown { .. } => "lockdown",
            Request::Unlock { .. } => "unlock",
            Request::Rotate { .. } => "rotate",
            Request::Reload => "reload",
            Request::PolicyLoad { .. } => "policy-load",
            Request::Log { .. } => "log",
            Request::SimEve { .. } => "sim-eve",
            Request::SimNoise { .. } => "sim-noise",
        }
    }
}

/// Why a request failed; qkdctl exits 1 for all of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    Denied,
    BadRequest,
    NoSuchLink,
    Refused,
    PolicyRejected,
    ConfigError,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonStatus {
    pub version: String,
    pub uptime_secs: u64,
    pub policy_serial: Option<u64>,
    pub links_open: usize,
    pub links_locked: usize,
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkInfo {
    pub name: String,
    /// What the parent's last kernel read-back showed.
    pub enforcement: Enforcement,
    /// A lockdown is wanted and the kernel does not show it (DESIGN §5).
    #[serde(default)]
    pub lockdown_failed: bool,
    /// No firewall step held, so the link's WireGuard peer was removed
    /// (DESIGN §5); an operator restores it.
    #[serde(default)]
    pub wg_peer_removed: bool,
    /// Engine-owned and parent-owned, together.
    pub reasons: Reasons,
    pub band: Option<Band>,
    pub qber: Option<f64>,
    /// Seconds since the last fresh sample.
    pub sample_age_secs: Option<f64>,
    pub threshold: Option<f64>,
    pub trip_count: u32,
    pub manual_hold: bool,
    pub qber_source: String,
    /// Key agreement, for links with `kme`.
    pub keys: Option<KeyInfo>,
}

/// A keyed link's rotation state (DESIGN §7 `show link`); never key bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    pub role: String,
    /// Master: last epoch used; slave: last epoch accepted.
    pub epoch: u64,
    /// Epoch of the PSK installed last by this process.
    pub installed_epoch: Option<u64>,
    /// Key ID of the QKD key behind that PSK: not secret (both ends send
    /// it in OFFER and CONFIRM). Absent from an older daemon's reply.
    #[serde(default)]
    pub installed_key_id: Option<String>,
    /// First 4 bytes of HMAC(PSK, "fp"), hex: compare both ends.
    pub psk_fingerprint: Option<String>,
    /// Seconds since that PSK was installed.
    pub key_age_secs: Option<f64>,
    pub rotations_ok: u64,
    pub rotations_failed: u64,
    pub in_round: bool,
    pub held: bool,
    /// The KME's `stored_key_count` at the last status call.
    pub stored_key_count: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInfo {
    pub serial: u64,
    pub not_after: Option<u64>,
    pub expired: bool,
    pub signer: String,
    pub links: BTreeMap<String, LinkPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Reply {
    Ok {
        message: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Status(DaemonStatus),
    Links(Vec<LinkInfo>),
    Policy(Option<PolicyInfo>),
    /// One `event=...` line (monitor).
    Event(String),
}

impl Reply {
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply::Ok {
            message: message.into(),
        }
    }
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_is_read_only() {
        assert!(Request::Status.read_only());
        assert!(Request::ShowLink { link: "dr".into() }.read_only());
        assert!(!Request::Reload.read_only());
        assert!(
            !Request::Unlock {
                target: Target::All,
                force: false
            }
            .read_only()
        );
        assert!(
            !Request::SimEve {
                link: "dr".into(),
                fraction: 1.0
            }
            .read_only()
        );
    }

    #[test]
    fn a_policy_load_line_starts_with_its_prefix() {
        let r = Request::PolicyLoad {
            bundle_b64: "AAAA".into(),
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.as_bytes().starts_with(POLICY_LOAD_PREFIX), "{line}");
        // No other request starts so.
        for r in [
            Request::Reload,
            Request::Status,
            Request::Unlock {
                target: Target::All,
                force: true,
            },
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert!(!line.as_bytes().starts_with(POLICY_LOAD_PREFIX), "{line}");
        }
    }

    #[test]
    fn unknown_fields_refused() {
        let r: Result<Request, _> = serde_json::from_str(r#""reboot""#);
        assert!(r.is_err());
        let r: Request = serde_json::from_str(r#""reload""#).unwrap();
        assert_eq!(r, Request::Reload);
        let r: Result<Request, _> = serde_json::from_str(r#"{"lockdown":{"target":"all","x":1}}"#);
        assert!(r.is_err());
    }
}
