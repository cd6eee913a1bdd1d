use super::*;

#[test]
fn a_chunk_round_trips_through_its_text_and_summarises_itself() {
    let mut chunk = Chunk::new(7, 512, 3, 1_000);
    let mut state = chunk.state(513).expect("held");
    state.status = ItemStatus::Assigned;
    state.robot_id = Some(4);
    state.lease_id = Some("4-x".into());
    state.lease_expires_at = Some(9_000);
    state.attempt = 1;
    assert!(chunk.put(&state));
    assert!(!chunk.put(&ItemState {
        id: 515,
        ..state.clone()
    }));
    let row = chunk.row().expect("row");
    assert_eq!(row["in_flight"], 1);
    assert_eq!(row["lease_min"], 9_000);
    assert_eq!(row["holders"], json!([4]));
    assert_eq!(row["counts"]["pending"], 2);
    assert_eq!(row["counts"]["assigned"], 1);
    let back = Chunk::try_from(ChunkRow {
        n: 2,
        task: 7,
        first: 512,
        version: 0,
        created_at: 1_000,
        state: row["state"].as_str().expect("text").to_string(),
    })
    .expect("parses");
    assert_eq!(back.state(513), Some(state));
    assert_eq!(back.states().count(), 3);
    assert_eq!(back.state(511), None);
    assert_eq!(back.state(515), None);
    assert!(
        row["state"].as_str().expect("text").len() < 120,
        "pending items are written short: {}",
        row["state"]
    );
}

/// A batch's transaction carries only what it needs: no completion check or throughput row
/// for leases and starts, only the counters that move, one conflict check for all chunks.
#[test]
fn a_batch_writes_only_what_it_changes() {
    let chunks = vec![Chunk::new(7, 512, 3, 0), Chunk::new(7, 768, 3, 0)];
    // Task 7's counters move by `counts`, nothing else about it changes.
    let task_7 = |counts: ItemCounts| {
        BTreeMap::from([(
            7,
            TaskDelta {
                counts,
                ..TaskDelta::default()
            },
        )])
    };
    let starts = task_7(ItemCounts {
        assigned: -2,
        started: 2,
        ..ItemCounts::default()
    });
    let (sql, vars) = write_statements("n1", &chunks, &starts, &[], (0, 0), 1_000).expect("sql");
    assert!(
        sql.contains("UPDATE chunk:2 CONTENT $c0 WHERE version = 0"),
        "{sql}"
    );
    assert!(
        sql.contains("UPDATE chunk:3 CONTENT $c1 WHERE version = 0"),
        "{sql}"
    );
    assert!(
        sql.contains("IF array::len(array::flatten([$h0, $h1])) < 2"),
        "{sql}"
    );
    assert!(
        sql.contains(
            "UPSERT type::record('task_count', [7, $shard]) SET task = 7, counts = { \
             pending: (counts.pending ?? 0) + 0, assigned: (counts.assigned ?? 0) + -2, \
             started: (counts.started ?? 0) + 2,"
        ),
        "{sql}"
    );
    assert_eq!(vars["shard"], "n1");
    // Items moving within flight touch no task row: only this node's shard.
    for absent in ["task:7", "COMPLETED", "throughput", "status", "worked"] {
        assert!(!sql.contains(absent), "{absent} in {sql}");
    }
    assert_eq!(
        vars["c0"]["version"], 1,
        "the content carries the next version"
    );
    assert!(
        vars["c0"].get("n").is_none(),
        "n is the record id, not a field"
    );

    let ends = task_7(ItemCounts {
        started: -1,
        completed: 1,
        ..ItemCounts::default()
    });
    // A chunk written here still holds open items: the task cannot be finished, no check.
    let (sql, _) = write_statements("n1", &chunks[..1], &ends, &[], (1, 0), 120_000).expect("sql");
    assert!(!sql.contains("COMPLETED"), "{sql}");
    assert!(!sql.contains("task:7"), "{sql}");
    // Its last open item ended: the completion check runs.
    let mut done = Chunk::new(7, 512, 1, 0);
    let mut state = done.state(512).expect("held");
    state.status = ItemStatus::Completed;
    assert!(done.put(&state));
    let (sql, _) = write_statements("n1", &[done], &ends, &[(7, 3)], (1, 0), 120_000).expect("sql");
    assert!(
        sql.contains("SET status = 'COMPLETED', ended_at = 120000"),
        "{sql}"
    );
    assert!(
        sql.contains("FROM task_count WHERE task = 7"),
        "completion counts every shard: {sql}"
    );
    assert!(
        sql.contains("UPSERT type::record('throughput', [2, $shard]) SET"),
        "{sql}"
    );
    assert!(sql.contains("UPSERT worked:[7, 3] RETURN NONE"), "{sql}");
}

#[test]
fn the_cache_keeps_the_newest_version_and_evicts_the_least_used() {
    let mut cached = Cached::default();
    let mut chunk = Chunk::new(1, 0, 1, 0);
    chunk.version = 5;
    cached.keep(chunk.clone());
    chunk.version = 4;
    cached.keep(chunk.clone());
    assert_eq!(cached.get(0).map(|c| c.version), Some(5));
    for n in 1..=(CACHE_CHUNKS as i64 + 1) {
        cached.keep(Chunk::new(1, n * CHUNK_ITEMS, 1, 0));
    }
    assert!(cached.chunks.len() <= CACHE_CHUNKS);
    assert!(
        cached.get(CACHE_CHUNKS as i64 + 1).is_some(),
        "the newest stays"
    );
}
