//! One simulated QKD link and the KMEs it joins (qkdsim process): the
//! state the KMEs' ETSI 014 handlers (`sim::kme`) and the QBER feed and
//! its controls (`sim::qber`) share. Each link holds its key pool
//! ([`store`]) and its QBER measurement clock ([`feed`]).

pub mod feed;
pub mod store;

use feed::Feed;
use std::sync::Mutex;
use store::LinkStore;

/// One simulated KME.
pub struct KmeNode {
    pub name: String,
    pub kme_id: String,
    pub sae_ids: Vec<String>,
}

/// One simulated link between KMEs `kmes[0]` and `kmes[1]` (indexes).
pub struct SimLink {
    pub name: String,
    pub kmes: [usize; 2],
    pub store: Mutex<LinkStore>,
    /// The link's QBER measurement clock (served by `sim::qber`).
    pub feed: Mutex<Feed>,
}

/// Everything the KMEs share with the QBER feed and eavesdropper
/// controls, which reach each link's model through [`SimState::link`] and
/// [`LinkStore::model_mut`].
pub struct SimState {
    pub kmes: Vec<KmeNode>,
    pub links: Vec<SimLink>,
}

impl SimState {
    pub fn link(&self, name: &str) -> Option<&SimLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The link between KME `kme` and the KME serving `sae`, and that KME.
    pub fn route(&self, kme: usize, sae: &str) -> Option<(&SimLink, usize)> {
        let other = self
            .kmes
            .iter()
            .position(|k| k.sae_ids.iter().any(|s| s == sae))?;
        let link = self
            .links
            .iter()
            .find(|l| l.kmes == [kme, other] || l.kmes == [other, kme])?;
        Some((link, other))
    }
}
