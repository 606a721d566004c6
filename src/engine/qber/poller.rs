//! Polls a network QBER source on its own schedule, in the engine: a tokio
//! task that calls its [`Driver`] every `poll` interval and sends each
//! outcome to the engine's main loop, which runs it through the link's
//! [`super::Freshness`] and state machine. A source whose URL names the
//! link (`{qber_id}`) has a task per link ([`spawn`]); one whose links all
//! read one document has one task for them all ([`spawn_shared`]): one GET
//! per poll, and every link's reading taken at the same moment. The task
//! touches nothing but its driver's network connection and the channel;
//! it ends when the receiver is dropped (also in the middle of a poll).

use super::sample::Sample;
use super::{Driver, SharedLink};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// What a poller sends after each poll: every reading of that poll, in one
/// message (all links of a shared document together, so that the engine
/// handles them in one turn).
pub type Polled = Vec<PollResult>;

/// One poll's outcome for `link`.
#[derive(Debug, Clone, PartialEq)]
pub struct PollResult {
    /// The `[link.X]` name (the engine's own copy of it, shared).
    pub link: Arc<str>,
    /// The range-checked sample, or an error naming the source.
    pub result: Result<Sample, String>,
    /// `crate::imsg::monotonic_ns()` when the answer arrived.
    pub sampled_ns: u64,
    /// The error is a shared document's, the same for every link that
    /// reads it (the links of one poll carry the same `sampled_ns`).
    pub whole: bool,
    /// The serial of the poller that read it: a reading a replaced poller
    /// left in the channel is not the link's current source's.
    pub poller: u64,
}

/// Shortest poll period (the config allows 100 ms and up; this only keeps a
/// zero from spinning).
const MIN_EVERY: Duration = Duration::from_millis(10);

/// Starts the poller of `link` (`qber_id` at `[qber.NAME]`). The first poll
/// is immediate; a poll slower than `every` delays the next rather than
/// bunching them.
pub fn spawn(
    name: String,
    link: Arc<str>,
    qber_id: String,
    driver: Driver,
    every: Duration,
    serial: u64,
    tx: Sender<Polled>,
) -> tokio::task::JoinHandle<()> {
    let reads = Reads::One {
        driver,
        link,
        qber_id,
    };
    tokio::spawn(run(name, reads, every, serial, tx))
}

/// Starts the one poller of the links that read `[qber.NAME]`'s shared
/// document; their readings go out together, in `links`' order, after
/// each GET.
pub fn spawn_shared(
    name: String,
    links: Vec<SharedLink>,
    driver: Driver,
    every: Duration,
    serial: u64,
    tx: Sender<Polled>,
) -> tokio::task::JoinHandle<()> {
    let reads = Reads::Shared {
        driver: driver.for_links(links.len()),
        links,
    };
    tokio::spawn(run(name, reads, every, serial, tx))
}

/// What one poller reads.
enum Reads {
    /// One link's document.
    One {
        driver: Driver,
        link: Arc<str>,
        qber_id: String,
    },
    /// The document all of `links` read.
    Shared {
        driver: Driver,
        links: Vec<SharedLink>,
    },
}

impl Reads {
    /// One poll: every reading it gives, stamped when the answer arrived
    /// and with the poller's `serial`.
    async fn poll(&mut self, serial: u64) -> Polled {
        match self {
            Reads::One {
                driver,
                link,
                qber_id,
            } => {
                let result = driver.poll(qber_id).await;
                vec![PollResult {
                    link: link.clone(),
                    result,
                    sampled_ns: crate::imsg::monotonic_ns(),
                    whole: false,
                    poller: serial,
                }]
            }
            Reads::Shared { driver, links } => {
                let results = driver.poll_shared(links).await;
                let sampled_ns = crate::imsg::monotonic_ns();
                let whole = results.is_err();
                let mut results = match results {
                    Ok(each) => each.into_iter(),
                    Err(e) => vec![Err(e); links.len()].into_iter(),
                };
                (links.iter())
                    .map(|l| PollResult {
                        link: l.link.clone(),
                        result: results.next().unwrap_or_else(|| Err("no reading".into())),
                        sampled_ns,
                        whole,
                        poller: serial,
                    })
                    .collect()
            }
        }
    }

    fn what(&self) -> String {
        match self {
            Reads::One { link, .. } => format!("link {link}"),
            Reads::Shared { links, .. } => format!("its {} links", links.len()),
        }
    }
}

/// A poller's loop: a poll each `every`, its readings to `tx`, until the
/// receiver is gone (also in the middle of a poll).
async fn run(name: String, mut reads: Reads, every: Duration, serial: u64, tx: Sender<Polled>) {
    let mut tick = tokio::time::interval(every.max(MIN_EVERY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            _ = tick.tick() => {}
        }
        let polled = tokio::select! {
            _ = tx.closed() => break,
            p = reads.poll(serial) => p,
        };
        if tx.send(polled).await.is_err() {
            break;
        }
    }
    crate::log::debug(format!("qber {name}: poller of {} stopped", reads.what()));
}
