//! Sign-in throttling and a bound on password hashing, for both sign-in routes
//! (`POST /api/v1/auth/login` and the `/login` form).
//!
//! - Failures are counted per username (whether or not it exists, so the answer says nothing
//!   about which names are real) and per client address. A key gets a few free failures; each
//!   one after that locks it for twice as long as the last (1 s, 2 s, 4 s, … at most 15 min).
//!   A locked key is answered 429 `too_many_attempts` with `Retry-After`, before any hashing.
//!   A key forgets its failures 15 minutes after its last one; a success clears its username.
//! - An attempt is counted when it starts, as a reservation ([`Attempt`]) that becomes a
//!   failure or is given back: a key lets only as many attempts run at once as it has failures
//!   left before its lock, so guesses sent all at once get no more answers than guesses sent
//!   one after another (5 × 401, a sixth 401 that sets the lock, then 429).
//! - Argon2 takes about 19 MiB per check: at most [`HASHING_AT_ONCE`] run at once, and a
//!   sign-in that waits longer than [`HASHING_WAIT`] for its turn is answered 503.
//!
//! Counts are per node (a cluster multiplies the free attempts by its nodes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Password checks running at once.
pub const HASHING_AT_ONCE: usize = 4;
/// Longest wait for a turn to check a password.
pub const HASHING_WAIT: Duration = Duration::from_secs(10);

const FREE_PER_USERNAME: u32 = 5;
const FREE_PER_ADDRESS: u32 = 20;
const LONGEST_LOCK: Duration = Duration::from_secs(15 * 60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// What a throttled attempt is told to wait when the key is not locked but already runs as
/// many attempts as it has failures left.
const BUSY_WAIT: Duration = Duration::from_secs(1);
/// Keys remembered at most; past it, keys that are neither locked nor recent are dropped.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Username(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// Attempts started and not yet ended: each may become a failure.
    running: u32,
    last: Instant,
    locked_until: Instant,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Failures {
            count: 0,
            running: 0,
            last: now,
            locked_until: now,
        }
    }
}

/// Why an attempt may not start now, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Wait at least this long before trying again.
    pub wait: Duration,
}

/// The node's sign-in throttle and hashing bound.
#[derive(Debug)]
pub struct LoginGuard {
    keys: Mutex<HashMap<Key, Failures>>,
    hashing: tokio::sync::Semaphore,
}

impl Default for LoginGuard {
    fn default() -> Self {
        LoginGuard {
            keys: Mutex::default(),
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
        }
    }
}

fn keys_of(username: &str, address: Option<IpAddr>) -> Vec<(Key, u32)> {
    let mut keys = vec![(
        Key::Username(username.trim().to_lowercase()),
        FREE_PER_USERNAME,
    )];
    if let Some(address) = address {
        keys.push((Key::Address(address), FREE_PER_ADDRESS));
    }
    keys
}

impl LoginGuard {
    /// Starts a sign-in attempt for `username` from `address`: a reservation on both keys, or
    /// `Err` while either is locked or already runs as many attempts as it has failures left.
    pub fn begin(&self, username: &str, address: Option<IpAddr>) -> Result<Attempt<'_>, Throttled> {
        self.begin_at(username, address, Instant::now())
    }

    fn begin_at(
        &self,
        username: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<Attempt<'_>, Throttled> {
        let keys = keys_of(username, address);
        let mut table = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_KEYS {
            table.retain(|_, f| {
                f.locked_until > now || f.running > 0 || now - f.last < FORGET_AFTER
            });
        }
        let mut wait = Duration::ZERO;
        for (key, free) in &keys {
            let Some(f) = table.get_mut(key) else {
                continue;
            };
            if now.saturating_duration_since(f.last) >= FORGET_AFTER && f.running == 0 {
                f.count = 0;
            }
            let locked = f.locked_until.saturating_duration_since(now);
            // Failures that may still come from attempts running now count as if they had:
            // as many attempts may run as there are free failures left plus the one that
            // locks; past them (a lock ran out), one at a time.
            let busy = f.running >= (free + 1).saturating_sub(f.count).max(1);
            wait = wait.max(if busy && locked.is_zero() {
                BUSY_WAIT
            } else {
                locked
            });
        }
        if !wait.is_zero() {
            return Err(Throttled { wait });
        }
        for (key, _) in &keys {
            table
                .entry(key.clone())
                .or_insert_with(|| Failures::new(now))
                .running += 1;
        }
        Ok(Attempt {
            guard: self,
            keys,
            ended: false,
        })
    }

    fn end(&self, keys: &[(Key, u32)], failed: bool, now: Instant) {
        let mut table = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, free) in keys {
            let Some(entry) = table.get_mut(key) else {
                continue;
            };
            entry.running = entry.running.saturating_sub(1);
            if !failed {
                continue;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count > *free {
                let doublings = (entry.count - free - 1).min(20);
                let lock = Duration::from_secs(1 << doublings).min(LONGEST_LOCK);
                entry.locked_until = now + lock;
            }
        }
    }

    /// Records a successful sign-in: the username's failures are forgotten.
    fn succeeded_at(&self, username: &str, now: Instant) {
        let mut table = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.get_mut(&Key::Username(username.trim().to_lowercase())) {
            *entry = Failures {
                running: entry.running,
                ..Failures::new(now)
            };
        }
    }

    /// A turn to check a password, or `None` when none came within [`HASHING_WAIT`].
    pub async fn hashing_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(HASHING_WAIT, self.hashing.acquire())
            .await
            .ok()?
            .ok()
    }
}

/// A sign-in attempt under way. Ending it says how it went; dropping it unended (the request
/// was cancelled, the password check failed to run) gives its reservation back.
#[derive(Debug)]
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    keys: Vec<(Key, u32)>,
    ended: bool,
}

impl Attempt<'_> {
    /// Wrong credentials: counted on every key, which may lock it.
    pub fn failed(self) {
        self.end_at(true, Instant::now());
    }

    /// Right credentials: the username's failures are forgotten.
    pub fn succeeded(self, username: &str) {
        let guard = self.guard;
        let now = Instant::now();
        self.end_at(false, now);
        guard.succeeded_at(username, now);
    }

    fn end_at(mut self, failed: bool, now: Instant) {
        self.ended = true;
        self.guard.end(&self.keys, failed, now);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.guard.end(&self.keys, false, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(guard: &LoginGuard, name: &str, addr: Option<IpAddr>, at: Instant) {
        let attempt = guard.begin_at(name, addr, at).expect("attempt may start");
        attempt.end_at(true, at);
    }

    fn wait(guard: &LoginGuard, name: &str, addr: Option<IpAddr>, at: Instant) -> Option<Duration> {
        guard.begin_at(name, addr, at).err().map(|t| t.wait)
    }

    #[test]
    fn a_username_locks_after_its_free_failures_for_longer_each_time() {
        let guard = LoginGuard::default();
        let t0 = Instant::now();
        for _ in 0..FREE_PER_USERNAME {
            fail(&guard, "ana", None, t0);
        }
        assert_eq!(wait(&guard, "ana", None, t0), None);
        fail(&guard, "Ana ", None, t0);
        assert_eq!(
            wait(&guard, "ana", None, t0),
            Some(Duration::from_secs(1)),
            "names are compared trimmed and case-folded"
        );
        fail(&guard, "ana", None, t0 + Duration::from_secs(1));
        assert_eq!(
            wait(&guard, "ana", None, t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(wait(&guard, "bob", None, t0), None, "others are not locked");
        guard.succeeded_at("ana", t0);
        assert_eq!(wait(&guard, "ana", None, t0), None);
    }

    #[test]
    fn an_address_trying_many_names_is_locked_too() {
        let guard = LoginGuard::default();
        let addr: IpAddr = [10, 0, 0, 9].into();
        let t0 = Instant::now();
        for i in 0..=FREE_PER_ADDRESS {
            fail(&guard, &format!("user{i}"), Some(addr), t0);
        }
        assert!(wait(&guard, "fresh-name", Some(addr), t0).is_some());
        assert_eq!(wait(&guard, "fresh-name", None, t0), None);
        let later = t0 + LONGEST_LOCK + FORGET_AFTER;
        assert_eq!(wait(&guard, "fresh-name", Some(addr), later), None);
        fail(&guard, "fresh-name", Some(addr), later);
        assert_eq!(
            wait(&guard, "another", Some(addr), later),
            None,
            "failures are forgotten after a quiet quarter hour"
        );
    }

    #[test]
    fn attempts_at_once_get_no_more_answers_than_attempts_in_a_row() {
        let guard = LoginGuard::default();
        let t0 = Instant::now();
        let running: Vec<Attempt<'_>> = (0..=FREE_PER_USERNAME)
            .map(|_| {
                guard
                    .begin_at("ana", None, t0)
                    .expect("within the free failures")
            })
            .collect();
        assert_eq!(
            wait(&guard, "ana", None, t0),
            Some(BUSY_WAIT),
            "a seventh attempt while six run is refused before any hashing"
        );
        for attempt in running {
            attempt.end_at(true, t0);
        }
        assert_eq!(
            wait(&guard, "ana", None, t0),
            Some(Duration::from_secs(1)),
            "six failures lock the name as six in a row do"
        );
    }

    #[test]
    fn an_attempt_dropped_unended_gives_its_reservation_back() {
        let guard = LoginGuard::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(guard.begin_at("ana", None, t0).expect("attempt"));
        }
        let all: Vec<Attempt<'_>> = (0..=FREE_PER_USERNAME)
            .map(|_| {
                guard
                    .begin_at("ana", None, t0)
                    .expect("nothing was counted")
            })
            .collect();
        drop(all);
        assert_eq!(wait(&guard, "ana", None, t0), None);
    }
}
