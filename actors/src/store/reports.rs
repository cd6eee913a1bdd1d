//! What robots report about an item (`observation`, `output`), stored apart from its chunk when
//! it is large.
//!
//! A chunk row is rewritten whole on every transition of any of its 256 items. Reports that
//! stayed in it made every later write of that chunk pay for them (the probe
//! `large_reports_cost` measures it; figures in BENCHMARKS.md's optimisation log). A report
//! longer than [`INLINE_REPORT_BYTES`] as JSON is written once, with the transition that
//! produced it, to `report:<item id>`; the item's slot keeps only a mark. Readers that show reports (listings, results.csv, the seed API) fetch the
//! marked ones; dispatch never reads them.

use super::Store;
use crate::domain::Item;
use crate::error::StoreError;
use crate::lifecycle::ItemState;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// Reports up to this many bytes of JSON stay in the chunk: 256 of them add at most 64 KiB to
/// a chunk's text, the size of one report kept apart.
pub(crate) const INLINE_REPORT_BYTES: usize = 256;

/// The limit in force; the cost probe below raises it to measure reports kept inline.
#[cfg(not(test))]
fn inline_limit() -> usize {
    INLINE_REPORT_BYTES
}

#[cfg(test)]
static INLINE_LIMIT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(INLINE_REPORT_BYTES);

#[cfg(test)]
fn inline_limit() -> usize {
    INLINE_LIMIT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A report as stored apart, one JSON text so the engine never parses a robot's nesting.
#[derive(Debug, Deserialize)]
struct Report {
    #[serde(rename = "o", default)]
    observation: Option<String>,
    #[serde(rename = "u", default)]
    output: Option<Value>,
}

/// A report to write apart with the transition that produced it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Aside {
    pub item: i64,
    pub task: i64,
    pub body: String,
}

/// The report of `state` as a text to store apart, when it is too long to stay in its chunk.
pub(crate) fn aside(state: &ItemState) -> Option<Aside> {
    if state.observation.is_none() && state.output.is_none() {
        return None;
    }
    let inline = state.observation.as_ref().map_or(0, String::len);
    let limit = inline_limit();
    if inline <= limit {
        let Some(output) = &state.output else {
            return None;
        };
        // Measured by writing it: a small value answers after a few bytes.
        let mut budget = Budget(limit - inline);
        if serde_json::to_writer(&mut budget, output).is_ok() {
            return None;
        }
    }
    let mut report = Map::new();
    if let Some(observation) = &state.observation {
        report.insert("o".into(), Value::String(observation.clone()));
    }
    if let Some(output) = &state.output {
        report.insert("u".into(), output.clone());
    }
    Some(Aside {
        item: state.id,
        task: state.task_id,
        body: Value::Object(report).to_string(),
    })
}

/// A writer that refuses to take more than its budget.
struct Budget(usize);

impl std::io::Write for Budget {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.0 -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The statement that stores `aside` (its text is the parameter `$var`).
pub(crate) fn upsert_statement(aside: &Aside, var: &str) -> String {
    format!(
        "UPSERT report:{id} CONTENT {{ task: {task}, body: ${var} }} RETURN NONE; ",
        id = aside.item,
        task = aside.task,
    )
}

/// The statement that removes item `id`'s report stored apart, replaced by one in its chunk.
pub(crate) fn delete_statement(id: i64) -> String {
    format!("DELETE report:{id} RETURN NONE; ")
}

impl Store {
    /// Fills in the reports of `items` stored apart; `apart` lists their ids. A report that
    /// cannot be read is logged and left out: one bad row must not hide the others.
    pub(crate) async fn fill_reports(
        &self,
        items: &mut [Item],
        apart: &[i64],
    ) -> Result<(), StoreError> {
        if apart.is_empty() {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Row {
            id: i64,
            body: String,
        }
        let rows: Vec<Row> = self
            .rows(
                "SELECT record::id(id) AS id, body FROM \
                 array::map($ids, |$i| type::record('report', $i)) WHERE body != NONE;",
                json!({ "ids": apart }),
                0,
            )
            .await?;
        let mut bodies: HashMap<i64, String> =
            rows.into_iter().map(|row| (row.id, row.body)).collect();
        for item in items.iter_mut() {
            let Some(body) = bodies.remove(&item.id) else {
                continue;
            };
            match serde_json::from_str::<Report>(&body) {
                Ok(report) => {
                    item.observation = report.observation;
                    item.output = report.output;
                }
                Err(err) => {
                    tracing::error!(item = item.id, error = %err, "stored report cannot be decoded");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ItemStatus;
    use crate::lifecycle::{Plan, Policy, RobotAction, plan_robot_action};
    use crate::store::{Grant, ItemFilter, NewItem, StoreConfig};

    /// A task of one chunk of PENDING items, all leased to robot 1; returns (task, first id).
    async fn leased_chunk(store: &Store) -> Result<(i64, i64), StoreError> {
        let n = crate::store::CHUNK_ITEMS;
        let task = store.create_staged_task(1, &["a".into()], None, 0).await?;
        let first = store.reserve_item_ids(n).await?;
        let items = (0..n)
            .map(|line| NewItem {
                line: line + 2,
                values: Map::from_iter([("a".to_string(), json!(line))]),
            })
            .collect();
        store.insert_staged_items(task, first, items).await?;
        store
            .commit_staged_task(task, 1, n, &[(first, first + n - 1)])
            .await?;
        let now = crate::domain::now_millis();
        store
            .assign_items(
                task,
                &[Grant {
                    robot_id: 1,
                    item_ids: (first..first + n).collect(),
                    lease_id: crate::lifecycle::new_lease_id(1),
                    lease_expires_at: now + 600_000,
                }],
                now,
            )
            .await?;
        Ok((task, first))
    }

    fn policy() -> Policy {
        Policy {
            lease_ttl_ms: 600_000,
            max_attempts: 3,
            on_lost: crate::domain::LostItemPolicy::Abandon,
            backoff_base_ms: 10,
        }
    }

    /// Robot 1 does `action` on each of `ids`, in one write.
    async fn act(store: &Store, ids: &[i64], action: &RobotAction) -> Result<(), StoreError> {
        let now = crate::domain::now_millis();
        let changes: Vec<(ItemState, ItemState)> = store
            .item_states(ids)
            .await?
            .into_iter()
            .filter_map(|old| {
                match plan_robot_action(&old, 1, old.lease_id.as_deref(), action, &policy(), now) {
                    Ok(Plan::Write(new)) => Some((old, *new)),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(changes.len(), ids.len(), "{action:?} applies to every item");
        assert!(store.apply_transitions(&changes, now).await?);
        Ok(())
    }

    fn big_report(i: i64) -> RobotAction {
        RobotAction::Complete {
            observation: Some(format!("{i} {}", "x".repeat(64 << 10))),
            output: Some(json!({ "item": i, "rows": vec!["y".repeat(100); 600] })),
        }
    }

    /// The length of the chunk's stored text.
    async fn chunk_text_len(store: &Store, first: i64) -> Result<usize, StoreError> {
        let rows: Vec<Value> = store
            .rows(
                "SELECT VALUE string::len(state) FROM type::record('chunk', $n);",
                json!({ "n": crate::store::chunks::chunk_of(first) }),
                0,
            )
            .await?;
        Ok(rows
            .first()
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX))
    }

    /// Large reports leave the chunk small and read back whole, next to small ones kept inline.
    #[tokio::test]
    async fn large_reports_are_kept_out_of_the_chunk() -> Result<(), StoreError> {
        let store = Store::open(&StoreConfig::memory()).await?;
        let (task, first) = leased_chunk(&store).await?;
        let n = crate::store::CHUNK_ITEMS;
        for i in first..first + n - 2 {
            act(&store, &[i], &big_report(i)).await?;
        }
        let small = RobotAction::Complete {
            observation: Some("ok".into()),
            output: Some(json!({ "n": 1 })),
        };
        act(&store, &[first + n - 2], &small).await?;
        let text = chunk_text_len(&store, first).await?;
        assert!(
            text < 64 << 10,
            "the chunk's text stays small with {} large reports: {text} bytes",
            n - 2
        );
        let items = store
            .list_items(
                task,
                &ItemFilter {
                    status: None,
                    offset: 0,
                    limit: 1_000,
                },
            )
            .await?;
        assert_eq!(items.len(), n as usize);
        for item in &items[..(n - 2) as usize] {
            let RobotAction::Complete {
                observation,
                output,
            } = big_report(item.id)
            else {
                unreachable!()
            };
            assert_eq!(item.status, ItemStatus::Completed);
            assert_eq!(item.observation, observation, "item {}", item.id);
            assert_eq!(item.output, output, "item {}", item.id);
        }
        let small_item = &items[(n - 2) as usize];
        assert_eq!(small_item.observation.as_deref(), Some("ok"));
        assert_eq!(small_item.output, Some(json!({ "n": 1 })));
        let last = &items[(n - 1) as usize];
        assert_eq!(
            (last.status, last.observation.as_ref()),
            (ItemStatus::Assigned, None)
        );
        let exported = store.items_in_range(first, first + n - 1).await?;
        assert_eq!(exported, items, "results.csv reads the same reports");
        Ok(())
    }

    /// A report kept apart is replaced when the item reports again: an application failure
    /// with a long message, retried, then completed with a short observation.
    #[tokio::test]
    async fn a_report_kept_apart_is_replaced_by_the_next() -> Result<(), StoreError> {
        let store = Store::open(&StoreConfig::memory()).await?;
        let (_task, first) = leased_chunk(&store).await?;
        act(&store, &[first], &RobotAction::Start).await?;
        let long = "e".repeat(10_000);
        act(
            &store,
            &[first],
            &RobotAction::Fail {
                kind: crate::lifecycle::FailKind::Application,
                message: long.clone(),
            },
        )
        .await?;
        let state = store.item_state(first).await?.expect("item");
        assert_eq!(state.status, ItemStatus::Pending, "retried");
        assert!(state.report_apart, "the long message is kept apart");
        let held = store.robot_items_full(1).await?;
        assert!(held.iter().all(|item| item.id != first));
        let now = crate::domain::now_millis();
        store
            .assign_items(
                state.task_id,
                &[Grant {
                    robot_id: 1,
                    item_ids: vec![first],
                    lease_id: crate::lifecycle::new_lease_id(1),
                    lease_expires_at: now + 600_000,
                }],
                now,
            )
            .await?;
        let held = store.robot_items_full(1).await?;
        let again = held
            .iter()
            .find(|item| item.id == first)
            .expect("leased again");
        assert_eq!(
            again.observation.as_deref(),
            Some(long.as_str()),
            "the seed API shows the last failure's message"
        );
        act(
            &store,
            &[first],
            &RobotAction::Complete {
                observation: Some("fine now".into()),
                output: None,
            },
        )
        .await?;
        let state = store.item_state(first).await?.expect("item");
        assert!(!state.report_apart);
        let rows: Vec<Value> = store
            .rows(
                "SELECT VALUE id FROM type::record('report', $id);",
                json!({ "id": first }),
                0,
            )
            .await?;
        assert!(
            rows.is_empty(),
            "the replaced report's row is gone: {rows:?}"
        );
        let item = store.items_in_range(first, first).await?;
        assert_eq!(item[0].observation.as_deref(), Some("fine now"));
        assert_eq!(item[0].output, None);
        Ok(())
    }

    /// What a write of one item costs next to 255 items completed with large reports. A probe,
    /// not a check: `cargo test -p orchestrator-actors --release -- --ignored --nocapture
    /// large_reports_cost`.
    #[tokio::test]
    #[ignore = "a measurement; run by hand"]
    async fn large_reports_cost() -> Result<(), StoreError> {
        use std::time::Instant;
        let config = StoreConfig::on_disk("reports");
        let store = Store::open(&config).await?;
        // One chunk with no reports, one with reports kept inline (as before `report` rows),
        // one with them apart.
        for (limit, reports, label) in [
            (INLINE_REPORT_BYTES, false, "no reports"),
            (
                usize::MAX / 2,
                true,
                "255 reports of 64 KiB + 60 KB, inline",
            ),
            (
                INLINE_REPORT_BYTES,
                true,
                "255 reports of 64 KiB + 60 KB, apart",
            ),
        ] {
            INLINE_LIMIT.store(limit, std::sync::atomic::Ordering::Relaxed);
            let (_task, first) = leased_chunk(&store).await?;
            let last = first + crate::store::CHUNK_ITEMS - 1;
            if reports {
                for i in first..last {
                    act(&store, &[i], &big_report(i)).await?;
                }
            }
            let clock = Instant::now();
            for _ in 0..50 {
                act(&store, &[last], &RobotAction::Renew).await?;
            }
            println!(
                "{label}: {:.2} ms per renewal; chunk text {} bytes",
                clock.elapsed().as_secs_f64() * 1_000.0 / 50.0,
                chunk_text_len(&store, first).await?
            );
        }
        INLINE_LIMIT.store(INLINE_REPORT_BYTES, std::sync::atomic::Ordering::Relaxed);
        store.close().await;
        config.remove_files();
        Ok(())
    }
}
