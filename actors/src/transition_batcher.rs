//! Group commit for robot actions: requests that arrive within a couple of milliseconds are read
//! together (from the node's chunk cache when it is warm), planned one by one, and written in one
//! transaction, so a busy fleet costs one or two database round trips per batch instead of three
//! per item. Several requests about one item in a
//! batch (a robot with instant work sends `started` and `completed` back to back) are planned in
//! the order they arrived, each on the state the one before left, and the item is written once,
//! from its stored state to the last. If the batch loses a race (a sweep changed one of its
//! items), each request is retried alone, in order.
//!
//! The batcher is also the node's one writer of leases: a TaskActor's grants join the next
//! batch, so the completion that frees a robot's slot and the lease that refills it usually
//! share a transaction. A dispatch round no longer waits behind robot actions for the chunk
//! lock, and a busy node commits once per round instead of twice.

use crate::domain::{Clock, ItemStatus, Millis};
use crate::error::StoreError;
use crate::error::{DispatchError, Unavailable};
use crate::gather::flush_later;
use crate::lifecycle::{
    ItemState, Plan, Policy, PolicyDefaults, RobotAction, TransitionError, action_name,
    plan_robot_action,
};
use crate::retry::Backoff;
use crate::robot_registry::RobotRegistryMsg;
use crate::store::{Grant, LeasedItem, PendingItem, Store};
use crate::task_director::TaskDirectorMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef, Message, RpcReplyPort};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Largest batch written in one transaction. A batch's cost is mostly per transaction and per
/// chunk, not per item: with 100 WebSocket robots, 1,024 instead of 256 cut the writer's busy
/// time for 100,000 items from 6.4 s to 5.2 s (batches of 309 changes in 8.0 ms instead of 199
/// in 6.4 ms).
const MAX_BATCH: usize = 1_024;

/// How long a task's dispatch policy is reused before it is read again: a process's new
/// settings reach robot actions within this time.
const POLICY_TTL: Duration = Duration::from_secs(2);

/// The batcher actor.
#[derive(Debug)]
pub struct TransitionBatcher;

/// A robot's request about one of its items.
#[derive(Debug)]
pub struct ActRequest {
    pub robot_id: i64,
    pub item_id: i64,
    pub lease: Option<String>,
    pub action: RobotAction,
    /// A final item refuses every action, a repeat of the one that finished it too.
    pub once: bool,
    pub reply: RpcReplyPort<Result<ItemState, DispatchError>>,
}

impl ActRequest {
    /// Plans this request on `old`.
    fn plan(&self, old: &ItemState, policy: &Policy, now: Millis) -> Result<Plan, TransitionError> {
        if self.once && old.status.is_final() && old.robot_id == Some(self.robot_id) {
            return Err(TransitionError::Illegal {
                item: old.id,
                from: old.status,
                action: action_name(&self.action),
            });
        }
        plan_robot_action(
            old,
            self.robot_id,
            self.lease.as_deref(),
            &self.action,
            policy,
            now,
        )
    }
}

/// A task's grants, to lease in the next batch.
#[derive(Debug)]
pub struct LeaseRequest {
    pub task_id: i64,
    pub grants: Vec<Grant>,
    /// What each grant got (items no longer PENDING are skipped).
    pub reply: RpcReplyPort<Result<Vec<Vec<LeasedItem>>, StoreError>>,
}

/// Messages of the [`TransitionBatcher`].
#[derive(Debug)]
pub enum BatcherMsg {
    /// Hands the batcher the director to tell about items that went back to PENDING.
    AttachDirector { director: ActorRef<TaskDirectorMsg> },
    /// Apply a robot's action; the reply carries the item's new state or why not.
    Act(ActRequest),
    /// Lease items of a task in the next batch.
    Lease(LeaseRequest),
    /// Write what has gathered.
    Flush,
}

impl Message for BatcherMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct BatcherArgs {
    pub store: Store,
    pub clock: Clock,
    pub defaults: PolicyDefaults,
    pub registry: ActorRef<RobotRegistryMsg>,
    /// How long a batch gathers before it is written (zero: it holds what arrived while the
    /// previous batch was written, see [`crate::gather`]).
    pub delay: Duration,
}

/// Running state.
#[derive(Debug)]
pub struct BatcherState {
    args: BatcherArgs,
    director: Option<ActorRef<TaskDirectorMsg>>,
    gathered: Vec<ActRequest>,
    leases: Vec<LeaseRequest>,
    flush_scheduled: bool,
    /// Recently read policies by task, with when they were read.
    policies: HashMap<i64, (Instant, Policy)>,
}

/// Tells the registry and the director what a transition changed.
pub fn notify_transition(
    registry: &ActorRef<RobotRegistryMsg>,
    director: Option<&ActorRef<TaskDirectorMsg>>,
    old: &ItemState,
    new: &ItemState,
) {
    let in_flight = |s: ItemStatus| matches!(s, ItemStatus::Assigned | ItemStatus::Started);
    if in_flight(old.status)
        && !in_flight(new.status)
        && let Some(robot_id) = old.robot_id
    {
        crate::mailbox::tell(
            registry,
            RobotRegistryMsg::ItemLeft {
                robot_id,
                item_id: old.id,
                lease_id: old.lease_id.clone(),
            },
        );
    }
    if new.status == ItemStatus::Pending
        && let Some(director) = director
    {
        crate::mailbox::tell(
            director,
            TaskDirectorMsg::Requeued {
                task_id: new.task_id,
                items: vec![PendingItem {
                    id: new.id,
                    not_before: new.not_before,
                }],
            },
        );
    }
}

impl BatcherState {
    fn schedule_flush(&mut self, myself: &ActorRef<BatcherMsg>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            flush_later(myself, self.args.delay, || BatcherMsg::Flush);
        }
    }

    /// The policies of `task_ids`, read again once older than [`POLICY_TTL`].
    async fn policies(
        &mut self,
        task_ids: impl IntoIterator<Item = i64>,
    ) -> Result<HashMap<i64, Policy>, StoreError> {
        let mut out = HashMap::new();
        for task_id in task_ids {
            if out.contains_key(&task_id) {
                continue;
            }
            let policy = match self.policies.get(&task_id) {
                Some((read_at, policy)) if read_at.elapsed() < POLICY_TTL => *policy,
                _ => {
                    let policy = self
                        .args
                        .store
                        .task_policy(task_id, self.args.defaults)
                        .await?;
                    self.policies.insert(task_id, (Instant::now(), policy));
                    policy
                }
            };
            out.insert(task_id, policy);
        }
        self.policies
            .retain(|_, (read_at, _)| read_at.elapsed() < POLICY_TTL);
        Ok(out)
    }

    /// Applies one request alone, re-reading and re-planning while it loses races.
    async fn act_alone(&self, request: &ActRequest) -> Result<ItemState, DispatchError> {
        let store = &self.args.store;
        let written = Backoff::REPLAN
            .run(|_| async {
                let old = store
                    .item_state(request.item_id)
                    .await?
                    .ok_or(DispatchError::ItemNotFound(request.item_id))?;
                let policy = store.task_policy(old.task_id, self.args.defaults).await?;
                let now = self.args.clock.now();
                let new = match request.plan(&old, &policy, now)? {
                    Plan::Unchanged => return Ok(Some(old)),
                    Plan::Write(new) => *new,
                };
                if !store
                    .apply_transitions(&[(old.clone(), new.clone())], now)
                    .await?
                {
                    return Ok(None);
                }
                notify_transition(&self.args.registry, self.director.as_ref(), &old, &new);
                Ok::<_, DispatchError>(Some(new))
            })
            .await?;
        written.ok_or_else(|| Unavailable::Contended(request.item_id).into())
    }

    async fn flush(&mut self) {
        let batch: Vec<ActRequest> = std::mem::take(&mut self.gathered);
        let mut leases: Vec<LeaseRequest> = std::mem::take(&mut self.leases);
        let leftovers = match self.write_batch(batch, &mut leases).await {
            Ok(leftovers) => leftovers,
            Err((requests, err)) => {
                for request in requests {
                    crate::mailbox::answer(
                        request.reply,
                        Err(Unavailable::Batch(err.clone()).into()),
                    );
                }
                Vec::new()
            }
        };
        // Leases the batch did not write (it failed or lost a race) go on their own.
        for lease in leases {
            let now = self.args.clock.now();
            let outcome = self
                .args
                .store
                .assign_items(lease.task_id, &lease.grants, now)
                .await;
            crate::mailbox::answer(lease.reply, outcome);
        }
        for request in leftovers {
            let outcome = self.act_alone(&request).await;
            crate::mailbox::answer(request.reply, outcome);
        }
    }

    /// Writes what it can in one transaction; returns the requests to retry alone.
    /// `leases` that it writes are answered and taken out; the rest are left for the caller.
    async fn write_batch(
        &mut self,
        requests: Vec<ActRequest>,
        leases: &mut Vec<LeaseRequest>,
    ) -> Result<Vec<ActRequest>, (Vec<ActRequest>, StoreError)> {
        if requests.is_empty() && leases.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.args.store.clone();
        let ids: Vec<i64> = requests.iter().map(|r| r.item_id).collect();
        let states = match store.item_states(&ids).await {
            Ok(states) => states,
            Err(err) => return Err((requests, err)),
        };
        let task_ids: Vec<i64> = states.iter().map(|s| s.task_id).collect();
        let policies = match self.policies(task_ids).await {
            Ok(p) => p,
            Err(err) => return Err((requests, err)),
        };
        let now = self.args.clock.now();
        let Planned {
            changes,
            held,
            unplanned,
        } = plan_batch(requests, states, &policies, now);
        let retry_alone = |held: Vec<(ActRequest, Result<ItemState, DispatchError>)>| {
            unplanned
                .into_iter()
                .chain(held.into_iter().map(|(request, _)| request))
                .collect::<Vec<_>>()
        };
        let grants: Vec<(i64, Vec<Grant>)> = leases
            .iter()
            .map(|l| (l.task_id, l.grants.clone()))
            .collect();
        let started = Instant::now();
        let outcome = store.write_items_apart(changes.clone(), grants, now).await;
        tracing::debug!(
            changes = changes.len(),
            leases = leases.len(),
            micros = started.elapsed().as_micros() as u64,
            written = matches!(outcome, Ok(Some(_))),
            "batch written"
        );
        match outcome {
            Ok(Some(leased)) => {
                for (old, new) in &changes {
                    notify_transition(&self.args.registry, self.director.as_ref(), old, new);
                }
                for (request, outcome) in held {
                    crate::mailbox::answer(request.reply, outcome);
                }
                for (lease, got) in leases.drain(..).zip(leased) {
                    crate::mailbox::answer(lease.reply, Ok(got));
                }
                Ok(retry_alone(Vec::new()))
            }
            Ok(None) => Ok(retry_alone(held)),
            Err(err) => Err((retry_alone(held), err)),
        }
    }
}

/// A batch's requests planned on the items' stored states.
struct Planned {
    /// One change per item: from the stored state to the last planned one.
    changes: Vec<(ItemState, ItemState)>,
    /// Requests whose answer rests on this batch's write: every writer, and any later request
    /// about an item a writer touched. They are answered once the batch commits, or retried
    /// alone, in order, if it does not.
    held: Vec<(ActRequest, Result<ItemState, DispatchError>)>,
    /// Requests to decide alone, on a fresh read.
    unplanned: Vec<ActRequest>,
}

/// Plans each request in order on the state the requests before it leave; answers at once
/// those that need no write.
fn plan_batch(
    requests: Vec<ActRequest>,
    states: Vec<ItemState>,
    policies: &HashMap<i64, Policy>,
    now: Millis,
) -> Planned {
    // Each item's state as the requests planned so far leave it.
    let mut current: HashMap<i64, ItemState> = states.into_iter().map(|s| (s.id, s)).collect();
    let stored = current.clone();
    // Items a request in this batch writes.
    let mut written = HashSet::new();
    // Requests whose answer rests on this batch's write: every writer, and any later request
    // about an item a writer touched. They are answered once the batch commits, or retried
    // alone, in order, if it does not.
    let mut held: Vec<(ActRequest, Result<ItemState, DispatchError>)> = Vec::new();
    let mut unplanned = Vec::new();
    for request in requests {
        let Some(old) = current.get(&request.item_id) else {
            crate::mailbox::answer(
                request.reply,
                Err(DispatchError::ItemNotFound(request.item_id)),
            );
            continue;
        };
        let Some(policy) = policies.get(&old.task_id) else {
            unplanned.push(request);
            continue;
        };
        let plan = request.plan(old, policy, now);
        let outcome = match plan {
            // Refused on the node's cached copy of an item no request of this batch
            // writes: another node may have moved it on since (a robot that changed node
            // reports with the lease it was given there). Decided again alone, on a fresh
            // read, before the robot hears a refusal.
            Err(_) if !written.contains(&request.item_id) => {
                unplanned.push(request);
                continue;
            }
            Err(err) => Err(err.into()),
            Ok(Plan::Unchanged) => Ok(old.clone()),
            Ok(Plan::Write(new)) => {
                written.insert(new.id);
                current.insert(new.id, (*new).clone());
                held.push((request, Ok(*new)));
                continue;
            }
        };
        if written.contains(&request.item_id) {
            held.push((request, outcome));
        } else {
            crate::mailbox::answer(request.reply, outcome);
        }
    }
    // One change per item: from the stored state to the last planned one.
    let changes: Vec<(ItemState, ItemState)> = written
        .iter()
        .filter_map(|id| Some((stored.get(id)?.clone(), current.get(id)?.clone())))
        .collect();
    Planned {
        changes,
        held,
        unplanned,
    }
}

impl Actor for TransitionBatcher {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(BatcherState {
            args,
            director: None,
            gathered: Vec::new(),
            leases: Vec::new(),
            flush_scheduled: false,
            policies: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BatcherMsg::AttachDirector { director } => state.director = Some(director),
            BatcherMsg::Act(request) => {
                state.gathered.push(request);
                if state.gathered.len() >= MAX_BATCH {
                    state.flush().await;
                } else {
                    state.schedule_flush(&myself);
                }
            }
            BatcherMsg::Lease(lease) => {
                state.leases.push(lease);
                state.schedule_flush(&myself);
            }
            BatcherMsg::Flush => {
                state.flush_scheduled = false;
                state.flush().await;
            }
        }
        Ok(())
    }
}
