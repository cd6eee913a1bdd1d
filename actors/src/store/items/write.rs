//! The write path of items: transitions and leases applied to their chunks and written in one
//! transaction (see `chunks/write.rs`).

use super::*;

impl Store {
    /// Writes `changes` (old state, new state) all or nothing. `Ok(false)` when another writer
    /// changed one of the items first: re-read and re-plan.
    pub async fn apply_transitions(
        &self,
        changes: &[(ItemState, ItemState)],
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self.write_items(changes, &[], now).await?.is_some())
    }

    /// Leases PENDING items of `task_id` to robots in one transaction; returns what was leased
    /// per grant (items that stopped being PENDING meanwhile are skipped).
    pub async fn assign_items(
        &self,
        task_id: i64,
        grants: &[Grant],
        now: Millis,
    ) -> Result<Vec<Vec<LeasedItem>>, StoreError> {
        let leases = [(task_id, grants)];
        match self.write_items(&[], &leases, now).await? {
            Some(mut leased) => Ok(leased.pop().unwrap_or_default()),
            None => Err(StoreError::Database(format!(
                "could not lease items of task {task_id}: their chunks kept changing"
            ))),
        }
    }

    /// [`Store::write_items`] on the store's writer thread (see `writer_runtime`), with owned
    /// arguments so the write can move there.
    pub async fn write_items_apart(
        &self,
        changes: Vec<(ItemState, ItemState)>,
        leases: Vec<(i64, Vec<Grant>)>,
        now: Millis,
    ) -> Result<Option<Vec<Vec<Vec<LeasedItem>>>>, StoreError> {
        let store = self.clone();
        let write = async move {
            let leases: Vec<(i64, &[Grant])> =
                leases.iter().map(|(t, g)| (*t, g.as_slice())).collect();
            store.write_items(&changes, &leases, now).await
        };
        match crate::store::writer_runtime() {
            Some(runtime) => runtime.spawn(write).await.map_err(|err| {
                StoreError::Database(format!("the store writer lost a write: {err}"))
            })?,
            None => write.await,
        }
    }

    /// Robot transitions and leases in one transaction (group commit: a completion and the
    /// lease that refills the robot's slot cost one write). `changes` are compare-and-sets as in
    /// [`Store::apply_transitions`]; `leases` are grants per task as in [`Store::assign_items`],
    /// applied to the chunks as the changes leave them. Returns what was leased, per task and
    /// grant, or `None` when nothing was written because another writer changed one of the
    /// changed items first (or kept changing their chunks).
    pub async fn write_items(
        &self,
        changes: &[(ItemState, ItemState)],
        leases: &[(i64, &[Grant])],
        now: Millis,
    ) -> Result<Option<Vec<Vec<Vec<LeasedItem>>>>, StoreError> {
        let lease_ids = || {
            leases
                .iter()
                .flat_map(|(_, g)| g.iter())
                .flat_map(|g| &g.item_ids)
        };
        if changes.is_empty() && lease_ids().next().is_none() {
            return Ok(Some(
                leases
                    .iter()
                    .map(|(_, g)| vec![Vec::new(); g.len()])
                    .collect(),
            ));
        }
        let (deltas, done) = change_deltas(changes);
        let started = std::time::Instant::now();
        let leasing = chunks_of(lease_ids().copied());
        let ns = chunks_of(
            changes
                .iter()
                .map(|(old, _)| old.id)
                .chain(lease_ids().copied()),
        );
        let mut cached = self.chunk_lock().await;
        // Payloads never change: read before anything is written, so a failed read leases nothing.
        let payloads = self.payloads(&leasing).await?;
        // Tasks found cancelled after a write refused to lease them: their grants get nothing.
        let mut cancelled: BTreeSet<i64> = BTreeSet::new();
        for round in 0..STALE_RETRIES {
            self.load(&mut cached, &ns, round > 0).await?;
            let Some(changed) = plan_changes(&mut cached, changes) else {
                if round == 0 {
                    continue; // the cached copy may be behind another node: read it again
                }
                return Ok(None);
            };
            let mut dirty: BTreeSet<i64> = changed.iter().map(|c| c.n).collect();
            let mut chunks: BTreeMap<i64, Chunk> = changed.into_iter().map(|c| (c.n, c)).collect();
            let mut tasks = deltas.clone();
            let leased = lease_all(
                &mut cached,
                &mut chunks,
                &payloads,
                leases,
                &cancelled,
                &mut tasks,
                &mut dirty,
            )?;
            // Only the chunks that changed are written.
            chunks.retain(|n, _| dirty.contains(n));
            if chunks.is_empty() {
                return Ok(Some(leased));
            }
            if self
                .write_chunks(
                    &mut cached,
                    chunks.into_values().collect(),
                    &tasks,
                    done,
                    now,
                )
                .await?
            {
                let count: usize = leased.iter().flatten().map(Vec::len).sum();
                self.leased
                    .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
                record_write(changes, count, started);
                return Ok(Some(leased));
            }
            metrics::counter!("orchestrator_store_conflicts_total", "op" => "batch").increment(1);
            if lease_ids().next().is_some() {
                let ids: Vec<i64> = leases.iter().map(|(t, _)| *t).collect();
                cancelled = self.cancelled_tasks(&ids).await?;
            }
        }
        Ok(None)
    }

    /// Which of `task_ids` are CANCELLED.
    async fn cancelled_tasks(&self, task_ids: &[i64]) -> Result<BTreeSet<i64>, StoreError> {
        let found: Vec<i64> = self
            .rows(
                "SELECT VALUE record::id(id) FROM task WHERE status = 'CANCELLED' \
                 AND record::id(id) IN $ids;",
                json!({ "ids": task_ids }),
                0,
            )
            .await?;
        Ok(found.into_iter().collect())
    }
}

/// Counter deltas per task of `changes`, and how many items they complete and fail.
fn change_deltas(changes: &[(ItemState, ItemState)]) -> (BTreeMap<i64, TaskDelta>, (usize, usize)) {
    let mut deltas: BTreeMap<i64, TaskDelta> = BTreeMap::new();
    for (old, new) in changes {
        add_counts(
            &mut deltas.entry(old.task_id).or_default().counts,
            &count_delta(old.status, new.status),
        );
    }
    let finished = |status: ItemStatus| {
        changes
            .iter()
            .filter(|(old, new)| new.status == status && old.status != status)
            .count()
    };
    let done = (
        finished(ItemStatus::Completed),
        finished(ItemStatus::Failed),
    );
    (deltas, done)
}

/// Applies every task's grants to `chunks` (tasks in `cancelled` get nothing), counting them in
/// `tasks` and marking the chunks they touch `dirty`; returns what each grant got.
fn lease_all(
    cached: &mut Cached,
    chunks: &mut BTreeMap<i64, Chunk>,
    payloads: &HashMap<i64, Arc<Payload>>,
    leases: &[(i64, &[Grant])],
    cancelled: &BTreeSet<i64>,
    tasks: &mut BTreeMap<i64, TaskDelta>,
    dirty: &mut BTreeSet<i64>,
) -> Result<Vec<Vec<Vec<LeasedItem>>>, StoreError> {
    let mut leased = Vec::with_capacity(leases.len());
    for (task_id, grants) in leases {
        if cancelled.contains(task_id) {
            leased.push(vec![Vec::new(); grants.len()]);
            continue;
        }
        let per_grant = lease_pending(cached, chunks, payloads, *task_id, grants)?;
        let count: usize = per_grant.iter().map(Vec::len).sum();
        if count > 0 {
            dirty.extend(per_grant.iter().flatten().map(|i| chunk_of(i.id)));
            let delta = tasks.entry(*task_id).or_default();
            delta.workers.extend(
                grants
                    .iter()
                    .zip(&per_grant)
                    .filter(|(_, items)| !items.is_empty())
                    .map(|(g, _)| g.robot_id),
            );
            delta.start = true;
            delta.counts.pending -= count as i64;
            delta.counts.assigned += count as i64;
        }
        leased.push(per_grant);
    }
    Ok(leased)
}

/// Leases the PENDING items `grants` name to their robots, on `chunks` (copies taken from
/// `cached` as needed); returns what each grant got. Items of another task, or no longer
/// PENDING, are skipped.
fn lease_pending(
    cached: &mut Cached,
    chunks: &mut BTreeMap<i64, Chunk>,
    payloads: &HashMap<i64, Arc<Payload>>,
    task_id: i64,
    grants: &[Grant],
) -> Result<Vec<Vec<LeasedItem>>, StoreError> {
    let mut leased = Vec::with_capacity(grants.len());
    for grant in grants {
        let mut got = Vec::new();
        for id in &grant.item_ids {
            let n = chunk_of(*id);
            let chunk = match chunks.entry(n) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match cached.get(n) {
                    Some(chunk) if chunk.task == task_id => entry.insert(chunk.clone()),
                    _ => continue,
                },
            };
            if chunk.task != task_id {
                continue;
            }
            let Some(slot) = chunk.slot_mut(*id) else {
                continue;
            };
            if slot.status != ItemStatus::Pending {
                continue;
            }
            slot.status = ItemStatus::Assigned;
            slot.robot = Some(grant.robot_id);
            slot.lease_id = Some(grant.lease_id.clone());
            slot.lease_expires_at = Some(grant.lease_expires_at);
            slot.attempt += 1;
            slot.not_before = None;
            let state = chunk
                .state(*id)
                .ok_or_else(|| StoreError::Malformed(format!("item {id} left its chunk")))?;
            if let Some(item) = leased_item(chunk, payloads, &state) {
                got.push(item);
            }
        }
        leased.push(got);
    }
    Ok(leased)
}

/// Applies `changes` to copies of their cached chunks; `None` when an item is missing or not in
/// the state the change expects (another writer was first).
fn plan_changes(cached: &mut Cached, changes: &[(ItemState, ItemState)]) -> Option<Vec<Chunk>> {
    let mut changed: BTreeMap<i64, Chunk> = BTreeMap::new();
    for (old, new) in changes {
        let n = chunk_of(old.id);
        let chunk = match changed.entry(n) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(cached.get(n)?.clone()),
        };
        let slot = chunk.slot_mut(old.id)?;
        if slot.status != old.status || slot.lease_id != old.lease_id {
            return None;
        }
        if !chunk.put(new) {
            return None;
        }
    }
    Some(changed.into_values().collect())
}
