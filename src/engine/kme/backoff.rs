//! Retry pacing for KME calls (engine). Pure: the caller owns the clock.

use std::time::Duration;

/// Exponential backoff: 1 s, 2 s, 4 s … capped at 60 s; `reset` after a
/// success starts again at 1 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.min(cap);
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The delay before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        d
    }

    /// What `next_delay` would return, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        let mut tiny = Backoff::new(Duration::from_secs(5), Duration::from_secs(3));
        assert_eq!(tiny.next_delay(), Duration::from_secs(3));
    }
}
