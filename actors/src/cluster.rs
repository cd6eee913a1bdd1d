//! Cluster membership: the node's row in the store, renewed every sweep, and the one
//! housekeeping role that moves between nodes.
//!
//! ```text
//!   Member (every sweep) ──heartbeat (CAS incarnation, not dead)──► node:<id>
//!      │ refused: this node was declared dead ──► supervisor Fence (sessions end), rejoin
//!      ├──hold singleton:housekeeping (ttl = dead_after)──► ClusterView.leads
//!      ├── leader only: declare nodes silent > dead_after dead ──► ClusterView.alive
//!      └── read event rows other nodes wrote (robot changed, token rotated, robot deleted)
//!            ──► forget the cached token, tell the registry (its session ends or adapts)
//!   RobotRegistry sweep reads ClusterView: leader expires leases and releases robots of
//!   dead nodes; UploadSweeper works only on the leader.
//! ```
//!
//! The store decides everything here; nothing depends on messages between nodes. A node that
//! was frozen past `dead_after` finds its heartbeat refused, ends every session it held (their
//! robots were released or have reconnected elsewhere) and joins again as a new incarnation.

use crate::domain::{Clock, Millis};
use crate::robot_registry::RobotRegistryMsg;
use crate::store::{EventKind, NodeBeat, Store};
use crate::supervisor::{SharedParts, SupervisorMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Events are read again this far back, for writes another node committed late (or with a
/// clock a little behind); the ids already handled are skipped.
const EVENT_OVERLAP: Millis = 5_000;
/// Events are kept this long (the housekeeping node removes older ones).
const EVENT_KEPT: Millis = 600_000;

/// The singleton job that expires leases, releases robots of dead nodes, removes stale uploads
/// and prunes throughput counters.
pub const HOUSEKEEPING: &str = "housekeeping";

/// What this node knows of the cluster, shared with the actors that act on it.
#[derive(Debug)]
pub struct ClusterView {
    node_id: String,
    incarnation: AtomicI64,
    leads: AtomicBool,
    /// Nodes alive at the last heartbeat (this one included).
    alive: RwLock<Vec<String>>,
}

impl ClusterView {
    /// A view of a node that has not joined yet: alone, and not leading until the store says so.
    pub fn new(node_id: &str) -> Self {
        ClusterView {
            node_id: node_id.to_string(),
            incarnation: AtomicI64::new(0),
            leads: AtomicBool::new(false),
            alive: RwLock::new(vec![node_id.to_string()]),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's current incarnation (0 before it joined).
    pub fn incarnation(&self) -> i64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Whether this node holds the housekeeping role.
    pub fn leads(&self) -> bool {
        self.leads.load(Ordering::Acquire)
    }

    /// Ids of the nodes alive at the last heartbeat, this one included.
    pub fn alive(&self) -> Vec<String> {
        self.alive
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_alive(&self, mut alive: Vec<String>) {
        if !alive.contains(&self.node_id) {
            alive.push(self.node_id.clone());
        }
        *self.alive.write().unwrap_or_else(PoisonError::into_inner) = alive;
    }
}

/// Messages of the [`Member`].
#[derive(Debug)]
pub enum MemberMsg {
    /// Timer: heartbeat, housekeeping role, dead nodes.
    Tick,
}

impl Message for MemberMsg {}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct MemberArgs {
    pub store: Store,
    pub view: std::sync::Arc<ClusterView>,
    /// The HTTP address the node advertises to others and to the dashboard.
    pub http: String,
    /// How often to heartbeat.
    pub period: Duration,
    /// A node without a heartbeat for this long is dead.
    pub dead_after: Duration,
    pub clock: Clock,
    /// The dispatch actors, for the count of robots with a session here.
    pub parts: SharedParts,
    /// Told to fence (end every session and restart dispatch) when this node was declared dead.
    pub supervisor: ActorRef<SupervisorMsg>,
}

/// The membership actor.
#[derive(Debug)]
pub struct Member;

/// Running state.
#[derive(Debug)]
pub struct MemberState {
    args: MemberArgs,
    timer: JoinHandle<()>,
    /// (time, items leased so far) at recent ticks, for the items leased in the last minute.
    leased: VecDeque<(Millis, u64)>,
    /// Events are read from this time (less the overlap) on.
    events_from: Millis,
    /// Events handled within the overlap, by id.
    seen: HashMap<String, Millis>,
    /// The last heartbeat the store took.
    last_beat: Option<Millis>,
    /// After this node could not reach the store for longer than the dead-node time, nobody
    /// else could heartbeat either: no node is declared dead (and no robot counted orphaned)
    /// until they have had the dead-node time to heartbeat again.
    grace_until: Millis,
}

impl MemberState {
    fn dead_after(&self) -> Millis {
        self.args.dead_after.as_millis() as Millis
    }

    async fn join(&self) -> Result<(), ActorProcessingErr> {
        let view = &self.args.view;
        let now = self.args.clock.now();
        let incarnation = self
            .args
            .store
            .join_cluster(view.node_id(), &self.args.http, now)
            .await?;
        view.incarnation.store(incarnation, Ordering::Release);
        info!(node = view.node_id(), incarnation, "joined the cluster");
        Ok(())
    }

    fn leased_per_minute(&mut self, now: Millis) -> i64 {
        let total = self.args.store.items_leased();
        self.leased.push_back((now, total));
        while self.leased.len() > 2 && self.leased[1].0 <= now - 60_000 {
            self.leased.pop_front();
        }
        let (_, first) = self.leased.front().copied().unwrap_or((now, total));
        total.saturating_sub(first) as i64
    }

    async fn tick(&mut self) -> Result<(), ActorProcessingErr> {
        let now = self.args.clock.now();
        let robots = self
            .args
            .parts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |p| p.pulses.connected() as i64);
        let beat = NodeBeat {
            now,
            robots,
            leased_per_minute: self.leased_per_minute(now),
        };
        let store = &self.args.store;
        let view = std::sync::Arc::clone(&self.args.view);
        if !store
            .node_heartbeat(view.node_id(), view.incarnation(), beat)
            .await?
        {
            // Declared dead while it could not heartbeat (frozen, cut off from the store): its
            // robots were released or moved. End every session and start afresh.
            warn!(
                node = view.node_id(),
                incarnation = view.incarnation(),
                "this node was declared dead by the cluster; fencing: ending its sessions \
                 and joining again"
            );
            view.leads.store(false, Ordering::Release);
            self.args.supervisor.send_message(SupervisorMsg::Fence)?;
            self.join().await?;
        }
        // The heartbeat waits while a `ws://` store reconnects: read the time again.
        let now = self.args.clock.now();
        let dead_after = self.dead_after();
        if self.last_beat.is_some_and(|at| now - at > dead_after) {
            warn!(
                out_of_reach_ms = now - self.last_beat.unwrap_or(now),
                "the store was out of reach for longer than the dead-node time; no node is \
                 declared dead until the others have had time to heartbeat again"
            );
            self.grace_until = now + dead_after;
        }
        self.last_beat = Some(now);
        let in_grace = now < self.grace_until;
        let leads = store
            .hold_singleton(
                HOUSEKEEPING,
                view.node_id(),
                view.incarnation(),
                now,
                dead_after,
            )
            .await?;
        if leads != view.leads.swap(leads, Ordering::AcqRel) {
            info!(node = view.node_id(), leads, "housekeeping role changed");
        }
        if leads && !in_grace {
            for node in store
                .declare_dead_nodes(view.node_id(), now - dead_after)
                .await?
            {
                warn!(
                    node,
                    "node declared dead: no heartbeat within the dead-node time"
                );
            }
            store.prune_events(now - EVENT_KEPT).await?;
        }
        let alive = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.dead && (in_grace || n.heartbeat_at >= now - dead_after))
            .map(|n| n.id)
            .collect();
        view.set_alive(alive);
        self.read_events().await?;
        Ok(())
    }
}

impl MemberState {
    /// Applies what other nodes changed since the last read: a robot with a session here
    /// adapts to new settings, or its session ends when its token was rotated or it was deleted.
    async fn read_events(&mut self) -> Result<(), ActorProcessingErr> {
        let store = &self.args.store;
        let me = self.args.view.node_id().to_string();
        let events = store.events_since(self.events_from - EVENT_OVERLAP).await?;
        let parts = self
            .args
            .parts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for event in events {
            self.events_from = self.events_from.max(event.at);
            if event.node == me || self.seen.contains_key(&event.id) {
                continue;
            }
            self.seen.insert(event.id.clone(), event.at);
            store.forget_robot_token(event.robot);
            let Some(parts) = &parts else { continue };
            if parts.pulses.session(event.robot).is_none() {
                continue;
            }
            match event.kind {
                EventKind::RobotChanged => {
                    if let Some(robot) = store.robot(event.robot).await? {
                        parts
                            .registry
                            .send_message(RobotRegistryMsg::RobotChanged { robot })?;
                    }
                }
                EventKind::RobotRevoked => {
                    info!(
                        robot_id = event.robot,
                        node = event.node,
                        "robot revoked on another node"
                    );
                    parts
                        .registry
                        .send_message(RobotRegistryMsg::RobotRevoked {
                            robot_id: event.robot,
                            before: Some(event.at),
                        })?;
                }
            }
        }
        let keep_from = self.events_from - EVENT_OVERLAP;
        self.seen.retain(|_, at| *at >= keep_from);
        Ok(())
    }
}

impl Actor for Member {
    type Msg = MemberMsg;
    type State = MemberState;
    type Arguments = MemberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(args.period, || MemberMsg::Tick);
        let events_from = args.clock.now();
        let mut state = MemberState {
            args,
            timer,
            leased: VecDeque::new(),
            events_from,
            seen: HashMap::new(),
            last_beat: None,
            grace_until: 0,
        };
        if state.args.view.incarnation() == 0 {
            state.join().await?;
        }
        state.tick().await?;
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
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MemberMsg::Tick => {
                // A store that does not answer is logged; the next tick tries again. If it
                // stays away past the dead-node time, the others fence this node.
                if let Err(err) = state.tick().await {
                    warn!(error = %err, "cluster heartbeat failed; trying again");
                }
            }
        }
        Ok(())
    }
}

/// Marks this node's row dead as it stops, so the others need not wait to take its role.
pub async fn leave(store: &Store, view: &ClusterView) {
    if let Err(err) = store
        .leave_cluster(view.node_id(), view.incarnation())
        .await
    {
        warn!(error = %err, "could not mark this node as left");
    }
}
