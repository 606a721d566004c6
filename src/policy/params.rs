//! The resolved, per-link policy parameters (DESIGN §4 `[defaults]` merged
//! with `[link.NAME]`). Produced by the bundle verifier in the parent, sent to
//! the engine, consumed by the link state machine.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a QBER trip does (`on_qber`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnQber {
    /// Flip the link's anchor to the lockdown ruleset.
    Lockdown,
    /// Stop rotating, keep the last good PSK; the firewall stays as it is.
    Hold,
    /// Log and count only.
    Alert,
}

/// How a QBER lockdown is released (`unlock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnlockMode {
    Auto,
    Manual,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPolicy {
    pub on_qber: OnQber,
    /// Upper edges of nominal, degraded, warning, critical (ascending).
    pub bands: [f64; 4],
    pub rotate: Duration,
    pub max_key_age: Duration,
    pub qber_lockdown: f64,
    pub trip_samples: u32,
    pub recover_below: f64,
    pub recover_after: Duration,
    pub unlock: UnlockMode,
    pub qber_timeout: Duration,
    pub peer_timeout: Duration,
}

impl LinkPolicy {
    /// The values DESIGN §4 shows, the one place each default is written;
    /// a bundle may override every one.
    pub const DEFAULT: LinkPolicy = LinkPolicy {
        on_qber: OnQber::Lockdown,
        bands: [0.03, 0.05, 0.08, 0.11],
        rotate: Duration::from_secs(300),
        max_key_age: Duration::from_secs(900),
        qber_lockdown: 0.08,
        trip_samples: 3,
        recover_below: 0.05,
        recover_after: Duration::from_secs(60),
        unlock: UnlockMode::Auto,
        qber_timeout: Duration::from_secs(10),
        peer_timeout: Duration::from_secs(900),
    };
}

impl Default for LinkPolicy {
    fn default() -> LinkPolicy {
        LinkPolicy::DEFAULT
    }
}
