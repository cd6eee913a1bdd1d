use super::*;
use crate::store::{NewItem, StoreConfig};

/// A task of `n` PENDING items committed under process 1; returns (task, first item id).
async fn staged(store: &Store, n: i64) -> Result<(i64, i64), StoreError> {
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
    Ok((task, first))
}

fn grant(robot: i64, ids: Vec<i64>) -> Grant {
    Grant {
        robot_id: robot,
        item_ids: ids,
        lease_id: crate::lifecycle::new_lease_id(robot),
        lease_expires_at: crate::domain::now_millis() + 60_000,
    }
}

/// The lease sweep and a robot's lookup run all the time: they must not read idle chunks.
#[tokio::test]
async fn sweeps_and_robot_lookups_read_no_idle_chunk() -> Result<(), StoreError> {
    let store = Store::open(&StoreConfig::memory()).await?;
    staged(&store, 2_000).await?;
    let now = crate::domain::now_millis();
    for (cond, index) in [
        (EXPIRED_LEASES_WHERE, "chunk_lease_min"),
        (IN_FLIGHT_WHERE, "chunk_lease_min"),
        (HELD_BY_ROBOT_WHERE, "chunk_holders"),
    ] {
        let sql = format!("SELECT id FROM chunk WHERE {cond} EXPLAIN FULL;");
        let plan = store
            .query_all(&sql, json!({ "now": now, "robot": 1 }))
            .await?;
        let plan = plan[0].to_string();
        assert!(plan.contains(index), "uses {index}: {plan}");
        assert!(plan.contains(r#""output_rows":0"#), "reads nothing: {plan}");
    }
    assert!(store.expired_leases(now, 10).await?.is_empty());
    assert!(store.robot_items_in_flight(1).await?.is_empty());
    assert!(store.held_counts().await?.is_empty());
    Ok(())
}

/// A completion and the lease that refills the slot, in one write: both land, with the
/// task's counters moved once for each; an item released in the batch can be leased in it;
/// and when one change lost its race nothing of the batch is written.
#[tokio::test]
async fn transitions_and_leases_share_one_write() -> Result<(), StoreError> {
    let store = Store::open(&StoreConfig::memory()).await?;
    let (task, first) = staged(&store, 10).await?;
    let now = crate::domain::now_millis();
    let held = store
        .assign_items(task, &[grant(1, vec![first, first + 1])], now)
        .await?;
    assert_eq!(held[0].len(), 2);
    assert_eq!(
        store.held_counts().await?,
        std::collections::BTreeMap::from([(1, 2)]),
        "the recount sees what robot 1 holds"
    );
    let states = store.item_states(&[first, first + 1]).await?;
    let mut completed = states[0].clone();
    completed.status = ItemStatus::Completed;
    completed.ended_at = Some(now);
    // The second item is handed back (PENDING) and re-leased in the same write.
    let mut released = states[1].clone();
    released.status = ItemStatus::Pending;
    released.robot_id = None;
    released.lease_id = None;
    released.lease_expires_at = None;
    let changes = vec![
        (states[0].clone(), completed),
        (states[1].clone(), released),
    ];
    let refill = [grant(2, vec![first + 1, first + 2])];
    let leased = store
        .write_items(&changes, &[(task, &refill[..])], now)
        .await?
        .expect("written");
    let got: Vec<i64> = leased[0][0].iter().map(|i| i.id).collect();
    assert_eq!(got, vec![first + 1, first + 2]);
    let after = store.item_states(&[first, first + 1, first + 2]).await?;
    assert_eq!(after[0].status, ItemStatus::Completed);
    assert!(
        after[1..]
            .iter()
            .all(|s| s.status == ItemStatus::Assigned && s.robot_id == Some(2))
    );
    let row = store.task(task).await?.expect("task");
    assert_eq!(
        (
            row.counts.pending,
            row.counts.assigned,
            row.counts.completed
        ),
        (7, 2, 1),
        "each item counted once where it ended"
    );
    assert_eq!(
        store.read_fresh(&[chunk_of(first)]).await?[0].state(first + 2),
        Some(after[2].clone()),
        "the store holds what the cache says"
    );

    // A stale change (the item is no longer as planned): nothing is written, the lease
    // beside it included.
    let stale = (states[0].clone(), states[0].clone());
    let beside = [grant(3, vec![first + 3])];
    assert!(
        store
            .write_items(&[stale], &[(task, &beside[..])], now)
            .await?
            .is_none()
    );
    let untouched = store.item_states(&[first + 3]).await?;
    assert_eq!(untouched[0].status, ItemStatus::Pending);
    let row = store.task(task).await?.expect("task");
    assert_eq!(row.counts.pending, 7);
    Ok(())
}

/// A chunk whose items all ended is rewritten whole: no lease summary or holder is left
/// for the sweep and robot lookups to find; the task completes in the same write, and the
/// minute's throughput counts the items.
#[tokio::test]
async fn a_finished_chunk_keeps_no_lease_and_completes_its_task() -> Result<(), StoreError> {
    let store = Store::open(&StoreConfig::memory()).await?;
    let (task, first) = staged(&store, 3).await?;
    let ids = vec![first, first + 1, first + 2];
    let now = crate::domain::now_millis();
    store
        .assign_items(task, &[grant(1, ids.clone())], now)
        .await?;
    let far = now + 3_600_000;
    assert_eq!(store.expired_leases(far, 10).await?.len(), 3);
    assert_eq!(store.robot_items_in_flight(1).await?.len(), 3);
    let row = store.task(task).await?.expect("task");
    assert_eq!(row.status, crate::domain::TaskStatus::Started);

    let changes: Vec<(ItemState, ItemState)> = store
        .item_states(&ids)
        .await?
        .into_iter()
        .map(|old| {
            let mut done = old.clone();
            done.status = ItemStatus::Completed;
            done.ended_at = Some(now);
            (old, done)
        })
        .collect();
    store
        .write_items(&changes, &[], now)
        .await?
        .expect("written");
    assert!(store.expired_leases(far, 10).await?.is_empty());
    assert!(store.robot_items_in_flight(1).await?.is_empty());
    let row = store.task(task).await?.expect("task");
    assert_eq!(row.status, crate::domain::TaskStatus::Completed);
    assert_eq!((row.counts.assigned, row.counts.completed), (0, 3));
    let minute = crate::store::minute_of(now);
    assert_eq!(store.throughput(minute, minute).await?[0].completed, 3);
    Ok(())
}

/// Leasing, a transition, a stale cache (another node wrote the chunk) and a lost race.
#[tokio::test]
async fn writes_check_each_item_as_stored() -> Result<(), StoreError> {
    let store = Store::open(&StoreConfig::memory()).await?;
    let (task, first) = staged(&store, 600).await?;
    let now = crate::domain::now_millis();
    let ids: Vec<i64> = (first..first + 300).collect();
    let leased = store
        .assign_items(
            task,
            &[grant(1, ids[..2].to_vec()), grant(2, ids[2..].to_vec())],
            now,
        )
        .await?;
    assert_eq!(leased[0].len(), 2);
    assert_eq!(leased[1].len(), 298, "the grant spans two chunks");
    assert_eq!(leased[0][1].line, 3);
    assert_eq!(leased[0][1].values["a"], 1);
    let again = store
        .assign_items(task, &[grant(3, ids.clone())], now)
        .await?;
    assert!(again[0].is_empty(), "leased items are not leased twice");
    let task_row = store.task(task).await?.expect("task");
    assert_eq!(task_row.counts.assigned, 300);
    assert_eq!(task_row.counts.pending, 300);

    // Another node completes robot 1's first item behind this node's cache.
    let old = store.item_states(&[first]).await?.remove(0);
    let mut elsewhere = old.clone();
    elsewhere.status = ItemStatus::Completed;
    let mut chunk = store.read_chunks(&[chunk_of(first)]).await?.remove(0);
    chunk.put(&elsewhere);
    let state = serde_json::to_string(&chunk.slots)?;
    store
        .query_all(
            "UPDATE type::record('chunk', $n) SET state = $state, version += 1;",
            json!({ "n": chunk.n, "state": state }),
        )
        .await?;
    // This node's start of the same item finds it already completed: a lost race.
    let mut started = old.clone();
    started.status = ItemStatus::Started;
    assert!(!store.apply_transitions(&[(old, started)], now).await?);
    // Its second item still goes through once the chunk was read again.
    let second = store.item_states(&[first + 1]).await?.remove(0);
    let mut done = second.clone();
    done.status = ItemStatus::Completed;
    assert!(
        store
            .apply_transitions(&[(second.clone(), done.clone())], now)
            .await?
    );
    assert_eq!(store.item_state(first + 1).await?, Some(done));
    assert_eq!(
        store.robot_items_in_flight(2).await?.len(),
        298,
        "robot 2's items are found through the chunks' holders"
    );
    assert_eq!(
        store.robot_in_flight_count(1).await?,
        0,
        "robot 1's items were completed here and elsewhere"
    );
    Ok(())
}

/// Paging a task's items by status reads the chunks' counts to find the page.
#[tokio::test]
async fn item_pages_skip_whole_chunks() -> Result<(), StoreError> {
    let store = Store::open(&StoreConfig::memory()).await?;
    let (task, first) = staged(&store, 1_000).await?;
    let now = crate::domain::now_millis();
    let picked: Vec<i64> = [5, 300, 301, 700, 999].iter().map(|k| first + k).collect();
    store
        .assign_items(task, &[grant(1, picked.clone())], now)
        .await?;
    let page = |status, offset, limit| crate::store::ItemFilter {
        status,
        offset,
        limit,
    };
    let assigned = store
        .list_items(task, &page(Some(ItemStatus::Assigned), 1, 3))
        .await?;
    let ids: Vec<i64> = assigned.iter().map(|i| i.id).collect();
    assert_eq!(ids, picked[1..4]);
    let all = store.list_items(task, &page(None, 510, 4)).await?;
    let ids: Vec<i64> = all.iter().map(|i| i.id).collect();
    assert_eq!(ids, (first + 510..first + 514).collect::<Vec<_>>());
    assert_eq!(all[0].line, 512);
    let tail = store.list_items(task, &page(None, 998, 10)).await?;
    assert_eq!(tail.len(), 2);
    let slice = store.items_in_range(first + 250, first + 260).await?;
    assert_eq!(slice.len(), 11);
    assert_eq!(slice[0].values["a"], 250);
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
    let config = StoreConfig::on_disk("probe");
    let store = Store::open(&config).await?;
    let n: i64 = 20_000;
    let task = store.create_staged_task(1, &["a".into()], None, 0).await?;
    let first = store.reserve_item_ids(n).await?;
    let rows = (0..n)
        .map(|line| NewItem {
            line,
            values: Map::from_iter([("a".to_string(), json!(format!("value {line}")))]),
        })
        .collect::<Vec<_>>();
    let clock = Instant::now();
    for (i, chunk) in rows.chunks(1_024).enumerate() {
        store
            .insert_staged_items(task, first + i as i64 * 1_024, chunk.to_vec())
            .await?;
    }
    let report = |what: &str, items: i64, since: Instant| {
        let us = since.elapsed().as_micros() as f64 / items as f64;
        println!("{what}: {us:.0} µs per item");
    };
    report("insert (batches of 1,024)", n, clock);
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
    config.remove_files();
    Ok(())
}
