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
//!   Hints (hints.rs) from other nodes make the member read events at once, not at its tick.
//!   RobotRegistry sweep reads ClusterView: leader expires leases and releases robots of
//!   dead nodes; UploadSweeper works only on the leader.
//! ```
//!
//! The store decides everything here; nothing depends on messages between nodes (hints only
//! make a node look sooner). A node that
//! was frozen past `dead_after` finds its heartbeat refused, ends every session it held (their
//! robots were released or have reconnected elsewhere) and joins again as a new incarnation.

use crate::cluster_view::ClusterView;
use crate::domain::{Clock, Millis};
use crate::hints::{Hint, Hints};
use crate::robot_registry::PulseBoard;
use crate::robot_registry::RobotRegistryMsg;
use crate::store::{EventKind, NodeBeat, NodeRow, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
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

/// Messages of the [`Member`].
#[derive(Debug)]
pub enum MemberMsg {
    /// Timer: heartbeat, housekeeping role, dead nodes.
    Tick,
    /// Another node hinted at new event rows: read them now rather than at the next tick.
    ReadEvents,
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
    /// Reaches this node's dispatch (given by the supervisor).
    pub dispatch: DispatchHooks,
    /// The hint transport: its address goes in this node's row, and every tick dials the
    /// alive nodes it is not connected to.
    pub hints: Hints,
}

/// What the member needs of this node's dispatch, as functions the supervisor provides, so
/// that membership does not depend on how dispatch is supervised.
#[derive(Clone)]
pub struct DispatchHooks {
    /// The registry and pulse board running now, if dispatch is up.
    pub current: Arc<dyn Fn() -> Option<(ActorRef<RobotRegistryMsg>, PulseBoard)> + Send + Sync>,
    /// Ends every session and restarts dispatch from the store (this node was declared dead).
    pub fence: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for DispatchHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchHooks")
    }
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
            .join_cluster(
                view.node_id(),
                &self.args.http,
                self.args.hints.advertise(),
                now,
            )
            .await?;
        view.set_incarnation(incarnation);
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
        let robots =
            (self.args.dispatch.current)().map_or(0, |(_, pulses)| pulses.connected() as i64);
        let view = std::sync::Arc::clone(&self.args.view);
        let loads = view.own_loads();
        let beat = NodeBeat {
            now,
            robots,
            leased_per_minute: self.leased_per_minute(now),
            loads: serde_json::to_string(&loads).unwrap_or_else(|_| "[]".into()),
        };
        let store = &self.args.store;
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
            view.set_leads(false);
            (self.args.dispatch.fence)();
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
        if leads != view.set_leads(leads) {
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
        let alive: Vec<NodeRow> = store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| !n.dead && (in_grace || n.heartbeat_at >= now - dead_after))
            .collect();
        view.set_alive(alive.iter().map(|n| n.id.clone()).collect());
        // The others' load summaries as their rows hold them (the hints bring them sooner).
        for node in &alive {
            view.note_peer_loads(&node.id, node.heartbeat_at, node.load_buckets());
        }
        view.keep_peer_loads_of(&view.alive());
        self.args.hints.send(Hint::Loads {
            node: view.node_id().to_string(),
            at: now,
            buckets: loads,
        });
        self.args
            .hints
            .mesh(
                alive
                    .into_iter()
                    .filter_map(|n| Some((n.id, n.cluster?)))
                    .collect(),
            )
            .await;
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
        let current = (self.args.dispatch.current)();
        for event in events {
            self.events_from = self.events_from.max(event.at);
            if event.node == me || self.seen.contains_key(&event.id) {
                continue;
            }
            self.seen.insert(event.id.clone(), event.at);
            if event.kind != EventKind::ItemsReleased {
                store.forget_robot_token(event.robot);
            }
            let Some((registry, pulses)) = &current else {
                continue;
            };
            if pulses.session(event.robot).is_none() {
                continue;
            }
            match event.kind {
                EventKind::RobotChanged => {
                    if let Some(robot) = store.robot(event.robot).await? {
                        registry.send_message(RobotRegistryMsg::RobotChanged { robot })?;
                    }
                }
                EventKind::RobotRevoked => {
                    info!(
                        robot_id = event.robot,
                        node = event.node,
                        "robot revoked on another node"
                    );
                    registry.send_message(RobotRegistryMsg::RobotRevoked {
                        robot_id: event.robot,
                        before: Some(event.at),
                    })?;
                }
                EventKind::ItemsReleased => {
                    registry.send_message(RobotRegistryMsg::ItemsReleased {
                        robot_id: event.robot,
                        item_ids: event.items,
                        before: event.at,
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
            MemberMsg::ReadEvents => {
                if let Err(err) = state.read_events().await {
                    warn!(error = %err, "reading the cluster's events failed; the next tick tries again");
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
