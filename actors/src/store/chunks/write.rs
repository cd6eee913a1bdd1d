//! The write path of chunks: one transaction of compare-and-sets on the chunks' versions, the
//! tasks' counters and statuses, the minute's throughput and the reports set aside.

use super::*;

impl Store {
    /// Writes changed chunks (each a compare-and-set on the version it was read at) with their
    /// tasks' counters, the minute's throughput and finished tasks, in one transaction.
    /// `Ok(false)`: a chunk had moved on; it is dropped from the cache, re-read and re-plan.
    pub(crate) async fn write_chunks(
        &self,
        cached: &mut Cached,
        chunks: Vec<Chunk>,
        tasks: &BTreeMap<i64, TaskDelta>,
        finished: (usize, usize),
        now: Millis,
    ) -> Result<bool, StoreError> {
        if chunks.is_empty() {
            return Ok(true);
        }
        let new_workers: Vec<(i64, i64)> = {
            let known =
                self.chunks.workers.lock().map_err(|_| {
                    StoreError::Database("the worked-row memory was poisoned".into())
                })?;
            tasks
                .iter()
                .flat_map(|(t, d)| d.workers.iter().map(move |r| (*t, *r)))
                .filter(|pair| !known.contains(pair))
                .collect()
        };
        let (sql, vars) =
            write_statements(&self.shard(), &chunks, tasks, &new_workers, finished, now)?;
        let outcome = self.db.run(&sql, Value::Object(vars)).await;
        let ns: Vec<i64> = chunks.iter().map(|c| c.n).collect();
        let mut response = match outcome {
            Ok(response) => response,
            Err(err) => {
                // The outcome is unknown: nothing cached about these chunks can be trusted.
                cached.forget(ns);
                return Err(err.into());
            }
        };
        // In a failed transaction every later statement reports "not executed"; the THROW that
        // caused it says whether this was a lost race or a real failure.
        let mut errors: Vec<(usize, StoreError)> = response
            .take_errors()
            .into_iter()
            .map(|(index, err)| (index, StoreError::from(err)))
            .collect();
        if errors.is_empty() {
            for mut chunk in chunks {
                chunk.version += 1;
                chunk.asides = Vec::new();
                chunk.dropped = Vec::new();
                cached.keep(chunk);
            }
            if !new_workers.is_empty()
                && let Ok(mut known) = self.chunks.workers.lock()
            {
                if known.len() > REMEMBERED_WORKERS {
                    known.clear();
                }
                known.extend(new_workers);
            }
            return Ok(true);
        }
        cached.forget(ns);
        errors.sort_by_key(|(index, _)| *index);
        // A guard threw: a chunk moved on (`CHUNK_CONFLICT`) or the task was cancelled meanwhile
        // (`TASK_CANCELLED`).
        if errors
            .iter()
            .any(|(_, err)| matches!(err, StoreError::Moved(_)))
        {
            return Ok(false);
        }
        let first = errors.remove(0).1;
        if first.is_retryable() {
            return Ok(false);
        }
        Err(first)
    }
}

/// SurrealQL for the items of task `id` pending or in flight: its row's counts (`row`, the
/// variable or expression holding `counts`) plus every node's shard.
pub(crate) fn open_items(row: &str, id: i64) -> String {
    format!(
        "({row}.counts.pending + {row}.counts.assigned + {row}.counts.started + \
         math::sum((SELECT VALUE counts.pending + counts.assigned + counts.started \
           FROM task_count WHERE task = {id})))"
    )
}

/// The transaction [`Store::write_chunks`] runs, and its parameters.
///
/// Ids, versions, counter deltas and times are integers written into the text; only the chunks'
/// contents travel as parameters. The engine's cost is mostly per statement and per expression it
/// evaluates, so the text carries only what this batch needs: one `UPDATE ... CONTENT` per chunk
/// and one conflict check for all of them, and per task only the counters that move, the status
/// change only when items were leased or reopened, and the completion check only when items ended.
/// Written as loops over parameter arrays, the same batches cost more: with 20 seed-API robots a
/// batch (about 10 changes) took 2.51 ms on average, now 1.91 ms (BENCHMARKS.md).
pub(super) fn write_statements(
    shard: &str,
    chunks: &[Chunk],
    tasks: &BTreeMap<i64, TaskDelta>,
    new_workers: &[(i64, i64)],
    finished: (usize, usize),
    now: Millis,
) -> Result<(String, Map<String, Value>), StoreError> {
    // `write!` into a String cannot fail: its results below are dropped.
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(200 + 120 * chunks.len() + 400 * tasks.len());
    let mut vars = Map::new();
    sql.push_str("BEGIN; ");
    vars.insert("shard".into(), Value::String(shard.to_string()));
    let mut hits = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        vars.insert(
            format!("c{i}"),
            Value::Object(chunk.fields(chunk.version + 1)?),
        );
        let _ = write!(
            sql,
            "LET $h{i} = (UPDATE chunk:{n} CONTENT $c{i} WHERE version = {v} RETURN VALUE 1); ",
            n = chunk.n,
            v = chunk.version,
        );
        hits.push(format!("$h{i}"));
    }
    // One flat array of every chunk's hits: a sum of one term per chunk nests one expression
    // deeper per term, and the engine refuses past about 128 (a robot lost with items in 300
    // chunks could not be released).
    let _ = write!(
        sql,
        "IF array::len(array::flatten([{}])) < {} {{ THROW '{CHUNK_CONFLICT}' }}; ",
        hits.join(", "),
        chunks.len()
    );
    // Removals first: an item dropped and set aside again in one write keeps the new row.
    for id in chunks.iter().flat_map(|c| &c.dropped) {
        sql.push_str(&reports::delete_statement(*id));
    }
    for (k, aside) in chunks.iter().flat_map(|c| &c.asides).enumerate() {
        let var = format!("r{k}");
        sql.push_str(&reports::upsert_statement(aside, &var));
        vars.insert(var, Value::String(aside.body.clone()));
    }
    for (i, (id, d)) in tasks.iter().enumerate() {
        task_statements(&mut sql, i, *id, d, chunks, now);
    }
    for (task, robot) in new_workers {
        let _ = write!(sql, "UPSERT worked:[{task}, {robot}] RETURN NONE; ");
    }
    if finished.0 + finished.1 > 0 {
        let _ = write!(
            sql,
            "UPSERT type::record('throughput', [{minute}, $shard]) SET minute = {minute}, \
               completed = (completed ?? 0) + {completed}, \
               failed = (failed ?? 0) + {failed} RETURN NONE; ",
            minute = crate::store::minute_of(now),
            completed = finished.0,
            failed = finished.1,
        );
    }
    sql.push_str("COMMIT;");
    Ok((sql, vars))
}

/// A task's share of the transaction: its counter deltas on this node's shard, and its status
/// when items were leased, reopened or ended.
fn task_statements(
    sql: &mut String,
    i: usize,
    id: i64,
    d: &TaskDelta,
    chunks: &[Chunk],
    now: Millis,
) {
    // `write!` into a String cannot fail: its results below are dropped.
    use std::fmt::Write as _;
    let c = &d.counts;
    // Counters go to this node's shard of the task (`task_count:[task, node]`), which only
    // this node writes, under its chunk lock: nodes sharing a task never write one row.
    let fields = [
        ("pending", c.pending),
        ("assigned", c.assigned),
        ("started", c.started),
        ("completed", c.completed),
        ("failed", c.failed),
        ("abandoned", c.abandoned),
    ];
    if fields.iter().any(|(_, delta)| *delta != 0) {
        let counts: Vec<String> = fields
            .iter()
            .map(|(field, delta)| format!("{field}: (counts.{field} ?? 0) + {delta}"))
            .collect();
        let _ = write!(
            sql,
            "UPSERT type::record('task_count', [{id}, $shard]) SET task = {id}, \
             counts = {{ {} }} RETURN NONE; ",
            counts.join(", ")
        );
    }
    // Items ended: the task may be finished, unless a chunk of it written here still holds
    // items pending or in flight (the common case, checked without a query).
    let ends = (c.completed > 0 || c.failed > 0 || c.abandoned > 0)
        && !chunks.iter().filter(|k| k.task == id).any(|k| {
            let k = k.counts();
            k.pending + k.assigned + k.started > 0
        });
    if d.reopen {
        // A finished task (not a cancelled one) runs again; this also starts a CREATED one.
        let _ = write!(
            sql,
            "UPDATE task:{id} SET started_at = started_at ?? {now}, \
             ended_at = IF status != 'CANCELLED' THEN NONE ELSE ended_at END, \
             status = IF status != 'CANCELLED' THEN 'STARTED' ELSE status END RETURN NONE; "
        );
        return;
    }
    if !d.start && !ends {
        return;
    }
    // The task's row is read, and written only when its status changes (first lease,
    // completion). Leasing reads the status in the same transaction: a task cancelled on
    // another node since its items were planned gets no new lease.
    let _ = write!(
        sql,
        "LET $t{i} = (SELECT status, counts FROM ONLY task:{id}); "
    );
    if d.start {
        let _ = write!(
            sql,
            "IF $t{i}.status = 'CANCELLED' {{ THROW '{TASK_CANCELLED}' }}; \
             IF $t{i}.status = 'CREATED' {{ UPDATE task:{id} SET status = 'STARTED', \
               started_at = started_at ?? {now} RETURN NONE; }}; "
        );
    }
    if ends {
        // Items ended: a task left with nothing pending or in flight, counting every
        // node's shard (this batch's included), is COMPLETED. Two nodes ending the last items
        // at once may each miss the other's; the task directors complete such a task
        // within a second (`Store::complete_finished_tasks`).
        let _ = write!(
            sql,
            "IF $t{i}.status IN ['CREATED', 'STARTED'] \
               AND {OPEN_ITEMS} = 0 {{ \
               UPDATE task:{id} SET status = 'COMPLETED', ended_at = {now} \
                 WHERE status IN ['CREATED', 'STARTED'] RETURN NONE; \
             }}; ",
            OPEN_ITEMS = open_items(&format!("$t{i}"), id),
        );
    }
}
