//! Item transitions. Every write is a compare-and-set on the item's old status and lease, in one
//! transaction with the task's counters, so counters never drift and two writers never both win.

use super::Store;
use super::throughput::ADD_TO_MINUTE;
use crate::domain::{ItemCounts, ItemStatus, Millis, rfc3339};
use crate::error::StoreError;
use crate::lifecycle::{ItemState, add_counts, count_delta};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const STATE_FIELDS: &str = "record::id(id) AS id, task AS task_id, status, robot AS robot_id, \
                            attempt, lease_id, lease_expires_at, lease_expiries, observation, \
                            output, fail_kind, not_before, started_at, ended_at";

/// Items reopened per transaction by retry-failed.
const RETRY_BATCH: i64 = 5_000;

/// Items whose lease expired. The lower bound matters: items without a lease (every PENDING one)
/// have NONE there, which sorts below every number, so `< $now` alone would read the whole
/// backlog on every sweep.
const EXPIRED_LEASES_WHERE: &str = "WHERE lease_expires_at > 0 AND lease_expires_at < $now \
     AND status IN ['ASSIGNED', 'STARTED']";

const CONFLICT: &str = "item transition conflict";

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

impl Store {
    /// The current state of one item.
    pub async fn item_state(&self, id: i64) -> Result<Option<ItemState>, StoreError> {
        let sql = format!("SELECT {STATE_FIELDS} FROM type::record('item', $id);");
        self.row(&sql, json!({ "id": id }), 0).await
    }

    /// The current state of several items (missing ids are left out).
    pub async fn item_states(&self, ids: &[i64]) -> Result<Vec<ItemState>, StoreError> {
        let sql = format!(
            "SELECT {STATE_FIELDS} FROM array::map($ids, |$i| type::record('item', $i)) \
                     WHERE status != NONE;"
        );
        let rows: Vec<Value> = self.rows(&sql, json!({ "ids": ids }), 0).await?;
        // Ids that do not exist are filtered out (the WHERE) or, on some engines, empty rows.
        Ok(rows
            .into_iter()
            .filter(|r| r.get("status").is_some())
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?)
    }

    /// Items held by `robot` (ASSIGNED or STARTED).
    pub async fn robot_items_in_flight(&self, robot: i64) -> Result<Vec<ItemState>, StoreError> {
        let sql = format!(
            "SELECT {STATE_FIELDS} FROM item WHERE robot = $robot \
             AND status IN ['ASSIGNED', 'STARTED'] ORDER BY id;"
        );
        self.rows(&sql, json!({ "robot": robot }), 0).await
    }

    /// How many items `robot` holds (ASSIGNED or STARTED).
    pub async fn robot_in_flight_count(&self, robot: i64) -> Result<i64, StoreError> {
        let row: Option<Value> = self
            .row(
                "SELECT count() AS n FROM item WHERE robot = $robot \
                 AND status IN ['ASSIGNED', 'STARTED'] GROUP ALL;",
                json!({ "robot": robot }),
                0,
            )
            .await?;
        Ok(row.and_then(|r| r["n"].as_i64()).unwrap_or(0))
    }

    /// Items `robot` holds (ASSIGNED or STARTED) with everything the seed API shows, by task.
    pub async fn robot_items_full(
        &self,
        robot: i64,
    ) -> Result<Vec<crate::domain::Item>, StoreError> {
        let sql = "SELECT record::id(id) AS id, task AS task_id, line, values, status, \
                   robot AS robot_id, attempt, lease_id, lease_expires_at, observation, output, \
                   fail_kind, created_at, started_at, ended_at FROM item \
                   WHERE robot = $robot AND status IN ['ASSIGNED', 'STARTED'] ORDER BY id;";
        self.rows(sql, json!({ "robot": robot }), 0).await
    }

    /// ASSIGNED items of a task.
    pub async fn assigned_items_of_task(&self, task_id: i64) -> Result<Vec<ItemState>, StoreError> {
        let sql =
            format!("SELECT {STATE_FIELDS} FROM item WHERE task = $task AND status = 'ASSIGNED';");
        self.rows(&sql, json!({ "task": task_id }), 0).await
    }

    /// The dispatch policy of a task's process.
    pub async fn task_policy(
        &self,
        task_id: i64,
        defaults: crate::recovery::PolicyDefaults,
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
        let sql = format!("SELECT {STATE_FIELDS} FROM item {EXPIRED_LEASES_WHERE} LIMIT $limit;");
        self.rows(&sql, json!({ "now": now, "limit": limit }), 0)
            .await
    }

    /// ASSIGNED items of `robot` with their payload, oldest first, for delivery.
    pub async fn leased_items_of(
        &self,
        robot: i64,
        limit: i64,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let sql = "SELECT record::id(id) AS id, task AS task_id, line, values, attempt, lease_id, \
                   lease_expires_at FROM item WHERE robot = $robot AND status = 'ASSIGNED' \
                   ORDER BY id LIMIT $limit;";
        self.rows(sql, json!({ "robot": robot, "limit": limit }), 0)
            .await
    }

    /// Items `robot` holds (ASSIGNED or STARTED), oldest first: what a reconnecting WebSocket
    /// robot is sent again.
    pub async fn held_items_of(
        &self,
        robot: i64,
        limit: i64,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let sql = "SELECT record::id(id) AS id, task AS task_id, line, values, attempt, lease_id, \
                   lease_expires_at, status FROM item \
                   WHERE robot = $robot AND status IN ['ASSIGNED', 'STARTED'] \
                   ORDER BY id LIMIT $limit;";
        self.rows(sql, json!({ "robot": robot, "limit": limit }), 0)
            .await
    }

    /// Payloads of the given items if still ASSIGNED to `robot` under `lease`.
    pub async fn leased_items(&self, ids: &[i64]) -> Result<Vec<LeasedItem>, StoreError> {
        let sql = "SELECT record::id(id) AS id, task AS task_id, line, values, attempt, lease_id, \
                   lease_expires_at FROM array::map($ids, |$i| type::record('item', $i)) \
                   WHERE status = 'ASSIGNED';";
        self.rows(sql, json!({ "ids": ids }), 0).await
    }

    /// Writes `changes` (old state, new state) all or nothing. `Ok(false)` when another writer
    /// changed one of the items first: re-read and re-plan.
    pub async fn apply_transitions(
        &self,
        changes: &[(ItemState, ItemState)],
        now: Millis,
    ) -> Result<bool, StoreError> {
        if changes.is_empty() {
            return Ok(true);
        }
        let mut per_task: BTreeMap<i64, ItemCounts> = BTreeMap::new();
        let mut rows = Vec::with_capacity(changes.len());
        for (old, new) in changes {
            add_counts(
                per_task.entry(old.task_id).or_default(),
                &count_delta(old.status, new.status),
            );
            let mut row = serde_json::to_value(new)?;
            row["expect_status"] = json!(old.status);
            row["expect_lease"] = json!(old.lease_id);
            rows.push(super::unset_nulls(row));
        }
        let tasks: Vec<Value> = per_task
            .iter()
            .map(|(task, d)| json!({ "id": task, "d": d }))
            .collect();
        let finished = |status: ItemStatus| {
            changes
                .iter()
                .filter(|(old, new)| new.status == status && old.status != status)
                .count()
        };
        let done = json!({
            "minute": super::minute_of(now),
            "completed": finished(ItemStatus::Completed),
            "failed": finished(ItemStatus::Failed),
        });
        let sql = format!(
            "BEGIN; \
             FOR $c IN $changes {{ \
               LET $hit = (UPDATE type::record('item', $c.id) SET status = $c.status, \
                 robot = $c.robot_id, attempt = $c.attempt, lease_id = $c.lease_id, \
                 lease_expires_at = $c.lease_expires_at, lease_expiries = $c.lease_expiries, \
                 observation = $c.observation, output = $c.output, fail_kind = $c.fail_kind, \
                 not_before = $c.not_before, started_at = $c.started_at, ended_at = $c.ended_at \
                 WHERE status = $c.expect_status AND lease_id = $c.expect_lease RETURN VALUE 1); \
               IF array::len($hit) = 0 {{ THROW '{CONFLICT}' }}; \
             }}; \
             FOR $t IN $tasks {{ \
               UPDATE type::record('task', $t.id) SET counts.pending += $t.d.pending, \
                 counts.assigned += $t.d.assigned, counts.started += $t.d.started, \
                 counts.completed += $t.d.completed, counts.failed += $t.d.failed, \
                 counts.abandoned += $t.d.abandoned; \
             }}; \
             {ADD_TO_MINUTE} \
             {COMPLETE_FINISHED_TASKS} \
             COMMIT;"
        );
        let vars = json!({
            "changes": rows, "tasks": tasks, "now": now, "done": done,
            "task_ids": per_task.keys().collect::<Vec<_>>(),
        });
        let mut response = self.db.run(&sql, vars).await?;
        // In a failed transaction every later statement reports "not executed"; the THROW that
        // caused it says whether this was a lost race or a real failure.
        let mut errors: Vec<(usize, String)> = response
            .take_errors()
            .into_iter()
            .map(|(index, err)| (index, err.to_string()))
            .collect();
        errors.sort();
        if errors.is_empty() {
            return Ok(true);
        }
        if errors.iter().any(|(_, text)| text.contains(CONFLICT)) {
            return Ok(false);
        }
        let first = StoreError::Database(errors.remove(0).1);
        if first.is_retryable() {
            return Ok(false);
        }
        Err(first)
    }

    /// Leases PENDING items of `task_id` to robots in one transaction; returns what was leased
    /// per grant (items that stopped being PENDING meanwhile are skipped).
    pub async fn assign_items(
        &self,
        task_id: i64,
        grants: &[Grant],
        now: Millis,
    ) -> Result<Vec<Vec<LeasedItem>>, StoreError> {
        if grants.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from("BEGIN; ");
        let mut vars = Map::new();
        for (i, grant) in grants.iter().enumerate() {
            sql.push_str(&format!(
                "LET $d{i} = (UPDATE array::map($ids{i}, |$x| type::record('item', $x)) SET \
                 status = 'ASSIGNED', robot = $robot{i}, lease_id = $lease{i}, \
                 lease_expires_at = $exp{i}, attempt += 1, not_before = NONE \
                 WHERE status = 'PENDING' AND task = $task \
                 RETURN record::id(id) AS id, task AS task_id, line, values, attempt, lease_id, \
                 lease_expires_at); "
            ));
            vars.insert(format!("ids{i}"), json!(grant.item_ids));
            vars.insert(format!("robot{i}"), json!(grant.robot_id));
            vars.insert(format!("lease{i}"), json!(grant.lease_id));
            vars.insert(format!("exp{i}"), json!(grant.lease_expires_at));
        }
        let lens: Vec<String> = (0..grants.len())
            .map(|i| format!("array::len($d{i})"))
            .collect();
        let all: Vec<String> = (0..grants.len()).map(|i| format!("$d{i}")).collect();
        sql.push_str(&format!(
            "LET $n = {sum}; \
             UPDATE type::record('task', $task) SET counts.pending -= $n, counts.assigned += $n, \
               started_at = started_at ?? $now, \
               status = IF status = 'CREATED' AND $n > 0 THEN 'STARTED' ELSE status END; \
             RETURN [{all}]; \
             COMMIT;",
            sum = lens.join(" + "),
            all = all.join(", "),
        ));
        vars.insert("task".into(), json!(task_id));
        vars.insert("now".into(), json!(now));
        let return_index = grants.len() + 3;
        let leased: Vec<Vec<LeasedItem>> = self
            .retry_conflicts(|| async {
                let mut response = self
                    .db
                    .run(&sql, Value::Object(vars.clone()))
                    .await?
                    .check()?;
                let value: surrealdb::types::Value = response.take(return_index)?;
                Ok(serde_json::from_value(value.into_json_value())?)
            })
            .await?;
        Ok(leased)
    }

    /// Up to `limit` PENDING items of `task_id` with ids in `[from, to]`, in id order.
    pub async fn pending_in_range(
        &self,
        task_id: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<PendingItem>, StoreError> {
        // Integer bounds are formatted in: record-id ranges cannot take parameters.
        let sql = format!(
            "SELECT record::id(id) AS id, not_before FROM item:{from}..={to} \
             WHERE task = $task AND status = 'PENDING';"
        );
        self.rows(&sql, json!({ "task": task_id }), 0).await
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
    /// how many items were reopened. Works in batches, each one transaction with the task's
    /// counters, so the counters always equal the items and no transaction outgrows the
    /// engine's memtable.
    pub async fn retry_failed(&self, task_id: i64, now: Millis) -> Result<i64, StoreError> {
        let sql = "BEGIN; \
             LET $f = (UPDATE (SELECT VALUE id FROM item \
                 WHERE task = $task AND status = 'FAILED' LIMIT $batch) \
               SET status = 'PENDING', robot = NONE, lease_id = NONE, \
               lease_expires_at = NONE, lease_expiries = 0, fail_kind = NONE, not_before = NONE, \
               ended_at = NONE, started_at = NONE, attempt = 0 \
               WHERE status = 'FAILED' RETURN VALUE 1); \
             LET $a = (UPDATE (SELECT VALUE id FROM item \
                 WHERE task = $task AND status = 'ABANDONED' LIMIT $batch) \
               SET status = 'PENDING', robot = NONE, lease_id = NONE, \
               lease_expires_at = NONE, lease_expiries = 0, not_before = NONE, ended_at = NONE, \
               started_at = NONE, attempt = 0 \
               WHERE status = 'ABANDONED' RETURN VALUE 1); \
             LET $n = array::len($f) + array::len($a); \
             UPDATE type::record('task', $task) SET counts.failed -= array::len($f), \
               counts.abandoned -= array::len($a), counts.pending += $n, \
               status = IF $n > 0 AND status != 'CANCELLED' THEN 'STARTED' ELSE status END, \
               ended_at = IF $n > 0 AND status != 'CANCELLED' THEN NONE ELSE ended_at END; \
             RETURN $n; \
             COMMIT;";
        let vars = json!({ "task": task_id, "now": now, "batch": RETRY_BATCH });
        let mut total = 0;
        loop {
            let n = self
                .retry_conflicts(|| async {
                    let mut response = self.db.run(sql, vars.clone()).await?.check()?;
                    let n: surrealdb::types::Value = response.take(5)?;
                    Ok(n.into_json_value().as_i64().unwrap_or(0))
                })
                .await?;
            total += n;
            if n == 0 {
                return Ok(total);
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

/// Completes tasks that have nothing left in flight or pending (used after item transitions).
const COMPLETE_FINISHED_TASKS: &str = "UPDATE array::map($task_ids, |$t| type::record('task', $t)) \
     SET status = 'COMPLETED', ended_at = $now WHERE status IN ['CREATED', 'STARTED'] \
     AND counts.pending + counts.assigned + counts.started = 0;";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewItem, StoreConfig};

    /// The lease sweep runs every second: it must not read the PENDING backlog.
    #[tokio::test]
    async fn the_lease_sweep_reads_no_pending_item() -> Result<(), StoreError> {
        let store = Store::open(&StoreConfig::memory()).await?;
        let task = store.create_staged_task(1, &["a".into()], None, 0).await?;
        let first = store.reserve_ids("item", 2_000).await?;
        let items = (0..2_000)
            .map(|line| NewItem {
                line,
                values: Map::new(),
            })
            .collect();
        store.insert_staged_items(task, first, items).await?;
        let sql = format!("SELECT id FROM item {EXPIRED_LEASES_WHERE} EXPLAIN FULL;");
        let plan = store
            .query_all(&sql, json!({ "now": crate::domain::now_millis() }))
            .await?;
        let plan = plan[0].to_string();
        assert!(plan.contains("item_lease_expiry"), "uses the index: {plan}");
        assert!(plan.contains(r#""output_rows":0"#), "reads nothing: {plan}");
        assert!(!plan.contains(r#""output_rows":2000"#), "{plan}");
        assert!(
            store
                .expired_leases(crate::domain::now_millis(), 10)
                .await?
                .is_empty()
        );
        Ok(())
    }

    /// Cost per item of each write the dispatch path makes, on the embedded engine. A probe,
    /// not a check: `cargo test -p orchestrator-actors --release -- --ignored --nocapture
    /// store_cost_per_item`.
    #[tokio::test]
    #[ignore = "a measurement; run by hand"]
    async fn store_cost_per_item() -> Result<(), StoreError> {
        use crate::lifecycle::{Policy, RobotAction, new_lease_id, plan_robot_action};
        use std::time::Instant;
        let dir = std::env::temp_dir().join(format!("orch-probe-{}", std::process::id()));
        let config = StoreConfig {
            url: format!("surrealkv://{}", dir.display()),
            ..StoreConfig::memory()
        };
        let store = Store::open(&config).await?;
        let n: i64 = 20_000;
        let task = store.create_staged_task(1, &["a".into()], None, 0).await?;
        let first = store.reserve_ids("item", n).await?;
        let rows = (0..n)
            .map(|line| NewItem {
                line,
                values: Map::from_iter([("a".to_string(), json!(format!("value {line}")))]),
            })
            .collect::<Vec<_>>();
        let clock = Instant::now();
        for (i, chunk) in rows.chunks(1_000).enumerate() {
            store
                .insert_staged_items(task, first + i as i64 * 1_000, chunk.to_vec())
                .await?;
        }
        let report = |what: &str, items: i64, since: Instant| {
            let us = since.elapsed().as_micros() as f64 / items as f64;
            println!("{what}: {us:.0} µs per item");
        };
        report("insert (batches of 1,000)", n, clock);
        store
            .commit_staged_task(task, 1, n, &[(first, first + n - 1)])
            .await?;
        let now = crate::domain::now_millis();
        let policy = Policy {
            lease_ttl_ms: 60_000,
            max_attempts: 3,
            on_lost: crate::domain::LostItemPolicy::Abandon,
            backoff_base_ms: 10,
        };
        let batch = 250;
        let ids: Vec<i64> = (first..first + 5_000).collect();
        let clock = Instant::now();
        for round in ids.chunks(1_000) {
            let grants: Vec<Grant> = round
                .chunks(10)
                .enumerate()
                .map(|(r, ids)| Grant {
                    robot_id: r as i64 + 1,
                    item_ids: ids.to_vec(),
                    lease_id: new_lease_id(r as i64 + 1),
                    lease_expires_at: now + 60_000,
                })
                .collect();
            store.assign_items(task, &grants, now).await?;
        }
        report("assign (100 grants of 10)", 5_000, clock);
        for action in [
            RobotAction::Start,
            RobotAction::Complete {
                observation: None,
                output: None,
            },
        ] {
            let (mut read, mut write) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
            for chunk in ids.chunks(batch) {
                let clock = Instant::now();
                let states = store.item_states(chunk).await?;
                read += clock.elapsed();
                let changes: Vec<(ItemState, ItemState)> = states
                    .iter()
                    .filter_map(|old| {
                        let plan = plan_robot_action(
                            old,
                            old.robot_id?,
                            old.lease_id.as_deref(),
                            &action,
                            &policy,
                            now,
                        )
                        .ok()?;
                        match plan {
                            crate::lifecycle::Plan::Write(new) => Some((old.clone(), *new)),
                            crate::lifecycle::Plan::Unchanged => None,
                        }
                    })
                    .collect();
                assert_eq!(changes.len(), chunk.len());
                let clock = Instant::now();
                assert!(store.apply_transitions(&changes, now).await?);
                write += clock.elapsed();
            }
            let per = |d: std::time::Duration| d.as_micros() as f64 / ids.len() as f64;
            println!(
                "{action:?}: read {:.0} µs, write {:.0} µs per item (batches of {batch})",
                per(read),
                per(write)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
