//! QBER sources (DESIGN §3): one driver per `[qber.X]` section, polled by the
//! engine; each poll yields a range-checked [`Sample`] that the engine passes
//! through a per-link [`Freshness`] before it reaches the link state machine.
//!
//! Runs in the engine. The sim driver only computes ([`Source`], polled
//! in the main loop); the network drivers (`etsi015`, `prometheus`,
//! `http-json`: [`Driver`]) GET their source over HTTPS, each link from its
//! own [`poller`] task.

pub mod etsi015;
pub mod fetch;
pub mod http_json;
pub mod poller;
pub mod prometheus;
mod sample;
pub mod sim;

pub use fetch::{HttpSettings, TlsPems};
pub use sample::{Freshness, Sample, SimControl, validate};

use crate::conf::{QberConf, QberDriver, SimLinkConf};
use std::sync::Arc;

/// A configured QBER source.
#[derive(Debug)]
pub enum Source {
    Sim(sim::SimSource),
}

impl Source {
    /// Builds the driver a `[qber.X]` section names.
    pub fn open(conf: &QberConf) -> Result<Source, String> {
        match conf.driver {
            QberDriver::Sim => Source::sim(&conf.sim),
            other => Err(format!(
                "QBER driver {} is a network driver: open it with Driver::open and poll it \
                 from a poller task",
                driver_name(other)
            )),
        }
    }

    pub fn sim(conf: &SimLinkConf) -> Result<Source, String> {
        Ok(Source::Sim(sim::SimSource::new(conf)?))
    }

    /// Takes one reading; the value is range-checked whatever the driver.
    pub fn poll(&mut self) -> Result<Sample, String> {
        let s = match self {
            Source::Sim(s) => s.poll(),
        };
        validate(s.qber)?;
        Ok(s)
    }

    /// Turns a knob of the simulated link; an error for real sources.
    pub fn control(&mut self, c: SimControl) -> Result<(), String> {
        match self {
            Source::Sim(s) => s.control(c),
        }
    }
}

/// A network QBER driver for one link: what to GET, how to read the answer,
/// and the state of the changed-value fallback for sources without a
/// measurement time or sequence.
#[derive(Clone, Debug)]
pub struct Driver {
    kind: Kind,
    get: fetch::Getter,
    scale: f64,
    changed: ChangedSeq,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Etsi015,
    Prometheus,
    HttpJson { pointer: String },
}

/// Sequence for a source that gives none: advances only when the value
/// changes, so a stalled agent repeating itself is not fresh. (A real link
/// measuring exactly the same QBER twice looks stalled for one poll too.)
#[derive(Clone, Debug, Default)]
struct ChangedSeq {
    last: Option<f64>,
    seq: u64,
}

impl ChangedSeq {
    fn seq(&mut self, v: f64) -> u64 {
        if self.last != Some(v) {
            self.last = Some(v);
            self.seq += 1;
        }
        self.seq
    }
}

impl Driver {
    /// Builds the driver of `[qber.NAME]` (`conf`) with its TLS material as
    /// bytes from the parent. The `sim` driver is not a network driver (see
    /// [`Source`]). `conf.scale` applies to every driver (the parser only
    /// lets http-json set it; it is 1.0 otherwise).
    pub fn open(
        name: &str,
        conf: &QberConf,
        tls: &TlsPems,
        settings: HttpSettings,
    ) -> Result<Driver, String> {
        let kind = match conf.driver {
            QberDriver::Sim => {
                return Err(format!("qber {name}: driver sim is not a network driver"));
            }
            QberDriver::Etsi015 => Kind::Etsi015,
            QberDriver::Prometheus => Kind::Prometheus,
            QberDriver::HttpJson => Kind::HttpJson {
                pointer: conf
                    .pointer
                    .clone()
                    .ok_or(format!("qber {name}: http-json needs a pointer"))?,
            },
        };
        let url = conf.url.as_deref().ok_or(format!("qber {name}: no url"))?;
        if !(conf.scale.is_finite() && conf.scale > 0.0) {
            return Err(format!("qber {name}: scale must be a positive number"));
        }
        Ok(Driver {
            kind,
            get: fetch::Getter::new(name, url, tls, settings)?,
            scale: conf.scale,
            changed: ChangedSeq::default(),
        })
    }

    /// The `[qber.NAME]` this driver reads.
    pub fn source(&self) -> &str {
        self.get.source()
    }

    /// Whether the URL names one link (`{qber_id}` in its path): else
    /// every link of the section reads the same document, and one GET per
    /// poll serves them all ([`Driver::poll_shared`]).
    pub fn per_link(&self) -> bool {
        self.get.per_link()
    }

    /// Lets an answer hold one document for `links` links: the 64 KiB
    /// cap, plus 256 bytes a link (a `/metrics` line is about 50).
    pub fn for_links(mut self, links: usize) -> Driver {
        self.get = self.get.with_max_body(64 * 1024 + 256 * links);
        self
    }

    /// One reading of `qber_id`: GET, parse, scale, range check. Errors
    /// name the source and URL (and the HTTP status when there was one).
    pub async fn poll(&mut self, qber_id: &str) -> Result<Sample, String> {
        let body = self.fetch(qber_id).await?;
        let parsed = match &self.kind {
            Kind::Prometheus => prometheus::parse(&body, qber_id),
            _ => self.parse_one(&body),
        };
        let mut changed = std::mem::take(&mut self.changed);
        let s = self.sample(qber_id, parsed, &mut changed);
        self.changed = changed;
        s
    }

    /// One reading for each of `links` from one GET of the shared
    /// document, in their order; Err when the document itself failed (the
    /// GET, or an answer refused whole), which is every link's error.
    pub async fn poll_shared(
        &mut self,
        links: &mut [SharedLink],
    ) -> Result<Vec<Result<Sample, String>>, String> {
        let Some(first) = links.first() else {
            return Ok(Vec::new());
        };
        let body = self.fetch(&first.qber_id).await?;
        let all = match &self.kind {
            Kind::Prometheus => Reading::ById(prometheus::parse_all(&body).map_err(|e| {
                format!("qber {}: {}: {e}", self.get.source(), self.get.display(""))
            })?),
            _ => Reading::Same(self.parse_one(&body)),
        };
        Ok(links
            .iter_mut()
            .map(|l| {
                let parsed = match &all {
                    Reading::ById(e) => e.get(&l.qber_id),
                    Reading::Same(r) => r.clone(),
                };
                self.sample(&l.qber_id, parsed, &mut l.changed)
            })
            .collect())
    }

    async fn fetch(&mut self, qber_id: &str) -> Result<Vec<u8>, String> {
        let accept = match self.kind {
            Kind::Prometheus => "text/plain; version=0.0.4",
            _ => "application/json",
        };
        self.get.get(qber_id, accept).await
    }

    /// The reading of a document that holds one link's value.
    fn parse_one(&self, body: &[u8]) -> Result<(f64, Option<u64>), String> {
        match &self.kind {
            Kind::Etsi015 => etsi015::parse(body),
            Kind::HttpJson { pointer } => http_json::parse(body, pointer),
            Kind::Prometheus => Err("prometheus answers are read by link_id".into()),
        }
    }

    /// A parsed reading made a sample: scaled, range-checked, sequenced.
    fn sample(
        &self,
        qber_id: &str,
        parsed: Result<(f64, Option<u64>), String>,
        changed: &mut ChangedSeq,
    ) -> Result<Sample, String> {
        let at = || format!("qber {}: {}", self.get.source(), self.get.display(qber_id));
        let (raw, stamp) = parsed.map_err(|e| format!("{}: {e}", at()))?;
        let qber = validate(raw * self.scale)
            .map_err(|e| format!("{}: {e} (value {raw} x scale {})", at(), self.scale))?;
        let seq = match stamp {
            Some(s) => s,
            None => changed.seq(qber),
        };
        Ok(Sample { qber, seq })
    }
}

/// One link of a shared document: its id there, and its own
/// changed-value sequence.
#[derive(Clone, Debug)]
pub struct SharedLink {
    /// The `[link.X]` name (the engine's own copy of it, shared).
    pub link: Arc<str>,
    pub qber_id: String,
    changed: ChangedSeq,
}

impl SharedLink {
    pub fn new(link: impl Into<Arc<str>>, qber_id: &str) -> SharedLink {
        SharedLink {
            link: link.into(),
            qber_id: qber_id.to_string(),
            changed: ChangedSeq::default(),
        }
    }
}

/// A shared document, parsed once.
enum Reading {
    ById(prometheus::Exposition),
    Same(Result<(f64, Option<u64>), String>),
}

fn driver_name(d: QberDriver) -> &'static str {
    match d {
        QberDriver::Sim => "sim",
        QberDriver::Etsi015 => "etsi015",
        QberDriver::Prometheus => "prometheus",
        QberDriver::HttpJson => "http-json",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qber_conf(driver: QberDriver) -> QberConf {
        QberConf::of(driver)
    }

    #[test]
    fn open_builds_sim_and_refuses_missing_drivers() {
        let mut src = Source::open(&qber_conf(QberDriver::Sim)).unwrap();
        let a = src.poll().unwrap();
        let b = src.poll().unwrap();
        assert!(b.seq > a.seq);
        let e = Source::open(&qber_conf(QberDriver::Etsi015)).unwrap_err();
        assert!(e.contains("etsi015"), "{e}");
    }

    #[test]
    fn network_drivers_check_their_settings() {
        let tls = TlsPems::default();
        let open = |c: &QberConf| Driver::open("q", c, &tls, HttpSettings::default());
        let e = open(&qber_conf(QberDriver::Sim)).unwrap_err();
        assert!(e.contains("not a network driver"), "{e}");
        let mut c = qber_conf(QberDriver::HttpJson);
        c.url = Some("http://127.0.0.1:9/x".into());
        assert_eq!(open(&c).unwrap_err(), "qber q: http-json needs a pointer");
        c.pointer = Some("/v".into());
        c.scale = 0.0;
        assert!(open(&c).unwrap_err().contains("scale"));
        c.scale = 0.01;
        assert_eq!(open(&c).unwrap().source(), "q");
        c.url = None;
        assert_eq!(open(&c).unwrap_err(), "qber q: no url");
    }

    #[test]
    fn changed_seq_advances_only_on_a_new_value() {
        let mut c = ChangedSeq::default();
        assert_eq!(
            [c.seq(0.1), c.seq(0.1), c.seq(0.2), c.seq(0.1)],
            [1, 1, 2, 3]
        );
    }

    #[test]
    fn control_reaches_the_model() {
        let mut src = Source::sim(&SimLinkConf::default()).unwrap();
        src.control(SimControl::Eve(1.0)).unwrap();
        let s = src.poll().unwrap();
        assert!(s.qber > 0.2, "{}", s.qber);
        assert!(src.control(SimControl::Noise(0.7)).is_err());
        assert!(src.control(SimControl::Eve(-1.0)).is_err());
    }
}
