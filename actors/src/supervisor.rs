//! The DispatchSupervisor: the one actor that starts the node's top-level actors and restarts
//! them when one fails, so a panic or an unexpected error never ends dispatch for good.
//!
//! ```text
//!   DispatchSupervisor
//!     ├── RobotRegistry ─┐  one for all: their state is rebuilt from the store, so a failure
//!     ├── TaskDirector   ├─ of one stops the others and all three start afresh (sessions end;
//!     ├── TransitionBatcher   robots reconnect and find their leases in the store)
//!     ├── UploadSweeper     one for one
//!     └── Member            one for one: heartbeat, housekeeping role, fencing (cluster.rs)
//! ```
//!
//! Restarts back off (200 ms, doubling, at most 30 s; back to 200 ms after a minute without a
//! failure). While dispatch is down, [`DispatchHealth`] says which part failed and why, and
//! `/healthz` answers 503. The [`crate::dispatcher::Dispatcher`] handle reads the current
//! actors on every call, so it follows a restart by itself.

use crate::cluster::{DispatchHooks, Member, MemberArgs, MemberMsg};
use crate::cluster_view::ClusterView;
use crate::dispatch_config::DispatchConfig;
use crate::hints::{Hint, HintSink};
use crate::lifecycle::PolicyDefaults;
use crate::robot_registry::{PulseBoard, RegistryArgs, RobotRegistry, RobotRegistryMsg};
use crate::store::{Lane, Store};
use crate::task_director::{TaskDirector, TaskDirectorArgs, TaskDirectorMsg};
use crate::transition_batcher::{BatcherArgs, BatcherMsg, TransitionBatcher};
use crate::upload_sweeper::{UploadSweeper, UploadSweeperArgs, UploadSweeperMsg};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, Message, RpcReplyPort,
    SupervisionEvent,
};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Up this long without a failure, the next failure restarts at the first backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The actors dispatch runs on right now.
#[derive(Debug, Clone)]
pub struct Parts {
    pub registry: ActorRef<RobotRegistryMsg>,
    pub director: ActorRef<TaskDirectorMsg>,
    pub batcher: ActorRef<BatcherMsg>,
    pub pulses: PulseBoard,
}

/// The current [`Parts`], shared with the dispatcher handle; set when the supervisor starts,
/// swapped on a restart.
pub type SharedParts = Arc<RwLock<Option<Parts>>>;

/// Whether dispatch is up, and if not, which part failed and why.
#[derive(Debug, Default)]
pub struct DispatchHealth {
    down: Mutex<Option<(String, String)>>,
    restarts: std::sync::atomic::AtomicU64,
}

impl DispatchHealth {
    /// `Some((component, reason))` while dispatch is down.
    pub fn problem(&self) -> Option<(String, String)> {
        self.down.lock().ok().and_then(|d| d.clone())
    }

    /// Restarts since the node started.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, problem: Option<(String, String)>) {
        if let Ok(mut down) = self.down.lock() {
            *down = problem;
        }
    }
}

/// Messages of the [`DispatchSupervisor`].
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start dispatch again after a failure.
    RestartDispatch,
    /// Start the upload sweeper again after a failure.
    RestartSweeper,
    /// Start the cluster member again after a failure.
    RestartMember,
    /// The cluster declared this node dead: end every session and restart dispatch from the
    /// store (the member rejoins as a new incarnation).
    Fence,
    /// The node is stopping: stop everything, dispatch first, the batcher last.
    Shutdown { reply: RpcReplyPort<()> },
}

impl Message for SupervisorMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct SupervisorArgs {
    pub store: Store,
    pub config: DispatchConfig,
    pub parts: SharedParts,
    pub health: Arc<DispatchHealth>,
    pub view: Arc<ClusterView>,
}

/// The supervisor actor.
#[derive(Debug)]
pub struct DispatchSupervisor;

/// Running state.
#[derive(Debug)]
pub struct SupervisorState {
    args: SupervisorArgs,
    /// The dispatch actors now running, by id, with their names.
    dispatch: Vec<(ActorId, &'static str)>,
    sweeper: Option<ActorRef<UploadSweeperMsg>>,
    member: Option<ActorRef<crate::cluster::MemberMsg>>,
    /// The member running now, for hints received from other nodes.
    member_slot: Arc<RwLock<Option<ActorRef<MemberMsg>>>>,
    backoff: Duration,
    up_since: Instant,
    stopping: bool,
}

/// Starts registry, batcher and director under `supervisor`, wired to each other.
pub async fn start_parts(
    supervisor: ActorCell,
    store: &Store,
    config: &DispatchConfig,
    view: &Arc<ClusterView>,
) -> Result<Parts, ActorProcessingErr> {
    let defaults = PolicyDefaults {
        lease_ttl: config.lease_ttl,
        backoff_base: config.backoff_base,
    };
    let pulses = PulseBoard::default();
    let (registry, _) = Actor::spawn_linked(
        None,
        RobotRegistry,
        RegistryArgs {
            store: store.clone(),
            node_id: config.node_id.clone(),
            pulse_timeout: config.pulse_timeout,
            sweep_period: config.sweep_period,
            dispatch_delay: config.dispatch_delay,
            defaults,
            clock: config.clock.clone(),
            pulses: pulses.clone(),
            ws_standby: config.ws_standby,
            recount_period: config.recount_period,
            view: Arc::clone(view),
            hints: config.hints.clone(),
        },
        supervisor.clone(),
    )
    .await?;
    // The batcher writes every item change, leases included, so it starts before the director;
    // it learns of the director once that exists, before any robot action can reach it.
    let (batcher, _) = Actor::spawn_linked(
        None,
        TransitionBatcher,
        BatcherArgs {
            store: store.clone(),
            clock: config.clock.clone(),
            defaults,
            registry: registry.clone(),
            delay: config.dispatch_delay,
        },
        supervisor.clone(),
    )
    .await?;
    let (director, _) = Actor::spawn_linked(
        None,
        TaskDirector,
        TaskDirectorArgs {
            store: store.clone(),
            registry: registry.clone(),
            batcher: batcher.clone(),
            default_lease_ttl: config.lease_ttl,
            clock: config.clock.clone(),
            view: Arc::clone(view),
        },
        supervisor,
    )
    .await?;
    registry.send_message(RobotRegistryMsg::AttachDirector {
        director: director.clone(),
    })?;
    batcher.send_message(BatcherMsg::AttachDirector {
        director: director.clone(),
    })?;
    Ok(Parts {
        registry,
        director,
        batcher,
        pulses,
    })
}

/// Stops dispatch actors: the director (no new leases), the registry (its sessions close their
/// connections), then the batcher, so writes already asked for are made.
async fn stop_parts(parts: &Parts) {
    let wait = Some(Duration::from_secs(5));
    // An actor that does not stop in time is left to end with the runtime.
    let _ = parts.director.stop_and_wait(None, wait).await;
    // An actor that does not stop in time is left to end with the runtime.
    let _ = parts.registry.stop_and_wait(None, wait).await;
    // An actor that does not stop in time is left to end with the runtime.
    let _ = parts.batcher.stop_and_wait(None, wait).await;
}

impl SupervisorState {
    fn parts(&self) -> Option<Parts> {
        self.args.parts.read().ok().and_then(|p| p.clone())
    }

    /// Makes `parts` the ones dispatch runs on.
    fn adopt(&mut self, parts: Parts) {
        self.dispatch = vec![
            (parts.registry.get_id(), "robot registry"),
            (parts.director.get_id(), "task director"),
            (parts.batcher.get_id(), "transition batcher"),
        ];
        if let Ok(mut shared) = self.args.parts.write() {
            *shared = Some(parts);
        }
        self.up_since = Instant::now();
    }

    async fn start_sweeper(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let stale_after = self.args.config.stale_upload_after;
        let started = Actor::spawn_linked(
            None,
            UploadSweeper,
            UploadSweeperArgs {
                store: self.args.store.clone(),
                period: (stale_after / 4).max(Duration::from_millis(100)),
                stale_after,
                view: Arc::clone(&self.args.view),
            },
            myself.get_cell(),
        )
        .await;
        match started {
            Ok((sweeper, _)) => self.sweeper = Some(sweeper),
            Err(err) => {
                warn!(error = %err, "upload sweeper did not start; trying again");
                myself.send_after(self.backoff, || SupervisorMsg::RestartSweeper);
            }
        }
    }

    async fn start_member(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let config = &self.args.config;
        let started = Actor::spawn_linked(
            None,
            Member,
            MemberArgs {
                // Heartbeats on a connection of their own: under a connect storm the main
                // one queued them for 10 s and more, and the node was declared dead.
                store: self.args.store.lane(Lane::Membership),
                view: Arc::clone(&self.args.view),
                http: config.http.clone(),
                period: config.sweep_period,
                dead_after: config.dead_after,
                clock: config.clock.clone(),
                hints: config.hints.clone(),
                dispatch: DispatchHooks {
                    current: {
                        let parts = Arc::clone(&self.args.parts);
                        Arc::new(move || {
                            parts
                                .read()
                                .ok()
                                .and_then(|p| p.clone())
                                .map(|p| (p.registry, p.pulses))
                        })
                    },
                    fence: {
                        let supervisor = myself.clone();
                        Arc::new(move || {
                            crate::mailbox::tell(&supervisor, SupervisorMsg::Fence);
                        })
                    },
                },
            },
            myself.get_cell(),
        )
        .await;
        match started {
            Ok((member, _)) => {
                *self
                    .member_slot
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(member.clone());
                self.member = Some(member);
            }
            Err(err) => {
                warn!(error = %err, "cluster member did not start; trying again");
                myself.send_after(self.backoff, || SupervisorMsg::RestartMember);
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        if self.up_since.elapsed() >= STABLE_AFTER {
            self.backoff = FIRST_BACKOFF;
        }
        let now = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        now
    }
}

/// Where hints from other nodes go: the director for tasks, the member for event rows, the
/// cluster view for load summaries (newer ones only). Each
/// names something in the store, so handling one twice (or after the store poll found it) does
/// nothing more.
fn hint_sink(
    parts: &SharedParts,
    member: &Arc<RwLock<Option<ActorRef<MemberMsg>>>>,
    view: &Arc<ClusterView>,
) -> HintSink {
    let parts = Arc::clone(parts);
    let member = Arc::clone(member);
    let view = Arc::clone(view);
    Arc::new(move |hint| {
        let director = parts
            .read()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.director.clone()));
        let read_events = || {
            if let Some(member) = member.read().ok().and_then(|m| m.clone()) {
                crate::mailbox::tell(&member, MemberMsg::ReadEvents);
            }
        };
        match hint {
            Hint::TaskReady { task_id } => {
                if let Some(director) = director {
                    crate::mailbox::tell(&director, TaskDirectorMsg::Activate { task_id });
                }
            }
            Hint::TaskCancelled { task_id } => {
                if let Some(director) = director {
                    crate::mailbox::tell(&director, TaskDirectorMsg::Cancelled { task_id });
                }
                read_events();
            }
            Hint::Events => read_events(),
            Hint::Loads { node, at, buckets } => view.note_peer_loads(&node, at, buckets),
        }
    })
}

impl Actor for DispatchSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            dispatch: Vec::new(),
            sweeper: None,
            member: None,
            member_slot: Arc::default(),
            backoff: FIRST_BACKOFF,
            up_since: Instant::now(),
            stopping: false,
        };
        state.args.config.hints.set_sink(hint_sink(
            &state.args.parts,
            &state.member_slot,
            &state.args.view,
        ));
        // The member joins first, so the registry's first sweep knows the cluster.
        state.start_member(&myself).await;
        let parts = start_parts(
            myself.get_cell(),
            &state.args.store,
            &state.args.config,
            &state.args.view,
        )
        .await?;
        state.adopt(parts);
        state.start_sweeper(&myself).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartDispatch if !state.stopping => {
                match start_parts(
                    myself.get_cell(),
                    &state.args.store,
                    &state.args.config,
                    &state.args.view,
                )
                .await
                {
                    Ok(parts) => {
                        state.adopt(parts);
                        state.args.health.set(None);
                        state
                            .args
                            .health
                            .restarts
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        info!("dispatch restarted from the store");
                    }
                    Err(err) => {
                        let wait = state.next_backoff();
                        error!(error = %err, retry_in = ?wait, "dispatch did not restart");
                        state
                            .args
                            .health
                            .set(Some(("dispatch".into(), format!("restart failed: {err}"))));
                        myself.send_after(wait, || SupervisorMsg::RestartDispatch);
                    }
                }
            }
            SupervisorMsg::RestartSweeper if !state.stopping => {
                state.start_sweeper(&myself).await;
            }
            SupervisorMsg::RestartMember if !state.stopping => {
                state.start_member(&myself).await;
            }
            SupervisorMsg::Fence if !state.stopping => {
                let dispatch = std::mem::take(&mut state.dispatch);
                if let Some(parts) = state.parts()
                    && !dispatch.is_empty()
                {
                    stop_parts(&parts).await;
                }
                myself.send_message(SupervisorMsg::RestartDispatch)?;
            }
            SupervisorMsg::RestartDispatch
            | SupervisorMsg::RestartSweeper
            | SupervisorMsg::RestartMember
            | SupervisorMsg::Fence => {}
            SupervisorMsg::Shutdown { reply } => {
                state.stopping = true;
                if let Some(sweeper) = state.sweeper.take() {
                    // An actor that does not stop in time is left to end with the runtime.
                    let _ = sweeper
                        .stop_and_wait(None, Some(Duration::from_secs(5)))
                        .await;
                }
                if let Some(parts) = state.parts() {
                    stop_parts(&parts).await;
                }
                if let Some(member) = state.member.take() {
                    // An actor that does not stop in time is left to end with the runtime.
                    let _ = member
                        .stop_and_wait(None, Some(Duration::from_secs(5)))
                        .await;
                }
                crate::cluster::leave(&state.args.store, &state.args.view).await;
                crate::mailbox::answer(reply, ());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        if state.member.as_ref().is_some_and(|m| m.get_id() == id) {
            state.member = None;
            let wait = state.next_backoff();
            error!(%reason, retry_in = ?wait, "cluster member failed; restarting it");
            myself.send_after(wait, || SupervisorMsg::RestartMember);
            return Ok(());
        }
        if state.sweeper.as_ref().is_some_and(|s| s.get_id() == id) {
            state.sweeper = None;
            let wait = state.next_backoff();
            error!(%reason, retry_in = ?wait, "upload sweeper failed; restarting it");
            myself.send_after(wait, || SupervisorMsg::RestartSweeper);
            return Ok(());
        }
        let Some(&(_, component)) = state.dispatch.iter().find(|(a, _)| *a == id) else {
            return Ok(()); // a part already replaced, stopping as we restart
        };
        state.dispatch.clear();
        state
            .args
            .health
            .set(Some((component.into(), reason.clone())));
        let wait = state.next_backoff();
        error!(component, %reason, retry_in = ?wait,
            "dispatch actor failed; restarting dispatch from the store");
        if let Some(parts) = state.parts() {
            stop_parts(&parts).await;
        }
        myself.send_after(wait, || SupervisorMsg::RestartDispatch);
        Ok(())
    }
}
