//! The parent's heartbeat for the nftables dead-man switch (DESIGN §2;
//! the kernel side is `fw::nft::alive`). Refreshed from the main loop's
//! one-second tick and from nowhere else, so a parent that dies or stalls
//! stops it and every link locks within [`TIMEOUT`].

use std::time::{Duration, Instant};

use crate::log::{self, Event};
use crate::parent::fw::Firewall;

/// How long the links' jumps live without a refresh. Three ticks: a
/// missed tick is not a trip, a dead parent locks within ~3 s.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// When the heartbeat last reached the kernel, and whether it is failing.
pub struct Heartbeat {
    last_ok: Instant,
    failing: bool,
}

impl Heartbeat {
    pub fn new(now: Instant) -> Heartbeat {
        Heartbeat {
            last_ok: now,
            failing: false,
        }
    }

    /// No refresh, on purpose (the switch is left lapsed): its first
    /// refresh after is no trip.
    pub fn held(&mut self, now: Instant) {
        self.last_ok = now;
    }

    /// One refresh. A gap longer than [`TIMEOUT`] means the switch tripped
    /// (every link dropped meanwhile): said once, at alert priority.
    pub fn beat(&mut self, fw: &mut dyn Firewall, now: Instant) {
        let gap = now.saturating_duration_since(self.last_ok);
        match fw.keep_alive(Some(TIMEOUT)) {
            Ok(()) => {
                if gap > TIMEOUT {
                    log::event(Event::DeadmanTripped)
                        .kv("gap_ms", gap.as_millis())
                        .msg("the parent did not refresh the dead-man switch in time: every link was dropped meanwhile")
                        .send();
                }
                self.last_ok = now;
                self.failing = false;
            }
            Err(e) => {
                if !self.failing {
                    log::event(Event::DeadmanFailed).msg(e).send();
                }
                self.failing = true;
            }
        }
    }
}
