//! The handle the web layer and the node use to reach dispatch: it starts the registry and the
//! director, and turns robot requests into store transitions plus the messages that keep the
//! actors' view of load and pending work current. Cheap to clone.

use crate::cluster_view::ClusterView;
pub use crate::dispatch_config::DispatchConfig;
use crate::domain::{Millis, Robot, RobotStatus, Task};
pub use crate::error::DispatchError;
use crate::error::{Part, Unavailable};
use crate::hints::Hint;
use crate::ingest::{IngestError, StagedUpload};
use crate::lifecycle::{ItemState, PolicyDefaults, RobotAction};
use crate::limits::PayloadLimits;
use crate::recovery;
use crate::robot_registry::{RobotLoad, RobotRegistryMsg};
use crate::robot_session::desk::DispatchDesk;
use crate::robot_session::ws::WsLink;
use crate::robot_session::{RobotSessionMsg, WsAttach};
use crate::store::{EventKind, LeasedItem, RobotPatch, Store};
use crate::supervisor::{
    DispatchHealth, DispatchSupervisor, Parts, SharedParts, SupervisorArgs, SupervisorMsg,
};
use crate::task_director::TaskDirectorMsg;
use crate::transition_batcher::{ActRequest, BatcherMsg};
use futures_util::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, MessagingErr};
use std::sync::Arc;
use std::time::Duration;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
        .map_err(|e| Unavailable::ActorDown {
            part: Part::Supervisor,
            reason: e.to_string(),
        })?;
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
            .ok_or(DispatchError::Unavailable(Unavailable::NotRunning))
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
            crate::mailbox::tell(
                &parts.registry,
                RobotRegistryMsg::Fail {
                    reason: "failure injected by a test".into(),
                },
            );
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
        let asked = parts.registry.call(
            |reply| RobotRegistryMsg::Connect {
                robot,
                in_flight,
                counted_at,
                reply,
            },
            Some(CALL_TIMEOUT),
        );
        answer(Part::Registry, asked.await)
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
        let asked = session.call(
            |reply| RobotSessionMsg::Claim { max, wait, reply },
            Some(wait + CALL_TIMEOUT),
        );
        answer(Part::Session, asked.await)
    }

    /// Hands a robot's WebSocket to its session, which pushes items over it from now on.
    pub async fn attach_ws(&self, robot: &Robot, link: WsLink) -> Result<(), DispatchError> {
        let session = self.connect(robot).await?;
        session
            .send_message(RobotSessionMsg::AttachWs(Box::new(WsAttach {
                robot: robot.clone(),
                link,
                dispatcher: Arc::new(self.clone()),
                ping_every: self.config.pulse_timeout / 3,
            })))
            .map_err(down(Part::Session))
    }

    /// A sign of life from a robot whose session exists (a WebSocket frame). Noted on the pulse
    /// board, not sent to the registry: the registry reads the board at every sweep.
    pub fn pulse(&self, robot_id: i64) {
        if let Ok(parts) = self.parts() {
            parts.pulses.record(robot_id, self.config.clock.now());
        }
    }

    /// The robot sets its own status (a pulse, the prototype's PATCH): refused with
    /// [`DispatchError::RobotDisabled`] for ACTIVE while an administrator's INACTIVE holds.
    /// Returns the robot as stored; `None` when it no longer exists.
    pub async fn set_own_status(
        &self,
        robot: &Robot,
        status: RobotStatus,
    ) -> Result<Option<Robot>, DispatchError> {
        if !robot.may_set_own_status(status) {
            return Err(DispatchError::RobotDisabled);
        }
        if robot.status == status {
            return Ok(Some(robot.clone()));
        }
        let patch = RobotPatch {
            status: Some(status),
            ..RobotPatch::default()
        };
        self.update_robot(robot.id, &patch).await
    }

    /// The robot is ready for work: it becomes ACTIVE if it was not, and `capacity`, when
    /// given, narrows how many items it is sent at once (never above its configured capacity).
    pub async fn ready(&self, robot: &Robot, capacity: Option<i64>) -> Result<(), DispatchError> {
        let mut robot = self
            .store
            .robot(robot.id)
            .await?
            .ok_or(Unavailable::RobotGone(robot.id))?;
        if !robot.may_set_own_status(RobotStatus::Active) {
            return Err(DispatchError::RobotDisabled);
        }
        // Written here, not through update_robot: the Ready message below tells the registry,
        // and other nodes need not hear of a robot that connects here.
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
            .map_err(down(Part::Registry))
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
        let parts = self.parts()?;
        let asked = parts.batcher.call(
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
        );
        answer(Part::Batcher, asked.await)?
    }

    /// A task was uploaded or reopened: start dispatching it, here and (by a hint) on the
    /// other nodes, whose directors would find it within a second anyway.
    pub fn task_ready(&self, task_id: i64) {
        // While dispatch restarts, the new director finds the task in the store.
        if let Ok(parts) = self.parts() {
            crate::mailbox::tell(&parts.director, TaskDirectorMsg::Activate { task_id });
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
        crate::mailbox::tell(&parts.director, TaskDirectorMsg::Cancelled { task_id });
        let released =
            recovery::release_unstarted_of_task(&self.store, task_id, self.defaults(), now).await?;
        for (robot_id, count) in released.left_flight {
            crate::mailbox::tell(
                &parts.registry,
                RobotRegistryMsg::ItemsLeftFlight { robot_id, count },
            );
        }
        let mut elsewhere = Vec::new();
        for (robot_id, item_ids) in released.revoked {
            if parts.pulses.session(robot_id).is_none() {
                elsewhere.push((robot_id, item_ids));
                continue;
            }
            crate::mailbox::tell(
                &parts.registry,
                RobotRegistryMsg::Revoke { robot_id, item_ids },
            );
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
            crate::mailbox::tell(
                &parts.registry,
                RobotRegistryMsg::RobotChanged {
                    robot: robot.clone(),
                },
            );
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
            crate::mailbox::tell(
                &parts.registry,
                RobotRegistryMsg::RobotRevoked {
                    robot_id,
                    before: None,
                },
            );
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
        let parts = self.parts()?;
        let asked = parts.registry.call(
            |reply| RobotRegistryMsg::Loads { reply },
            Some(CALL_TIMEOUT),
        );
        answer(Part::Registry, asked.await)
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

/// The answer of an actor `part` was asked for: a timeout or a dead actor makes dispatch
/// unavailable for this request.
fn answer<T, M>(
    part: Part,
    asked: Result<CallResult<T>, MessagingErr<M>>,
) -> Result<T, DispatchError> {
    match asked.map_err(down(part))? {
        CallResult::Success(answer) => Ok(answer),
        CallResult::Timeout => Err(Unavailable::Timeout(part).into()),
        CallResult::SenderError => Err(Unavailable::ActorDown {
            part,
            reason: "it dropped the request".into(),
        }
        .into()),
    }
}

/// Turns a failed send to actor `part` into the error its caller answers.
fn down<M>(part: Part) -> impl FnOnce(MessagingErr<M>) -> DispatchError {
    move |err| {
        Unavailable::ActorDown {
            part,
            reason: err.to_string(),
        }
        .into()
    }
}

impl DispatchDesk for Dispatcher {
    fn pulse(&self, robot_id: i64) {
        Dispatcher::pulse(self, robot_id);
    }

    fn ready<'a>(
        &'a self,
        robot: &'a Robot,
        capacity: Option<i64>,
    ) -> BoxFuture<'a, Result<(), DispatchError>> {
        Box::pin(Dispatcher::ready(self, robot, capacity))
    }

    fn act<'a>(
        &'a self,
        robot_id: i64,
        item_id: i64,
        lease: Option<&'a str>,
        action: &'a RobotAction,
    ) -> BoxFuture<'a, Result<ItemState, DispatchError>> {
        Box::pin(Dispatcher::act(self, robot_id, item_id, lease, action))
    }

    fn payload_limits(&self) -> &PayloadLimits {
        &self.config.payload_limits
    }
}
