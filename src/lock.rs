//! Lock reasons, enforcement states and QBER bands (DESIGN §6), shared by the
//! parent and the engine.
//!
//! A link is open only when its set of reasons is empty. Each reason has one
//! owner, the process that may set and clear it; the parent keeps the reasons
//! no remote input may clear.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a link is held in lockdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockReason {
    Qber,
    SourceLost,
    NoKey,
    KeyStale,
    PeerLost,
    PskDrift,
    Operator,
    NoPolicy,
    ProcessFailure,
    /// The link's WireGuard session may be older than the lockdown: held
    /// until a handshake newer than the peer's re-creation (`new_session`).
    NoSession,
    /// Another link on the link's WireGuard interface is locked by a reason
    /// of its own: the interface's tunnels have one guard in the firewall
    /// (`parent/links/shared.rs`).
    Interface,
}

/// The process that owns a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Parent,
    Engine,
}

impl LockReason {
    pub const ALL: [LockReason; 11] = [
        LockReason::Qber,
        LockReason::SourceLost,
        LockReason::NoKey,
        LockReason::KeyStale,
        LockReason::PeerLost,
        LockReason::PskDrift,
        LockReason::Operator,
        LockReason::NoPolicy,
        LockReason::ProcessFailure,
        LockReason::NoSession,
        LockReason::Interface,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LockReason::Qber => "qber",
            LockReason::SourceLost => "source-lost",
            LockReason::NoKey => "no-key",
            LockReason::KeyStale => "key-stale",
            LockReason::PeerLost => "peer-lost",
            LockReason::PskDrift => "psk-drift",
            LockReason::Operator => "operator",
            LockReason::NoPolicy => "no-policy",
            LockReason::ProcessFailure => "process-failure",
            LockReason::NoSession => "no-session",
            LockReason::Interface => "interface",
        }
    }

    pub fn parse(s: &str) -> Option<LockReason> {
        LockReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// DESIGN §6 table, column "owner". `no-key` is the parent's: it alone
    /// installs PSKs and reads them back, so no engine can claim a key.
    pub fn owner(self) -> Owner {
        match self {
            LockReason::NoKey
            | LockReason::PskDrift
            | LockReason::Operator
            | LockReason::NoPolicy
            | LockReason::ProcessFailure
            | LockReason::NoSession
            | LockReason::Interface => Owner::Parent,
            _ => Owner::Engine,
        }
    }

    /// DESIGN §6 table, column "persisted": survives a restart via the state
    /// file. Also `peer-lost`, which the table does not persist: a restart
    /// cannot tell an unreachable peer from a live one until `peer_timeout`
    /// (900 s by default) has passed again, and opening the link meanwhile
    /// would break "a restart never opens a link that was locked". It goes
    /// with the first authenticated round.
    pub fn persisted(self) -> bool {
        matches!(
            self,
            LockReason::Qber
                | LockReason::PeerLost
                | LockReason::Operator
                | LockReason::ProcessFailure
        )
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for LockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of lock reasons (a bit set; order of iteration is the table order).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Reasons(u16);

impl Reasons {
    pub const EMPTY: Reasons = Reasons(0);

    pub fn insert(&mut self, r: LockReason) -> bool {
        let had = self.contains(r);
        self.0 |= r.bit();
        !had
    }
    pub fn remove(&mut self, r: LockReason) -> bool {
        let had = self.contains(r);
        self.0 &= !r.bit();
        had
    }
    pub fn contains(self, r: LockReason) -> bool {
        self.0 & r.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = LockReason> {
        LockReason::ALL
            .into_iter()
            .filter(move |r| self.contains(*r))
    }
    pub fn union(self, other: Reasons) -> Reasons {
        Reasons(self.0 | other.0)
    }
    /// Only the reasons `owner` may set or clear.
    pub fn owned_by(self, owner: Owner) -> Reasons {
        self.iter().filter(|r| r.owner() == owner).collect()
    }
    /// Only the reasons that survive a restart.
    pub fn persisted(self) -> Reasons {
        self.iter().filter(|r| r.persisted()).collect()
    }
    pub fn enforcement(self) -> Enforcement {
        if self.is_empty() {
            Enforcement::Open
        } else {
            Enforcement::Lockdown
        }
    }
}

impl FromIterator<LockReason> for Reasons {
    fn from_iter<I: IntoIterator<Item = LockReason>>(it: I) -> Reasons {
        let mut s = Reasons::EMPTY;
        for r in it {
            s.insert(r);
        }
        s
    }
}

/// Comma-separated, as in log lines: `qber,operator`; `-` when empty.
impl fmt::Display for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reasons({self})")
    }
}

impl Serialize for Reasons {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Reasons {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reasons, D::Error> {
        Ok(Vec::<LockReason>::deserialize(d)?.into_iter().collect())
    }
}

/// What the firewall does for a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    Open,
    Lockdown,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Open => "open",
            Enforcement::Lockdown => "lockdown",
        }
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QBER band; edges come from policy `bands` (HIP-71 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Band {
    Nominal,
    Degraded,
    Warning,
    Critical,
    Compromised,
}

impl Band {
    /// `edges` are the four ascending upper bounds of nominal..critical.
    pub fn of(qber: f64, edges: &[f64; 4]) -> Band {
        const ORDER: [Band; 4] = [Band::Nominal, Band::Degraded, Band::Warning, Band::Critical];
        for (edge, band) in edges.iter().zip(ORDER) {
            if qber < *edge {
                return band;
            }
        }
        Band::Compromised
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Nominal => "nominal",
            Band::Degraded => "degraded",
            Band::Warning => "warning",
            Band::Critical => "critical",
            Band::Compromised => "compromised",
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_set_and_owner() {
        let mut r = Reasons::EMPTY;
        assert_eq!(r.enforcement(), Enforcement::Open);
        assert!(r.insert(LockReason::Qber));
        assert!(!r.insert(LockReason::Qber));
        r.insert(LockReason::Operator);
        assert_eq!(r.to_string(), "qber,operator");
        assert_eq!(r.owned_by(Owner::Parent).to_string(), "operator");
        assert_eq!(r.enforcement(), Enforcement::Lockdown);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"["qber","operator"]"#);
        assert_eq!(serde_json::from_str::<Reasons>(&json).unwrap(), r);
        for x in LockReason::ALL {
            assert_eq!(LockReason::parse(x.as_str()), Some(x));
        }
    }

    #[test]
    fn bands_follow_edges() {
        let e = [0.03, 0.05, 0.08, 0.11];
        assert_eq!(Band::of(0.0, &e), Band::Nominal);
        assert_eq!(Band::of(0.03, &e), Band::Degraded);
        assert_eq!(Band::of(0.079, &e), Band::Warning);
        assert_eq!(Band::of(0.10, &e), Band::Critical);
        assert_eq!(Band::of(0.25, &e), Band::Compromised);
    }
}
