//! What a listener does when `accept` fails. Out of file descriptors (`EMFILE`), a pending
//! connection stays in the backlog and every `accept` fails again at once: a loop that only
//! logs spins, writing millions of lines. [`AcceptErrors`] makes the loop wait, longer each time
//! (10 ms doubling to 1 s), and logs at most one line per [`LOG_EVERY`] with the number of
//! failures since the last line.

use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

/// Shortest and longest wait after a failed accept.
const FIRST_WAIT: Duration = Duration::from_millis(10);
const LONGEST_WAIT: Duration = Duration::from_secs(1);
/// At most one log line per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Backoff and log throttle of one listener's failed accepts.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: &'static str,
    wait: Duration,
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// For the listener named `listener` in the log.
    pub fn new(listener: &'static str) -> Self {
        AcceptErrors {
            listener,
            wait: Duration::ZERO,
            logged_at: None,
            unlogged: 0,
        }
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn accepted(&mut self) {
        self.wait = Duration::ZERO;
    }

    /// An accept failed with `err`: logs it if no line was written within [`LOG_EVERY`], and
    /// returns how long to wait before accepting again.
    pub fn failed(&mut self, err: &std::io::Error) -> Duration {
        self.failed_at(err, Instant::now())
    }

    fn failed_at(&mut self, err: &std::io::Error, now: Instant) -> Duration {
        self.unlogged += 1;
        if self
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY)
        {
            warn!(
                listener = self.listener,
                error = %err,
                failures = self.unlogged,
                "accepting connections fails (out of file descriptors?); waiting before trying again"
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        }
        self.wait = (self.wait * 2).clamp(FIRST_WAIT, LONGEST_WAIT);
        self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_wait_longer_each_time_and_log_once_per_period() {
        let mut errors = AcceptErrors::new("test");
        let err = std::io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..10).map(|_| errors.failed_at(&err, t0)).collect();
        assert_eq!(waits[0], FIRST_WAIT);
        assert_eq!(waits[1], FIRST_WAIT * 2);
        assert_eq!(*waits.last().expect("waits"), LONGEST_WAIT);
        assert_eq!(
            errors.unlogged, 9,
            "one line for ten failures within the period"
        );
        errors.failed_at(&err, t0 + LOG_EVERY);
        assert_eq!(errors.unlogged, 0, "a new line once the period passed");
        errors.accepted();
        assert_eq!(errors.failed_at(&err, t0 + LOG_EVERY), FIRST_WAIT);
    }
}
