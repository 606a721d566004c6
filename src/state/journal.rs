//! The state file's journal, `<state>.journal`: what changed in one link's
//! record since the state file was last written whole, one JSON object per
//! line, appended and synced before anyone relies on it.
//!
//! Rewriting the whole state file for every change made each change
//! O(links): a `rotate all` on a 10,000-link hub persists 10,000 epochs and
//! 10,000 verifiers, and each group commit serialised, wrote and fsynced a
//! 1.5 MB file. A journal entry costs its own size. Once the journal holds
//! about twice as many entries as there are links the parent writes the
//! state whole again and empties it ([`super::compact`]), so the work per
//! change stays constant and a restart replays a bounded journal.
//!
//! Entries are numbered; the state file says the last number it holds
//! (`journal`), and a replay skips every entry up to it. So a crash, or an
//! error, between writing the state whole and emptying the journal changes
//! nothing: an older entry never overrides what the state file says (an
//! old unlock replayed over a newer lockdown would open a link). A last
//! line without its newline is an append that never finished: its sync
//! never returned, so nothing acted on it, and it is ignored; the next
//! append cuts it off before writing (else the two would make one
//! unreadable line). Any other line that does not parse makes the whole
//! state unreadable, as a damaged state file does: a restart must not open
//! a link that was locked.

use super::{LinkRecord, MAX_STATE_SIZE, State, invalid};
use crate::lock::Reasons;
use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One change to one link's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Numbered by [`append`], one up from the state's `journal`.
    #[serde(default)]
    pub seq: u64,
    pub link: String,
    /// The link's persisted reasons, replaced whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Reasons>,
    /// An epoch made durable (the record keeps the larger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The verifier of the PSK last installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// When it was installed (Unix seconds), with the verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
}

impl Entry {
    pub fn epoch(link: &str, epoch: u64) -> Entry {
        Entry {
            seq: 0,
            link: link.to_string(),
            reasons: None,
            epoch: Some(epoch),
            verifier: None,
            installed_at: None,
        }
    }

    /// The PSK of `verifier`, installed at `at` (Unix seconds).
    pub fn verifier(link: &str, verifier: &str, at: u64) -> Entry {
        Entry {
            seq: 0,
            link: link.to_string(),
            reasons: None,
            epoch: None,
            verifier: Some(verifier.to_string()),
            installed_at: Some(at),
        }
    }

    /// The whole record of a link.
    pub fn record(link: &str, rec: &LinkRecord) -> Entry {
        Entry {
            seq: 0,
            link: link.to_string(),
            reasons: Some(rec.reasons.persisted()),
            epoch: Some(rec.epoch),
            verifier: rec.verifier.clone(),
            installed_at: rec.installed_at,
        }
    }

    fn check(&self) -> Result<(), String> {
        if !crate::conf::valid_link_name(&self.link) {
            return Err(format!("bad link name {:?}", self.link));
        }
        if let Some(v) = &self.verifier
            && crate::policy::signify::parse_hex32(v).is_none()
        {
            return Err(format!("link {}: verifier is not 64 hex digits", self.link));
        }
        Ok(())
    }

    /// Applies the entry to a state (replay, or the parent's copy in memory).
    fn apply(&self, state: &mut State) {
        state.journal = self.seq;
        // A record that is there keeps its name and its verifier's buffer:
        // a copy made at every round of every link, among the round's
        // short-lived buffers, is what keeps freed heap pages resident.
        if !state.links.contains_key(&self.link) {
            state.links.insert(self.link.clone(), Default::default());
        }
        let rec = state.links.get_mut(&self.link).expect("inserted above");
        if let Some(r) = self.reasons {
            rec.reasons = r.persisted();
        }
        if let Some(e) = self.epoch {
            rec.epoch = rec.epoch.max(e);
        }
        if self.verifier.is_some() {
            // Into the kept buffer when there is one.
            rec.verifier.clone_from(&self.verifier);
            rec.installed_at = self.installed_at;
        }
        if rec.is_empty() {
            state.links.remove(&self.link);
        }
    }
}

pub fn path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// Numbers the entries after `state`'s last, appends them in one write and
/// syncs them (and, when the journal is new, the directory that holds it);
/// then applies them to `state`. On error `state` is unchanged, the lines
/// written are cut off again where that can be done, and nobody may rely on
/// any of them.
pub fn append(state_path: &Path, state: &mut State, mut entries: Vec<Entry>) -> io::Result<()> {
    let mut text = Vec::with_capacity(entries.len() * 120);
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq = state.journal + 1 + i as u64;
        serde_json::to_writer(&mut text, e).map_err(io::Error::other)?;
        text.push(b'\n');
    }
    write(state_path, &text)?;
    let before = state.links.len();
    for e in &entries {
        e.apply(state);
    }
    // Records added one by one in name order (a hub's first round) leave
    // the map's B-tree nodes half empty; a batch that added many packs it
    // again, in O(links): ~60 B a link at 10,000 links.
    if state.links.len() >= before + 64 {
        state.links = std::mem::take(&mut state.links).into_iter().collect();
    }
    Ok(())
}

fn write(state: &Path, text: &[u8]) -> io::Result<()> {
    let path = path(state);
    let new = !path.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    // An append that never finished (a crash, a failed write) left a line
    // without its newline, which replay ignores. Written after, this
    // append would join it into one line no replay can read, and the
    // daemon would not start: cut it first, durably, before writing.
    let len = f.metadata()?.len();
    let whole = whole_len(&f, len)?;
    if whole < len {
        f.set_len(whole)?;
        f.sync_data()?;
    }
    // Lines of a failed append are no entries: the next append numbers
    // its own from the same seq, and a replay of both would refuse the
    // journal (or apply a change the daemon reported as not made). Cut
    // them off; where even that fails, replay keeps the later numbering.
    if let Err(e) = f.write_all(text).and_then(|()| f.sync_data()) {
        let _ = f.set_len(whole).and_then(|()| f.sync_data());
        return Err(e);
    }
    if new && let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The length of the journal's whole lines: `len` when it ends with a
/// newline (the usual case, one byte read), else just past its last one.
fn whole_len(f: &fs::File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = len;
    let mut buf = [0u8; 4096];
    let mut want = 1;
    while end > 0 {
        let start = end.saturating_sub(want);
        let chunk = &mut buf[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
        want = buf.len() as u64;
    }
    Ok(0)
}

/// Empties the journal (after the state was written whole).
pub fn clear(state: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path(state))
    {
        Ok(f) => {
            f.set_len(0)?;
            f.sync_all()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replays the journal beside `state_path` onto `state`, skipping what the
/// state holds already; false when there is none.
pub(super) fn replay(state_path: &Path, state: &mut State) -> io::Result<bool> {
    let path = path(state_path);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    file.take(MAX_STATE_SIZE + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_STATE_SIZE {
        return Err(invalid(&path, "journal too large"));
    }
    // An unfinished last append is not part of the journal.
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text[..whole].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let e: Entry = serde_json::from_slice(line)
            .map_err(|e| invalid(&path, format!("line {}: {e}", n + 1)))?;
        e.check()
            .map_err(|why| invalid(&path, format!("line {}: {why}", n + 1)))?;
        // A seq at or below one before it: the earlier lines from that
        // seq on were an append that failed (and could not be cut off),
        // numbered again by the next append. Only the later ones count.
        // (Kept increasing, so found by halves.)
        if entries.last().is_some_and(|x| x.seq >= e.seq) {
            entries.truncate(entries.partition_point(|x| x.seq < e.seq));
        }
        entries.push(e);
    }
    let held = state.journal;
    for e in entries.iter().filter(|e| e.seq > held) {
        e.apply(state);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockReason;
    use std::os::unix::fs::PermissionsExt;

    const V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn replayed(p: &Path, whole: &State) -> State {
        let mut st = whole.clone();
        replay(p, &mut st).unwrap();
        st
    }

    #[test]
    fn entries_replay_onto_the_state_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let mut mem = State::default();
        assert!(!replay(&p, &mut State::default()).unwrap());
        let qber: Reasons = [LockReason::Qber].into_iter().collect();
        append(
            &p,
            &mut mem,
            vec![Entry::epoch("a", 3), Entry::verifier("a", V1, 100)],
        )
        .unwrap();
        let b_locked = LinkRecord::new(qber);
        append(
            &p,
            &mut mem,
            vec![
                Entry::epoch("a", 2),
                Entry::verifier("a", V2, 200),
                Entry::record("b", &b_locked),
            ],
        )
        .unwrap();
        assert_eq!(mem.journal, 5);
        let mode = fs::metadata(path(&p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Epochs only grow; the later verifier wins; memory equals a replay.
        assert_eq!(mem.links["a"].epoch, 3);
        assert_eq!(mem.links["a"].verifier.as_deref(), Some(V2));
        assert_eq!(mem.links["a"].installed_at, Some(200));
        assert_eq!(mem.links["b"].reasons, qber);
        assert_eq!(replayed(&p, &State::default()), mem);
        // A record with nothing left leaves the state.
        append(
            &p,
            &mut mem,
            vec![Entry::record("b", &LinkRecord::default())],
        )
        .unwrap();
        assert!(!mem.links.contains_key("b"));
        assert_eq!(replayed(&p, &State::default()), mem);
    }

    #[test]
    fn a_state_written_whole_is_never_overridden_by_older_entries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let mut mem = State::default();
        let qber: Reasons = [LockReason::Qber].into_iter().collect();
        // Unlocked in the journal, then locked by a whole write whose
        // journal could not be emptied: the lock stays.
        append(
            &p,
            &mut mem,
            vec![Entry::record("b", &LinkRecord::default())],
        )
        .unwrap();
        mem.links.insert("b".into(), LinkRecord::new(qber));
        super::super::save(&p, &mem).unwrap();
        let after = crate::state::load(&p).unwrap().unwrap();
        assert_eq!(after.links["b"].reasons, qber);
        // compact empties the journal; numbering goes on from the state.
        crate::state::compact(&p, &mem).unwrap();
        assert_eq!(fs::metadata(path(&p)).unwrap().len(), 0);
        append(&p, &mut mem, vec![Entry::epoch("b", 9)]).unwrap();
        assert_eq!(mem.journal, 2);
        assert_eq!(crate::state::load(&p).unwrap().unwrap(), mem);
    }

    #[test]
    fn an_unfinished_last_line_is_ignored_and_damage_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let mut mem = State::default();
        append(&p, &mut mem, vec![Entry::epoch("a", 3)]).unwrap();
        let mut f = OpenOptions::new().append(true).open(path(&p)).unwrap();
        f.write_all(br#"{"seq":2,"link":"a","epo"#).unwrap();
        assert_eq!(replayed(&p, &State::default()).links["a"].epoch, 3);
        for bad in [
            &b"{\"seq\":1,\"link\":\"a\",\"epoch\":\"x\"}\n"[..],
            b"{\"seq\":1,\"link\":\"a\",\"what\":1}\n",
            b"{\"seq\":1,\"link\":\"A b\",\"epoch\":1}\n",
            b"{\"seq\":1,\"link\":\"a\",\"verifier\":\"zz\"}\n",
            b"garbage\n",
        ] {
            fs::write(path(&p), bad).unwrap();
            let e = replay(&p, &mut State::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("line "), "{e}");
        }
    }

    #[test]
    fn an_append_after_an_unfinished_one_cuts_it_first() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let mut mem = State::default();
        super::super::save(&p, &mem).unwrap();
        let torn = |p: &Path| {
            let mut f = OpenOptions::new().append(true).open(path(p)).unwrap();
            f.write_all(br#"{"seq":2,"link":"b","epo"#).unwrap();
        };
        append(&p, &mut mem, vec![Entry::epoch("a", 3)]).unwrap();
        torn(&p);
        let mut back = crate::state::load(&p).unwrap().unwrap();
        assert_eq!(back, mem);
        append(&p, &mut back, vec![Entry::epoch("b", 7)]).unwrap();
        let again = crate::state::load(&p).unwrap().unwrap();
        assert_eq!((again.links["a"].epoch, again.links["b"].epoch), (3, 7));
        assert_eq!(again, back);
        // The very first append unfinished: nothing of it is kept.
        crate::state::compact(&p, &again).unwrap();
        torn(&p);
        let mut back = crate::state::load(&p).unwrap().unwrap();
        append(&p, &mut back, vec![Entry::epoch("c", 1)]).unwrap();
        assert_eq!(crate::state::load(&p).unwrap().unwrap(), back);
        assert_eq!(back.links["c"].epoch, 1);
    }

    /// Whole lines of an append that failed (and could not be cut off)
    /// are numbered again by the next append: a replay keeps the later
    /// lines, never the failed append's change, and the daemon starts.
    #[test]
    fn a_failed_appends_lines_give_way_to_the_next_append() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let mut mem = State::default();
        super::super::save(&p, &mem).unwrap();
        append(&p, &mut mem, vec![Entry::epoch("a", 3)]).unwrap();
        // The failed append: whole lines written, not in memory.
        let mut f = OpenOptions::new().append(true).open(path(&p)).unwrap();
        f.write_all(
            b"{\"seq\":2,\"link\":\"a\",\"epoch\":50}\n{\"seq\":3,\"link\":\"z\",\"epoch\":1}\n",
        )
        .unwrap();
        append(&p, &mut mem, vec![Entry::epoch("b", 7)]).unwrap();
        assert_eq!(mem.journal, 2);
        let back = crate::state::load(&p).unwrap().unwrap();
        assert_eq!(back, mem);
        assert_eq!(back.links["a"].epoch, 3);
        assert!(!back.links.contains_key("z"));
    }
}
