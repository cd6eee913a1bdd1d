//! Items are stored in chunks of [`CHUNK_ITEMS`], not one row each.
//!
//! - `chunk:<n>` holds the mutable state of the items with ids `n * CHUNK_ITEMS ..` of one task,
//!   as one JSON text, plus the few summary fields queries need: items in flight, the earliest
//!   lease expiry among them, the robots holding them, and counts by status.
//! - `chunk_data:<n>` holds their line numbers and values, written once at upload.
//!
//! Why: SurrealDB's cost is per row and per index entry, not per byte. Updating one item row with
//! three indexes cost about 330 µs (see `store_cost_per_item`), so three transitions per item
//! capped the node near 250 items/s. A batch of transitions now rewrites the handful of chunks
//! it touches.
//!
//! Every item write on a node takes one lock and works on a cache of recently used chunks, so a
//! batch costs one transaction and, while the cache is warm, no read. Each chunk carries a
//! version and every write is a compare-and-set on it: a node whose copy is stale (another node
//! of the cluster wrote the chunk) re-reads it and re-plans. Item-level compare-and-set (old
//! status and lease) is checked on the chunk as it is stored, so two writers never both win.

use super::Store;
use super::reports::{self, Aside};
use crate::domain::{ItemCounts, ItemStatus, Millis};
use crate::error::StoreError;
use crate::lifecycle::{ItemState, add_counts};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard};

/// Items per chunk. Uploads reserve item ids in whole chunks, so a chunk never holds two tasks.
pub const CHUNK_ITEMS: i64 = 256;

/// Chunks whose state a node keeps cached (about 25–60 KB each).
const CACHE_CHUNKS: usize = 512;

/// Chunks whose payload (lines and values) a node keeps cached for delivery.
const CACHE_PAYLOADS: usize = 64;

/// The error a write throws when a chunk's version moved.
const CHUNK_CONFLICT: &str = "chunk version conflict";
/// Thrown by a write that leases items of a task cancelled meanwhile (on any node): the write
/// is made again without those leases.
pub(crate) const TASK_CANCELLED: &str = "task cancelled while leasing";

/// Fields read from a `chunk` row.
const CHUNK_FIELDS: &str = "record::id(id) AS n, task, first, version, created_at, state";

/// The chunk holding item `id`.
pub fn chunk_of(id: i64) -> i64 {
    id.div_euclid(CHUNK_ITEMS)
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One item's mutable state inside a chunk; short names keep the chunk's text small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Slot {
    #[serde(rename = "s")]
    pub status: ItemStatus,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub robot: Option<i64>,
    #[serde(rename = "a", default, skip_serializing_if = "is_zero")]
    pub attempt: i64,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Millis>,
    #[serde(rename = "e", default, skip_serializing_if = "is_zero")]
    pub lease_expiries: i64,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub observation: Option<String>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The report is stored apart, in `report:<item id>` (see `reports.rs`).
    #[serde(rename = "y", default, skip_serializing_if = "is_false")]
    pub report_apart: bool,
    #[serde(rename = "k", default, skip_serializing_if = "Option::is_none")]
    pub fail_kind: Option<String>,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Millis>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
}

impl Slot {
    /// A freshly uploaded item.
    pub fn pending() -> Slot {
        Slot {
            status: ItemStatus::Pending,
            robot: None,
            attempt: 0,
            lease_id: None,
            lease_expires_at: None,
            lease_expiries: 0,
            observation: None,
            output: None,
            report_apart: false,
            fail_kind: None,
            not_before: None,
            started_at: None,
            ended_at: None,
        }
    }

    fn from_state(s: &ItemState) -> Slot {
        Slot {
            status: s.status,
            robot: s.robot_id,
            attempt: s.attempt,
            lease_id: s.lease_id.clone(),
            lease_expires_at: s.lease_expires_at,
            lease_expiries: s.lease_expiries,
            observation: s.observation.clone(),
            output: s.output.clone(),
            report_apart: s.report_apart,
            fail_kind: s.fail_kind.clone(),
            not_before: s.not_before,
            started_at: s.started_at,
            ended_at: s.ended_at,
        }
    }

    fn in_flight(&self) -> bool {
        matches!(self.status, ItemStatus::Assigned | ItemStatus::Started)
    }
}

/// A chunk as read from the store (or the cache).
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub n: i64,
    pub task: i64,
    /// Id of the first item; the others follow without gaps.
    pub first: i64,
    pub version: i64,
    pub created_at: Millis,
    pub slots: Vec<Slot>,
    /// Reports put since the chunk was read, to be written apart with it; never cached.
    pub asides: Vec<Aside>,
    /// Items whose report stored apart was replaced by one kept in the chunk: their `report`
    /// rows go with the chunk's write; never cached.
    pub dropped: Vec<i64>,
}

#[derive(Debug, Deserialize)]
struct ChunkRow {
    n: i64,
    task: i64,
    first: i64,
    version: i64,
    created_at: Millis,
    state: String,
}

impl TryFrom<ChunkRow> for Chunk {
    type Error = StoreError;
    fn try_from(row: ChunkRow) -> Result<Chunk, StoreError> {
        let slots: Vec<Slot> = serde_json::from_str(&row.state)
            .map_err(|e| StoreError::Malformed(format!("chunk {}: {e}", row.n)))?;
        Ok(Chunk {
            n: row.n,
            task: row.task,
            first: row.first,
            version: row.version,
            created_at: row.created_at,
            slots,
            asides: Vec::new(),
            dropped: Vec::new(),
        })
    }
}

impl Chunk {
    /// A new chunk of PENDING items, the first with id `first`.
    pub fn new(task: i64, first: i64, len: usize, created_at: Millis) -> Chunk {
        Chunk {
            n: chunk_of(first),
            task,
            first,
            version: 0,
            created_at,
            slots: vec![Slot::pending(); len],
            asides: Vec::new(),
            dropped: Vec::new(),
        }
    }

    fn index(&self, id: i64) -> Option<usize> {
        let i = usize::try_from(id - self.first).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// The state of item `id`, if this chunk holds it.
    pub fn state(&self, id: i64) -> Option<ItemState> {
        let slot = &self.slots[self.index(id)?];
        Some(self.state_of(id, slot))
    }

    fn state_of(&self, id: i64, slot: &Slot) -> ItemState {
        ItemState {
            id,
            task_id: self.task,
            status: slot.status,
            robot_id: slot.robot,
            attempt: slot.attempt,
            lease_id: slot.lease_id.clone(),
            lease_expires_at: slot.lease_expires_at,
            lease_expiries: slot.lease_expiries,
            observation: slot.observation.clone(),
            output: slot.output.clone(),
            report_apart: slot.report_apart,
            fail_kind: slot.fail_kind.clone(),
            not_before: slot.not_before,
            started_at: slot.started_at,
            ended_at: slot.ended_at,
        }
    }

    /// Every item's state, in id order.
    pub fn states(&self) -> impl Iterator<Item = ItemState> + '_ {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| self.state_of(self.first + i as i64, slot))
    }

    /// The slot of item `id`.
    pub fn slot_mut(&mut self, id: i64) -> Option<&mut Slot> {
        let i = self.index(id)?;
        Some(&mut self.slots[i])
    }

    /// Overwrites item `state.id`; false when this chunk does not hold it. A long report is
    /// set aside, to be written apart with the chunk.
    pub fn put(&mut self, state: &ItemState) -> bool {
        let Some(i) = self.index(state.id) else {
            return false;
        };
        let mut slot = Slot::from_state(state);
        self.asides.retain(|aside| aside.item != state.id);
        if let Some(aside) = reports::aside(state) {
            slot.observation = None;
            slot.output = None;
            slot.report_apart = true;
            self.asides.push(aside);
        } else if self.slots[i].report_apart && !self.dropped.contains(&state.id) {
            self.dropped.push(state.id);
        }
        self.slots[i] = slot;
        true
    }

    pub fn counts(&self) -> ItemCounts {
        let mut counts = ItemCounts::default();
        for slot in &self.slots {
            add_counts(
                &mut counts,
                &crate::lifecycle::count_delta(ItemStatus::Pending, slot.status),
            );
        }
        counts.pending += self.slots.len() as i64;
        counts
    }

    /// The row written for this chunk: its state text and the summary fields queries use.
    pub fn row(&self) -> Result<Value, StoreError> {
        let mut row = self.fields(self.version)?;
        row.insert("n".into(), json!(self.n));
        Ok(Value::Object(row))
    }

    /// Every stored field of the chunk's row, with `version` as its version.
    fn fields(&self, version: i64) -> Result<Map<String, Value>, StoreError> {
        let in_flight: Vec<&Slot> = self.slots.iter().filter(|s| s.in_flight()).collect();
        let lease_min = in_flight.iter().filter_map(|s| s.lease_expires_at).min();
        let mut holders: Vec<i64> = in_flight.iter().filter_map(|s| s.robot).collect();
        holders.sort_unstable();
        holders.dedup();
        let mut row = Map::new();
        row.insert("task".into(), json!(self.task));
        row.insert("first".into(), json!(self.first));
        row.insert("version".into(), json!(version));
        row.insert("created_at".into(), json!(self.created_at));
        row.insert("state".into(), json!(serde_json::to_string(&self.slots)?));
        row.insert("in_flight".into(), json!(in_flight.len()));
        row.insert("holders".into(), json!(holders));
        row.insert("counts".into(), json!(self.counts()));
        if let Some(at) = lease_min {
            row.insert("lease_min".into(), json!(at));
        }
        Ok(row)
    }
}

/// Line numbers and values of a chunk's items, in id order.
pub(crate) type Payload = Vec<(i64, Map<String, Value>)>;

/// What a write does to one task's row besides its counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskDelta {
    pub counts: ItemCounts,
    /// Items were leased: a CREATED task becomes STARTED.
    pub start: bool,
    /// Items were reopened: a finished task (not a cancelled one) runs again.
    pub reopen: bool,
    /// Robots leased items of the task in this write (recorded as `worked:[task, robot]`).
    pub workers: BTreeSet<i64>,
}

/// `worked` rows a node remembers having written, so a busy fleet writes each once.
const REMEMBERED_WORKERS: usize = 100_000;

/// The node's chunk cache and write lock, its payload cache (payloads never change, so
/// reading them never waits for a write), and the `worked` rows it knows exist.
#[derive(Debug, Default)]
pub(crate) struct ChunkCache {
    inner: Mutex<Cached>,
    payloads: std::sync::Mutex<Payloads>,
    workers: std::sync::Mutex<HashSet<(i64, i64)>>,
    /// Chunks whose stored text could not be decoded (see [`Store::decode_chunks`]).
    unreadable: std::sync::Mutex<BTreeSet<i64>>,
}

/// Recently used payloads, each stamped with when it was last used.
#[derive(Debug, Default)]
struct Payloads {
    map: HashMap<i64, (u64, Arc<Payload>)>,
    clock: u64,
}

/// Cached chunks and payloads, each stamped with when it was last used.
#[derive(Debug, Default)]
pub(crate) struct Cached {
    chunks: HashMap<i64, (u64, Chunk)>,
    clock: u64,
}

impl Cached {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cached chunk `n`.
    pub fn get(&mut self, n: i64) -> Option<&Chunk> {
        let now = self.tick();
        let entry = self.chunks.get_mut(&n)?;
        entry.0 = now;
        Some(&entry.1)
    }

    /// Keeps `chunk` unless a newer version is cached.
    pub fn keep(&mut self, chunk: Chunk) {
        let now = self.tick();
        match self.chunks.get_mut(&chunk.n) {
            Some(entry) if entry.1.version > chunk.version => entry.0 = now,
            Some(entry) => *entry = (now, chunk),
            None => {
                self.chunks.insert(chunk.n, (now, chunk));
                evict(&mut self.chunks, CACHE_CHUNKS);
            }
        }
    }

    pub fn forget(&mut self, ns: impl IntoIterator<Item = i64>) {
        for n in ns {
            self.chunks.remove(&n);
        }
    }
}

/// Drops the least recently used entries beyond `cap` (an eighth of the cache at a time, so the
/// scan is rare).
fn evict<T>(map: &mut HashMap<i64, (u64, T)>, cap: usize) {
    if map.len() <= cap {
        return;
    }
    let mut stamps: Vec<u64> = map.values().map(|(at, _)| *at).collect();
    stamps.sort_unstable();
    let cutoff = stamps[map.len() - cap + cap / 8];
    map.retain(|_, (at, _)| *at >= cutoff);
}

impl Store {
    /// Takes the node's item write lock, with the chunk cache.
    pub(crate) async fn chunk_lock(&self) -> MutexGuard<'_, Cached> {
        self.chunks.inner.lock().await
    }

    /// Reads chunks by number from the store, not caching them (missing ones are left out).
    pub(crate) async fn read_chunks(&self, ns: &[i64]) -> Result<Vec<Chunk>, StoreError> {
        if ns.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {CHUNK_FIELDS} FROM array::map($ns, |$n| type::record('chunk', $n)) \
             WHERE version != NONE;"
        );
        let rows: Vec<ChunkRow> = self.rows(&sql, json!({ "ns": ns }), 0).await?;
        Ok(self.decode_chunks(rows))
    }

    /// Decodes chunk rows, leaving out (and reporting) any whose text cannot be read: one
    /// damaged chunk must not stop sweeps, listings or writes that concern other chunks. Its
    /// items look missing until it is repaired; `/healthz` names it meanwhile.
    fn decode_chunks(&self, rows: Vec<ChunkRow>) -> Vec<Chunk> {
        let mut chunks = Vec::with_capacity(rows.len());
        for row in rows {
            let (n, task) = (row.n, row.task);
            match Chunk::try_from(row) {
                Ok(chunk) => {
                    if let Ok(mut bad) = self.chunks.unreadable.lock()
                        && !bad.is_empty()
                        && bad.remove(&n)
                    {
                        tracing::info!(chunk = n, task, "chunk readable again");
                    }
                    chunks.push(chunk);
                }
                Err(err) => {
                    let first_time = self
                        .chunks
                        .unreadable
                        .lock()
                        .map(|mut bad| bad.insert(n))
                        .unwrap_or(true);
                    if first_time {
                        tracing::error!(chunk = n, task, error = %err,
                            "chunk cannot be decoded; its items are left out until it is repaired");
                    }
                }
            }
        }
        chunks
    }

    /// Chunks found unreadable since the node started (and not readable again since).
    pub fn unreadable_chunks(&self) -> Vec<i64> {
        self.chunks
            .unreadable
            .lock()
            .map(|bad| bad.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Makes sure chunks `ns` are cached, reading those that are not (all of them if `fresh`).
    pub(crate) async fn load(
        &self,
        cached: &mut Cached,
        ns: &[i64],
        fresh: bool,
    ) -> Result<(), StoreError> {
        let mut missing: Vec<i64> = ns
            .iter()
            .copied()
            .filter(|n| fresh || !cached.chunks.contains_key(n))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if fresh {
            cached.forget(missing.iter().copied());
        }
        for chunk in self.read_chunks(&missing).await? {
            cached.keep(chunk);
        }
        Ok(())
    }

    /// Chunks matching a SurrealQL condition, read from the store and kept in the cache.
    pub(crate) async fn query_chunks(
        &self,
        cond: &str,
        limit: Option<i64>,
        vars: Value,
    ) -> Result<Vec<Chunk>, StoreError> {
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        let sql = format!("SELECT {CHUNK_FIELDS} FROM chunk WHERE {cond} ORDER BY n{limit};");
        let rows: Vec<ChunkRow> = self.rows(&sql, vars, 0).await?;
        let chunks = self.decode_chunks(rows);
        self.keep_if_idle(&chunks);
        Ok(chunks)
    }

    /// Caches what a read found, unless a writer holds the lock: readers never wait for writes.
    pub(crate) fn keep_if_idle(&self, chunks: &[Chunk]) {
        if let Ok(mut cached) = self.chunks.inner.try_lock() {
            for chunk in chunks {
                cached.keep(chunk.clone());
            }
        }
    }

    /// Chunks `ns` read from the store, kept in the cache if no writer holds it.
    pub(crate) async fn read_fresh(&self, ns: &[i64]) -> Result<Vec<Chunk>, StoreError> {
        let chunks = self.read_chunks(ns).await?;
        self.keep_if_idle(&chunks);
        Ok(chunks)
    }

    /// Payloads of chunks `ns` from the store.
    pub(crate) async fn read_payloads(
        &self,
        ns: &[i64],
    ) -> Result<HashMap<i64, Arc<Payload>>, StoreError> {
        if ns.is_empty() {
            return Ok(HashMap::new());
        }
        #[derive(Deserialize)]
        struct Row {
            n: i64,
            data: String,
        }
        let rows: Vec<Row> = self
            .rows(
                "SELECT record::id(id) AS n, data FROM \
                 array::map($ns, |$n| type::record('chunk_data', $n)) WHERE data != NONE;",
                json!({ "ns": ns }),
                0,
            )
            .await?;
        rows.into_iter()
            .map(|row| {
                let payload: Payload = serde_json::from_str(&row.data)
                    .map_err(|e| StoreError::Malformed(format!("chunk data {}: {e}", row.n)))?;
                Ok((row.n, Arc::new(payload)))
            })
            .collect()
    }

    /// Payloads of chunks `ns`, from the cache where it has them.
    pub(crate) async fn payloads(
        &self,
        ns: &[i64],
    ) -> Result<HashMap<i64, Arc<Payload>>, StoreError> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(mut cache) = self.chunks.payloads.lock() {
            for n in ns {
                cache.clock += 1;
                let now = cache.clock;
                match cache.map.get_mut(n) {
                    Some(entry) => {
                        entry.0 = now;
                        out.insert(*n, Arc::clone(&entry.1));
                    }
                    None => missing.push(*n),
                }
            }
        }
        let read = self.read_payloads(&missing).await?;
        if let Ok(mut cache) = self.chunks.payloads.lock() {
            for (n, payload) in &read {
                cache.clock += 1;
                let now = cache.clock;
                cache.map.insert(*n, (now, Arc::clone(payload)));
            }
            evict(&mut cache.map, CACHE_PAYLOADS);
        }
        out.extend(read);
        Ok(out)
    }
}

mod write;

pub(crate) use write::open_items;
#[cfg(test)]
use write::write_statements;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;
