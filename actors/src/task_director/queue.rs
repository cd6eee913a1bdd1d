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
    /// Id ranges in scan order (a striped queue starts in the middle and wraps around).
    ranges: Vec<(i64, i64)>,
    /// Index into `ranges` and next id to scan; `None` once every range was scanned.
    cursor: Option<(usize, i64)>,
    ready: VecDeque<i64>,
    queued: HashSet<i64>,
    /// (not_before, id) of items in backoff.
    delayed: BTreeSet<(Millis, i64)>,
}

impl PendingQueue {
    /// A queue over the task's id ranges, scanning from the first id.
    pub fn new(ranges: Vec<(i64, i64)>) -> Self {
        PendingQueue::striped(ranges, 0, 1, 1)
    }

    /// A queue that scans stripe `part` of `parts` first (the ids from `part / parts` of the
    /// way in, at a multiple of `align`), then the rest, wrapping around: nodes of a cluster
    /// sharing a task start on different chunks, so their writes meet only at the task's tail.
    pub fn striped(ranges: Vec<(i64, i64)>, part: usize, parts: usize, align: i64) -> Self {
        let total: i64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
        let parts = parts.max(1) as i64;
        let mut skip = total * (part as i64 % parts) / parts;
        // The stripe's first range, the ranges after it, then the ones before it.
        let (mut from, mut after, mut before) = (Vec::new(), Vec::new(), Vec::new());
        for &(start, end) in &ranges {
            let len = end - start + 1;
            if !from.is_empty() {
                after.push((start, end));
            } else if skip >= len {
                before.push((start, end));
                skip -= len;
            } else {
                let align = align.max(1);
                let split = ((start + skip) / align * align).max(start);
                if split > start {
                    before.push((start, split - 1));
                }
                from.push((split, end));
            }
        }
        let ranges_in_order: Vec<(i64, i64)> =
            from.into_iter().chain(after).chain(before).collect();
        let cursor = ranges_in_order.first().map(|(start, _)| (0, *start));
        PendingQueue {
            ranges: ranges_in_order,
            cursor,
            ..Default::default()
        }
    }

    /// The next id window `[from, to]` to scan, if any remains.
    pub fn next_window(&self) -> Option<(i64, i64)> {
        let (index, next) = self.cursor?;
        let (_, end) = self.ranges.get(index)?;
        Some((next, (next + SCAN_WINDOW - 1).min(*end)))
    }

    /// Records the scan of window `[_, to]` and what it found.
    pub fn scanned(&mut self, to: i64, found: &[PendingItem], now: Millis) {
        self.cursor = self.cursor.and_then(|(index, _)| {
            let (_, end) = self.ranges.get(index)?;
            if to < *end {
                Some((index, to + 1))
            } else {
                self.ranges
                    .get(index + 1)
                    .map(|(start, _)| (index + 1, *start))
            }
        });
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

    /// Adds items handed back (released, retried, their robot lost) ahead of the items
    /// scanned but not yet leased: they were due before them.
    pub fn push_returned(&mut self, items: &[PendingItem], now: Millis) {
        let mut first = Vec::new();
        for item in items {
            if !self.queued.insert(item.id) {
                continue;
            }
            match item.not_before {
                Some(at) if at > now => {
                    self.delayed.insert((at, item.id));
                }
                _ => first.push(item.id),
            }
        }
        for id in first.into_iter().rev() {
            self.ready.push_front(id);
        }
    }

    /// Moves backoff items that are due to the front of the ready queue; returns how many.
    pub fn release_due(&mut self, now: Millis) -> usize {
        let due: Vec<(Millis, i64)> = self.delayed.range(..=(now, i64::MAX)).copied().collect();
        for entry in &due {
            self.delayed.remove(entry);
        }
        for entry in due.iter().rev() {
            self.ready.push_front(entry.1);
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
    fn items_handed_back_go_before_items_scanned() {
        let mut q = PendingQueue::new(vec![(1, 100)]);
        q.scanned(100, &[pending(1), pending(2), pending(3)], 0);
        q.push_returned(&[pending(50), pending(2), pending(60)], 0);
        assert_eq!(
            q.take(5),
            [50, 60, 1, 2, 3],
            "returned first, duplicates ignored"
        );
        q.push_returned(
            &[PendingItem {
                id: 70,
                not_before: Some(10),
            }],
            0,
        );
        q.scanned(100, &[pending(4)], 0);
        assert_eq!(q.release_due(10), 1);
        assert_eq!(q.take(2), [70, 4], "a retry due goes first");
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
    fn a_stripe_starts_part_of_the_way_in_and_wraps_around_once() {
        let ranges = vec![(0, 1_023), (2_048, 3_071)];
        let scan_all = |mut q: PendingQueue| {
            let mut windows = Vec::new();
            while let Some((from, to)) = q.next_window() {
                windows.push((from, to));
                q.scanned(to, &[], 0);
            }
            windows
        };
        assert_eq!(
            scan_all(PendingQueue::striped(ranges.clone(), 0, 2, 256)),
            [(0, 1_023), (2_048, 3_071)]
        );
        assert_eq!(
            scan_all(PendingQueue::striped(ranges.clone(), 1, 2, 256)),
            [(2_048, 3_071), (0, 1_023)]
        );
        // A third of 2,048 ids is 682: the stripe starts at the chunk holding the 682nd id.
        assert_eq!(
            scan_all(PendingQueue::striped(ranges.clone(), 1, 3, 256)),
            [(512, 1_023), (2_048, 3_071), (0, 511)]
        );
        let windows = scan_all(PendingQueue::striped(ranges, 2, 3, 256));
        assert_eq!(windows, [(2_304, 3_071), (0, 1_023), (2_048, 2_303)]);
        let scanned: i64 = windows.iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(scanned, 2_048, "every id once");
        assert_eq!(
            scan_all(PendingQueue::striped(vec![], 1, 3, 256)),
            Vec::<(i64, i64)>::new()
        );
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
