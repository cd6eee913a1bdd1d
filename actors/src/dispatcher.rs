//! The handle the web layer and the node use to reach dispatch: it starts the registry and the
//! director, and turns robot requests into store transitions plus the messages that keep the
//! actors' view of load and pending work current. Cheap to clone.

use crate::cluster_view::ClusterView;
use crate::domain::{Clock, Millis, Robot, RobotStatus, Task};
use crate::error::StoreError;
use crate::hints::{Hint, Hints};
use crate::ingest::{IngestError, StagedUpload};
use crate::lifecycle::{ItemState, RobotAction, TransitionError};
use crate::limits::{PayloadError, PayloadLimits};
use crate::recovery::{self, PolicyDefaults};
use crate::robot_registry::{RobotLoad, RobotRegistryMsg};
use crate::robot_session::ws::WsLink;
use crate::robot_session::{RobotSessionMsg, WsAttach};
use crate::store::{EventKind, LeasedItem, RobotPatch, Store};
use crate::supervisor::{
    DispatchHealth, DispatchSupervisor, Parts, SharedParts, SupervisorArgs, SupervisorMsg,
};
use crate::task_director::TaskDirectorMsg;
use crate::transition_batcher::{ActRequest, BatcherMsg};
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Timers and identity of a node's dispatch.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub node_id: String,
    /// The HTTP address this node advertises in its cluster row.
    pub http: String,
    /// A node of the cluster without a heartbeat for this long is dead (its robots are
    /// released, its housekeeping role moves).
    pub dead_after: Duration,
    /// A robot silent this long is lost.
    pub pulse_timeout: Duration,
    /// Lease length unless the process overrides it.
    pub lease_ttl: Duration,
    /// How often silent robots and expired leases are looked for.
    pub sweep_period: Duration,
    /// First retry delay after an application failure (doubles per attempt).
    pub backoff_base: Duration,
    /// How long a dispatch round gathers changes before it writes.
    pub dispatch_delay: Duration,
    /// Items a WebSocket robot holds in standby beyond its capacity, pushed the moment it
    /// reports one finished (0: none).
    pub ws_standby: i64,
    /// How often robot loads are recounted from the store (a backstop: a correction is a bug).
    pub recount_period: Duration,
    /// What a robot may report about an item (observation, output).
    pub payload_limits: PayloadLimits,
    /// A staged upload untouched this long was abandoned (the upload sweeper deletes it).
    pub stale_upload_after: Duration,
    /// Where dispatch reads the time (leases, pulses, backoff).
    pub clock: Clock,
    /// How this node hints other nodes of a cluster ([`Hints::alone`] for none).
    pub hints: Hints,
}

/// Why a dispatch request failed.
#[derive(Debug, Error)]
pub enum DispatchError {
    #[error("item {0} not found")]
    ItemNotFound(i64),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dispatch is unavailable: {0}")]
    Unavailable(String),
    #[error("{ROBOT_DISABLED}")]
    RobotDisabled,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a robot is told when it tries to make itself ACTIVE after an administrator set it
/// INACTIVE.
pub const ROBOT_DISABLED: &str = "an administrator set this robot INACTIVE; it gets no work \
                                  until an administrator sets it ACTIVE";

/// Entry point to the dispatch actors. Cheap to clone; every call reaches the actors running
/// now, so it follows a restart by the [`DispatchSupervisor`].
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    parts: SharedParts,
    health: Arc<DispatchHealth>,
    supervisor: ActorRef<SupervisorMsg>,
    config: DispatchConfig,
    view: Arc<ClusterView>,
}

impl Dispatcher {
    /// Starts the supervisor, which starts the registry, batcher, director and upload sweeper,
    /// rebuilding task queues from the store.
    pub async fn start(store: Store, config: DispatchConfig) -> Result<Dispatcher, DispatchError> {
        store.set_shard(&config.node_id);
        let parts: SharedParts = Arc::default();
        let health = Arc::new(DispatchHealth::default());
        let view = Arc::new(ClusterView::new(&config.node_id));
        let (supervisor, _) = Actor::spawn(
            None,
            DispatchSupervisor,
            SupervisorArgs {
                store: store.clone(),
                config: config.clone(),
                parts: parts.clone(),
                health: health.clone(),
                view: Arc::clone(&view),
            },
        )
        .await
        .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        Ok(Dispatcher {
            store,
            parts,
            health,
            supervisor,
            config,
            view,
        })
    }

    /// What this node knows of the cluster (its incarnation, whether it leads housekeeping).
    pub fn cluster(&self) -> &ClusterView {
        &self.view
    }

    /// The actors dispatch runs on now.
    fn parts(&self) -> Result<Parts, DispatchError> {
        self.parts
            .read()
            .ok()
            .and_then(|p| p.clone())
            .ok_or_else(|| DispatchError::Unavailable("dispatch is not running".into()))
    }

    /// `Some((component, reason))` while dispatch is down (a part failed and is restarting).
    pub fn health_problem(&self) -> Option<(String, String)> {
        self.health.problem()
    }

    /// How often dispatch was restarted after a failure since the node started.
    pub fn restarts(&self) -> u64 {
        self.health.restarts()
    }

    /// Test hook: makes the robot registry fail as a bug would, to exercise the supervisor.
    pub fn fail_registry_for_test(&self) {
        if let Ok(parts) = self.parts() {
            let _ = parts.registry.send_message(RobotRegistryMsg::Fail {
                reason: "failure injected by a test".into(),
            });
        }
    }

    /// Node configuration of dispatch.
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    fn defaults(&self) -> PolicyDefaults {
        PolicyDefaults {
            lease_ttl: self.config.lease_ttl,
            backoff_base: self.config.backoff_base,
        }
    }

    /// Records a pulse from `robot` and returns its session (started if needed). A robot with a
    /// session is served from the pulse board: its request costs no registry message, which at
    /// thousands of robot requests a second kept the registry's mailbox busy with pulses.
    pub async fn connect(&self, robot: &Robot) -> Result<ActorRef<RobotSessionMsg>, DispatchError> {
        let parts = self.parts()?;
        if let Some(session) = parts.pulses.session(robot.id) {
            self.pulse(robot.id);
            return Ok(session);
        }
        // A robot without a session here has its load counted now, outside the registry.
        let counted_at = self.config.clock.now();
        let in_flight = self.store.robot_in_flight_count(robot.id).await?;
        self.connect_counted(robot, in_flight, counted_at).await
    }

    /// The second half of [`Dispatcher::connect`]: opens `robot`'s session with `in_flight`
    /// items held as read from the store at `counted_at` (the registry reads again if it
    /// released the robot's items since).
    pub async fn connect_counted(
        &self,
        robot: &Robot,
        in_flight: i64,
        counted_at: Millis,
    ) -> Result<ActorRef<RobotSessionMsg>, DispatchError> {
        let parts = self.parts()?;
        let robot = robot.clone();
        parts
            .registry
            .call(
                |reply| RobotRegistryMsg::Connect {
                    robot,
                    in_flight,
                    counted_at,
                    reply,
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?
            .success_or(DispatchError::Unavailable(
                "robot registry timed out".into(),
            ))
    }

    /// Items leased to `robot` not yet handed out, waiting up to `wait` for some to arrive.
    pub async fn claim(
        &self,
        robot: &Robot,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LeasedItem>, DispatchError> {
        // A claim is the robot's pulse: one parked longer than the pulse timeout had the robot
        // judged silent while it waited (503, then INACTIVE for good). It answers (empty, if
        // nothing came) within half the timeout, and the robot's next claim pulses.
        let wait = wait.min(self.config.pulse_timeout / 2);
        let session = self.connect(robot).await?;
        session
            .call(
                |reply| RobotSessionMsg::Claim { max, wait, reply },
                Some(wait + CALL_TIMEOUT),
            )
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?
            .success_or(DispatchError::Unavailable("robot session timed out".into()))
    }

    /// Hands a robot's WebSocket to its session, which pushes items over it from now on.
    pub async fn attach_ws(&self, robot: &Robot, link: WsLink) -> Result<(), DispatchError> {
        let session = self.connect(robot).await?;
        session
            .send_message(RobotSessionMsg::AttachWs(Box::new(WsAttach {
                robot: robot.clone(),
                link,
                dispatcher: self.clone(),
                ping_every: self.config.pulse_timeout / 3,
            })))
            .map_err(|e| DispatchError::Unavailable(e.to_string()))
    }

    /// A sign of life from a robot whose session exists (a WebSocket frame). Noted on the pulse
    /// board, not sent to the registry: the registry reads the board at every sweep.
    pub fn pulse(&self, robot_id: i64) {
        if let Ok(parts) = self.parts() {
            parts.pulses.record(robot_id, self.config.clock.now());
        }
    }

    /// The robot is ready for work: it becomes ACTIVE if it was not, and `capacity`, when
    /// given, narrows how many items it is sent at once (never above its configured capacity).
    pub async fn ready(&self, robot: &Robot, capacity: Option<i64>) -> Result<(), DispatchError> {
        let mut robot = self
            .store
            .robot(robot.id)
            .await?
            .ok_or(DispatchError::Unavailable(
                "the robot no longer exists".into(),
            ))?;
        if robot.disabled_by_admin {
            return Err(DispatchError::RobotDisabled);
        }
        if robot.status != RobotStatus::Active {
            let patch = RobotPatch {
                status: Some(RobotStatus::Active),
                ..RobotPatch::default()
            };
            if let Some(updated) = self.store.update_robot(robot.id, &patch).await? {
                robot = updated;
            }
        }
        self.parts()?
            .registry
            .send_message(RobotRegistryMsg::Ready {
                robot,
                window: capacity,
            })
            .map_err(|e| DispatchError::Unavailable(e.to_string()))
    }

    /// Applies a robot's action to one of its items; returns the item's new state. Actions
    /// arriving together are written together (see [`crate::transition_batcher`]).
    pub async fn act(
        &self,
        robot_id: i64,
        item_id: i64,
        lease: Option<&str>,
        action: &RobotAction,
    ) -> Result<ItemState, DispatchError> {
        self.send_act(robot_id, item_id, lease, action, false).await
    }

    /// As [`Dispatcher::act`], but an item already final refuses every action, a repeat of the
    /// one that finished it too (`TransitionError::Illegal`): the prototype's API answered 403
    /// to any change of a finished item.
    pub async fn act_once(
        &self,
        robot_id: i64,
        item_id: i64,
        action: &RobotAction,
    ) -> Result<ItemState, DispatchError> {
        self.send_act(robot_id, item_id, None, action, true).await
    }

    async fn send_act(
        &self,
        robot_id: i64,
        item_id: i64,
        lease: Option<&str>,
        action: &RobotAction,
        once: bool,
    ) -> Result<ItemState, DispatchError> {
        self.config.payload_limits.check(action)?;
        let lease = lease.map(str::to_string);
        let action = action.clone();
        self.parts()?
            .batcher
            .call(
                |reply| {
                    BatcherMsg::Act(ActRequest {
                        robot_id,
                        item_id,
                        lease,
                        action,
                        once,
                        reply,
                    })
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?
            .success_or(DispatchError::Unavailable(
                "transition batcher timed out".into(),
            ))?
    }

    /// A task was uploaded or reopened: start dispatching it, here and (by a hint) on the
    /// other nodes, whose directors would find it within a second anyway.
    pub fn task_ready(&self, task_id: i64) {
        // While dispatch restarts, the new director finds the task in the store.
        if let Ok(parts) = self.parts() {
            let _ = parts
                .director
                .send_message(TaskDirectorMsg::Activate { task_id });
        }
        self.config.hints.send(Hint::TaskReady { task_id });
    }

    /// Commits a staged upload as a task of `process_id` and starts dispatching it on every
    /// node.
    pub async fn commit_upload(
        &self,
        staged: StagedUpload,
        process_id: i64,
    ) -> Result<Task, IngestError> {
        let task = staged.commit(&self.store, process_id).await?;
        self.task_ready(task.id);
        Ok(task)
    }

    /// Cancels a task: dispatch stops and unstarted items go back to PENDING. `false` when the
    /// task was not dispatchable.
    pub async fn cancel(&self, task_id: i64) -> Result<bool, DispatchError> {
        let now = self.config.clock.now();
        if !self.store.cancel_task(task_id, now).await? {
            return Ok(false);
        }
        let parts = self.parts()?;
        let _ = parts
            .director
            .send_message(TaskDirectorMsg::Cancelled { task_id });
        let released =
            recovery::release_unstarted_of_task(&self.store, task_id, self.defaults(), now).await?;
        for (robot_id, count) in released.left_flight {
            let _ = parts
                .registry
                .send_message(RobotRegistryMsg::ItemsLeftFlight { robot_id, count });
        }
        let mut elsewhere = Vec::new();
        for (robot_id, item_ids) in released.revoked {
            if parts.pulses.session(robot_id).is_none() {
                elsewhere.push((robot_id, item_ids));
                continue;
            }
            let _ = parts
                .registry
                .send_message(RobotRegistryMsg::Revoke { robot_id, item_ids });
        }
        // Robots with a session on another node: that node takes the items from them.
        crate::hints::tell_items_released(
            &self.store,
            &self.config.hints,
            &self.config.node_id,
            &elsewhere,
            self.config.clock.now(),
        )
        .await;
        self.config.hints.send(Hint::TaskCancelled { task_id });
        Ok(true)
    }

    /// Puts a task's FAILED and ABANDONED items back to PENDING; returns how many.
    pub async fn retry_failed(&self, task_id: i64) -> Result<i64, DispatchError> {
        let n = self
            .store
            .retry_failed(task_id, self.config.clock.now())
            .await?;
        if n > 0 {
            self.task_ready(task_id);
        }
        Ok(n)
    }

    /// Changes a robot's settings (status, capacity, processes, name): written to the store,
    /// then this node's registry hears it now and the other nodes of a cluster through an event
    /// row (and a hint). `None` when the robot does not exist.
    pub async fn update_robot(
        &self,
        robot_id: i64,
        patch: &RobotPatch,
    ) -> Result<Option<Robot>, DispatchError> {
        let Some(robot) = self.store.update_robot(robot_id, patch).await? else {
            return Ok(None);
        };
        if let Ok(parts) = self.parts() {
            let _ = parts.registry.send_message(RobotRegistryMsg::RobotChanged {
                robot: robot.clone(),
            });
        }
        self.publish(EventKind::RobotChanged, robot.id).await;
        Ok(Some(robot))
    }

    /// Deletes a robot: its session ends wherever it is and what it held goes back. `false`
    /// when it did not exist.
    pub async fn delete_robot(&self, robot_id: i64) -> Result<bool, DispatchError> {
        if !self.store.delete_robot(robot_id).await? {
            return Ok(false);
        }
        self.robot_revoked(robot_id).await;
        Ok(true)
    }

    /// Gives a robot a new token (its hash): the old one stops working on every node, the
    /// robot's session ends and what it held goes back. `None` when it does not exist.
    pub async fn replace_robot_token(
        &self,
        robot_id: i64,
        token_hash: &str,
    ) -> Result<Option<Robot>, DispatchError> {
        let Some(robot) = self.store.replace_robot_token(robot_id, token_hash).await? else {
            return Ok(None);
        };
        self.robot_revoked(robot_id).await;
        Ok(Some(robot))
    }

    /// A robot was deleted or its token rotated (already written): its session here ends and
    /// its items go back; other nodes end theirs when they read the event row.
    async fn robot_revoked(&self, robot_id: i64) {
        if let Ok(parts) = self.parts() {
            let _ = parts.registry.send_message(RobotRegistryMsg::RobotRevoked {
                robot_id,
                before: None,
            });
        }
        self.publish(EventKind::RobotRevoked, robot_id).await;
    }

    /// Tells the other nodes; if the store does not take it, they learn of it when their token
    /// cache expires or the robot reconnects.
    async fn publish(&self, kind: EventKind, robot_id: i64) {
        let at = self.config.clock.now();
        if let Err(err) = self
            .store
            .publish_event(kind, robot_id, &[], &self.config.node_id, at)
            .await
        {
            tracing::warn!(error = %err, robot_id, ?kind, "could not tell the other nodes");
            return;
        }
        self.config.hints.send(Hint::Events);
    }

    /// Loads of robots connected to this node.
    pub async fn loads(&self) -> Result<Vec<RobotLoad>, DispatchError> {
        self.parts()?
            .registry
            .call(
                |reply| RobotRegistryMsg::Loads { reply },
                Some(CALL_TIMEOUT),
            )
            .await
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?
            .success_or(DispatchError::Unavailable(
                "robot registry timed out".into(),
            ))
    }

    /// First step of a stop: robots on a WebSocket are told to reconnect (close code 1012),
    /// their standby items go back to the queue, and parked REST claims are answered, so the
    /// HTTP server's grace is not spent waiting on them.
    pub async fn close_robot_connections(&self) {
        if let Ok(parts) = self.parts() {
            let _ = parts
                .registry
                .call(
                    |reply| RobotRegistryMsg::Shutdown { reply },
                    Some(Duration::from_secs(10)),
                )
                .await;
        }
    }

    /// Stops the actors (sessions with them); leases stay in the store. Dispatch stops first,
    /// the batcher last, so writes already asked for are made.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Shutdown { reply },
                Some(Duration::from_secs(20)),
            )
            .await;
        self.supervisor.stop(None);
    }
}
