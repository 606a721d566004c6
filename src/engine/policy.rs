//! The active policy as the engine holds it: what `qkdctl show policy` and
//! the metrics read, and each link's parameters. A bundle's links nearly
//! always share a handful of parameter sets; each distinct one is held once
//! (at 10,000 links the copies, in this map and in every link's state
//! machine, were 4.4 MB of the engine's heap).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::imsg::ActivePolicy;
use crate::policy::params::LinkPolicy;

/// How many of the distinct sets seen last a link's is compared with
/// before it is kept on its own (bounds the work for a bundle whose every
/// link differs).
const RECENT: usize = 8;

pub struct Policy {
    pub serial: u64,
    pub not_after: Option<u64>,
    pub expiry_warning: u64,
    pub signer: String,
    /// By link name; a name the engine runs is its shared copy.
    pub links: BTreeMap<Arc<str>, Arc<LinkPolicy>>,
}

impl Policy {
    /// `name_of`: the engine's copy of a link's name, if it runs the link
    /// (the names decoded with the bundle were one more small chunk a
    /// link, left among the decoding's freed buffers).
    pub fn new(p: ActivePolicy, name_of: impl Fn(&str) -> Option<Arc<str>>) -> Policy {
        let mut recent: Vec<Arc<LinkPolicy>> = Vec::with_capacity(RECENT);
        let links = (p.links.into_iter())
            .map(|(name, lp)| {
                let shared = match recent.iter().rev().find(|r| ***r == lp) {
                    Some(r) => r.clone(),
                    None => {
                        if recent.len() == RECENT {
                            recent.remove(0);
                        }
                        recent.push(Arc::new(lp));
                        recent.last().expect("pushed").clone()
                    }
                };
                let name = name_of(&name).unwrap_or_else(|| Arc::from(name));
                (name, shared)
            })
            .collect();
        Policy {
            serial: p.serial,
            not_after: p.not_after,
            expiry_warning: p.expiry_warning,
            signer: p.signer,
            links,
        }
    }

    /// Past its `not_after` at `now_unix`.
    pub fn expired(&self, now_unix: u64) -> bool {
        self.not_after.is_some_and(|na| now_unix > na)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_link_policies_are_held_once() {
        let other = LinkPolicy {
            qber_lockdown: 0.06,
            ..LinkPolicy::DEFAULT
        };
        let links = (0..100)
            .map(|i| {
                let lp = match i % 10 {
                    3 => other.clone(),
                    _ => LinkPolicy::DEFAULT,
                };
                (format!("l{i:03}"), lp)
            })
            .collect();
        let ours: Arc<str> = Arc::from("l004");
        let p = Policy::new(
            ActivePolicy {
                serial: 7,
                not_after: None,
                expiry_warning: 0,
                signer: "k".into(),
                links,
            },
            |n| (n == "l004").then(|| ours.clone()),
        );
        assert_eq!(p.links.len(), 100);
        let distinct: Vec<*const LinkPolicy> = {
            let mut v: Vec<_> = p.links.values().map(Arc::as_ptr).collect();
            v.sort();
            v.dedup();
            v
        };
        assert_eq!(distinct.len(), 2);
        assert_eq!(*p.links["l003"], other);
        assert_eq!(*p.links["l004"], LinkPolicy::DEFAULT);
        // A link the engine runs is named by the engine's own copy.
        let (name, _) = p.links.get_key_value("l004").unwrap();
        assert!(Arc::ptr_eq(name, &ours));
    }
}
