//! When each link next needs the engine's attention, kept sorted.
//!
//! The main loop sleeps until the earliest deadline of any link and then
//! ticks the links that are due. Finding those by walking every link made
//! each turn of the loop O(links): a 10,000-link hub polls its QBER
//! sources 10,000 times a second, and the walk then took the whole core
//! (the engine never answered `qkdctl policy load`). Here the earliest
//! deadline is the top of a binary heap and a changed deadline costs
//! O(log links); the owner re-sets a link's deadline each time it handles
//! an input for it. Each link keeps its deadline and its place in the index
//! in a field of its own (a [`Registered`]), so the index needs no map by
//! name (at 10,000 links that map and its names were 1.6 MB of each
//! engine).
//!
//! The heap and the links' shared names lie in two vectors made when the
//! links are (a [`Deadlines::rebuild`] at each configure): a deadline that
//! moves allocates nothing. A B-tree set did the same job but allocated and
//! freed nodes as entries moved, 100,000 moves a second at 10,000 links; its
//! ~1.5 MB of nodes, made among the rounds' short-lived buffers, lay all
//! over the heap, and each kept its page of freed memory resident.

use std::sync::Arc;
use std::time::Instant;

/// A link's place that is not in the heap.
const NONE: u32 = u32::MAX;

/// The deadline a link has in a [`Deadlines`] and its place there; kept by
/// the link, changed only by the index.
#[derive(Debug, Default)]
pub struct Registered {
    at: Option<Instant>,
    /// The index's rebuild count and the link's slot, once it has one: a
    /// slot given before the last rebuild is no longer the link's.
    slot: Option<(u32, u32)>,
}

#[derive(Debug, Default)]
pub struct Deadlines {
    /// (deadline, slot): a binary min-heap by deadline.
    heap: Vec<(Instant, u32)>,
    /// By slot: the link's shared name and its place in `heap` ([`NONE`]
    /// while it has no deadline).
    slots: Vec<(Arc<str>, u32)>,
    /// Rebuilds so far.
    built: u32,
}

impl Deadlines {
    /// Moves `link` from the deadline it has here to `due` (None: none).
    pub fn set(&mut self, link: &str, registered: &mut Registered, due: Option<Instant>) {
        if registered.at == due {
            return;
        }
        let slot = match registered.slot {
            Some((built, slot)) if built == self.built => slot as usize,
            // Given before the last rebuild, whose heap does not hold its
            // old deadline: nothing to take out.
            Some(_) if due.is_none() => {
                registered.at = None;
                return;
            }
            // A slot of its own from now on.
            _ => {
                let slot = self.slots.len();
                self.slots.push((Arc::from(link), NONE));
                registered.slot = Some((self.built, slot as u32));
                slot
            }
        };
        debug_assert_eq!(&*self.slots[slot].0, link);
        let at = self.slots[slot].1;
        match (due, at) {
            (Some(t), NONE) => {
                self.heap.push((t, slot as u32));
                self.place(self.heap.len() - 1);
                self.up(self.heap.len() - 1);
            }
            (Some(t), at) => {
                let at = at as usize;
                self.heap[at].0 = t;
                let at = self.up(at);
                self.down(at);
            }
            (None, NONE) => {}
            (None, at) => self.remove(at as usize),
        }
        registered.at = due;
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|(t, _)| *t)
    }

    /// The links due at `now`, earliest first (of equal deadlines, by
    /// name): their shared names (a copy of each, made every poll of every
    /// link, was a stream of small chunks among the long-lived ones).
    pub fn due(&self, now: Instant) -> Vec<Arc<str>> {
        // The heap's entries due are the top and, below each, its children
        // that are due too.
        let mut found: Vec<(Instant, u32)> = Vec::new();
        let mut walk = vec![0usize];
        while let Some(i) = walk.pop() {
            match self.heap.get(i) {
                Some(&(t, slot)) if t <= now => {
                    found.push((t, slot));
                    walk.extend([2 * i + 1, 2 * i + 2]);
                }
                _ => {}
            }
        }
        let name = |slot: u32| &self.slots[slot as usize].0;
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| name(a.1).cmp(name(b.1))));
        found
            .into_iter()
            .map(|(_, slot)| name(slot).clone())
            .collect()
    }

    /// Every link's entry made anew: (its shared name, what it keeps, its
    /// deadline). A link left out is no longer here.
    pub fn rebuild<'a>(
        &mut self,
        links: impl IntoIterator<Item = (&'a Arc<str>, &'a mut Registered, Option<Instant>)>,
    ) {
        self.built = self.built.wrapping_add(1);
        let links = links.into_iter();
        // Exactly as many as there are links: vectors grown by pushes
        // alone end with up to twice the room.
        let room = links.size_hint().0;
        (self.heap, self.slots) = (Vec::with_capacity(room), Vec::with_capacity(room));
        for (link, registered, due) in links {
            registered.at = None;
            registered.slot = Some((self.built, self.slots.len() as u32));
            self.slots.push((link.clone(), NONE));
            self.set(link, registered, due);
        }
    }

    /// Drops whatever `link` has here, found by a walk: for a link gone
    /// without taking its entry along, which the owners never leave.
    pub fn forget(&mut self, link: &str) {
        while let Some(at) =
            (self.heap.iter()).position(|(_, s)| &*self.slots[*s as usize].0 == link)
        {
            self.remove(at);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    /// Takes the entry at `at` out of the heap.
    fn remove(&mut self, at: usize) {
        let (_, slot) = self.heap.swap_remove(at);
        self.slots[slot as usize].1 = NONE;
        if at < self.heap.len() {
            self.place(at);
            let at = self.up(at);
            self.down(at);
        }
    }

    /// Records in its slot where the entry at `at` now is.
    fn place(&mut self, at: usize) {
        let slot = self.heap[at].1 as usize;
        self.slots[slot].1 = at as u32;
    }

    /// Moves the entry at `at` up while it is earlier than its parent;
    /// where it ends.
    fn up(&mut self, mut at: usize) -> usize {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].0 <= self.heap[at].0 {
                break;
            }
            self.heap.swap(parent, at);
            self.place(at);
            at = parent;
        }
        self.place(at);
        at
    }

    /// Moves the entry at `at` down while a child is earlier.
    fn down(&mut self, mut at: usize) {
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut first = at;
            if l < self.heap.len() && self.heap[l].0 < self.heap[first].0 {
                first = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[first].0 {
                first = r;
            }
            if first == at {
                break;
            }
            self.heap.swap(first, at);
            self.place(at);
            at = first;
        }
        self.place(at);
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, Registered};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    fn names(v: Vec<std::sync::Arc<str>>) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn earliest_first_and_moved_not_duplicated() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Deadlines::default();
        let mut r: HashMap<&str, Registered> = HashMap::new();
        let mut set = |d: &mut Deadlines, l: &'static str, due| {
            d.set(l, r.entry(l).or_default(), due);
        };
        assert_eq!(d.next(), None);
        set(&mut d, "b", Some(s(5)));
        set(&mut d, "a", Some(s(3)));
        set(&mut d, "c", Some(s(3)));
        assert_eq!(d.next(), Some(s(3)));
        assert_eq!(names(d.due(s(2))), Vec::<String>::new());
        assert_eq!(names(d.due(s(3))), ["a", "c"]);
        // Moving a link leaves no stale entry behind.
        set(&mut d, "a", Some(s(9)));
        assert_eq!(d.len(), 3);
        assert_eq!(names(d.due(s(5))), ["c", "b"]);
        set(&mut d, "c", None);
        set(&mut d, "b", None);
        assert_eq!(d.next(), Some(s(9)));
        assert_eq!(d.len(), 1);
        // Unchanged and absent links are no-ops.
        set(&mut d, "a", Some(s(9)));
        set(&mut d, "zz", None);
        assert_eq!(d.len(), 1);
        d.forget("a");
        assert_eq!(d.next(), None);
    }

    #[test]
    fn a_rebuild_starts_every_link_afresh() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let (mut a, mut b) = (Registered::default(), Registered::default());
        d.set("a", &mut a, Some(t0));
        d.set("b", &mut b, Some(t0));
        // A link left out of the rebuild is gone; one kept moves.
        let later = t0 + Duration::from_secs(1);
        let name: std::sync::Arc<str> = "a".into();
        d.rebuild([(&name, &mut a, Some(later))]);
        // The name given is the one kept: no copy of its own.
        assert_eq!(std::sync::Arc::strong_count(&name), 2);
        assert_eq!(d.len(), 1);
        assert_eq!(names(d.due(later)), ["a"]);
        d.set("a", &mut a, None);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn a_link_registered_before_a_rebuild_moves_no_other() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Deadlines::default();
        let (mut gone, mut kept) = (Registered::default(), Registered::default());
        d.set("gone", &mut gone, Some(s(1)));
        d.set("kept", &mut kept, Some(s(2)));
        // "gone" had slot 0; after the rebuild "kept" has it.
        let name: std::sync::Arc<str> = "kept".into();
        d.rebuild([(&name, &mut kept, Some(s(3)))]);
        d.set("gone", &mut gone, None);
        assert_eq!((d.next(), d.len()), (Some(s(3)), 1));
        d.set("gone", &mut gone, Some(s(4)));
        d.set("kept", &mut kept, Some(s(5)));
        assert_eq!(names(d.due(s(4))), ["gone"]);
        assert_eq!(names(d.due(s(5))), ["gone", "kept"]);
        d.set("gone", &mut gone, None);
        assert_eq!((d.next(), d.len()), (Some(s(5)), 1));
    }

    #[test]
    fn agrees_with_a_walk_over_every_link() {
        // Random moves against a plain map: the index must never drift.
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let mut kept: HashMap<String, Registered> = HashMap::new();
        let mut plain = HashMap::new();
        for i in 0..5_000u32 {
            let r: u32 = rand::random();
            let link = format!("l{}", r % 50);
            let due = (r % 7 != 0).then(|| t0 + Duration::from_millis(u64::from(r % 1000)));
            d.set(&link, kept.entry(link.clone()).or_default(), due);
            match due {
                Some(t) => plain.insert(link, t),
                None => plain.remove(&link),
            };
            assert_eq!(d.next(), plain.values().min().copied(), "step {i}");
            assert_eq!(d.len(), plain.len(), "step {i}");
            let now = t0 + Duration::from_millis(500);
            let mut want: Vec<_> = plain.iter().filter(|(_, t)| **t <= now).collect();
            want.sort_by_key(|(l, t)| (**t, (*l).clone()));
            let want: Vec<String> = want.into_iter().map(|(l, _)| l.clone()).collect();
            assert_eq!(names(d.due(now)), want, "step {i}");
        }
    }
}
