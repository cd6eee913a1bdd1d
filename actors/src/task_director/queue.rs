//! A task's pending queue: a cursor over the task's id ranges (items start PENDING in id order),
//! items handed back, and items waiting out an application-failure backoff. Plain data.

use crate::domain::Millis;
use crate::store::PendingItem;
use std::collections::{BTreeSet, HashSet, VecDeque};

/// Ids scanned from the store per read.
pub const SCAN_WINDOW: i64 = 2_000;

/// The pending queue of one task.
#[derive(Debug, Clone, Default)]
pub struct PendingQueue {
    ranges: Vec<(i64, i64)>,
    /// Next id to scan; `None` once every range was scanned.
    cursor: Option<i64>,
    ready: VecDeque<i64>,
    queued: HashSet<i64>,
    /// (not_before, id) of items in backoff.
    delayed: BTreeSet<(Millis, i64)>,
}

impl PendingQueue {
    /// A queue over the task's id ranges, scanning from the first id.
    pub fn new(ranges: Vec<(i64, i64)>) -> Self {
        let cursor = ranges.first().map(|(start, _)| *start);
        PendingQueue {
            ranges,
            cursor,
            ..Default::default()
        }
    }

    /// The next id window `[from, to]` to scan, if any remains.
    pub fn next_window(&self) -> Option<(i64, i64)> {
        let cursor = self.cursor?;
        let (_, end) = self.ranges.iter().find(|(_, end)| cursor <= *end)?;
        Some((cursor, (cursor + SCAN_WINDOW - 1).min(*end)))
    }

    /// Records the scan of window `[_, to]` and what it found.
    pub fn scanned(&mut self, to: i64, found: &[PendingItem], now: Millis) {
        let next = to + 1;
        self.cursor = self
            .ranges
            .iter()
            .find(|(start, end)| next <= *end || next <= *start)
            .map(|(start, _)| next.max(*start));
        self.push(found, now);
    }

    /// Adds items handed back (or found by a scan); duplicates are ignored.
    pub fn push(&mut self, items: &[PendingItem], now: Millis) {
        for item in items {
            if self.queued.contains(&item.id) {
                continue;
            }
            self.queued.insert(item.id);
            match item.not_before {
                Some(at) if at > now => {
                    self.delayed.insert((at, item.id));
                }
                _ => self.ready.push_back(item.id),
            }
        }
    }

    /// Moves backoff items that are due into the ready queue; returns how many.
    pub fn release_due(&mut self, now: Millis) -> usize {
        let due: Vec<(Millis, i64)> = self.delayed.range(..=(now, i64::MAX)).copied().collect();
        for entry in &due {
            self.delayed.remove(entry);
            self.ready.push_back(entry.1);
        }
        due.len()
    }

    /// Takes up to `n` ready ids.
    pub fn take(&mut self, n: usize) -> Vec<i64> {
        let n = n.min(self.ready.len());
        let ids: Vec<i64> = self.ready.drain(..n).collect();
        for id in &ids {
            self.queued.remove(id);
        }
        ids
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Whether nothing is ready, delayed, or left to scan.
    pub fn is_exhausted(&self) -> bool {
        self.ready.is_empty() && self.delayed.is_empty() && self.cursor.is_none()
    }

    pub fn has_delayed(&self) -> bool {
        !self.delayed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: i64) -> PendingItem {
        PendingItem {
            id,
            not_before: None,
        }
    }

    #[test]
    fn scans_ranges_in_windows_and_ends() {
        let mut q = PendingQueue::new(vec![(1, 2_500), (9_001, 9_010)]);
        assert_eq!(q.next_window(), Some((1, 2_000)));
        q.scanned(2_000, &[pending(1), pending(2)], 0);
        assert_eq!(q.next_window(), Some((2_001, 2_500)));
        q.scanned(2_500, &[], 0);
        assert_eq!(q.next_window(), Some((9_001, 9_010)));
        q.scanned(9_010, &[pending(9_005)], 0);
        assert_eq!(q.next_window(), None);
        assert_eq!(q.take(10), [1, 2, 9_005]);
        assert!(q.is_exhausted());
    }

    #[test]
    fn handed_back_items_are_queued_once_and_backoff_waits() {
        let mut q = PendingQueue::new(vec![]);
        q.push(&[pending(5), pending(5)], 0);
        q.push(
            &[PendingItem {
                id: 6,
                not_before: Some(100),
            }],
            0,
        );
        assert_eq!(q.take(10), [5]);
        assert!(!q.is_exhausted(), "item 6 waits out its backoff");
        assert_eq!(q.release_due(99), 0);
        assert_eq!(q.release_due(100), 1);
        assert_eq!(q.take(10), [6]);
        assert!(q.is_exhausted());
    }
}
