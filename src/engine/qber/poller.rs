//! Polls one link's network QBER source on its own schedule, in the engine:
//! a tokio task per link that calls [`Driver::poll`] every `poll` interval
//! and sends each outcome to the engine's main loop, which runs it through
//! the link's [`super::Freshness`] and state machine. The task touches
//! nothing but its driver's network connection and the channel; it ends
//! when the receiver is dropped (also in the middle of a poll).

use super::Driver;
use super::sample::Sample;
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// One poll's outcome for `link`.
#[derive(Debug, Clone, PartialEq)]
pub struct PollResult {
    /// The `[link.X]` name.
    pub link: String,
    /// The range-checked sample, or an error naming the source.
    pub result: Result<Sample, String>,
    /// `crate::imsg::monotonic_ns()` when the answer arrived.
    pub sampled_ns: u64,
}

/// Shortest poll period (the config allows 100 ms and up; this only keeps a
/// zero from spinning).
const MIN_EVERY: Duration = Duration::from_millis(10);

/// Starts the poller of `link` (`qber_id` at `[qber.NAME]`). The first poll
/// is immediate; a poll slower than `every` delays the next rather than
/// bunching them.
pub fn spawn(
    name: String,
    link: String,
    qber_id: String,
    mut driver: Driver,
    every: Duration,
    tx: Sender<PollResult>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(MIN_EVERY));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = tx.closed() => break,
                r = driver.poll(&qber_id) => r,
            };
            let msg = PollResult {
                link: link.clone(),
                result,
                sampled_ns: crate::imsg::monotonic_ns(),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
        crate::log::debug(format!("qber {name}: poller of link {link} stopped"));
    })
}
