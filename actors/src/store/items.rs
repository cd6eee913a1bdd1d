//! Item transitions and reads, on chunk rows (see `chunks.rs`). Every write is a compare-and-set
//! on each item's old status and lease, checked on the chunk as stored, in one transaction with
//! the tasks' counters, so counters never drift and two writers never both win.

use super::Store;
use super::chunks::{CHUNK_ITEMS, Cached, Chunk, Payload, TaskDelta, chunk_of};
use crate::domain::{Item, ItemCounts, ItemStatus, Millis, rfc3339};
use crate::error::StoreError;
use crate::lifecycle::{ItemState, add_counts, count_delta};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Chunks reopened per transaction by retry-failed.
const RETRY_CHUNKS: i64 = 16;

/// Chunks with an expired lease. The lower bound matters: chunks with nothing in flight have
/// NONE there, which sorts below every number, so `< $now` alone would read every idle chunk
/// on every sweep.
const EXPIRED_LEASES_WHERE: &str = "lease_min > 0 AND lease_min < $now";

/// Chunks holding any item in flight (every leased item has an expiry, so `lease_min` is set
/// exactly on them; through its index, not a scan of every chunk).
const IN_FLIGHT_WHERE: &str = "lease_min > 0";

/// Chunks where `$robot` holds items (through the index on each element of `holders`).
const HELD_BY_ROBOT_WHERE: &str = "holders CONTAINS $robot";

/// Times a write re-reads chunks that another node changed before it gives up the batch.
const STALE_RETRIES: usize = 8;

/// An item as delivered to a robot.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct LeasedItem {
    pub id: i64,
    pub task_id: i64,
    /// Filled in on delivery (not stored on items).
    #[serde(default)]
    pub process_id: Option<i64>,
    pub line: i64,
    pub values: Map<String, Value>,
    pub attempt: i64,
    pub lease_id: String,
    pub lease_expires_at: Millis,
    /// ASSIGNED when leased; STARTED when re-sent to a robot that reconnected mid-item.
    #[serde(default = "assigned")]
    pub status: ItemStatus,
    /// When the lease was written, if this delivery knows (a standby item goes back to the
    /// queue once half its lease has passed). Never stored or shown.
    #[serde(skip)]
    pub leased_at: Option<Millis>,
}

fn assigned() -> ItemStatus {
    ItemStatus::Assigned
}

impl LeasedItem {
    /// The JSON a robot receives (REST claim and WebSocket `items` frames alike).
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "task_id": self.task_id, "process_id": self.process_id,
            "line": self.line, "values": self.values, "attempt": self.attempt,
            "status": self.status,
            "lease_id": self.lease_id, "lease_expires_at": rfc3339(self.lease_expires_at),
        })
    }
}

/// Items of one task to lease to one robot.
#[derive(Debug, Clone)]
pub struct Grant {
    pub robot_id: i64,
    pub item_ids: Vec<i64>,
    pub lease_id: String,
    pub lease_expires_at: Millis,
}

/// A pending item id and the earliest time it may run again (application-failure backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PendingItem {
    pub id: i64,
    pub not_before: Option<Millis>,
}

/// Sorted, distinct chunk numbers of `ids`.
/// Metrics of one committed write: transitions by the status reached, items leased, the
/// batch's size and how long it took (retries included).
fn record_write(changes: &[(ItemState, ItemState)], leased: usize, started: std::time::Instant) {
    // One registry lookup per status reached, not per item (batches hold up to 1,024).
    let mut reached: Vec<(ItemStatus, u64)> = Vec::new();
    for (_, new) in changes {
        match reached.iter_mut().find(|(status, _)| *status == new.status) {
            Some((_, n)) => *n += 1,
            None => reached.push((new.status, 1)),
        }
    }
    for (status, n) in reached {
        metrics::counter!("orchestrator_transitions_total", "to" => status.as_str()).increment(n);
    }
    metrics::counter!("orchestrator_items_leased_total").increment(leased as u64);
    metrics::histogram!("orchestrator_batch_size").record((changes.len() + leased) as f64);
    metrics::histogram!("orchestrator_batch_write_seconds").record(started.elapsed().as_secs_f64());
}

fn chunks_of(ids: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut ns: Vec<i64> = ids.into_iter().map(chunk_of).collect();
    ns.sort_unstable();
    ns.dedup();
    ns
}

fn in_flight(status: ItemStatus) -> bool {
    matches!(status, ItemStatus::Assigned | ItemStatus::Started)
}

/// The line and values of item `id` of `chunk`.
fn payload_of<'a>(
    chunk: &Chunk,
    payloads: &'a HashMap<i64, Arc<Payload>>,
    id: i64,
) -> Option<&'a (i64, Map<String, Value>)> {
    payloads
        .get(&chunk.n)?
        .get(usize::try_from(id - chunk.first).ok()?)
}

/// An item as delivered, from its chunk, payload and state (`None` without a lease).
fn leased_item(
    chunk: &Chunk,
    payloads: &HashMap<i64, Arc<Payload>>,
    state: &ItemState,
) -> Option<LeasedItem> {
    let (line, values) = payload_of(chunk, payloads, state.id)?;
    Some(LeasedItem {
        id: state.id,
        task_id: state.task_id,
        process_id: None,
        line: *line,
        values: values.clone(),
        attempt: state.attempt,
        lease_id: state.lease_id.clone()?,
        lease_expires_at: state.lease_expires_at?,
        status: state.status,
        leased_at: None,
    })
}

/// Everything the user API shows of one item.
pub(super) fn full_item(
    chunk: &Chunk,
    payloads: &HashMap<i64, Arc<Payload>>,
    state: ItemState,
) -> Item {
    let (line, values) = payload_of(chunk, payloads, state.id)
        .cloned()
        .unwrap_or_default();
    Item {
        id: state.id,
        task_id: state.task_id,
        line,
        values,
        status: state.status,
        robot_id: state.robot_id,
        attempt: state.attempt,
        lease_id: state.lease_id,
        lease_expires_at: state.lease_expires_at,
        observation: state.observation,
        output: state.output,
        fail_kind: state.fail_kind,
        created_at: chunk.created_at,
        started_at: state.started_at,
        ended_at: state.ended_at,
    }
}

/// The items a robot holds: chunk (shared by its items) and state, in id order.
type Held = Vec<(Arc<Chunk>, ItemState)>;

impl Store {
    /// The current state of one item, read from the store (not the cache).
    pub async fn item_state(&self, id: i64) -> Result<Option<ItemState>, StoreError> {
        let chunks = self.read_fresh(&[chunk_of(id)]).await?;
        Ok(chunks.first().and_then(|c| c.state(id)))
    }

    /// The state of several items (missing ids are left out), from the node's cache where it
    /// has them: writes check each item's state as stored, and the batcher decides a refusal
    /// again on a fresh read, so a stale copy only costs a retry.
    pub async fn item_states(&self, ids: &[i64]) -> Result<Vec<ItemState>, StoreError> {
        let ns = chunks_of(ids.iter().copied());
        let mut cached = self.chunk_lock().await;
        self.load(&mut cached, &ns, false).await?;
        Ok(ids
            .iter()
            .filter_map(|id| cached.get(chunk_of(*id))?.state(*id))
            .collect())
    }

    /// Items `robot` holds (ASSIGNED or STARTED), in id order, each with its chunk.
    async fn held_by(&self, robot: i64) -> Result<Held, StoreError> {
        let chunks = self
            .query_chunks(HELD_BY_ROBOT_WHERE, None, json!({ "robot": robot }))
            .await?;
        let mut held = Vec::new();
        for chunk in chunks.into_iter().map(Arc::new) {
            held.extend(
                chunk
                    .states()
                    .filter(|s| in_flight(s.status) && s.robot_id == Some(robot))
                    .map(|state| (Arc::clone(&chunk), state)),
            );
        }
        Ok(held)
    }

    /// Items held by `robot` (ASSIGNED or STARTED).
    pub async fn robot_items_in_flight(&self, robot: i64) -> Result<Vec<ItemState>, StoreError> {
        Ok(self
            .held_by(robot)
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// How many items `robot` holds (ASSIGNED or STARTED).
    pub async fn robot_in_flight_count(&self, robot: i64) -> Result<i64, StoreError> {
        Ok(self.held_by(robot).await?.len() as i64)
    }

    /// Whether `robot` was ever leased an item of `task_id`.
    pub async fn robot_worked_on(&self, task_id: i64, robot: i64) -> Result<bool, StoreError> {
        let found: Option<Value> = self
            .row(
                "SELECT VALUE true FROM type::record('worked', [$task, $robot]);",
                json!({ "task": task_id, "robot": robot }),
                0,
            )
            .await?;
        Ok(found.is_some())
    }

    /// How many items each robot holds (ASSIGNED or STARTED); robots holding none are left
    /// out. One read of the chunks with items in flight (the registry's recount).
    pub async fn held_counts(&self) -> Result<std::collections::BTreeMap<i64, i64>, StoreError> {
        let chunks = self.query_chunks(IN_FLIGHT_WHERE, None, json!({})).await?;
        let mut counts = std::collections::BTreeMap::new();
        for state in chunks.iter().flat_map(Chunk::states) {
            if let (true, Some(robot)) = (in_flight(state.status), state.robot_id) {
                *counts.entry(robot).or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Items `robot` holds (ASSIGNED or STARTED) with everything the seed API shows.
    pub async fn robot_items_full(&self, robot: i64) -> Result<Vec<Item>, StoreError> {
        let held = self.held_by(robot).await?;
        // Payloads never change: the node's cache serves a seed robot's every poll.
        let payloads = self
            .payloads(&chunks_of(held.iter().map(|(_, s)| s.id)))
            .await?;
        let apart: Vec<i64> = held
            .iter()
            .filter(|(_, state)| state.report_apart)
            .map(|(_, state)| state.id)
            .collect();
        let mut items: Vec<Item> = held
            .into_iter()
            .map(|(chunk, state)| full_item(&chunk, &payloads, state))
            .collect();
        self.fill_reports(&mut items, &apart).await?;
        Ok(items)
    }

    /// ASSIGNED items of a task.
    pub async fn assigned_items_of_task(&self, task_id: i64) -> Result<Vec<ItemState>, StoreError> {
        let chunks = self
            .query_chunks(
                "task = $task AND in_flight > 0",
                None,
                json!({ "task": task_id }),
            )
            .await?;
        Ok(chunks
            .iter()
            .flat_map(Chunk::states)
            .filter(|s| s.status == ItemStatus::Assigned)
            .collect())
    }

    /// The dispatch policy of a task's process.
    pub async fn task_policy(
        &self,
        task_id: i64,
        defaults: crate::lifecycle::PolicyDefaults,
    ) -> Result<crate::lifecycle::Policy, StoreError> {
        let row: Option<Value> = self
            .row(
                "SELECT process.lease_ttl_ms AS ttl, process.max_attempts AS max_attempts,                  process.on_lost AS on_lost FROM (SELECT type::record('process', process) AS process                  FROM type::record('task', $id));",
                json!({ "id": task_id }),
                0,
            )
            .await?;
        let row = row.unwrap_or_default();
        Ok(crate::lifecycle::Policy {
            lease_ttl_ms: row["ttl"]
                .as_i64()
                .unwrap_or(defaults.lease_ttl.as_millis() as i64),
            max_attempts: row["max_attempts"].as_i64().unwrap_or(3),
            on_lost: row["on_lost"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(crate::domain::LostItemPolicy::Abandon),
            backoff_base_ms: defaults.backoff_base.as_millis() as i64,
        })
    }

    /// Items in flight whose lease expired before `now` (at most `limit`).
    pub async fn expired_leases(
        &self,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<ItemState>, StoreError> {
        let chunks = self
            .query_chunks(EXPIRED_LEASES_WHERE, None, json!({ "now": now }))
            .await?;
        Ok(chunks
            .iter()
            .flat_map(Chunk::states)
            .filter(|s| in_flight(s.status) && s.lease_expires_at.is_some_and(|at| at < now))
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    /// Items `robot` holds with their payload, oldest first (at most `limit`): with
    /// `only_assigned` just the ASSIGNED ones (for delivery), else STARTED ones too (what a
    /// reconnecting WebSocket robot is sent again).
    async fn held_items(
        &self,
        robot: i64,
        limit: i64,
        only_assigned: bool,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let held: Held = self
            .held_by(robot)
            .await?
            .into_iter()
            .filter(|(_, s)| !only_assigned || s.status == ItemStatus::Assigned)
            .take(usize::try_from(limit).unwrap_or(0))
            .collect();
        let ns = chunks_of(held.iter().map(|(_, s)| s.id));
        let payloads = self.payloads(&ns).await?;
        Ok(held
            .iter()
            .filter_map(|(chunk, state)| leased_item(chunk, &payloads, state))
            .collect())
    }

    /// ASSIGNED items of `robot` with their payload, oldest first, for delivery.
    pub async fn leased_items_of(
        &self,
        robot: i64,
        limit: i64,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        self.held_items(robot, limit, true).await
    }

    /// Items `robot` holds (ASSIGNED or STARTED), oldest first: what a reconnecting WebSocket
    /// robot is sent again.
    pub async fn held_items_of(
        &self,
        robot: i64,
        limit: i64,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        self.held_items(robot, limit, false).await
    }

    /// PENDING items of `task_id` with ids in `[from, to]`, in id order, read from the store:
    /// a scan must not miss an item another node handed back.
    pub async fn pending_in_range(
        &self,
        task_id: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<PendingItem>, StoreError> {
        let ns: Vec<i64> = (chunk_of(from)..=chunk_of(to)).collect();
        let mut found = Vec::new();
        for chunk in self.read_fresh(&ns).await? {
            if chunk.task != task_id {
                continue;
            }
            found.extend(
                chunk
                    .states()
                    .filter(|s| s.id >= from && s.id <= to && s.status == ItemStatus::Pending)
                    .map(|s| PendingItem {
                        id: s.id,
                        not_before: s.not_before,
                    }),
            );
        }
        Ok(found)
    }

    /// The id ranges of a task's items cut into reads of four chunks each, in id order: an
    /// export reads them one after the other with [`Store::items_in_range`].
    pub async fn task_slices(&self, task_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        const SLICE: i64 = 4 * CHUNK_ITEMS;
        let mut slices = Vec::new();
        for (first, last) in self.task_id_ranges(task_id).await? {
            let mut from = first;
            while from <= last {
                let to = (from + SLICE - 1).min(last);
                slices.push((from, to));
                from = to + 1;
            }
        }
        Ok(slices)
    }

    /// The id ranges a task's items occupy.
    pub async fn task_id_ranges(&self, task_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let row: Option<Value> = self
            .row(
                "SELECT id_ranges FROM type::record('task', $id);",
                json!({ "id": task_id }),
                0,
            )
            .await?;
        let ranges: Vec<[i64; 2]> = match row {
            Some(mut r) => serde_json::from_value(r["id_ranges"].take())?,
            None => Vec::new(),
        };
        Ok(ranges.into_iter().map(|[a, b]| (a, b)).collect())
    }

    /// Ids of tasks that may still dispatch (CREATED or STARTED).
    pub async fn dispatchable_tasks(&self) -> Result<Vec<crate::domain::Task>, StoreError> {
        self.list_tasks_where("status IN ['CREATED', 'STARTED']")
            .await
    }

    /// Marks task `id` COMPLETED if, counting every node's shard, nothing of it is pending or in
    /// flight; `true` if it did. The write that ends a task's last items does this itself; two
    /// nodes ending the last items at once may each miss the other's, and the task directors
    /// call this for them.
    pub async fn complete_if_finished(&self, id: i64, now: Millis) -> Result<bool, StoreError> {
        let open = super::chunks::open_items("$this", id);
        let sql = format!(
            "UPDATE task:{id} SET status = 'COMPLETED', ended_at = {now} \
             WHERE status IN ['CREATED', 'STARTED'] AND {open} = 0 RETURN VALUE 1;"
        );
        let hit: Vec<Value> = self
            .retry_conflicts(|| self.rows(&sql, json!({}), 0))
            .await?;
        Ok(!hit.is_empty())
    }

    /// Marks a task CANCELLED; its ASSIGNED items go back to PENDING (not dispatched again).
    pub async fn cancel_task(&self, task_id: i64, now: Millis) -> Result<bool, StoreError> {
        let sql = "UPDATE type::record('task', $id) SET status = 'CANCELLED', ended_at = $now \
                   WHERE status IN ['CREATED', 'STARTED'] RETURN VALUE 1;";
        let hit: Vec<Value> = self
            .rows(sql, json!({ "id": task_id, "now": now }), 0)
            .await?;
        Ok(!hit.is_empty())
    }

    /// Puts FAILED and ABANDONED items of a task back to PENDING and reopens the task; returns
    /// how many items were reopened. Works a few chunks per transaction, each with the task's
    /// counters, so the counters always equal the items and no transaction outgrows the
    /// engine's memtable.
    pub async fn retry_failed(&self, task_id: i64, now: Millis) -> Result<i64, StoreError> {
        let vars = json!({ "task": task_id });
        let mut total = 0;
        let mut lost_races = 0;
        loop {
            let chunks = self
                .query_chunks(
                    "task = $task AND (counts.failed > 0 OR counts.abandoned > 0)",
                    Some(RETRY_CHUNKS),
                    vars.clone(),
                )
                .await?;
            if chunks.is_empty() {
                return Ok(total);
            }
            let mut counts = ItemCounts::default();
            let mut changed = Vec::with_capacity(chunks.len());
            for mut chunk in chunks {
                for slot in &mut chunk.slots {
                    if !matches!(slot.status, ItemStatus::Failed | ItemStatus::Abandoned) {
                        continue;
                    }
                    add_counts(&mut counts, &count_delta(slot.status, ItemStatus::Pending));
                    if slot.status == ItemStatus::Failed {
                        slot.fail_kind = None;
                    }
                    slot.status = ItemStatus::Pending;
                    slot.robot = None;
                    slot.lease_id = None;
                    slot.lease_expires_at = None;
                    slot.lease_expiries = 0;
                    slot.not_before = None;
                    slot.ended_at = None;
                    slot.started_at = None;
                    slot.attempt = 0;
                }
                changed.push(chunk);
            }
            let reopened = counts.pending;
            let tasks = BTreeMap::from([(
                task_id,
                TaskDelta {
                    counts,
                    reopen: true,
                    ..TaskDelta::default()
                },
            )]);
            let mut cached = self.chunk_lock().await;
            if self
                .write_chunks(&mut cached, changed, &tasks, (0, 0), now)
                .await?
            {
                total += reopened;
            } else {
                lost_races += 1;
                if lost_races > 20 {
                    return Err(StoreError::Database(format!(
                        "could not reopen the items of task {task_id}: they kept changing"
                    )));
                }
            }
        }
    }

    /// Stores the last pulse of several robots, all held by node `node`, in one statement.
    pub async fn record_pulses(
        &self,
        pulses: &[(i64, Millis)],
        node: &str,
    ) -> Result<(), StoreError> {
        let vars = json!({ "pulses": pulses, "node": node });
        self.retry_conflicts(|| {
            self.exec(
                "FOR $p IN $pulses { UPDATE type::record('robot', $p[0]) \
                 SET last_pulse_at = $p[1], node = $node; };",
                vars.clone(),
            )
        })
        .await
    }
}

mod write;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod layout_tests;
