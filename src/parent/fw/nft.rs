//! nftables backend (DESIGN §5), run by the privileged parent on Linux. It
//! pipes each nft(8) script to one `nft -f -`, which the kernel applies as
//! one transaction: a rejected script leaves every chain as it was.
//! It touches only table `inet <anchor>`.
//!
//! The table's layout, the scripts and the checks of a bundle's statements
//! are [`crate::ruleset::nft`]'s; this backend decides which script runs
//! when, and reads the kernel back ([`readback`]).
//!
//! Why flips are set elements: in nf_tables, a transaction that adds a
//! `jump` or `goto` makes the kernel re-validate the whole table (5 ms at
//! 1,000 links), and an `nft` run that deletes rules or elements waits for
//! an RCU grace period when it closes its socket (ours is kept open: see
//! [`netlink`]). So the base chains send each link's
//! keys through table-wide maps (`ruleset::nft::dispatch`): to
//! `lock_<link>` while the keys are in the `locked_` sets, to `link_<link>`
//! otherwise. The lockdown statements are preloaded in `lock_<link>`, and a
//! flip to lockdown only adds the link's keys to the `locked_` sets in one
//! netlink transaction ([`netlink`]): no process, no rule. A flip to open
//! deletes them when the link chain already holds the open text, and
//! otherwise loads the chain whole with `nft -f`. Whatever our bookkeeping
//! believes, the read-back after each flip decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Firewall, Readback};
use crate::lock::Enforcement;
use crate::names::Names;
use crate::ruleset::nft::dispatch::{self, Kind, LinkKeys, SITE_SET};
use crate::ruleset::nft::{
    clear_script, end_site_lock, flip_script, guard_script, handshake_statements, lock_new_keys,
    lock_script, render_statements, skeleton,
};
use crate::ruleset::{Check, LinkCheck, LinkTarget, check_names, valid_name};
use crate::tool::{FwError, TOOL_TIMEOUT, Tool};
use first_read::{Baseline, Floor};
use netlink::{BOTH_FAMILIES, Change, Lookup};
use reverify::Loaded;

pub mod alive;
mod batch;
pub mod chain;
mod copy;
mod every;
mod first_read;
pub mod monitor;
pub mod netlink;
pub mod readback;
mod reverify;
mod source;
mod table;

/// The nftables backend.
pub struct Nft {
    nft: PathBuf,
    table: String,
    /// One shared copy of each bundle text the links hold (every link of a
    /// bundle holds one of the same few).
    texts: Names,
    /// Every link of the last `init`, in name order (the parent's own
    /// list), for loads that take many at once.
    targets: Arc<[LinkTarget]>,
    /// What is known of each of `targets`, beside it: one row per link,
    /// where there were eight maps keyed by name (at 10,000 links the heap
    /// profile counted 186, 130, 126 and 80 bytes a link for four of them).
    known: Vec<Known>,
    /// Lockdown text `stage` was asked to preload, per link (its place in
    /// `targets`), until `settle`.
    pending: BTreeMap<usize, Arc<str>>,
    /// `settle` left some of `pending` for the loop's next turn.
    settling: bool,
    /// Rules the kernel compiled for statements lately, for copies
    /// ([`copy`]).
    compiled: copy::Kept,
    /// The guard table may exist (a guard set by us, or left by an earlier
    /// run): read-backs list it too.
    guard_may_exist: bool,
    /// The dead-man switch as last asked for: None until the parent arms
    /// it; Some(None) disarmed; Some(Some(t)) armed with timeout t.
    alive: Option<Option<std::time::Duration>>,
    /// Netlink sequence numbers of the refreshes.
    seq: u32,
    /// The ruleset generation at which `verified` was read, while it is
    /// known that nothing but our own heartbeat, flips, and transactions
    /// that left our tables alone ([`monitor`]) have committed since: a tick
    /// then skips the listing (half a megabyte at 100 links). Used only
    /// once the heartbeat works, which proves this process's netlink sees
    /// the nftables that `nft` lists.
    verified_gen: Option<u32>,
    /// The generation at which a whole listing showed the table's skeleton
    /// whole (flags, base chains, maps, key sets): while the notifications
    /// show no change to it since ([`monitor::Ledger::skeleton_untouched`]),
    /// a link's read-back may read its own chains and keys alone.
    skeleton_gen: Option<u32>,
    /// The kernel's notifications of nf_tables changes, read from the
    /// first generation read on (None before, or where they cannot be had).
    monitor: Option<monitor::Monitor>,
    /// The generation read after the read of our table being judged.
    read_gen: Option<u32>,
    /// What [`Nft::first_read`] found for each floor, for that read.
    proofs: Vec<(Floor, bool)>,
    monitor_tried: bool,
    /// The links of the last netlink flip, until each is read back.
    last_flip: Option<Flipped>,
    /// `lock_<link>` lets WireGuard handshakes through (new_session).
    handshakes: bool,
    /// Set `site` may hold elements (a site lock of ours, or one left by an
    /// earlier run, as `init` found it): an open ends it first, and
    /// read-backs look it up.
    site_may_be_locked: bool,
    /// The generation read right after our site lock, until the read-back.
    site_flip: Option<Option<u32>>,
    /// The QBER sections of the links, in name order: section `i` is set
    /// `src<i>` (see `source.rs`).
    sources: Vec<String>,
    /// Sections whose `src<i>` may hold elements (a lock of ours since
    /// `init`): an open of one of their links ends it first.
    sources_may_be_locked: std::collections::BTreeSet<usize>,
    /// The section and the generation read right after our source lock,
    /// until the read-back.
    source_flip: Option<(usize, Option<u32>)>,
}

/// One chain's rules as read back, and their content when read over
/// netlink (None from `nft -j`).
type ChainRead = (Vec<readback::Rule>, Option<chain::Content>);

/// The links one netlink flip changed (their places in `targets`, in
/// order) and the generation read right after it: each link's read-back
/// then needs no listing ([`Nft::observe_flip`]).
struct Flipped {
    links: Vec<usize>,
    after: Option<u32>,
    /// An earlier link of the flip was read back at `after`, which was
    /// then the verified generation.
    checked: bool,
}

impl Flipped {
    fn new(mut links: Vec<usize>, after: Option<u32>) -> Flipped {
        links.sort_unstable();
        Flipped {
            links,
            after,
            checked: false,
        }
    }
}

/// What the backend knows of one link of the last `init`.
#[derive(Default)]
struct Known {
    /// The keys the link owns, as the skeleton's maps send them.
    keys: LinkKeys,
    /// Lockdown text known to be loaded in `lock_<link>`.
    staged: Option<Arc<str>>,
    /// Open text known to be loaded in `link_<link>`.
    opened: Option<Arc<str>>,
    /// This process loaded `lock_<link>` since `init`: found empty, it was
    /// emptied behind our back (a new link's is empty too, and locked; see
    /// `readback::judge`).
    lock_loaded: bool,
    /// This process has written `lock_<link>` (loaded it, cleared it, or
    /// tried to): kept across `init`, whose skeleton keeps the chains.
    lock_written: bool,
    /// The last listing showed rules in `lock_<link>`: unless this process
    /// wrote them (`lock_written`), an earlier run's or another tool's.
    lock_held_rules: bool,
    /// `lock_<link>` holds an older text than the bundle's lockdown: its
    /// preload was dropped because the chain was in force (`settle`).
    lock_stale: bool,
    /// The link's read-back at `verified_gen`.
    verified: Option<Readback>,
    /// The shape of the link's chains at `verified_gen`.
    shape: Option<readback::Shape>,
    /// What the first read over netlink of `link_<link>` after this
    /// process last wrote it showed: a later read showing other rules
    /// means someone else changed them (see [`Nft::as_loaded`]).
    link_content: Baseline,
    /// The same for `lock_<link>`.
    lock_content: Baseline,
}

impl Known {
    /// `lock_<link>` is (about to be) written by this process.
    fn lock_writing(&mut self) {
        (self.lock_loaded, self.lock_written) = (true, true);
        self.lock_stale = false;
    }

    /// The link's chain `which` is not known to hold our text any more.
    fn forget(&mut self, which: Loaded) {
        match which {
            Loaded::Link => self.opened = None,
            Loaded::Lock => self.staged = None,
        }
    }

    /// The content first read of the link's chain `which` since we wrote it.
    fn content_mut(&mut self, which: Loaded) -> &mut Baseline {
        match which {
            Loaded::Link => &mut self.link_content,
            Loaded::Lock => &mut self.lock_content,
        }
    }
}

impl Nft {
    pub fn new(nft: &Path, table: &str) -> Nft {
        Nft {
            nft: nft.to_path_buf(),
            table: table.to_string(),
            texts: Names::default(),
            targets: Arc::from([]),
            known: Vec::new(),
            pending: BTreeMap::new(),
            settling: false,
            compiled: Default::default(),
            guard_may_exist: true,
            alive: None,
            seq: 0,
            verified_gen: None,
            skeleton_gen: None,
            monitor: None,
            read_gen: None,
            proofs: Vec::new(),
            monitor_tried: false,
            last_flip: None,
            handshakes: false,
            site_may_be_locked: true,
            site_flip: None,
            sources: Vec::new(),
            sources_may_be_locked: Default::default(),
            source_flip: None,
        }
    }

    /// Whether a lockdown lets WireGuard's handshake messages through
    /// (FirewallConf::handshakes).
    pub fn with_handshakes(mut self, on: bool) -> Nft {
        self.handshakes = on;
        self
    }

    /// The statements of `lock_<link>`: the handshakes' pass when asked
    /// for, then the bundle's lockdown text.
    fn lock_statements(&self, link: &LinkTarget, ruleset: &str) -> Result<Vec<String>, FwError> {
        let mut stmts = match self.handshakes {
            true => handshake_statements(),
            false => Vec::new(),
        };
        let text = render_statements(link, ruleset).map_err(|e| {
            FwError::refused(format!("link {}: lockdown ruleset refused: {e}", link.name))
        })?;
        stmts.extend(text);
        Ok(stmts)
    }

    /// The ruleset generation, once the heartbeat has shown that netlink
    /// reaches our nftables; None otherwise or on any error.
    fn generation(&mut self) -> Option<u32> {
        if !matches!(self.alive, Some(Some(_))) {
            return None;
        }
        self.start_monitor();
        self.seq = self.seq.wrapping_add(4);
        alive::generation(self.seq).ok()
    }

    fn refresh_alive(&mut self, timeout: Option<std::time::Duration>) -> Result<(), FwError> {
        // Once a second, off the flips' path: the notifications of our own
        // transactions (the earlier heartbeats' among them) are read even while
        // no check needs them, so they never fill the socket's buffer.
        if let Some(m) = self.monitor.as_mut() {
            m.drain();
        }
        // Our own heartbeat touches only the `alive` set: if it was the
        // only transaction since the listing, what was verified still holds.
        self.seq = self.seq.wrapping_add(4);
        let r = alive::refresh(&self.table, self.seq, timeout)
            .map_err(|e| FwError::refused(format!("dead-man switch: {e}")));
        let after = self.generation();
        let verified = match r {
            Ok(()) => self.our_batch_since_verified(after),
            Err(_) => None,
        };
        self.set_verified_gen(verified);
        r
    }

    fn guard_table(&self) -> String {
        format!("{}_guard", self.table)
    }

    /// The read-back right after a flip: the link's own chains (small,
    /// whatever the number of links), and the guard if one may exist.
    fn observe_one(
        &mut self,
        links: &[LinkTarget],
        name: &str,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        let Some(link) = find(links, name) else {
            return Ok(BTreeMap::new());
        };
        if let Some(state) = self.observe_flip(link) {
            let rb = Readback {
                state,
                guarded: false,
            };
            if let Some(k) = self.known_mut(name) {
                k.verified = Some(rb.clone());
            }
            return Ok(BTreeMap::from([(name.to_string(), rb)]));
        }
        if let Some(rb) = self.still_verified(name) {
            return Ok(BTreeMap::from([(name.to_string(), rb)]));
        }
        // A link's own chains and keys cannot show a dormant table, a base
        // chain flushed or a map pointed elsewhere: read whole once the
        // skeleton may have changed since it was.
        if !self.skeleton_still() {
            let all = self.observe_every(links)?;
            let rb = (links.iter().zip(all))
                .find(|(l, _)| l.name == name)
                .map(|(_, rb)| rb);
            return Ok(rb.map(|rb| (name.to_string(), rb)).into_iter().collect());
        }
        let mut listing = readback::Listing::default();
        let i = self.index(name);
        for which in [Loaded::Link, Loaded::Lock] {
            let chain = which.chain(name);
            if let Some((rules, content)) = self.chain_rules(&chain)? {
                // Rules of ours replaced behind our back read as missing.
                if i.is_none_or(|i| self.as_loaded(i, which, content)) {
                    listing.chains.insert(chain, rules);
                }
            }
        }
        let guarded = if self.guard_may_exist {
            let guard = self.guard_table();
            let g = self.list(&guard, 1)?;
            readback::judge(std::slice::from_ref(link), None, g.as_ref(), &|_| true)[0].guarded
        } else {
            false
        };
        let (whole, held_rules) = readback::lock_chain(&listing, name);
        if !whole {
            self.forget_staged(name);
        }
        if let Some(k) = self.known_mut(name) {
            k.lock_held_rules = held_rules;
        }
        let state = match self.locked_holds(link) {
            Ok(holds) => readback::judge_shape(link, readback::shape(link, &listing), holds),
            Err(e) => super::Observed::damaged(e),
        };
        if !matches!(state, super::Observed::Open | super::Observed::Locked) {
            self.forget_opened(name);
        }
        Ok(BTreeMap::from([(
            name.to_string(),
            Readback { state, guarded },
        )]))
    }

    /// The link's verified read-back while nothing has touched our tables
    /// since it was made (a load of ours read back by [`Nft::reverify`], and
    /// each of its links then read back alone: at 10,000 links two chain
    /// dumps and a few lookups a link were a second and more).
    fn still_verified(&mut self, name: &str) -> Option<Readback> {
        let v = self.verified_gen?;
        let rb = self.known_of(name)?.verified.clone()?;
        let now = self.still(v)?;
        self.set_verified_gen(Some(now));
        Some(rb)
    }

    /// The link's keys against the `locked_` sets, each key looked up over
    /// netlink (a dump of the sets grows with the links: at 10,000, three
    /// dumps after each flip were most of an activation's time). A key not
    /// found counts as not locked only once its set is shown to be there.
    fn locked_holds(&mut self, link: &LinkTarget) -> Result<readback::Holds, String> {
        let keys = self.link_keys(link)?;
        if self.site_locked()? {
            return Ok(readback::Holds::of_keys(&keys, |_, _| true));
        }
        // Under its section's lock, a key in `src<i>_` is locked too.
        let by_source = self.source_locked(link)?;
        let mut found = std::collections::HashSet::new();
        for kind in Kind::ALL {
            let set = kind.locked_set();
            let mut missing = false;
            for key in keys.bytes(kind) {
                self.seq = self.seq.wrapping_add(4);
                let mut there = netlink::exists(&self.table, Lookup::Element(&set, &key), self.seq)
                    .map_err(|e| format!("set {set}: {e}"))?;
                if let (false, Some(i)) = (there, by_source) {
                    let of = kind.source_keys_set(i);
                    self.seq = self.seq.wrapping_add(4);
                    there = netlink::exists(&self.table, Lookup::Element(&of, &key), self.seq)
                        .map_err(|e| format!("set {of}: {e}"))?;
                }
                match there {
                    true => drop(found.insert((kind, key))),
                    false => missing = true,
                }
            }
            self.seq = self.seq.wrapping_add(4);
            if missing && !netlink::exists(&self.table, Lookup::Set(&set), self.seq)? {
                return Err(format!("set {set} missing"));
            }
        }
        Ok(readback::Holds::of_keys(&keys, |kind, b| {
            found.contains(&(kind, b.to_vec()))
        }))
    }

    /// Which families set `site` holds (ipv4, ipv6), looked up over
    /// netlink; neither, without a lookup, once it is known empty.
    fn site_elements(&mut self) -> Result<[bool; 2], String> {
        if !self.site_may_be_locked {
            return Ok([false; 2]);
        }
        self.families(SITE_SET)
    }

    /// Whether set `site` holds both families: every link locked.
    fn site_locked(&mut self) -> Result<bool, String> {
        Ok(self.site_elements()? == [true, true])
    }

    /// Ends a site lock before anything opens: every link's keys into the
    /// `locked_` sets and `site` emptied, in one transaction, so that each
    /// link stays locked on its own until its own open. Nothing in force
    /// opens. One `nft -f` (its size grows with the links, but an open is
    /// off the lockdown's path).
    fn end_site_lock(&mut self) -> Result<(), FwError> {
        let have = self.site_elements().map_err(FwError::refused)?;
        if have.contains(&true) {
            let keys = self.all_keys();
            let script = end_site_lock(&self.table, &keys);
            self.run("end the site lock, every link locked on its own", &script)?;
        }
        self.site_may_be_locked = false;
        Ok(())
    }

    /// Per link, its keys that the kernel's `open_` maps do not dispatch
    /// yet (all of them when the maps cannot be read, as on a first load).
    fn undispatched(&mut self) -> Vec<LinkKeys> {
        let mut have = HashMap::new();
        for kind in Kind::ALL {
            self.seq = self.seq.wrapping_add(4);
            let keys = netlink::elements(&self.table, &kind.open_map(), self.seq);
            let set: std::collections::HashSet<Vec<u8>> =
                keys.unwrap_or_default().into_iter().collect();
            have.insert(kind, set);
        }
        self.known
            .iter()
            .map(|k| k.keys.filter(|kind, b| !have[&kind].contains(b)))
            .collect()
    }

    /// Where link `name` is in `targets` and `known`.
    fn index(&self, name: &str) -> Option<usize> {
        (self.targets)
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
    }

    /// What is known of link `name`, if it was in the last `init`.
    fn known_of(&self, name: &str) -> Option<&Known> {
        self.index(name).map(|i| &self.known[i])
    }

    fn known_mut(&mut self, name: &str) -> Option<&mut Known> {
        self.index(name).map(|i| &mut self.known[i])
    }

    /// The keys link `name` owns, if it was in the last `init`.
    fn keys_of(&self, name: &str) -> Option<&LinkKeys> {
        self.known_of(name).map(|k| &k.keys)
    }

    /// The keys of every link of the last `init`.
    fn all_keys(&self) -> Vec<LinkKeys> {
        self.known.iter().map(|k| k.keys.clone()).collect()
    }

    /// What a read-back showed not as loaded is no longer known loaded.
    fn forget_staged(&mut self, name: &str) {
        if let Some(k) = self.known_mut(name) {
            k.staged = None;
        }
    }

    /// Link `name`'s chains are (about to be) replaced by drops: neither
    /// holds a bundle's text, and no preload is pending.
    fn forget_loaded(&mut self, name: &str) {
        if let Some(i) = self.index(name) {
            self.pending.remove(&i);
            let k = &mut self.known[i];
            (k.opened, k.staged) = (None, None);
            k.lock_writing();
        }
    }

    /// Our write of link `place`'s chain `which` succeeded: what the next
    /// read shows is what we loaded. Only then: a write that failed left
    /// the chain as it was (an `nft -f` run and a netlink batch are each
    /// one transaction), and what was read of it before still holds.
    /// `floor`: [`Nft::floor`] taken before the write began.
    fn wrote(&mut self, place: usize, which: Loaded, floor: Option<Floor>) {
        *self.known[place].content_mut(which) = Baseline::Unread(floor);
    }

    /// [`Nft::wrote`] both chains of link `name`.
    fn wrote_both(&mut self, name: &str, floor: Option<Floor>) {
        if let Some(i) = self.index(name) {
            self.wrote(i, Loaded::Link, floor);
            self.wrote(i, Loaded::Lock, floor);
        }
    }

    fn forget_opened(&mut self, name: &str) {
        if let Some(k) = self.known_mut(name) {
            k.opened = None;
        }
    }

    /// The keys `link` owns, as `init` dispatched them.
    fn link_keys(&self, link: &LinkTarget) -> Result<LinkKeys, String> {
        self.keys_of(&link.name)
            .cloned()
            .ok_or_else(|| format!("link {} is not in the table's maps", link.name))
    }

    /// The read-back right after a netlink flip, without a listing: when
    /// the generation right after the flip is the verified one plus one, the
    /// flip (which committed, so counted one) was the only transaction
    /// since, the chains are as verified and only the set changed; it is
    /// read back over netlink. None when that cannot be shown (then the
    /// chains are listed).
    fn observe_flip(&mut self, link: &LinkTarget) -> Option<super::Observed> {
        let mut flip = self.last_flip.take()?;
        // Another link's read-back (one applied alone in the same turn as
        // the flip) leaves the flip to its own links.
        let place = self.index(&link.name);
        let Some((i, at)) = place.and_then(|i| Some((i, flip.links.binary_search(&i).ok()?)))
        else {
            self.last_flip = Some(flip);
            return None;
        };
        flip.links.remove(at);
        let shape = self.known[i].shape?;
        let after = match flip.checked {
            true => flip.after,
            false => self.our_batch_since_verified(flip.after),
        }?;
        if self.guard_may_exist {
            return None;
        }
        let holds = self.locked_holds(link).ok()?;
        // Nothing may have slipped in while the sets were read.
        let now = self.still(after)?;
        self.set_verified_gen(Some(now));
        // The flip's other links are read back after this one, from `now`.
        if !flip.links.is_empty() {
            self.last_flip = Some(Flipped {
                after: Some(now),
                checked: true,
                ..flip
            });
        }
        Some(readback::judge_shape(link, shape, holds))
    }

    /// One chain's rules: over netlink, a dump of that chain alone, once the
    /// heartbeat has shown that this process's netlink reaches our
    /// nftables (as [`Nft::generation`]); else listed by nft, which fetches
    /// the whole table first (0.7 s a chain at 10,000 links). None when nft
    /// lists it as missing; netlink shows a missing chain as an empty one,
    /// and the judges take both for "not as loaded".
    fn chain_rules(&mut self, chain: &str) -> Result<Option<ChainRead>, FwError> {
        if matches!(self.alive, Some(Some(_))) {
            self.reading();
            self.seq = self.seq.wrapping_add(4);
            return chain::read(&self.table, chain, self.seq)
                .map(|(rules, content)| Some((rules, Some(content))))
                .map_err(|e| FwError::refused(format!("read back chain {chain}: {e}")));
        }
        Ok(self
            .list_chain(chain)?
            .and_then(|mut l| l.chains.remove(chain))
            .map(|rules| (rules, None)))
    }

    /// The content of every chain of our table that holds rules, from one
    /// dump (at 10,000 links it grows with every rule, as the listing
    /// does); None until the heartbeat has shown that netlink reaches it.
    fn chain_contents(&mut self) -> Result<Option<HashMap<String, chain::Content>>, FwError> {
        if !matches!(self.alive, Some(Some(_))) {
            return Ok(None);
        }
        self.reading();
        self.seq = self.seq.wrapping_add(4);
        chain::contents(&self.table, self.seq)
            .map(Some)
            .map_err(|e| FwError::refused(format!("read back the rules of our table: {e}")))
    }

    /// Whether `content`, just read of chain `which` of link `place`, is
    /// what the first read since our last write of it showed; the first
    /// read is kept as that, once the kernel's notifications do not show
    /// anyone else's transaction on our tables since the write began
    /// ([`first_read`]). A read by `nft -j` (None) has nothing to compare:
    /// true.
    ///
    /// What the kernel dumps of a rule is what it compiled, so a rule
    /// changed in place (`nft replace rule`, same count, tag copied) or a
    /// rule deleted and another added reads differently; counters do not.
    fn as_loaded(&mut self, place: usize, which: Loaded, content: Option<chain::Content>) -> bool {
        let Some(now) = content else {
            return true;
        };
        match *self.known[place].content_mut(which) {
            Baseline::Read(was) if was != now => {
                // Kept until we write the chain again: it is not ours.
                self.known[place].forget(which);
                false
            }
            Baseline::Read(_) => true,
            Baseline::Theirs => false,
            Baseline::Unread(floor) => {
                if !self.first_read(floor) {
                    *self.known[place].content_mut(which) = Baseline::Theirs;
                    self.known[place].forget(which);
                    return false;
                }
                *self.known[place].content_mut(which) = Baseline::Read(now);
                true
            }
        }
    }

    /// `nft -j list chain inet <t> <chain>`; None when it does not exist.
    fn list_chain(&self, chain: &str) -> Result<Option<readback::Listing>, FwError> {
        self.list_json(&["chain", "inet", &self.table, chain], TOOL_TIMEOUT)
    }

    /// `nft -j list table inet <t>`, a table that holds about `links`
    /// links' chains (the listing's time grows with them), with whether it
    /// is dormant read after it; None when the table does not exist.
    fn list(&mut self, table: &str, links: usize) -> Result<Option<readback::Listing>, FwError> {
        let listed = self.list_json(&["table", "inet", table], crate::tool::timeout_for(links))?;
        let Some(mut listing) = listed else {
            return Ok(None);
        };
        self.seq = self.seq.wrapping_add(4);
        let flags = table::flags(table, self.seq)
            .map_err(|e| FwError::refused(format!("read back table {table}: {e}")))?;
        // Gone since the listing: as nft would have said.
        let Some(flags) = flags else {
            return Ok(None);
        };
        listing.dormant = flags & table::DORMANT != 0;
        Ok(Some(listing))
    }

    /// `nft -j list <what...>`, parsed; None when nft says it does not exist.
    fn list_json(
        &self,
        what: &[&str],
        timeout: std::time::Duration,
    ) -> Result<Option<readback::Listing>, FwError> {
        let mut args = vec!["-j", "list"];
        args.extend_from_slice(what);
        let what = format!("read back {}", what.join(" "));
        let tool = Tool::new(&self.nft, &args);
        match tool.run_reading(&what, "", timeout, readback::parse_reader) {
            Ok((parsed, _)) => parsed
                .map(Some)
                .map_err(|e| FwError::refused(format!("{what}: {e}"))),
            Err(e) if e.stderr.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One netlink transaction on the `locked_` sets: the link's keys
    /// added (lockdown) or, for an open, taken out
    /// ([`Nft::commit_locked`]).
    fn flip(&mut self, link: &LinkTarget, lock: bool) -> Result<(), FwError> {
        let keys = self.link_keys(link).map_err(FwError::refused)?;
        let what = format!("locked_ sets for link {}", link.name);
        let places = self.index(&link.name).into_iter().collect();
        self.commit_locked(&[keys], places, lock, &what)
    }

    /// A slow open of `name`: its own script (`own`, loading `stmts`), with
    /// the open chains of the links that may take the same text now
    /// ([`batch`]) in the same run, or copied from its chain after it
    /// ([`copy`]); if that run fails, its own script alone.
    fn open_with_others(
        &mut self,
        what: &str,
        name: &str,
        ruleset: &str,
        own: String,
        stmts: Vec<String>,
    ) -> Result<(), FwError> {
        let others = self.open_others(name, ruleset);
        let me = self.index(name);
        let mut loaded: Vec<(usize, Loaded)> = me.map(|i| (i, Loaded::Link)).into_iter().collect();
        let Some(i) = me else {
            self.run(what, &own)?;
            self.reverify(&loaded, 1);
            return Ok(());
        };
        let alone = others.is_empty();
        let many = match alone {
            true => what.to_string(),
            false => format!(
                "{what}, and the open rules of {} locked links",
                others.len()
            ),
        };
        let places: Vec<usize> = others.iter().map(|l| l.place).collect();
        // Only a success proves what their chains hold: a load that fails
        // part way may have replaced some of them.
        for &p in &places {
            self.known[p].opened = None;
        }
        let mut loads = vec![batch::Load {
            place: i,
            stmts,
            script: own.clone(),
            keys: Some(Enforcement::Open),
        }];
        loads.extend(others);
        let done = self.load_chains(&many, Loaded::Link, loads);
        if done.failed.contains(&i) {
            if let (true, Some(e)) = (alone, done.error) {
                return Err(e);
            }
            let floor = self.floor();
            self.run(what, &own)?;
            self.wrote(i, Loaded::Link, floor);
            self.reverify(&loaded, 1);
            return Ok(());
        }
        let text = self.texts.of(ruleset);
        for p in places.into_iter().filter(|p| !done.failed.contains(p)) {
            self.known[p].opened = Some(text.clone());
            loaded.push((p, Loaded::Link));
        }
        if done.failed.is_empty() {
            self.reverify(&loaded, done.commits);
        }
        Ok(())
    }

    fn run(&self, what: &str, script: &str) -> Result<String, FwError> {
        let tool = Tool::new(&self.nft, &["-f", "-"]);
        crate::log::debug(format_args!("fw: {} <<'EOF'\n{script}EOF", tool.line()));
        let out = tool.run(what, script, TOOL_TIMEOUT)?;
        if !script.trim().is_empty() {
            netlink::committed();
        }
        Ok(out.stdout)
    }
}

/// Link `name` among `links` ([`super::covered`]: by halves when they are
/// in name order).
fn find<'a>(links: &'a [LinkTarget], name: &str) -> Option<&'a LinkTarget> {
    super::covered(links, Some(name)).first()
}

impl LinkCheck for Nft {
    fn extension(&self) -> &'static str {
        "nft"
    }

    fn check(&self, link: &LinkTarget, state: Enforcement, ruleset: &str) -> Result<(), String> {
        Check::nft(&self.nft, &self.table).check(link, state, ruleset)
    }

    fn check_links(
        &self,
        links: &[&LinkTarget],
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), (String, String)> {
        Check::nft(&self.nft, &self.table).check_links(links, state, ruleset)
    }

    fn shared_check(&self) -> Option<Check> {
        Some(Check::nft(&self.nft, &self.table))
    }
}

impl Firewall for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn init(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        self.init_shared(&Arc::from(links))
    }

    fn init_shared(&mut self, links: &Arc<[LinkTarget]>) -> Result<(), FwError> {
        for l in links.iter() {
            check_names(&self.table, l)?;
        }
        // What this process wrote stays its own: the skeleton keeps chains.
        let written: BTreeSet<String> = (self.targets.iter().zip(&self.known))
            .filter(|(_, k)| k.lock_written)
            .map(|(t, _)| t.name.clone())
            .collect();
        // And what was first read of them stays what they must hold: a
        // rebuild (after damage anyone can cause) must not take a chain
        // changed meanwhile as loaded. A table made anew reads as changed,
        // and each link's chains are loaded again.
        let mut contents: HashMap<String, (Baseline, Baseline)> =
            (self.targets.iter().zip(&self.known))
                .filter(|(_, k)| {
                    k.link_content != Baseline::default() || k.lock_content != Baseline::default()
                })
                .map(|(t, k)| (t.name.clone(), (k.link_content, k.lock_content)))
                .collect();
        // A dormant table's base chains see no packet; nft's `add table`
        // in the skeleton need not wake it.
        self.seq = self.seq.wrapping_add(4);
        if let Ok(Some(flags)) = table::flags(&self.table, self.seq) {
            if flags & table::DORMANT != 0 {
                self.seq = self.seq.wrapping_add(4);
                table::wake(&self.table, self.seq).map_err(FwError::refused)?;
            }
        }
        // A rebuilt table may have lost the preloaded lockdown chains.
        self.known.clear();
        self.pending.clear();
        self.compiled.clear();
        self.texts.forget_unheld();
        self.site_flip = None;
        self.source_flip = None;
        self.skeleton_gen = None;
        // Looked up by name (`Nft::index`).
        self.targets = crate::ruleset::in_name_order(links);
        let mut owned = dispatch::owned(links);
        self.known = (self.targets.iter())
            .map(|t| {
                let (link_content, lock_content) = contents.remove(&t.name).unwrap_or_default();
                Known {
                    keys: owned.remove(&t.name).unwrap_or_default(),
                    lock_written: written.contains(&t.name),
                    link_content,
                    lock_content,
                    ..Known::default()
                }
            })
            .collect();
        self.sources = dispatch::sources(links);
        let held = self.held_source_locks();
        let mut script = skeleton(&self.table, links);
        let new = self.undispatched();
        script.push_str(&lock_new_keys(&self.table, &new));
        script.push_str(&self.end_held(held.as_deref().ok()));
        self.run("create nftables table and base chains", &script)?;
        // Every section's set is empty now, unless it could not be read.
        self.sources_may_be_locked = match held {
            Ok(_) => Default::default(),
            Err(_) => (0..self.sources.len()).collect(),
        };
        // A site lock (ours, or an earlier run's) is looked up after each
        // flip only while one may be there: found empty now, only our own
        // `lock_site` sets one again. Unknown stays "may be".
        self.site_may_be_locked = true;
        self.site_may_be_locked = self.site_elements() != Ok([false, false]);
        // A rebuilt set is empty: re-arm at once, not at the next tick.
        match self.alive {
            Some(t) => self.refresh_alive(t),
            None => Ok(()),
        }
    }

    fn keep_alive(&mut self, timeout: Option<std::time::Duration>) -> Result<(), FwError> {
        self.alive = Some(timeout);
        self.refresh_alive(timeout)
    }

    fn switch_lapsed(&mut self) -> Result<bool, FwError> {
        let have = self
            .families(crate::ruleset::nft::ALIVE_SET)
            .map_err(FwError::refused)?;
        Ok(have != [true, true])
    }

    fn apply(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        check_names(&self.table, link)?;
        let stmts = match state {
            Enforcement::Lockdown => self.lock_statements(link, ruleset)?,
            Enforcement::Open => render_statements(link, ruleset).map_err(|e| {
                FwError::refused(format!("link {}: open ruleset refused: {e}", link.name))
            })?,
        };
        if state == Enforcement::Open {
            self.end_site_lock()?;
            self.end_source_lock(link)?;
        }
        let what = format!("load {state} rules for link {}", link.name);
        let i = self.index(&link.name);
        let text = self.texts.of(ruleset);
        // Whatever happens, only a success proves what the chains hold.
        let (opened, staged) = match i {
            Some(i) => {
                self.pending.remove(&i);
                let k = &mut self.known[i];
                (k.opened.take(), k.staged.take())
            }
            // Not in the table's maps: refused below (no keys).
            None => (None, None),
        };
        // Kept for the link when it is known: `link_keys` refuses it else.
        let keep = |nft: &mut Nft, opened, staged| {
            if let Some(k) = i.map(|i| &mut nft.known[i]) {
                k.opened = opened;
                k.staged = staged;
            }
        };
        match state {
            Enforcement::Open => {
                // The chain already holds this text: only the sets change,
                // and not at all when no key of the link is in them (a
                // re-application of an open link: a transaction with a
                // delete waits for the kernel, ~10 ms at 10,000 links).
                if opened.as_deref() == Some(ruleset) {
                    if self.locked_holds(link) != Ok(readback::Holds::None) {
                        self.flip(link, false)?;
                    }
                } else {
                    let keys = self.link_keys(link).map_err(FwError::refused)?;
                    let own = flip_script(&self.table, link, &keys, &stmts);
                    self.open_with_others(&what, &link.name, ruleset, own, stmts)?;
                }
                // An open leaves lock_<link> as it was.
                keep(self, Some(text), staged);
            }
            Enforcement::Lockdown if staged.as_deref() == Some(ruleset) => {
                self.flip(link, true)?;
                keep(self, opened, Some(text));
            }
            Enforcement::Lockdown => {
                // Slow path: load the lockdown chain and add the keys; the
                // link chain stays as it was.
                let keys = self.link_keys(link).map_err(FwError::refused)?;
                if let Some(k) = self.known_mut(&link.name) {
                    k.lock_writing();
                }
                let script = lock_script(&self.table, link, &keys, &stmts);
                // Copied where the text was compiled lately: no process.
                let commits = match i {
                    Some(place) => {
                        let load = batch::Load {
                            place,
                            stmts,
                            script,
                            keys: Some(Enforcement::Lockdown),
                        };
                        let done = self.load_chains(&what, Loaded::Lock, vec![load]);
                        if let Some(e) = done.error {
                            return Err(e);
                        }
                        done.commits
                    }
                    None => self.run(&what, &script).map(|_| 1)?,
                };
                keep(self, opened, Some(text));
                let loaded: Vec<(usize, Loaded)> =
                    i.map(|i| (i, Loaded::Lock)).into_iter().collect();
                self.reverify(&loaded, commits);
            }
        }
        Ok(())
    }

    fn open_many(&mut self, links: &[&LinkTarget], ruleset: &str) -> Vec<Result<(), FwError>> {
        self.open_links(links, ruleset)
    }

    fn lock_many(&mut self, links: &[&LinkTarget], ruleset: &str) -> Vec<Result<(), FwError>> {
        self.lock_links(links, ruleset, true)
    }

    fn reload_locks(
        &mut self,
        links: &[&LinkTarget],
        ruleset: Option<&str>,
    ) -> Vec<Result<(), FwError>> {
        match ruleset {
            Some(r) => self.lock_links(links, r, false),
            None => self.clear_links(links, false),
        }
    }

    fn clear_many(&mut self, links: &[&LinkTarget]) -> Vec<Result<(), FwError>> {
        self.clear_links(links, true)
    }

    // One transaction and each link's read-back (a few netlink lookups),
    // or one nft run, which costs about the same for one link's lockdown
    // chain as for 64 (nft reads the whole table first): a QBER lockdown
    // waits no longer behind them than behind one link's.
    fn links_at_once(&self) -> usize {
        64
    }

    // 64 to a run made a new bundle's re-application at 10,000 links 157
    // runs (~75 ms each, the parent's loop waiting on each, and with it
    // every install and round); all in one run took 0.3-0.6 s, 2,048 take
    // 0.14-0.18 s a run (five at 10,000 links; 0.22-0.28 s on a slower
    // machine), which a QBER lockdown may wait behind: as long as any
    // other run of ours (`batch::LINKS_A_RUN`).
    fn relocks_at_once(&self) -> usize {
        batch::LINKS_A_RUN
    }

    fn stage(
        &mut self,
        link: &LinkTarget,
        state: Enforcement,
        ruleset: &str,
    ) -> Result<(), FwError> {
        let staged = self.known_of(&link.name).and_then(|k| k.staged.as_deref());
        if state != Enforcement::Lockdown || staged == Some(ruleset) {
            return Ok(());
        }
        check_names(&self.table, link)?;
        // Refused now, loaded by `settle` with the others (a link not in the
        // table's maps never is: nothing to preload).
        self.lock_statements(link, ruleset)?;
        if let Some(i) = self.index(&link.name) {
            let text = self.texts.of(ruleset);
            self.pending.insert(i, text);
        }
        Ok(())
    }

    fn settling(&self) -> bool {
        // What was left may have gone since (applied, or the table rebuilt).
        self.settling && !self.pending.is_empty()
    }

    fn settle(&mut self) -> Vec<(String, FwError)> {
        let errors = self.settle_stages();
        // The texts of an earlier bundle that no link holds any more.
        self.texts.forget_unheld();
        errors
    }

    // The site set locks every link whatever it holds: the links and the
    // bundle's text are in the lockdown chains already.
    fn lock_site(&mut self, _: &[LinkTarget], _: Option<&str>) -> Result<bool, FwError> {
        let change = [Change::Add(SITE_SET, &BOTH_FAMILIES, None)];
        crate::log::debug(format_args!("fw: netlink {change:?}"));
        self.seq = self.seq.wrapping_add(6);
        self.site_may_be_locked = true;
        netlink::transact(&self.table, self.seq, &change, "site lock").map_err(FwError::refused)?;
        self.site_flip = Some(self.generation());
        Ok(true)
    }

    fn lock_source(
        &mut self,
        source: &str,
        _: &[LinkTarget],
        _: Option<&str>,
    ) -> Result<bool, FwError> {
        self.lock_source_set(source)
    }

    fn passes_handshakes(&self, link: &LinkTarget) -> bool {
        // lock_<link> holds our text, handshakes first.
        self.handshakes && (self.known_of(&link.name)).is_some_and(|k| k.staged.is_some())
    }

    fn lock_inherited(&self, link: &LinkTarget) -> bool {
        (self.known_of(&link.name))
            .is_some_and(|k| k.lock_stale || (k.lock_held_rules && !k.lock_written))
    }

    fn clear(&mut self, link: &LinkTarget) -> Result<(), FwError> {
        check_names(&self.table, link)?;
        // Both chains become drops: works with either deleted or damaged.
        self.forget_loaded(&link.name);
        let script = clear_script(&self.table, link);
        let floor = self.floor();
        self.run(
            &format!("replace chain of link {} by a drop", link.name),
            &script,
        )?;
        self.wrote_both(&link.name, floor);
        Ok(())
    }

    fn observe(
        &mut self,
        links: &[LinkTarget],
        only: Option<&str>,
    ) -> Result<BTreeMap<String, Readback>, FwError> {
        // Only the links read are checked: a flip's read-back stays O(1).
        if let Some(name) = only {
            if let Some(l) = find(links, name) {
                check_names(&self.table, l)?;
            }
            return self.observe_one(links, name);
        }
        let seen = self.observe_every(links)?;
        Ok((links.iter().zip(seen))
            .map(|(l, rb)| (l.name.clone(), rb))
            .collect())
    }

    fn observe_each(&mut self, links: &[LinkTarget]) -> Result<Vec<Readback>, FwError> {
        self.observe_every(links)
    }

    fn set_guard(&mut self, links: &[LinkTarget]) -> Result<(), FwError> {
        for l in links {
            check_names(&self.table, l)?;
        }
        if links.is_empty() && !self.guard_may_exist {
            return Ok(());
        }
        let script = guard_script(&self.guard_table(), links);
        self.guard_may_exist = true;
        self.run("replace the guard table", &script).map(drop)
    }
}

/// Without a config (`qkdpfd -L`): whether the table, read back now, drops
/// every packet it dispatches with `links`' chains ([`readback::site_drops_all`]).
pub fn site_drops_all(nft: &Path, table: &str, links: &[String]) -> Result<(), String> {
    let mut n = Nft::new(nft, table);
    match n.list(table, links.len()) {
        Ok(Some(listing)) => readback::site_drops_all(&listing, links),
        Ok(None) => Err(format!("table inet {table} does not exist")),
        Err(e) => Err(e.to_string()),
    }
}

/// The names of the links whose chains `link_<name>` are in our table:
/// what `qkdpfd -L` locks when the config does not parse.
pub fn link_chains(nft: &Path, table: &str) -> Result<Vec<String>, FwError> {
    let mut n = Nft::new(nft, table);
    // How many links the table holds is what we are here to find: give the
    // listing the time of the largest hub measured (10,000 links) rather
    // than leave a big table's links open for its size.
    let listing = n.list(table, 10_000)?.ok_or_else(|| {
        FwError::refused(format!("table inet {table} does not exist: no link found"))
    })?;
    let mut names: Vec<String> = listing
        .chains
        .keys()
        .filter_map(|c| c.strip_prefix("link_"))
        .filter(|n| valid_name(n))
        .map(String::from)
        .collect();
    names.sort();
    Ok(names)
}
