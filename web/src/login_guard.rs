//! Sign-in throttling and a bound on password hashing, for both sign-in routes
//! (`POST /api/v1/auth/login` and the `/login` form).
//!
//! - Failures are counted per username (whether or not it exists, so the answer says nothing
//!   about which names are real) and per client address. A key gets a few free failures; each
//!   one after that locks it for twice as long as the last (1 s, 2 s, 4 s, … at most 15 min).
//!   A locked key is answered 429 `too_many_attempts` with `Retry-After`, before any hashing.
//!   A key forgets its failures 15 minutes after its last one; a success clears its username.
//! - Argon2 takes about 19 MiB per check: at most [`HASHING_AT_ONCE`] run at once, and a
//!   sign-in that waits longer than [`HASHING_WAIT`] for its turn is answered 503.
//!
//! Counts are per node (a cluster multiplies the free attempts by its nodes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Password checks running at once.
pub const HASHING_AT_ONCE: usize = 4;
/// Longest wait for a turn to check a password.
pub const HASHING_WAIT: Duration = Duration::from_secs(10);

const FREE_PER_USERNAME: u32 = 5;
const FREE_PER_ADDRESS: u32 = 20;
const LONGEST_LOCK: Duration = Duration::from_secs(15 * 60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
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
    last: Instant,
    locked_until: Instant,
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
    /// `Err(wait)` while the username or the address is locked.
    pub fn check(&self, username: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        self.check_at(username, address, Instant::now())
    }

    fn check_at(
        &self,
        username: &str,
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Duration> {
        let Ok(keys) = self.keys.lock() else {
            return Ok(());
        };
        let wait = keys_of(username, address)
            .iter()
            .filter_map(|(key, _)| keys.get(key))
            .map(|f| f.locked_until.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Records a failed sign-in.
    pub fn failed(&self, username: &str, address: Option<IpAddr>) {
        self.failed_at(username, address, Instant::now());
    }

    fn failed_at(&self, username: &str, address: Option<IpAddr>, now: Instant) {
        let Ok(mut keys) = self.keys.lock() else {
            return;
        };
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, f| f.locked_until > now || now - f.last < FORGET_AFTER);
        }
        for (key, free) in keys_of(username, address) {
            let entry = keys.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: now,
            });
            if now.saturating_duration_since(entry.last) >= FORGET_AFTER {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(20);
                let lock = Duration::from_secs(1 << doublings).min(LONGEST_LOCK);
                entry.locked_until = now + lock;
            }
        }
    }

    /// Records a successful sign-in: the username's failures are forgotten.
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&Key::Username(username.trim().to_lowercase()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_username_locks_after_its_free_failures_for_longer_each_time() {
        let guard = LoginGuard::default();
        let t0 = Instant::now();
        for _ in 0..FREE_PER_USERNAME {
            assert_eq!(guard.check_at("ana", None, t0), Ok(()));
            guard.failed_at("ana", None, t0);
        }
        assert_eq!(guard.check_at("ana", None, t0), Ok(()));
        guard.failed_at("Ana ", None, t0);
        assert_eq!(
            guard.check_at("ana", None, t0),
            Err(Duration::from_secs(1)),
            "names are compared trimmed and case-folded"
        );
        guard.failed_at("ana", None, t0 + Duration::from_secs(1));
        assert_eq!(
            guard.check_at("ana", None, t0 + Duration::from_secs(1)),
            Err(Duration::from_secs(2))
        );
        assert_eq!(
            guard.check_at("bob", None, t0),
            Ok(()),
            "others are not locked"
        );
        guard.succeeded("ana");
        assert_eq!(guard.check_at("ana", None, t0), Ok(()));
    }

    #[test]
    fn an_address_trying_many_names_is_locked_too() {
        let guard = LoginGuard::default();
        let addr: IpAddr = [10, 0, 0, 9].into();
        let t0 = Instant::now();
        for i in 0..=FREE_PER_ADDRESS {
            guard.failed_at(&format!("user{i}"), Some(addr), t0);
        }
        assert!(guard.check_at("fresh-name", Some(addr), t0).is_err());
        assert_eq!(guard.check_at("fresh-name", None, t0), Ok(()));
        let later = t0 + LONGEST_LOCK + FORGET_AFTER;
        assert_eq!(guard.check_at("fresh-name", Some(addr), later), Ok(()));
        guard.failed_at("fresh-name", Some(addr), later);
        assert_eq!(
            guard.check_at("another", Some(addr), later),
            Ok(()),
            "failures are forgotten after a quiet quarter hour"
        );
    }
}
