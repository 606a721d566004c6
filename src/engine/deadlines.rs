//! When each link next needs the engine's attention, kept sorted.
//!
//! The main loop sleeps until the earliest deadline of any link and then
//! ticks the links that are due. Finding those by walking every link made
//! each turn of the loop O(links): a 10,000-link hub polls its QBER
//! sources 10,000 times a second, and the walk then took the whole core
//! (the engine never answered `qkdctl policy load`). Here the earliest
//! deadline is the first entry of a sorted set and a changed deadline costs
//! O(log links); the owner re-sets a link's deadline each time it handles
//! an input for it. Each link keeps the deadline it has here in a field of
//! its own (a [`Registered`]), so the index needs no second map by name
//! (at 10,000 links that map and its names were 1.6 MB of each engine),
//! and with it the one copy of its name the index uses: a name allocated
//! anew at each move was a small long-lived chunk dropped somewhere in the
//! heap at every round of every link, and such chunks keep whole pages of
//! freed memory resident.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// The deadline a link has in a [`Deadlines`] and the name it has there;
/// kept by the link, changed only by the index.
#[derive(Debug, Default)]
pub struct Registered {
    at: Option<Instant>,
    name: Option<Arc<str>>,
}

#[derive(Debug, Default)]
pub struct Deadlines {
    order: BTreeSet<(Instant, Arc<str>)>,
}

impl Deadlines {
    /// Moves `link` from the deadline it has here to `due` (None: none).
    pub fn set(&mut self, link: &str, registered: &mut Registered, due: Option<Instant>) {
        if registered.at == due {
            return;
        }
        let name = (registered.name)
            .get_or_insert_with(|| Arc::from(link))
            .clone();
        debug_assert_eq!(&*name, link);
        if let Some(t) = registered.at.take() {
            self.order.remove(&(t, name.clone()));
        }
        if let Some(t) = due {
            self.order.insert((t, name));
        }
        registered.at = due;
    }

    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// The links due at `now`, earliest first: their shared names (a copy
    /// of each, made every poll of every link, was a stream of small
    /// chunks among the long-lived ones).
    pub fn due(&self, now: Instant) -> Vec<Arc<str>> {
        self.order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Every link's entry made anew: (its shared name, what it keeps, its
    /// deadline).
    pub fn rebuild<'a>(
        &mut self,
        links: impl IntoIterator<Item = (&'a Arc<str>, &'a mut Registered, Option<Instant>)>,
    ) {
        self.order.clear();
        for (link, registered, due) in links {
            registered.at = None;
            registered.name = Some(link.clone());
            self.set(link, registered, due);
        }
    }

    /// Drops whatever `link` has here, found by a walk: for a link gone
    /// without taking its entry along, which the owners never leave.
    pub fn forget(&mut self, link: &str) {
        self.order.retain(|(_, l)| &**l != link);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
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
        assert_eq!(std::sync::Arc::strong_count(&name), 3);
        assert_eq!(d.len(), 1);
        assert_eq!(names(d.due(later)), ["a"]);
        d.set("a", &mut a, None);
        assert_eq!(d.next(), None);
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
