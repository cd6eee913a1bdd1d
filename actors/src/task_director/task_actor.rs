//! The TaskActor: one per task this node dispatches.

use super::queue::PendingQueue;
use crate::domain::Clock;
use crate::error::StoreError;
use crate::gather::flush_later;
use crate::lifecycle::new_lease_id;
use crate::robot_registry::RobotRegistryMsg;
use crate::robot_registry::model::ReservedSlots;
use crate::robot_session::RobotSessionMsg;
use crate::store::{Grant, PendingItem, Store};
use crate::transition_batcher::{BatcherMsg, LeaseRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::debug;

/// Ready items a task keeps loaded before it announces demand.
const READY_TARGET: usize = 1_000;

/// Longest wait for the batcher to write a lease. Past it the actor fails and its supervisor
/// rebuilds it from the store; a lease written after all reaches the robot by its session's
/// next store read, a WebSocket reconnect, or the lease's expiry.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The task actor.
#[derive(Debug)]
pub struct TaskActor;

/// `count` items for robot `robot_id`, delivered to its session.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub robot_id: i64,
    pub count: i64,
    /// The robot's session generation the registry counted the slots on (echoed back).
    pub generation: u64,
    pub session: ActorRef<RobotSessionMsg>,
}

/// Messages of a [`TaskActor`].
#[derive(Debug)]
pub enum TaskMsg {
    /// Lease items to robots as the registry granted; `lease` numbers the reservation, to
    /// settle it exactly once.
    Lease {
        lease: u64,
        grants: Vec<GrantRequest>,
    },
    /// Write the leases gathered so far (sent to itself, see [`crate::gather`]).
    LeaseGathered,
    /// Items of this task went back to PENDING.
    Requeued { items: Vec<PendingItem> },
    /// Timer: release items whose backoff ended.
    Tick,
}

impl Message for TaskMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct TaskArgs {
    pub task_id: i64,
    pub process_id: i64,
    pub priority: i64,
    pub lease_ttl: Duration,
    pub store: Store,
    pub registry: ActorRef<RobotRegistryMsg>,
    /// Writes leases (with robot actions, in one group commit).
    pub batcher: ActorRef<BatcherMsg>,
    pub clock: Clock,
    /// (this node's index, nodes alive): which stripe of the task's ids to lease from first.
    pub stripe: (usize, usize),
}

/// Running state.
#[derive(Debug)]
pub struct TaskState {
    args: TaskArgs,
    queue: PendingQueue,
    timer: JoinHandle<()>,
    /// Grants received and not yet written, and the numbers of the Leases they came in.
    gathered: Vec<GrantRequest>,
    gathered_leases: Vec<u64>,
}

impl TaskState {
    /// Scans the store until `want` items are ready or every range was read.
    async fn fill(&mut self, want: usize) -> Result<(), ActorProcessingErr> {
        while self.queue.ready_len() < want {
            let Some((from, to)) = self.queue.next_window() else {
                break;
            };
            let found = self
                .args
                .store
                .pending_in_range(self.args.task_id, from, to)
                .await?;
            self.queue.scanned(to, &found, self.args.clock.now());
        }
        Ok(())
    }

    /// Leases items for `grants` in one write, delivers them, and tells the registry which
    /// slots went unused.
    async fn lease(
        &mut self,
        myself: &ActorRef<TaskMsg>,
        leases: Vec<u64>,
        grants: Vec<GrantRequest>,
    ) -> Result<(), ActorProcessingErr> {
        let wanted: i64 = grants.iter().map(|g| g.count).sum();
        self.fill(wanted as usize).await?;
        let now = self.args.clock.now();
        let expires = now + self.args.lease_ttl.as_millis() as i64;
        let store_grants: Vec<Grant> = grants
            .iter()
            .map(|g| Grant {
                robot_id: g.robot_id,
                item_ids: self.queue.take(g.count as usize),
                lease_id: new_lease_id(g.robot_id),
                lease_expires_at: expires,
            })
            .collect();
        let task_id = self.args.task_id;
        let leased = self
            .args
            .batcher
            .call(
                |reply| {
                    BatcherMsg::Lease(LeaseRequest {
                        task_id,
                        grants: store_grants,
                        reply,
                    })
                },
                Some(LEASE_TIMEOUT),
            )
            .await?
            .success_or(StoreError::Database(format!(
                "the lease of task {task_id} timed out"
            )))??;
        let mut unused = Vec::new();
        for (grant, mut items) in grants.iter().zip(leased) {
            for item in &mut items {
                item.process_id = Some(self.args.process_id);
                item.leased_at = Some(now);
            }
            let got = items.len() as i64;
            if got < grant.count {
                unused.push(ReservedSlots {
                    robot_id: grant.robot_id,
                    session: grant.generation,
                    count: grant.count - got,
                });
            }
            if !items.is_empty() {
                // A session that ended meanwhile loses nothing: the lease stays in the
                // store and is released when the robot is declared lost.
                crate::mailbox::tell(&grant.session, RobotSessionMsg::Deliver { items });
            }
        }
        debug!(task_id = self.args.task_id, wanted, ?unused, "leased");
        // Settle before anything else can fail: the registry counts exactly what was leased.
        let settled = self.queue.ready_len();
        self.args
            .registry
            .send_message(RobotRegistryMsg::GrantsSettled {
                task_id: self.args.task_id,
                leases,
                unused,
                pending: settled as i64,
            })?;
        self.fill(READY_TARGET).await?;
        if self.queue.ready_len() > settled {
            self.announce(myself)?;
        }
        if self.queue.is_exhausted() {
            // Leases still queued here are dropped with the actor; the registry gives their
            // slots back when it hears the actor is gone.
            myself.stop(Some("no pending items".into()));
        }
        Ok(())
    }

    fn announce(&self, myself: &ActorRef<TaskMsg>) -> Result<(), ActorProcessingErr> {
        self.args
            .registry
            .send_message(RobotRegistryMsg::TaskDemand {
                task_id: self.args.task_id,
                process_id: self.args.process_id,
                priority: self.args.priority,
                pending: self.queue.ready_len() as i64,
                actor: myself.clone(),
            })?;
        Ok(())
    }
}

impl Actor for TaskActor {
    type Msg = TaskMsg;
    type State = TaskState;
    type Arguments = TaskArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ranges = args.store.task_id_ranges(args.task_id).await?;
        let state_stripe = args.stripe;
        let timer = myself.send_interval(Duration::from_millis(250), || TaskMsg::Tick);
        let mut state = TaskState {
            args,
            queue: PendingQueue::striped(
                ranges,
                state_stripe.0,
                state_stripe.1,
                crate::store::CHUNK_ITEMS,
            ),
            timer,
            gathered: Vec::new(),
            gathered_leases: Vec::new(),
        };
        state.fill(READY_TARGET).await?;
        state.announce(&myself)?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TaskMsg::Lease { lease, grants } => {
                // Grants that arrive while a lease is written go out together in the next one.
                if state.gathered_leases.is_empty() {
                    flush_later(&myself, Duration::ZERO, || TaskMsg::LeaseGathered);
                }
                state.gathered.extend(grants);
                state.gathered_leases.push(lease);
            }
            TaskMsg::LeaseGathered => {
                let grants = std::mem::take(&mut state.gathered);
                let leases = std::mem::take(&mut state.gathered_leases);
                state.lease(&myself, leases, grants).await?;
            }
            TaskMsg::Requeued { items } => {
                state.queue.push_returned(&items, state.args.clock.now());
                state.announce(&myself)?;
            }
            TaskMsg::Tick => {
                if state.queue.release_due(state.args.clock.now()) > 0 {
                    state.announce(&myself)?;
                } else if state.queue.is_exhausted() {
                    myself.stop(Some("no pending items".into()));
                }
            }
        }
        Ok(())
    }
}
