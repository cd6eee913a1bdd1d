//! Taking items back: from a robot that was lost, drained or revoked, and from expired leases.
//! Each plans with [`crate::lifecycle::plan_lost`] and writes with compare-and-set, re-reading on
//! conflict, so a completion racing a sweep is never overwritten.

use crate::domain::{ItemStatus, Millis};
use crate::error::StoreError;
use crate::lifecycle::{ItemState, Policy, PolicyDefaults, plan_lost};
use crate::retry::Backoff;
use crate::store::{PendingItem, Store};
use std::collections::{BTreeMap, HashMap};

/// What a release handed back: PENDING items per task, and items that left flight per robot
/// (counted, and by id so the robot's session can tell the robot).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Released {
    pub requeued: BTreeMap<i64, Vec<PendingItem>>,
    pub left_flight: BTreeMap<i64, i64>,
    pub revoked: BTreeMap<i64, Vec<i64>>,
}

impl Released {
    fn record(&mut self, old: &ItemState, new: &ItemState) {
        if let Some(robot) = old.robot_id {
            *self.left_flight.entry(robot).or_default() += 1;
            self.revoked.entry(robot).or_default().push(old.id);
        }
        if new.status == ItemStatus::Pending {
            self.requeued
                .entry(new.task_id)
                .or_default()
                .push(PendingItem {
                    id: new.id,
                    not_before: new.not_before,
                });
        }
    }
}

/// Looks up (and caches) the policy of each task's process.
pub async fn policies(
    store: &Store,
    task_ids: impl IntoIterator<Item = i64>,
    defaults: PolicyDefaults,
) -> Result<HashMap<i64, Policy>, StoreError> {
    let mut out = HashMap::new();
    for task_id in task_ids {
        if out.contains_key(&task_id) {
            continue;
        }
        out.insert(task_id, store.task_policy(task_id, defaults).await?);
    }
    Ok(out)
}

/// Releases what `robot_id` holds: everything in flight, or with `only_unstarted` just the
/// ASSIGNED items (a drain: started items may still finish).
pub async fn release_robot(
    store: &Store,
    robot_id: i64,
    only_unstarted: bool,
    defaults: PolicyDefaults,
    now: Millis,
) -> Result<Released, StoreError> {
    release_with(store, defaults, now, false, || async {
        let items = store.robot_items_in_flight(robot_id).await?;
        Ok(items
            .into_iter()
            .filter(|i| !only_unstarted || i.status == ItemStatus::Assigned)
            .collect())
    })
    .await
}

/// Treats every item whose lease expired like an item of a lost robot.
pub async fn expire_leases(
    store: &Store,
    defaults: PolicyDefaults,
    now: Millis,
) -> Result<Released, StoreError> {
    release_with(store, defaults, now, true, || {
        store.expired_leases(now, 1_000)
    })
    .await
}

/// Returns the ASSIGNED items of a task to PENDING (a cancelled task stops at what started).
pub async fn release_unstarted_of_task(
    store: &Store,
    task_id: i64,
    defaults: PolicyDefaults,
    now: Millis,
) -> Result<Released, StoreError> {
    release_with(store, defaults, now, false, || {
        store.assigned_items_of_task(task_id)
    })
    .await
}

async fn release_with<F, Fut>(
    store: &Store,
    defaults: PolicyDefaults,
    now: Millis,
    lease_expired: bool,
    load: F,
) -> Result<Released, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Vec<ItemState>, StoreError>>,
{
    let released = Backoff::REPLAN
        .run(|_| async {
            let items = load().await?;
            let task_ids: Vec<i64> = items.iter().map(|i| i.task_id).collect();
            let policies = policies(store, task_ids, defaults).await?;
            let changes: Vec<(ItemState, ItemState)> = items
                .into_iter()
                .filter_map(|old| {
                    let policy = policies.get(&old.task_id)?;
                    let new = plan_lost(&old, policy, lease_expired, now)?;
                    Some((old, new))
                })
                .collect();
            if !store.apply_transitions(&changes, now).await? {
                return Ok(None);
            }
            let mut released = Released::default();
            for (old, new) in &changes {
                released.record(old, new);
            }
            Ok::<_, StoreError>(Some(released))
        })
        .await?;
    released
        .ok_or_else(|| StoreError::Database("could not release items: they kept changing".into()))
}
