//! `task:<id>` rows and the item chunks under them: staged uploads, listings, and the counters the
//! dashboard reads.
//!
//! An upload is staged: the task is written as UPLOADING (invisible to every listing), its items
//! are inserted in batches, and one final write flips the task to CREATED with its counts. A failed
//! upload deletes what it staged; a node that died mid-upload leaves a task whose `touched_at`
//! stops moving, and [`Store::discard_stale_uploads`] removes it.

use super::Store;
use super::chunks::{CHUNK_ITEMS, Chunk, chunk_of};
use super::items::full_item;
use crate::domain::{Item, ItemCounts, ItemStatus, Millis, Task, TaskStatus, now_millis};
use crate::error::StoreError;
use crate::lifecycle::add_counts;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Chunks deleted per transaction when a staged upload is discarded, so no transaction outgrows
/// the engine's memtable.
const DELETE_BATCH: i64 = 64;

/// A task row's fields, its counts as its upload set them.
const TASK_ROW_FIELDS: &str = "record::id(id) AS id, process AS process_id, owner AS owner_id, \
                               status, priority, item_count, counts, columns, filename, \
                               created_at, started_at, ended_at";

/// A task row's fields and the count changes every node made to it (its shards, schema 8), which
/// [`TaskRow`] adds up.
const TASK_FIELDS: &str = "record::id(id) AS id, process AS process_id, owner AS owner_id, \
                           status, priority, item_count, counts, columns, filename, created_at, \
                           started_at, ended_at, (SELECT VALUE counts FROM task_count \
                           WHERE task = record::id($parent.id)) AS shards";

/// A task as read with [`TASK_FIELDS`]: its row and its shards of counts.
#[derive(Debug, Deserialize)]
struct TaskRow {
    #[serde(flatten)]
    task: Task,
    #[serde(default)]
    shards: Vec<ItemCounts>,
}

impl From<TaskRow> for Task {
    fn from(row: TaskRow) -> Task {
        let mut task = row.task;
        for shard in &row.shards {
            add_counts(&mut task.counts, shard);
        }
        task
    }
}

/// Which tasks to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only tasks of this owner (operators see their own).
    pub owner_id: Option<i64>,
    pub status: Option<TaskStatus>,
    pub process_id: Option<i64>,
    pub offset: i64,
    pub limit: i64,
}

/// Which items of a task to list.
#[derive(Debug, Clone)]
pub struct ItemFilter {
    pub status: Option<ItemStatus>,
    pub offset: i64,
    pub limit: i64,
}

/// Figures for the dashboard, all read from counters and small tables, never by scanning items.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub robots_total: i64,
    pub robots_active: i64,
    pub robots_connected: i64,
    pub tasks_total: i64,
    pub tasks_by_status: Map<String, Value>,
    pub items: ItemCounts,
}

/// One parsed CSV row ready to become an item.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub line: i64,
    pub values: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct CountRow {
    n: i64,
}

impl Store {
    /// Writes an invisible UPLOADING task that items can be staged under.
    pub async fn create_staged_task(
        &self,
        owner_id: i64,
        columns: &[String],
        filename: Option<&str>,
        priority: i64,
    ) -> Result<i64, StoreError> {
        let id = self.reserve_ids("task", 1).await?;
        let now = now_millis();
        self.exec(
            "CREATE type::record('task', $id) SET process = 0, owner = $owner, \
             status = 'UPLOADING', priority = $priority, item_count = 0, \
             counts = { pending: 0, assigned: 0, started: 0, completed: 0, failed: 0, abandoned: 0 }, \
             columns = $columns, filename = $filename, id_ranges = [], created_at = $now, \
             touched_at = $now;",
            json!({ "id": id, "owner": owner_id, "priority": priority, "columns": columns,
                    "filename": filename, "now": now }),
        )
        .await?;
        Ok(id)
    }

    /// Inserts one batch of PENDING items with ids `first_id..first_id + items.len()`, where
    /// `first_id` starts a chunk ([`Store::reserve_item_ids`]).
    pub async fn insert_staged_items(
        &self,
        task_id: i64,
        first_id: i64,
        items: Vec<NewItem>,
    ) -> Result<(), StoreError> {
        if first_id % CHUNK_ITEMS != 0 {
            return Err(StoreError::Malformed(format!(
                "item ids of a batch must start a chunk, not at {first_id}"
            )));
        }
        let now = now_millis();
        let mut chunks = Vec::new();
        let mut data = Vec::new();
        for (k, group) in items.chunks(CHUNK_ITEMS as usize).enumerate() {
            let first = first_id + k as i64 * CHUNK_ITEMS;
            let chunk = Chunk::new(task_id, first, group.len(), now);
            let mut row = chunk.row()?;
            row["id"] = row["n"].take();
            if let Some(fields) = row.as_object_mut() {
                fields.remove("n");
            }
            chunks.push(row);
            let payload: Vec<(i64, &Map<String, Value>)> =
                group.iter().map(|item| (item.line, &item.values)).collect();
            data.push(json!({
                "id": chunk_of(first), "task": task_id, "data": serde_json::to_string(&payload)?,
            }));
        }
        self.exec(
            "INSERT INTO chunk $chunks RETURN NONE; \
             INSERT INTO chunk_data $data RETURN NONE; \
             UPDATE type::record('task', $task) SET touched_at = $now RETURN NONE;",
            json!({ "chunks": chunks, "data": data, "task": task_id, "now": now }),
        )
        .await
    }

    /// Makes a staged task visible as CREATED with `item_count` PENDING items; returns it.
    /// `None` when the task is no longer staged (it was discarded meanwhile).
    pub async fn commit_staged_task(
        &self,
        task_id: i64,
        process_id: i64,
        item_count: i64,
        id_ranges: &[(i64, i64)],
    ) -> Result<Option<Task>, StoreError> {
        let ranges: Vec<[i64; 2]> = id_ranges.iter().map(|(a, b)| [*a, *b]).collect();
        let sql = format!(
            "UPDATE type::record('task', $id) SET status = 'CREATED', process = $process, \
             item_count = $count, counts.pending = $count, id_ranges = $ranges, \
             created_at = $now, touched_at = $now WHERE status = 'UPLOADING' \
             RETURN {TASK_ROW_FIELDS};"
        );
        let vars = json!({ "id": task_id, "process": process_id, "count": item_count,
                           "ranges": ranges, "now": now_millis() });
        self.retry_conflicts(|| self.row(&sql, vars.clone(), 0))
            .await
    }

    /// Deletes a staged task and every item staged under it. Items go in batches so no single
    /// transaction outgrows the engine's memtable, whatever the upload's size.
    pub async fn discard_staged_task(&self, task_id: i64) -> Result<(), StoreError> {
        let vars = json!({ "id": task_id, "batch": DELETE_BATCH });
        loop {
            let deleted: Vec<Value> = self
                .retry_conflicts(|| {
                    self.rows(
                        "DELETE (SELECT VALUE id FROM chunk_data WHERE task = $id LIMIT $batch) \
                         RETURN NONE; \
                         DELETE (SELECT VALUE id FROM chunk WHERE task = $id LIMIT $batch) \
                         RETURN VALUE 1;",
                        vars.clone(),
                        1,
                    )
                })
                .await?;
            if deleted.is_empty() {
                break;
            }
        }
        self.retry_conflicts(|| {
            self.exec(
                "DELETE type::record('task', $id) WHERE status = 'UPLOADING';",
                json!({ "id": task_id }),
            )
        })
        .await
    }

    /// Discards uploads whose writer stopped touching them before `cutoff` (a node died mid-upload).
    pub async fn discard_stale_uploads(&self, cutoff: Millis) -> Result<Vec<i64>, StoreError> {
        let stale: Vec<Value> = self
            .rows(
                "SELECT record::id(id) AS id FROM task \
                 WHERE status = 'UPLOADING' AND touched_at < $cutoff;",
                json!({ "cutoff": cutoff }),
                0,
            )
            .await?;
        let ids: Vec<i64> = stale.iter().filter_map(|r| r["id"].as_i64()).collect();
        for id in &ids {
            self.discard_staged_task(*id).await?;
        }
        Ok(ids)
    }

    /// One visible task by id.
    pub async fn task(&self, id: i64) -> Result<Option<Task>, StoreError> {
        let sql = format!(
            "SELECT {TASK_FIELDS} FROM type::record('task', $id) WHERE status != 'UPLOADING';"
        );
        Ok(self
            .row::<TaskRow>(&sql, json!({ "id": id }), 0)
            .await?
            .map(Task::from))
    }

    /// Tasks matching a fixed SurrealQL condition, by id.
    pub(crate) async fn list_tasks_where(&self, cond: &str) -> Result<Vec<Task>, StoreError> {
        let sql = format!("SELECT {TASK_FIELDS} FROM task WHERE {cond} ORDER BY id;");
        Ok(self
            .rows::<TaskRow>(&sql, json!({}), 0)
            .await?
            .into_iter()
            .map(Task::from)
            .collect())
    }

    /// Visible tasks matching `filter`, newest first, with the total count that matches.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<Task>, i64), StoreError> {
        let mut cond = String::from("status != 'UPLOADING'");
        if filter.owner_id.is_some() {
            cond.push_str(" AND owner = $owner");
        }
        if filter.status.is_some() {
            cond.push_str(" AND status = $status");
        }
        if filter.process_id.is_some() {
            cond.push_str(" AND process = $process");
        }
        let sql = format!(
            "SELECT {TASK_FIELDS} FROM task WHERE {cond} ORDER BY id DESC LIMIT $limit START $offset; \
             SELECT count() AS n FROM task WHERE {cond} GROUP ALL;"
        );
        let vars = json!({
            "owner": filter.owner_id, "status": filter.status.map(TaskStatus::as_str),
            "process": filter.process_id, "limit": filter.limit, "offset": filter.offset,
        });
        let mut response = self.db.run(&sql, vars).await?.check()?;
        let rows: Vec<Value> = response.take(0)?;
        let counts: Vec<Value> = response.take(1)?;
        let tasks = rows
            .into_iter()
            .map(|row| serde_json::from_value::<TaskRow>(row).map(Task::from))
            .collect::<Result<Vec<Task>, _>>()?;
        let total = counts
            .into_iter()
            .next()
            .map(serde_json::from_value::<CountRow>)
            .transpose()?
            .map_or(0, |c| c.n);
        Ok((tasks, total))
    }

    /// Items of a task in id (file) order, optionally of one status. Pages are found from the
    /// chunks' counts, so only the chunks a page covers are decoded.
    pub async fn list_items(
        &self,
        task_id: i64,
        filter: &ItemFilter,
    ) -> Result<Vec<Item>, StoreError> {
        #[derive(Deserialize)]
        struct Summary {
            n: i64,
            counts: ItemCounts,
        }
        let summaries: Vec<Summary> = self
            .rows(
                "SELECT record::id(id) AS n, counts FROM chunk WHERE task = $task ORDER BY n;",
                json!({ "task": task_id }),
                0,
            )
            .await?;
        let wanted = |counts: &ItemCounts| match filter.status {
            Some(status) => counts.get(status),
            None => ItemStatus::ALL.iter().map(|s| counts.get(*s)).sum(),
        };
        let mut skip = filter.offset.max(0);
        let mut room = filter.limit.max(0);
        // Matching items to pass over in the first chunk read.
        let mut skip_first = 0;
        let mut needed = Vec::new();
        for summary in &summaries {
            if room <= 0 {
                break;
            }
            let here = wanted(&summary.counts);
            if skip >= here {
                skip -= here;
                continue;
            }
            if needed.is_empty() {
                skip_first = skip;
            }
            needed.push(summary.n);
            room -= here - skip;
            skip = 0;
        }
        let mut items = self.items_of_chunks(&needed).await?;
        items.retain(|item| filter.status.is_none_or(|s| item.status == s));
        Ok(items
            .into_iter()
            .skip(usize::try_from(skip_first).unwrap_or(0))
            .take(usize::try_from(filter.limit).unwrap_or(0))
            .collect())
    }

    /// Every item of chunks `ns`, in id order.
    async fn items_of_chunks(&self, ns: &[i64]) -> Result<Vec<Item>, StoreError> {
        let chunks = self.read_chunks(ns).await?;
        let payloads = self.read_payloads(ns).await?;
        let mut items = Vec::new();
        let mut apart = Vec::new();
        for chunk in &chunks {
            for state in chunk.states() {
                if state.report_apart {
                    apart.push(state.id);
                }
                items.push(full_item(chunk, &payloads, state));
            }
        }
        items.sort_by_key(|item| item.id);
        self.fill_reports(&mut items, &apart).await?;
        Ok(items)
    }

    /// Items with ids in `[from, to]`, in id order: a slice of one of a task's id ranges, read
    /// by chunk so exporting a task never reads other tasks' items.
    pub async fn items_in_range(&self, from: i64, to: i64) -> Result<Vec<Item>, StoreError> {
        let ns: Vec<i64> = (chunk_of(from)..=chunk_of(to)).collect();
        let mut items = self.items_of_chunks(&ns).await?;
        items.retain(|item| item.id >= from && item.id <= to);
        Ok(items)
    }

    /// How many items the store holds, staged uploads included, summed from the chunks' counts
    /// (for tools and tests; the dashboard reads the tasks' counters).
    pub async fn count_items(&self) -> Result<i64, StoreError> {
        let row: Option<Value> = self
            .row(
                "SELECT math::sum(counts.pending + counts.assigned + counts.started + \
                 counts.completed + counts.failed + counts.abandoned) AS n FROM chunk GROUP ALL;",
                Value::Null,
                0,
            )
            .await?;
        Ok(row.and_then(|r| r["n"].as_i64()).unwrap_or(0))
    }

    /// Dashboard figures; `connected_since` counts robots that pulsed at or after it. With an
    /// `owner`, task and item figures cover that user's tasks only.
    pub async fn stats(
        &self,
        connected_since: Millis,
        owner: Option<i64>,
    ) -> Result<Stats, StoreError> {
        let sql = "SELECT count() AS total, \
                     count(status = 'ACTIVE') AS active, \
                     count(last_pulse_at != NONE AND last_pulse_at >= $since) AS connected \
                   FROM robot GROUP ALL; \
                   SELECT status, count() AS n FROM task WHERE status != 'UPLOADING' \
                     AND ($owner = NONE OR owner = $owner) GROUP BY status; \
                   SELECT math::sum(counts.pending) AS pending, math::sum(counts.assigned) AS assigned, \
                     math::sum(counts.started) AS started, math::sum(counts.completed) AS completed, \
                     math::sum(counts.failed) AS failed, math::sum(counts.abandoned) AS abandoned \
                   FROM task WHERE status != 'UPLOADING' AND ($owner = NONE OR owner = $owner) \
                   GROUP ALL; \
                   SELECT math::sum(counts.pending) AS pending, math::sum(counts.assigned) AS assigned, \
                     math::sum(counts.started) AS started, math::sum(counts.completed) AS completed, \
                     math::sum(counts.failed) AS failed, math::sum(counts.abandoned) AS abandoned \
                   FROM task_count WHERE $owner = NONE OR task INSIDE \
                     (SELECT VALUE record::id(id) FROM task WHERE owner = $owner) \
                   GROUP ALL;";
        let mut response = self
            .db
            .run(sql, json!({ "since": connected_since, "owner": owner }))
            .await?
            .check()?;
        let robots: Vec<Value> = response.take(0)?;
        let by_status: Vec<Value> = response.take(1)?;
        let items: Vec<Value> = response.take(2)?;
        let shards: Vec<Value> = response.take(3)?;
        let robots = robots.into_iter().next().unwrap_or_default();
        let mut stats = Stats {
            robots_total: robots["total"].as_i64().unwrap_or(0),
            robots_active: robots["active"].as_i64().unwrap_or(0),
            robots_connected: robots["connected"].as_i64().unwrap_or(0),
            ..Stats::default()
        };
        for status in TaskStatus::ALL
            .iter()
            .filter(|s| **s != TaskStatus::Uploading)
        {
            stats
                .tasks_by_status
                .insert(status.as_str().into(), json!(0));
        }
        for row in by_status {
            let n = row["n"].as_i64().unwrap_or(0);
            stats.tasks_total += n;
            if let Some(status) = row["status"].as_str() {
                stats.tasks_by_status.insert(status.into(), json!(n));
            }
        }
        for row in items.into_iter().chain(shards) {
            add_counts(&mut stats.items, &serde_json::from_value(row)?);
        }
        Ok(stats)
    }
}
