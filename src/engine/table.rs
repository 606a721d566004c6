//! The engine's links by name, in one sorted vector.
//!
//! Each link's state (its `LinkSlot`, its `KeyedLink`) was a box in a
//! B-tree: at 10,000 links, 20,000 heap chunks laid among the short-lived
//! strings of the set-up, whose holes kept ~6 MB of freed heap resident in
//! each engine. Here the rows lie side by side in one allocation (a large
//! one gets a mapping of its own, given back whole when it is replaced),
//! sorted by name and found by binary search, as fast as the B-tree. Rows
//! come and go only when the config changes, so a removal may move the
//! rows after it. A row's name is the link's one copy of it, shared by
//! every other record the engine keeps of the link.

use std::collections::HashMap;
use std::sync::Arc;

pub struct LinkTable<V> {
    rows: Vec<(Arc<str>, V)>,
}

impl<V> Default for LinkTable<V> {
    fn default() -> Self {
        LinkTable { rows: Vec::new() }
    }
}

impl<V> LinkTable<V> {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.rows.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.rows[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.find(name).ok().map(|i| &mut self.rows[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// O(links): for a config change only.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.find(name).ok().map(|i| self.rows.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// In name order, as every other iterator here.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.rows.iter().map(|(n, _)| &**n)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.rows.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.rows.iter().map(|(n, v)| (&**n, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut V)> {
        self.rows.iter_mut().map(|(n, v)| (&*n, v))
    }

    /// The shared name of a link in the table.
    pub fn name(&self, name: &str) -> Option<&Arc<str>> {
        self.find(name).ok().map(|i| &self.rows[i].0)
    }

    /// The rows by name, for a reconfiguration to take the links it keeps
    /// from (a removal from the vector would move every row after it).
    pub fn into_map(self) -> HashMap<Arc<str>, V> {
        self.rows.into_iter().collect()
    }
}

impl<V> FromIterator<(Arc<str>, V)> for LinkTable<V> {
    /// As a map's `collect`: a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (Arc<str>, V)>>(iter: I) -> Self {
        let mut rows: Vec<(Arc<str>, V)> = iter.into_iter().collect();
        // Stable: of equal names the later stays later.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        rows.shrink_to_fit();
        LinkTable { rows }
    }
}

impl<V> std::ops::Index<&str> for LinkTable<V> {
    type Output = V;

    fn index(&self, name: &str) -> &V {
        self.get(name).expect("no such link in the table")
    }
}

#[cfg(test)]
mod tests {
    use super::LinkTable;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn behaves_as_a_map_by_name() {
        let pairs = [("l3", 3), ("l1", 1), ("l2", 2), ("l1", 10), ("l20", 20)];
        let t: LinkTable<i32> = pairs.iter().map(|(n, v)| (Arc::from(*n), *v)).collect();
        let m: BTreeMap<&str, i32> = pairs.iter().copied().collect();
        assert_eq!(t.len(), m.len());
        assert!(t.iter().eq(m.iter().map(|(n, v)| (*n, v))));
        assert_eq!(t.get("l1"), Some(&10), "the last of a name given twice");
        assert_eq!(t["l20"], 20);
        assert_eq!(t.get("l0"), None);
        assert_eq!(t.get("l4"), None);
        assert!(!t.contains_key("l"));
        assert_eq!(t.name("l2").map(|n| &**n), Some("l2"));
        assert_eq!(t.name("l4"), None);
    }

    #[test]
    fn changes_in_place_and_removes() {
        let mut t: LinkTable<Vec<u8>> = (0..100)
            .map(|i| (Arc::from(format!("l{i:03}")), vec![i]))
            .collect();
        t.get_mut("l050").unwrap().push(7);
        assert_eq!(t["l050"], [50, 7]);
        for (_, v) in t.iter_mut() {
            v.push(1);
        }
        assert_eq!(t.remove("l050"), Some(vec![50, 7, 1]));
        assert_eq!(t.remove("l050"), None);
        assert_eq!(t.len(), 99);
        assert_eq!(t["l051"], [51, 1]);
        let mut m = t.into_map();
        assert_eq!(m.len(), 99);
        assert_eq!(m.remove("l099"), Some(vec![99, 1]));
    }
}
