//! When each link next needs the engine's attention, kept sorted.
//!
//! The main loop sleeps until the earliest deadline of any link and then
//! ticks the links that are due. Finding those by walking every link made
//! each turn of the loop O(links): a 10,000-link hub polls its QBER
//! sources 10,000 times a second, and the walk then took the whole core
//! (the engine never answered `qkdctl policy load`). Here the earliest
//! deadline is the first entry of a sorted set and a changed deadline costs
//! O(log links); the owner re-sets a link's deadline each time it handles
//! an input for it.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Deadlines {
    order: BTreeSet<(Instant, String)>,
    at: HashMap<String, Instant>,
}

impl Deadlines {
    /// Sets (or, with `None`, clears) when `link` is next due.
    pub fn set(&mut self, link: &str, due: Option<Instant>) {
        let old = self.at.get(link).copied();
        if old == due {
            return;
        }
        if let Some(t) = old {
            self.order.remove(&(t, link.to_string()));
            self.at.remove(link);
        }
        if let Some(t) = due {
            self.order.insert((t, link.to_string()));
            self.at.insert(link.to_string(), t);
        }
    }

    /// The earliest deadline of any link.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// The links due at `now`, earliest first. They stay due until the
    /// owner sets their next deadline.
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Forgets every link (before a reconfiguration sets them anew).
    pub fn clear(&mut self) {
        self.order.clear();
        self.at.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.order.len(), self.at.len());
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Deadlines;
    use std::time::{Duration, Instant};

    #[test]
    fn earliest_first_and_moved_not_duplicated() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Deadlines::default();
        assert_eq!(d.next(), None);
        d.set("b", Some(s(5)));
        d.set("a", Some(s(3)));
        d.set("c", Some(s(3)));
        assert_eq!(d.next(), Some(s(3)));
        assert_eq!(d.due(s(2)), Vec::<String>::new());
        assert_eq!(d.due(s(3)), ["a", "c"]);
        // Moving a link leaves no stale entry behind.
        d.set("a", Some(s(9)));
        assert_eq!(d.len(), 3);
        assert_eq!(d.due(s(5)), ["c", "b"]);
        d.set("c", None);
        d.set("b", None);
        assert_eq!(d.next(), Some(s(9)));
        assert_eq!(d.len(), 1);
        // Unchanged and absent links are no-ops.
        d.set("a", Some(s(9)));
        d.set("zz", None);
        assert_eq!(d.len(), 1);
        d.clear();
        assert_eq!(d.next(), None);
    }

    #[test]
    fn agrees_with_a_walk_over_every_link() {
        // Random moves against a plain map: the index must never drift.
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let mut plain = std::collections::HashMap::new();
        for i in 0..5_000u32 {
            let r: u32 = rand::random();
            let link = format!("l{}", r % 50);
            let due = (r % 7 != 0).then(|| t0 + Duration::from_millis(u64::from(r % 1000)));
            d.set(&link, due);
            match due {
                Some(t) => plain.insert(link, t),
                None => plain.remove(&link),
            };
            assert_eq!(d.next(), plain.values().min().copied(), "step {i}");
            let now = t0 + Duration::from_millis(500);
            let mut want: Vec<_> = plain.iter().filter(|(_, t)| **t <= now).collect();
            want.sort_by_key(|(l, t)| (**t, (*l).clone()));
            let want: Vec<String> = want.into_iter().map(|(l, _)| l.clone()).collect();
            assert_eq!(d.due(now), want, "step {i}");
        }
    }
}
