//! Opening a link's QBER source in the engine: the built-in simulator
//! (polled in line), or a network driver running as a poller task (one per
//! link, or one for all the links of a section that read one document),
//! and the `/sim/` control endpoint `qkdctl sim` is forwarded to; and a
//! section whose source every link lost at once, said to the parent as one.

use super::Engine;
use super::qber::{self, SharedLink, Source, poller::Polled};
use crate::imsg::{self, ToParent};
use crate::lock::LockReason;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// The control endpoint of a network source, with its TLS settings.
pub(super) fn sim_control(
    qber: &str,
    qconf: &crate::conf::QberConf,
    net: &BTreeMap<String, imsg::QberNet>,
) -> Option<qber::fetch::Getter> {
    let (tls, settings) = client_settings(net.get(qber)?);
    let url = qconf.url.as_deref()?;
    let origin = qber::fetch::Getter::new(qber, url, &tls, settings.clone())
        .ok()?
        .origin();
    let control = format!("{origin}/sim/{{qber_id}}");
    qber::fetch::Getter::new(qber, &control, &tls, settings).ok()
}

/// A link's built-in simulator, or the task polling its network source.
type Opened = (Option<Box<Source>>, Option<tokio::task::JoinHandle<()>>);

/// The sim source, or a network driver running as a poller task.
pub(super) fn open(
    link: std::sync::Arc<str>,
    qber: &str,
    qber_id: &str,
    qconf: &crate::conf::QberConf,
    net: &BTreeMap<String, imsg::QberNet>,
    serial: u64,
    polls: &mpsc::Sender<Polled>,
) -> Result<Opened, String> {
    if qconf.driver == crate::conf::QberDriver::Sim {
        let mut sim = qconf.sim.clone();
        // Links sharing a sim section must not see the same noise.
        sim.seed = sim.seed.wrapping_add(fnv1a(qber_id.as_bytes()));
        return Ok((Some(Box::new(Source::sim(&sim)?)), None));
    }
    let n = net
        .get(qber)
        .ok_or_else(|| format!("qber {qber}: no TLS settings from the parent"))?;
    let (tls, settings) = client_settings(n);
    let driver = qber::Driver::open(qber, qconf, &tls, settings)?;
    let task = qber::poller::spawn(
        qber.to_string(),
        link,
        qber_id.to_string(),
        driver,
        qconf.poll,
        serial,
        polls.clone(),
    );
    Ok((None, Some(task)))
}

/// Whether the engine can open network section `qber` with what the
/// parent read for it: the parent's check before a config is taken (the
/// engine, failing, would lock the section's links).
pub(crate) fn opens(
    qber: &str,
    qconf: &crate::conf::QberConf,
    net: &imsg::QberNet,
) -> Result<(), String> {
    let (tls, settings) = client_settings(net);
    qber::Driver::open(qber, qconf, &tls, settings).map(|_| ())
}

/// Whether the links of `[qber.X]` all read one document: a network
/// driver whose URL does not name the link (`{qber_id}`).
pub(super) fn shares_document(qconf: &crate::conf::QberConf) -> bool {
    qconf.driver != crate::conf::QberDriver::Sim
        && qconf
            .url
            .as_deref()
            .is_some_and(|u| !u.contains("{qber_id}"))
}

/// The one poller task of the links that read `qber`'s shared document.
pub(super) fn open_shared(
    qber: &str,
    links: Vec<SharedLink>,
    qconf: &crate::conf::QberConf,
    net: &BTreeMap<String, imsg::QberNet>,
    serial: u64,
    polls: &mpsc::Sender<Polled>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let n = net
        .get(qber)
        .ok_or_else(|| format!("qber {qber}: no TLS settings from the parent"))?;
    let (tls, settings) = client_settings(n);
    let driver = qber::Driver::open(qber, qconf, &tls, settings)?;
    Ok(qber::poller::spawn_shared(
        qber.to_string(),
        links,
        driver,
        qconf.poll,
        serial,
        polls.clone(),
    ))
}

/// TLS material and the resolved address of a network QBER source.
fn client_settings(n: &imsg::QberNet) -> (qber::fetch::TlsPems, qber::fetch::HttpSettings) {
    let tls = qber::fetch::TlsPems {
        ca: n.ca.clone(),
        cert: n.cert.clone(),
        key: n.key.clone(),
    };
    let settings = qber::fetch::HttpSettings {
        addr: n.addr,
        ..Default::default()
    };
    (tls, settings)
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

impl Engine {
    /// Starts holding reports back (see [`Engine::release`]).
    pub(super) fn hold(&mut self) {
        self.reports.hold();
    }

    /// Sends what [`Engine::hold`] held back: first, for each section
    /// whose every link is `source-lost` now, one of them newly, a
    /// [`ToParent::SourceLost`] (the parent locks them together, in one
    /// transaction where it can), then the links' own reports still held
    /// (a lockdown for another reason left at once: `reports.rs`).
    pub(super) fn release(&mut self) {
        let held = self.reports.release();
        for source in std::mem::take(&mut self.newly_lost) {
            if self.every_link_lost(&source) {
                let m = imsg::SourceLost {
                    source,
                    found_ns: imsg::monotonic_ns(),
                };
                let _ = self.tx.send(ToParent::SourceLost(m).encode());
            }
        }
        for frame in held {
            let _ = self.tx.send(frame);
        }
    }

    /// Whether every link of section `source` is `source-lost`.
    fn every_link_lost(&self, source: &str) -> bool {
        let lost = |n: &str| {
            self.links
                .get(n)
                .is_some_and(|s| s.link.reasons().contains(LockReason::SourceLost))
        };
        match self.shared.get(source) {
            Some(p) => p.links.iter().all(|(n, _)| lost(n)),
            None => (self.links.iter())
                .filter(|(_, s)| *s.qber_name == *source)
                .all(|(n, _)| lost(n)),
        }
    }
}
