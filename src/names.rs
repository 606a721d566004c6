//! Link names: the one rule they follow ([`valid_link_name`]), a leaf that
//! the config, the bundle, the firewall and the engine all check with.
//!
//! And names a process holds many times, each allocated once: at 10,000 links
//! a hub's config names the same QBER section and KME in every link of a
//! site (and the same far SAE and gateway in every link to one far end),
//! and each copy was a small long-lived chunk.

use std::collections::HashSet;
use std::sync::Arc;

/// `^[a-z][a-z0-9_]{0,30}$`: link names and the anchor/table name. They end
/// up inside pf anchors, nft chain names and log labels, so nothing else may
/// pass. The one definition: the config, the bundle, the firewall and the
/// engine all check names with this.
pub fn valid_link_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 31
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// One shared copy of each name held many times (a link's name by every
/// record the engine keeps of it; a QBER section's, KME's, far SAE's or far
/// gateway's by every link that has it), asked by `&str` so that asking
/// copies nothing.
#[derive(Default)]
pub struct Names(HashSet<Arc<str>>);

impl Names {
    /// The shared copy of `name`, made the first time it is asked for.
    pub fn of(&mut self, name: &str) -> Arc<str> {
        if let Some(made) = self.0.get(name) {
            return made.clone();
        }
        let made: Arc<str> = Arc::from(name);
        self.0.insert(made.clone());
        made
    }

    /// Takes `name` as the shared copy of its text (one held already: a
    /// link that stays keeps its name), unless there is one.
    pub fn adopt(&mut self, name: Arc<str>) -> Arc<str> {
        match self.0.get(&name) {
            Some(made) => made.clone(),
            None => {
                self.0.insert(name.clone());
                name
            }
        }
    }

    /// Forgets the names no one else holds any more (a link gone, a
    /// bundle's text replaced): they are made again if asked for.
    pub fn forget_unheld(&mut self) {
        self.0.retain(|n| Arc::strong_count(n) > 1);
    }

    /// The shared copy, if `name` was made or adopted.
    pub fn get(&self, name: &str) -> Option<Arc<str>> {
        self.0.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::Names;
    use std::sync::Arc;

    #[test]
    fn names_are_made_once_and_shared() {
        let mut n = Names::default();
        let kept: Arc<str> = Arc::from("l1");
        let a = n.adopt(kept.clone());
        assert!(
            Arc::ptr_eq(&a, &kept),
            "an adopted name is the copy handed out"
        );
        assert!(Arc::ptr_eq(&n.of("l1"), &kept));
        let b = n.of("site");
        assert!(Arc::ptr_eq(&n.of("site"), &b), "asked twice, made once");
        // A second copy offered later is not taken: the first stays shared.
        assert!(Arc::ptr_eq(&n.adopt(Arc::from("site")), &b));
        assert!(n.get("site").is_some_and(|g| Arc::ptr_eq(&g, &b)));
        assert_eq!(n.get("l2"), None);
    }

    #[test]
    fn names_no_one_holds_are_forgotten() {
        let mut n = Names::default();
        let held = n.of("kept");
        drop(n.of("gone"));
        n.forget_unheld();
        assert!(n.get("kept").is_some_and(|k| Arc::ptr_eq(&k, &held)));
        assert_eq!(n.get("gone"), None, "only the interner held it");
        let again = n.of("gone");
        assert!(Arc::ptr_eq(&n.of("gone"), &again), "made again when asked");
    }
}
