//! What the whole fleet shares: who holds which item, counters, pacing, latencies.

use super::*;

/// State the whole fleet shares.
#[derive(Debug, Default)]
pub(super) struct Fleet {
    /// Which robot holds each delivered item.
    pub(super) holders: Mutex<HashMap<i64, usize>>,
    /// Items whose completion was accepted.
    pub(super) completed: Mutex<HashSet<i64>>,
    pub(super) duplicates: AtomicU64,
    pub(super) double_completions: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) completions: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) crashes: AtomicU64,
    pub(super) connected: AtomicU64,
    pub(super) refusals: AtomicU64,
    pub(super) reconnects: AtomicU64,
    /// Upload start per task, and first-arrival per task seen before its upload answered.
    pub(super) upload_started: Mutex<HashMap<i64, Instant>>,
    pub(super) first_seen: Mutex<HashMap<i64, Instant>>,
    pub(super) assign_ms: Mutex<Vec<f64>>,
    pub(super) next_item_ms: Mutex<Vec<f64>>,
    pub(super) stop: AtomicBool,
    /// When `--rate` pacing began.
    pub(super) started_at: Mutex<Option<Instant>>,
    /// Completion slots handed out by `--rate` pacing so far.
    pub(super) paced: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
}

impl Fleet {
    pub(super) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(super) fn error(&self, what: impl std::fmt::Display) {
        // The first few in full on stderr (the report keeps the count and the last one).
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("robot-sim: error: {what}");
        }
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = Some(what.to_string());
    }

    /// An item reached `robot`; counts a duplicate if another robot holds it or it was done.
    pub(super) fn delivered(&self, robot: usize, item: i64, task: i64) {
        let now = Instant::now();
        {
            let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(other) = holders.insert(item, robot)
                && other != robot
            {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&item)
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let started = self
            .upload_started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&task);
        match started {
            Some(started) => self
                .assign_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(ms(now - started)),
            None => {
                self.first_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(task)
                    .or_insert(now);
            }
        }
    }

    /// A robot that freed a slot at `freed` got its next item at `now`.
    pub(super) fn next_item(&self, freed: Option<Instant>, now: Instant) {
        if let Some(at) = freed {
            self.next_item_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(ms(now - at));
        }
    }

    /// `robot` gave `item` back (failed, released, revoked, crashed).
    pub(super) fn dropped(&self, robot: usize, item: i64) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.get(&item) == Some(&robot) {
            holders.remove(&item);
        }
    }

    /// The node accepted `robot`'s completion of `item`.
    pub(super) fn completed(&self, robot: usize, item: i64) {
        self.dropped(robot, item);
        if !self
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(item)
        {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            self.double_completions.fetch_add(1, Ordering::Relaxed);
        }
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits for this robot's turn so that completions are sent at `rate` per second, evenly
    /// spaced: each call takes the next slot (slot k is due k / rate seconds after the first).
    /// Counting accepted completions instead let every robot that woke before the acks came
    /// back through at once, so the node saw bursts of a whole fleet's completions.
    pub(super) async fn pace(&self, rate: f64) {
        if rate <= 0.0 {
            return;
        }
        let start = *self
            .started_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        let slot = self.paced.fetch_add(1, Ordering::Relaxed) as f64;
        let due = start + Duration::from_secs_f64(slot / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}
