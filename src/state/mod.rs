//! The state file (DESIGN §4, §6), kept by the parent in `state_dir`: which
//! bundle is active and the persisted lock reasons of each link. It is the
//! single source of truth at start-up. Outside the parent because
//! `qkdctl policy verify` reads it too (the rollback floor).
//!
//! Written atomically (temp file in the same directory, fsync, rename, fsync
//! the directory), mode 0600, JSON. A file that does not parse is an error,
//! never an empty state: a restart must not open a link that was locked.
//! Changes to one link between two such writes go to a journal beside it
//! (`journal.rs`); [`load`] reads both.

pub mod journal;

use crate::lock::Reasons;
use crate::policy::signify::parse_hex32;
use crate::policy::store::Store;
use crate::policy::verify::{Floor, signed_list_digest};
use crate::text::hex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

/// The state directory's owner: `state_dir/lock`, locked (flock) by the
/// running daemon for its whole life, so that a second daemon does not
/// start on the same state and `qkdpfd -L` run beside a live one locks the
/// kernel without writing the state it journals into (its whole write and
/// the journal's truncation would drop the live daemon's newer entries).
/// Released by the kernel when the process ends, however it ends.
pub struct Owner {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Takes the owner lock of `dir`; Ok(None) while another process holds it.
pub fn own(dir: &Path) -> io::Result<Option<Owner>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    // Held read-only: a file open for writing for the daemon's whole life
    // would keep its file system from being remounted read-only.
    let open = || {
        (fs::OpenOptions::new().read(true))
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
    };
    let f = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (fs::OpenOptions::new().write(true).create(true).mode(0o600))
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            open()?
        }
        r => r?,
    };
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(Owner { _lock: lock })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

pub const VERSION: u32 = 1;
/// A state file larger than this is corrupt, not big (10,000 links write
/// about 2 MiB).
const MAX_STATE_SIZE: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub active: Option<ActivePolicy>,
    pub links: BTreeMap<String, LinkRecord>,
    /// The last journal entry this state holds (`journal.rs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub journal: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            version: VERSION,
            active: None,
            links: BTreeMap::new(),
            journal: 0,
        }
    }
}

/// The active bundle: `policy/<serial>/`, identified by its list digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivePolicy {
    pub serial: u64,
    /// SHA-256 of the signed list, lowercase hex.
    pub digest: String,
}

impl ActivePolicy {
    pub fn new(serial: u64, digest: &[u8; 32]) -> ActivePolicy {
        ActivePolicy {
            serial,
            digest: hex(digest),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRecord {
    /// Only the reasons that survive a restart (`LockReason::persisted`).
    pub reasons: Reasons,
    /// Key agreement (DESIGN §6): the master's last epoch used, the slave's
    /// last epoch accepted. Written (fsync) before the epoch is used.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// HMAC-SHA256(PSK, "qkdpfd-psk-verify-v1") of the last QKD-derived PSK
    /// installed and read back, hex: after a restart the PSK on the
    /// interface is compared with it before `no-key` clears. Never the PSK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// When that PSK was installed, Unix seconds: its age outlives a
    /// restart (`key-stale` counts from it, not from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl LinkRecord {
    pub fn new(reasons: Reasons) -> LinkRecord {
        LinkRecord {
            reasons: reasons.persisted(),
            epoch: 0,
            verifier: None,
            installed_at: None,
        }
    }

    /// Nothing worth a line in the file.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.epoch == 0 && self.verifier.is_none()
    }
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {msg}", path.display()),
    )
}

/// Reads the state file: `None` if it does not exist, an error if it exists
/// but is unreadable, unparsable or of another version.
pub fn load(path: &Path) -> io::Result<Option<State>> {
    let mut state = load_whole(path)?;
    let mut replayed = state.clone().unwrap_or_default();
    if journal::replay(path, &mut replayed)? {
        state = Some(replayed);
    }
    // Read record by record, the map's B-tree nodes are half empty: packed
    // (journal.rs says why).
    if let Some(s) = &mut state {
        s.links = std::mem::take(&mut s.links).into_iter().collect();
    }
    Ok(state)
}

/// The state file alone, as last written whole.
fn load_whole(path: &Path) -> io::Result<Option<State>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(file, MAX_STATE_SIZE + 1), &mut text)?;
    if text.len() as u64 > MAX_STATE_SIZE {
        return Err(invalid(path, "state file too large"));
    }
    let mut state: State = serde_json::from_str(&text).map_err(|e| invalid(path, e))?;
    if state.version != VERSION {
        return Err(invalid(
            path,
            format!("state file version {} (expected {VERSION})", state.version),
        ));
    }
    if let Some(a) = &state.active
        && parse_hex32(&a.digest).is_none()
    {
        return Err(invalid(path, "active digest is not 64 hex digits"));
    }
    for rec in state.links.values_mut() {
        rec.reasons = rec.reasons.persisted();
    }
    Ok(Some(state))
}

/// Writes the state file atomically (only persisted reasons are kept).
pub fn save(path: &Path, state: &State) -> io::Result<()> {
    let mut state = state.clone();
    for rec in state.links.values_mut() {
        rec.reasons = rec.reasons.persisted();
    }
    let mut json = serde_json::to_vec_pretty(&state).map_err(io::Error::other)?;
    json.push(b'\n');
    crate::file::write_atomic(path, &json, 0o600)
}

/// Writes the state whole, then empties the journal it now holds. `state`
/// must hold every journal entry (the parent's copy in memory does: it
/// takes an entry only once it is in the journal).
pub fn compact(path: &Path, state: &State) -> io::Result<()> {
    save(path, state)?;
    journal::clear(path)
}

/// The rollback floor: the larger of the active serial and the highest
/// `policy/<serial>` in the store. A stored bundle above the active one (an
/// activation interrupted before the state file was written) contributes
/// its own digest, so pushing that same bundle again is `Unchanged` — the
/// caller must then activate it if `state.active` names another serial.
pub fn floor(state: Option<&State>, store: &Store) -> io::Result<Option<Floor>> {
    let active = state.and_then(|s| s.active.as_ref());
    let active_floor = match active {
        Some(a) => Some(Floor {
            serial: a.serial,
            digest: parse_hex32(&a.digest).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "active digest is not hex")
            })?,
        }),
        None => None,
    };
    let stored = store.highest_serial()?;
    match (active_floor, stored) {
        (Some(a), Some(s)) if s <= a.serial => Ok(Some(a)),
        (_, Some(s)) => Ok(Some(Floor {
            serial: s,
            // Unreadable: all zeros, so only a higher serial passes.
            digest: store
                .read(s)
                .ok()
                .and_then(|f| signed_list_digest(&f))
                .unwrap_or([0; 32]),
        })),
        (a, None) => Ok(a),
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    /// One owner at a time; the next takes it once the first is gone.
    #[test]
    fn the_state_has_one_owner_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let first = own(d.path()).unwrap();
        assert!(first.is_some());
        assert!(own(d.path()).unwrap().is_none());
        drop(first);
        assert!(own(d.path()).unwrap().is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockReason;

    #[test]
    fn link_record_keeps_persisted_only() {
        let r: Reasons = [
            LockReason::Qber,
            LockReason::SourceLost,
            LockReason::Operator,
        ]
        .into_iter()
        .collect();
        assert_eq!(LinkRecord::new(r).reasons.to_string(), "qber,operator");
    }

    #[test]
    fn rejects_garbage_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        assert_eq!(load(&p).unwrap(), None);
        fs::write(&p, b"{").unwrap();
        assert_eq!(load(&p).unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::write(&p, br#"{"version":2,"active":null,"links":{}}"#).unwrap();
        assert!(load(&p).is_err());
        fs::write(&p, br#"{"version":1,"active":null,"links":{},"x":1}"#).unwrap();
        assert!(load(&p).is_err());
        fs::write(
            &p,
            br#"{"version":1,"active":{"serial":1,"digest":"zz"},"links":{}}"#,
        )
        .unwrap();
        assert!(load(&p).is_err());
    }
}
