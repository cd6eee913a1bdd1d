//! The one way the core tries again after losing a race: a bounded number of attempts, with
//! a wait between them that grows with the attempt.

use std::future::Future;
use std::time::Duration;

/// How many attempts, and how long to wait before each after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (the first included).
    pub attempts: u64,
    /// The wait before attempt `n` is `step × min(n, cap)`.
    pub step: Duration,
    pub cap: u64,
    /// The wait is multiplied by a random 1 to 4, so racers that lost together do not meet
    /// again at once.
    pub jitter: bool,
}

impl Backoff {
    /// Re-reading and planning a write again after a row moved on.
    pub const REPLAN: Backoff = Backoff {
        attempts: 20,
        step: Duration::from_millis(1),
        cap: 10,
        jitter: true,
    };
    /// Sending a transaction again after a write-write conflict.
    pub const CONFLICT: Backoff = Backoff {
        attempts: 21,
        step: Duration::from_millis(2),
        cap: u64::MAX,
        jitter: false,
    };
    /// Defining the namespace and database while other nodes start on the same server.
    pub const START: Backoff = Backoff {
        attempts: 21,
        step: Duration::from_millis(10),
        cap: u64::MAX,
        jitter: false,
    };

    /// The wait before attempt `attempt` (0 for the first).
    pub fn delay(&self, attempt: u64) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = attempt.min(self.cap);
        let factor = if self.jitter {
            factor * rand::random_range(1..=4)
        } else {
            factor
        };
        self.step.saturating_mul(factor.min(u32::MAX as u64) as u32)
    }

    /// Runs `op` (given the attempt number) until it returns `Some`, fails, or the attempts
    /// are spent (`Ok(None)`).
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<Option<T>, E>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.delay(attempt)).await;
            }
            if let Some(done) = op(attempt).await? {
                return Ok(Some(done));
            }
        }
        Ok(None)
    }

    /// Whether `attempt` is the last one.
    pub fn is_last(&self, attempt: u64) -> bool {
        attempt + 1 >= self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_the_attempt_up_to_the_cap() {
        assert_eq!(Backoff::CONFLICT.delay(0), Duration::ZERO);
        assert_eq!(Backoff::CONFLICT.delay(3), Duration::from_millis(6));
        assert_eq!(Backoff::START.delay(20), Duration::from_millis(200));
        for _ in 0..100 {
            let wait = Backoff::REPLAN.delay(15);
            assert!(
                (Duration::from_millis(10)..=Duration::from_millis(40)).contains(&wait),
                "{wait:?}"
            );
        }
    }

    #[tokio::test]
    async fn runs_until_done_and_gives_up_after_its_attempts() {
        let mut calls = 0;
        let done: Result<Option<u64>, ()> = Backoff::CONFLICT
            .run(|attempt| {
                calls += 1;
                async move { Ok((attempt == 4).then_some(attempt)) }
            })
            .await;
        assert_eq!((done, calls), (Ok(Some(4)), 5));
        let mut calls = 0;
        let spent: Result<Option<()>, ()> = Backoff::REPLAN
            .run(|_| {
                calls += 1;
                async { Ok(None) }
            })
            .await;
        assert_eq!((spent, calls), (Ok(None), 20));
        let failed: Result<Option<()>, &str> = Backoff::REPLAN.run(|_| async { Err("no") }).await;
        assert_eq!(failed, Err("no"));
        assert!(Backoff::REPLAN.is_last(19) && !Backoff::REPLAN.is_last(18));
    }
}
