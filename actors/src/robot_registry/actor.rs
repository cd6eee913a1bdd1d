//! The RobotRegistry actor.

use super::model::{LoadBoard, ReservedSlots, RobotSlot};
use super::pulses::{PulseBoard, PulseWriter};
use crate::domain::{Clock, Millis, Robot, RobotStatus};
use crate::gather::flush_later;
use crate::lifecycle::PolicyDefaults;
use crate::recovery::{self, Released};
use crate::robot_session::{RobotSession, RobotSessionArgs, RobotSessionMsg};
use crate::store::{Lane, Store};
use crate::task_director::{GrantRequest, TaskDirectorMsg, TaskMsg};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort,
    SupervisionEvent,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

mod handlers;
use handlers::*;

/// The registry actor.
#[derive(Debug)]
pub struct RobotRegistry;

/// A connected robot's load, for the dashboard and tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RobotLoad {
    pub robot_id: i64,
    pub in_flight: i64,
    pub capacity: i64,
    pub active: bool,
    pub last_pulse_at: Millis,
}

/// Messages of the [`RobotRegistry`].
#[derive(Debug)]
pub enum RobotRegistryMsg {
    /// Hands the registry the director to tell about items handed back.
    AttachDirector { director: ActorRef<TaskDirectorMsg> },
    /// A robot without a session made a request: open its session (unless a concurrent
    /// request did), reply with it. `in_flight` is the robot's count of items held, read by the
    /// caller so the registry's mailbox never waits on the store for it; `counted_at` is when
    /// that read began (a release written after it makes the count stale).
    Connect {
        robot: Robot,
        in_flight: i64,
        counted_at: Millis,
        reply: RpcReplyPort<ActorRef<RobotSessionMsg>>,
    },
    /// A robot's settings changed; INACTIVE drains its unstarted items.
    RobotChanged { robot: Robot },
    /// A robot was deleted or its token rotated: end the session, release everything it holds.
    RobotRevoked {
        robot_id: i64,
        /// Set when another node revoked it at this time: a session that started since (the
        /// robot came back with its new token) stays.
        before: Option<Millis>,
    },
    /// Items held by a robot left flight (completed, failed, released).
    ItemsLeftFlight { robot_id: i64, count: i64 },
    /// One item left a robot's hands in a written transition: its load drops and its session
    /// forgets the lease.
    ItemLeft {
        robot_id: i64,
        item_id: i64,
        lease_id: Option<String>,
    },
    /// A robot's WebSocket attached (`on`) or closed: only a streaming robot holds standby.
    Streaming { robot_id: i64, on: bool },
    /// A WebSocket robot is ready; `window` narrows its capacity (never above the configured one).
    Ready { robot: Robot, window: Option<i64> },
    /// Items were taken from a robot by someone else (a task was cancelled): tell its session.
    Revoke { robot_id: i64, item_ids: Vec<i64> },
    /// Another node released these items of a robot with a session here (a cancel, an expired
    /// lease): they leave its load and its session. A session started at `before` or later
    /// counted its load from the store after the release and is left alone.
    ItemsReleased {
        robot_id: i64,
        item_ids: Vec<i64>,
        before: Millis,
    },
    /// A task has `pending` items ready in its queue (Leases it has not handled yet will take
    /// some of them).
    TaskDemand {
        task_id: i64,
        process_id: i64,
        priority: i64,
        pending: i64,
        actor: ActorRef<TaskMsg>,
    },
    /// A task handled Leases `leases`: the slots it could not use, and what it has ready.
    GrantsSettled {
        task_id: i64,
        leases: Vec<u64>,
        unused: Vec<ReservedSlots>,
        pending: i64,
    },
    /// A task actor stopped: Leases it never handled give their slots back.
    TaskGone { task_id: i64, actor: ActorId },
    /// Run a dispatch round (scheduled shortly after a change so writes batch up).
    Dispatch,
    /// Timer: end silent sessions, expire leases.
    Sweep,
    /// Timer: compare robot loads with the store and correct drift (logged at WARN).
    Recount,
    /// Loads of the connected robots.
    Loads { reply: RpcReplyPort<Vec<RobotLoad>> },
    /// Test hook: fail as a bug would (the supervisor restarts dispatch).
    Fail { reason: String },
    /// The node is stopping: every session hands back standby, closes its WebSocket asking
    /// the robot to reconnect, and answers parked claims; reply once all have.
    Shutdown { reply: RpcReplyPort<()> },
}

impl Message for RobotRegistryMsg {}

/// A registry message handled for longer than this is logged at WARN.
const SLOW_MESSAGE: Duration = Duration::from_secs(1);
/// A connect's count of items held older than this when its message is handled is read again
/// (the message waited behind a busy registry); releases are remembered twice as long.
const CONNECT_COUNT_AGE_MS: Millis = 30_000;

impl RobotRegistryMsg {
    /// The message's name, as the registry's metrics and slow-message warnings give it.
    fn kind(&self) -> &'static str {
        match self {
            RobotRegistryMsg::AttachDirector { .. } => "attach_director",
            RobotRegistryMsg::Connect { .. } => "connect",
            RobotRegistryMsg::RobotChanged { .. } => "robot_changed",
            RobotRegistryMsg::RobotRevoked { .. } => "robot_revoked",
            RobotRegistryMsg::ItemsLeftFlight { .. } => "items_left_flight",
            RobotRegistryMsg::ItemLeft { .. } => "item_left",
            RobotRegistryMsg::Streaming { .. } => "streaming",
            RobotRegistryMsg::Ready { .. } => "ready",
            RobotRegistryMsg::Revoke { .. } => "revoke",
            RobotRegistryMsg::ItemsReleased { .. } => "items_released",
            RobotRegistryMsg::TaskDemand { .. } => "task_demand",
            RobotRegistryMsg::GrantsSettled { .. } => "grants_settled",
            RobotRegistryMsg::TaskGone { .. } => "task_gone",
            RobotRegistryMsg::Dispatch => "dispatch",
            RobotRegistryMsg::Sweep => "sweep",
            RobotRegistryMsg::Recount => "recount",
            RobotRegistryMsg::Loads { .. } => "loads",
            RobotRegistryMsg::Fail { .. } => "fail",
            RobotRegistryMsg::Shutdown { .. } => "shutdown",
        }
    }
}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct RegistryArgs {
    pub store: Store,
    pub node_id: String,
    pub pulse_timeout: Duration,
    pub sweep_period: Duration,
    /// How long a dispatch round waits to gather changes (group commit).
    pub dispatch_delay: Duration,
    pub defaults: PolicyDefaults,
    pub clock: Clock,
    /// Where the web layer notes WebSocket frames (read at every sweep).
    pub pulses: PulseBoard,
    /// Standby items a streaming robot may hold beyond its capacity (0: none).
    pub ws_standby: i64,
    /// How often loads are recounted from the store.
    pub recount_period: Duration,
    /// The cluster as this node sees it: only the housekeeping node expires leases and
    /// releases the robots of dead nodes.
    pub view: std::sync::Arc<crate::cluster_view::ClusterView>,
    /// Tells the other nodes of releases that touch robots whose session they hold.
    pub hints: crate::hints::Hints,
}

struct Session {
    actor: ActorRef<RobotSessionMsg>,
    last_pulse: Millis,
    persisted_pulse: Millis,
    /// Capacity the robot asked for in its `ready` frame.
    window: Option<i64>,
    /// A WebSocket is attached.
    streaming: bool,
    /// The window last told to the session.
    told_window: Option<i64>,
    /// Distinguishes this session from the robot's earlier ones (see the model's reservations).
    generation: u64,
    /// When the session started.
    started_at: Millis,
}

impl Session {
    fn capacity(&self, configured: i64) -> i64 {
        self.window.map_or(configured, |w| w.min(configured))
    }
}

/// Running state.
pub struct RegistryState {
    args: RegistryArgs,
    board: LoadBoard,
    sessions: HashMap<i64, Session>,
    by_actor: HashMap<ActorId, i64>,
    task_actors: HashMap<i64, ActorRef<TaskMsg>>,
    director: Option<ActorRef<TaskDirectorMsg>>,
    dispatch_scheduled: bool,
    timer: JoinHandle<()>,
    recount_timer: JoinHandle<()>,
    /// Last session generation handed out.
    sessions_started: u64,
    pulse_writer: PulseWriter,
    /// The store on a connection of its own for the registry's own reads and writes: every
    /// robot connect waits for this actor, and a sweep queued behind a connect storm on the
    /// main connection (68 to 97 s with 30,000 robots) had those connects refused meanwhile.
    /// Sessions and the pulse writer use the main connection.
    control: Store,
    /// When items of a robot were last released (by this registry, or by another node as it
    /// told): a connect whose count was read before that is counted again.
    released_at: HashMap<i64, Millis>,
}

impl std::fmt::Debug for RegistryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryState")
            .field("sessions", &self.sessions.len())
            .field("tasks", &self.board.tasks.len())
            .finish()
    }
}

impl RegistryState {
    fn schedule_dispatch(&mut self, myself: &ActorRef<RobotRegistryMsg>) {
        if !self.dispatch_scheduled {
            self.dispatch_scheduled = true;
            flush_later(myself, self.args.dispatch_delay, || {
                RobotRegistryMsg::Dispatch
            });
        }
    }

    /// Records a pulse; queues it for the store at most every quarter pulse timeout.
    fn pulse(&mut self, robot_id: i64, at: Millis) {
        let persist_every = (self.args.pulse_timeout.as_millis() as i64 / 4).max(200);
        let Some(session) = self.sessions.get_mut(&robot_id) else {
            return;
        };
        session.last_pulse = session.last_pulse.max(at);
        if at - session.persisted_pulse < persist_every {
            return;
        }
        session.persisted_pulse = at;
        self.pulse_writer.queue(robot_id, at);
    }

    /// Takes in the pulses noted on the board since the last look.
    fn absorb_pulses(&mut self) {
        for (robot_id, at) in self.args.pulses.take() {
            self.pulse(robot_id, at);
        }
        self.pulse_writer.flush();
    }

    /// Tells sessions which of their items were taken away.
    fn tell_revoked(&self, revoked: &BTreeMap<i64, Vec<i64>>) {
        for (robot_id, item_ids) in revoked {
            if let Some(session) = self.sessions.get(robot_id) {
                crate::mailbox::tell(
                    &session.actor,
                    RobotSessionMsg::Revoke {
                        item_ids: item_ids.clone(),
                    },
                );
            }
        }
    }

    fn slot_from(robot: &Robot, in_flight: i64, stamp: u64, session: u64) -> RobotSlot {
        RobotSlot {
            capacity: robot.capacity,
            in_flight,
            standby: 0,
            processes: robot.processes.clone(),
            active: robot.status == RobotStatus::Active,
            last_served: stamp,
            session,
            changes: 0,
        }
    }

    /// Applies a release: items leave flight, PENDING ones go back to their tasks, and the
    /// nodes holding the sessions of robots that have none here are told (an event row, then a
    /// hint).
    async fn absorb(&mut self, released: Released) {
        self.tell_revoked(&released.revoked);
        let elsewhere: Vec<(i64, Vec<i64>)> = released
            .revoked
            .iter()
            .filter(|(robot_id, _)| !self.sessions.contains_key(robot_id))
            .map(|(robot_id, items)| (*robot_id, items.clone()))
            .collect();
        crate::hints::tell_items_released(
            &self.control,
            &self.args.hints,
            &self.args.node_id,
            &elsewhere,
            self.args.clock.now(),
        )
        .await;
        let now = self.args.clock.now();
        for (robot_id, n) in released.left_flight {
            self.released_at.insert(robot_id, now);
            self.board.left(robot_id, n);
        }
        if let Some(director) = &self.director {
            for (task_id, items) in released.requeued {
                crate::mailbox::tell(director, TaskDirectorMsg::Requeued { task_id, items });
            }
        }
    }

    /// Copies a robot's settings into its slot (capacity narrowed by its session's window) and
    /// tells its session the window when it changed.
    fn apply_settings(&mut self, robot: &Robot) {
        let capacity = self
            .sessions
            .get(&robot.id)
            .map_or(robot.capacity, |s| s.capacity(robot.capacity));
        if let Some(slot) = self.board.robots.get_mut(&robot.id) {
            slot.capacity = capacity;
            slot.processes = robot.processes.clone();
            slot.active = robot.status == RobotStatus::Active;
        }
        if let Some(session) = self.sessions.get_mut(&robot.id)
            && session.told_window != Some(capacity)
        {
            session.told_window = Some(capacity);
            crate::mailbox::tell(
                &session.actor,
                RobotSessionMsg::Limits {
                    window: capacity.max(0) as usize,
                },
            );
        }
    }

    /// Sizes a robot's standby: only a streaming robot keeps items back.
    fn apply_standby(&mut self, robot_id: i64) {
        let streaming = self.sessions.get(&robot_id).is_some_and(|s| s.streaming);
        if let Some(slot) = self.board.robots.get_mut(&robot_id) {
            slot.standby = if streaming { self.args.ws_standby } else { 0 };
        }
    }

    /// With robots idle and no work for them, standby items of processes they take go back to
    /// the queue, to reach them.
    fn withdraw_standby(&self) {
        let Some(processes) = self.board.idle_processes() else {
            return;
        };
        for (robot_id, slot) in &self.board.robots {
            if slot.standby_held() > 0
                && let Some(session) = self.sessions.get(robot_id)
            {
                crate::mailbox::tell(
                    &session.actor,
                    RobotSessionMsg::Withdraw {
                        processes: processes.clone(),
                    },
                );
            }
        }
    }

    fn end_session(&mut self, robot_id: i64) {
        if let Some(session) = self.forget_session(robot_id) {
            session.actor.stop(Some("session ended".into()));
        }
    }

    /// Drops everything the registry keeps about a robot's session: the session, its load slot,
    /// its queued pulse and its mark on the pulse board.
    fn forget_session(&mut self, robot_id: i64) -> Option<Session> {
        let session = self.sessions.remove(&robot_id);
        if let Some(session) = &session {
            self.by_actor.remove(&session.actor.get_id());
        }
        self.pulse_writer.forget(robot_id);
        self.args.pulses.set_session(robot_id, None);
        self.board.robots.remove(&robot_id);
        session
    }
}

impl Actor for RobotRegistry {
    type Msg = RobotRegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(args.sweep_period, || RobotRegistryMsg::Sweep);
        let recount_timer = myself.send_interval(args.recount_period, || RobotRegistryMsg::Recount);
        let pulse_writer = PulseWriter::new(args.store.clone(), args.node_id.clone());
        let control = args.store.lane(Lane::Control);
        Ok(RegistryState {
            control,
            args,
            pulse_writer,
            board: LoadBoard::default(),
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            task_actors: HashMap::new(),
            director: None,
            dispatch_scheduled: false,
            timer,
            recount_timer,
            sessions_started: 0,
            released_at: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        state.recount_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let RobotRegistryMsg::Fail { reason } = message {
            return Err(reason.into());
        }
        // A store error (a lost write race, a slow server) is logged and the work is picked up
        // again by the next sweep or reconcile; a panic fails the actor and the supervisor
        // restarts dispatch.
        let kind = message.kind();
        let began = std::time::Instant::now();
        if let Err(err) = handle_message(myself, message, state).await {
            warn!(error = %err, "robot registry: message failed; continuing");
        }
        // Every robot's connect and every dispatch round waits behind the message in hand.
        let took = began.elapsed();
        metrics::histogram!("orchestrator_registry_message_seconds", "message" => kind)
            .record(took.as_secs_f64());
        if took >= SLOW_MESSAGE {
            warn!(
                message = kind,
                ms = took.as_millis() as u64,
                "robot registry was busy with one message; connects and dispatch waited"
            );
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ended: Option<ActorCell> = match event {
            SupervisionEvent::ActorTerminated(actor, _, _) => Some(actor),
            SupervisionEvent::ActorFailed(actor, err) => {
                warn!(error = %err, "robot session failed");
                Some(actor)
            }
            _ => None,
        };
        if let Some(actor) = ended
            && let Some(robot_id) = state.by_actor.remove(&actor.get_id())
        {
            // The robot reconnects with its next request; its leases stay in the store.
            state.forget_session(robot_id);
        }
        Ok(())
    }
}

/// The body of `handle`: turns one message into model calls, store writes and replies.
async fn handle_message(
    myself: ActorRef<RobotRegistryMsg>,
    message: RobotRegistryMsg,
    state: &mut RegistryState,
) -> Result<(), ActorProcessingErr> {
    match message {
        RobotRegistryMsg::AttachDirector { director } => state.director = Some(director),
        RobotRegistryMsg::Connect {
            robot,
            in_flight,
            counted_at,
            reply,
        } => on_connect(state, &myself, robot, in_flight, counted_at, reply).await?,
        RobotRegistryMsg::RobotChanged { robot } => on_robot_changed(state, &myself, robot).await?,
        RobotRegistryMsg::RobotRevoked { robot_id, before } => {
            on_robot_revoked(state, &myself, robot_id, before).await?
        }
        RobotRegistryMsg::Ready { robot, window } => on_ready(state, &myself, robot, window),
        RobotRegistryMsg::Revoke { robot_id, item_ids } => on_revoke(state, robot_id, item_ids),
        RobotRegistryMsg::ItemsReleased {
            robot_id,
            item_ids,
            before,
        } => on_items_released(state, &myself, robot_id, item_ids, before),
        RobotRegistryMsg::ItemsLeftFlight { robot_id, count } => {
            on_items_left_flight(state, &myself, robot_id, count)
        }
        RobotRegistryMsg::ItemLeft {
            robot_id,
            item_id,
            lease_id,
        } => on_item_left(state, &myself, robot_id, item_id, lease_id),
        RobotRegistryMsg::Streaming { robot_id, on } => on_streaming(state, &myself, robot_id, on),
        RobotRegistryMsg::TaskDemand {
            task_id,
            process_id,
            priority,
            pending,
            actor,
        } => on_task_demand(
            state, &myself, task_id, process_id, priority, pending, actor,
        ),
        RobotRegistryMsg::GrantsSettled {
            task_id,
            leases,
            unused,
            pending,
        } => on_grants_settled(state, &myself, task_id, leases, unused, pending),
        RobotRegistryMsg::TaskGone { task_id, actor } => {
            on_task_gone(state, &myself, task_id, actor)
        }
        RobotRegistryMsg::Dispatch => on_dispatch(state),
        RobotRegistryMsg::Sweep => on_sweep(state, &myself).await?,
        RobotRegistryMsg::Recount => on_recount(state, &myself).await?,
        RobotRegistryMsg::Shutdown { reply } => on_shutdown(state, reply).await,
        RobotRegistryMsg::Fail { .. } => {}
        RobotRegistryMsg::Loads { reply } => on_loads(state, reply),
    }
    Ok(())
}

/// The housekeeping node's share of a sweep: robots of dead nodes silent past the pulse timeout
/// (and a sweep, for the pulses their node had not stored yet) lose their items, and expired
/// leases are released.
async fn housekeeping(
    state: &mut RegistryState,
    now: Millis,
    timeout: Millis,
) -> Result<(), ActorProcessingErr> {
    let sweep = state.args.sweep_period.as_millis() as Millis;
    let cutoff = now - timeout - sweep;
    let alive = state.args.view.alive();
    let mut by_node: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (robot_id, node) in state.control.orphaned_robots(&alive, cutoff).await? {
        by_node.entry(node).or_default().push(robot_id);
    }
    for (node, robots) in by_node {
        for robot_id in release_lost(state, &robots, &node, cutoff, now).await? {
            warn!(robot_id, node, "robot of a dead node; released its items");
        }
    }
    let expired = recovery::expire_leases(&state.control, state.args.defaults, now).await?;
    if !expired.left_flight.is_empty() {
        metrics::counter!("orchestrator_lease_expiries_total")
            .increment(expired.left_flight.values().sum::<i64>().max(0) as u64);
        warn!(
            items = expired.left_flight.values().sum::<i64>(),
            "leases expired"
        );
    }
    state.absorb(expired).await;
    Ok(())
}

/// Marks each of `robots` lost if node `node` still holds it and it has been silent since
/// `cutoff`, then releases the items of those that hold any; returns the robots marked lost (not
/// the ones that pulsed since or that another node holds now). A node that dies with thousands
/// of idle robots costs a write per few hundred robots and one read, not two round trips each:
/// done one by one, that kept the housekeeping node's registry (and every connect waiting on
/// it) busy for tens of seconds.
async fn release_lost(
    state: &mut RegistryState,
    robots: &[i64],
    node: &str,
    cutoff: Millis,
    now: Millis,
) -> Result<Vec<i64>, ActorProcessingErr> {
    if robots.is_empty() {
        return Ok(Vec::new());
    }
    let lost = state.control.mark_robots_lost(robots, node, cutoff).await?;
    if lost.is_empty() {
        return Ok(lost);
    }
    let holding = state.control.held_counts().await?;
    for robot_id in lost.iter().filter(|r| holding.contains_key(r)) {
        let released =
            recovery::release_robot(&state.control, *robot_id, false, state.args.defaults, now)
                .await?;
        state.absorb(released).await;
    }
    Ok(lost)
}
