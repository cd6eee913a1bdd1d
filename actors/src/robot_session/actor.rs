//! The RobotSession actor.

use super::ws::{self, Outbound, WsLink};
use crate::dispatcher::Dispatcher;
use crate::domain::Robot;
use crate::error::StoreError;
use crate::store::{LeasedItem, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message, RpcReplyPort};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Most held items re-sent to a reconnecting robot (capacity is at most 1,000).
const MAX_HELD: i64 = 2_000;

/// How long a claim that finds the mailbox empty trusts it before reading the store again.
/// Deliveries are the normal path; the store read catches one that never arrived (items leased
/// before this session existed, or a delivery lost to a session restart).
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// The session actor.
#[derive(Debug)]
pub struct RobotSession;

/// Messages of a [`RobotSession`].
#[derive(Debug)]
pub enum RobotSessionMsg {
    /// Items just leased to this robot.
    Deliver { items: Vec<LeasedItem> },
    /// A REST claim: up to `max` leased items not yet handed out, waiting up to `wait` for some.
    Claim {
        max: usize,
        wait: Duration,
        reply: RpcReplyPort<Vec<LeasedItem>>,
    },
    /// The wait of claim `waiter` ran out.
    WaitOver { waiter: u64 },
    /// A WebSocket connected: push items over it from now on, starting with everything the
    /// robot still holds (a reconnect resumes). Replaces an earlier connection.
    AttachWs(Box<WsAttach>),
    /// WebSocket connection `conn` closed.
    Detached { conn: u64 },
    /// These items were taken from the robot (drained, expired, task cancelled).
    Revoke { item_ids: Vec<i64> },
}

impl Message for RobotSessionMsg {}

/// What a session needs to serve a WebSocket.
#[derive(Debug)]
pub struct WsAttach {
    pub robot: Robot,
    pub link: WsLink,
    /// Where the robot's frames go (actions, pulses, ready).
    pub dispatcher: Dispatcher,
    /// How often the server pings the robot.
    pub ping_every: Duration,
}

/// Start-up arguments.
#[derive(Debug, Clone)]
pub struct RobotSessionArgs {
    pub robot_id: i64,
    pub store: Store,
    /// Upper bound of items read per claim (the robot's capacity).
    pub capacity: usize,
}

struct Waiter {
    id: u64,
    max: usize,
    reply: RpcReplyPort<Vec<LeasedItem>>,
}

/// An open WebSocket.
struct Connection {
    id: u64,
    outbound: tokio::sync::mpsc::Sender<Outbound>,
    reader: JoinHandle<()>,
}

impl Connection {
    /// Queues `frame`; `false` when the robot stopped reading (the queue is full) or left.
    fn push(&self, frame: Outbound) -> bool {
        self.outbound.try_send(frame).is_ok()
    }

    fn close(self, reason: &str) {
        let _ = self.outbound.try_send(Outbound::Close(reason.into()));
        self.reader.abort();
    }
}

/// Session state: items delivered and not yet claimed, leases already handed out, parked
/// claims, and the WebSocket if one is open.
pub struct SessionState {
    args: RobotSessionArgs,
    /// Items leased to the robot and delivered here, not handed out yet (REST claims take
    /// them without reading the store).
    mailbox: Vec<LeasedItem>,
    /// When claims last read the robot's leased items from the store.
    synced_at: Option<Instant>,
    handed: HashSet<String>,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    ws: Option<Connection>,
    next_conn: u64,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("robot_id", &self.args.robot_id)
            .field("mailbox", &self.mailbox.len())
            .field("handed", &self.handed.len())
            .field("waiters", &self.waiters.len())
            .field("websocket", &self.ws.is_some())
            .finish()
    }
}

impl SessionState {
    /// Takes up to `max` items not handed out yet, marking them handed.
    fn take_new(&mut self, items: &mut Vec<LeasedItem>, max: usize) -> Vec<LeasedItem> {
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for item in items.drain(..) {
            if out.len() < max && !self.handed.contains(&item.lease_key()) {
                self.handed.insert(item.lease_key());
                out.push(item);
            } else {
                rest.push(item);
            }
        }
        *items = rest;
        out
    }

    /// Whether a claim must read the store first: the session never has, or the mailbox is
    /// empty and was last checked against the store a while ago, or the record of handed
    /// leases (pruned only by a store read) has grown well past the robot's capacity.
    fn needs_sync(&self, max: usize) -> bool {
        let stale = self.synced_at.is_none_or(|at| at.elapsed() >= RESYNC_AFTER);
        (stale && self.mailbox.is_empty())
            || self.handed.len() > 4 * self.args.capacity.max(max) + 64
    }

    /// Reads the robot's ASSIGNED items from the store: those not handed out join the mailbox,
    /// and handed leases that are no longer ASSIGNED (started, finished, lost) are forgotten.
    async fn sync(&mut self) -> Result<(), StoreError> {
        let limit = (self.args.capacity as i64).max(1) * 2 + self.mailbox.len() as i64;
        let mut leased = self
            .args
            .store
            .leased_items_of(self.args.robot_id, limit)
            .await?;
        let live: HashSet<String> = leased.iter().map(LeasedItem::lease_key).collect();
        self.handed.retain(|key| live.contains(key));
        self.mailbox.retain(|item| live.contains(&item.lease_key()));
        let queued: HashSet<String> = self.mailbox.iter().map(LeasedItem::lease_key).collect();
        leased.retain(|item| {
            !self.handed.contains(&item.lease_key()) && !queued.contains(&item.lease_key())
        });
        fill_process_ids(&self.args.store, &mut leased).await?;
        self.mailbox.extend(leased);
        self.mailbox.sort_by_key(|item| item.id);
        self.synced_at = Some(Instant::now());
        Ok(())
    }

    /// Pushes `items` not handed out yet over the WebSocket. A robot that stopped reading is
    /// disconnected: its leases stay, and it gets them again when it reconnects.
    fn push_items(&mut self, items: &mut Vec<LeasedItem>) {
        let given = self.take_new(items, usize::MAX);
        if given.is_empty() {
            return;
        }
        let Some(conn) = &self.ws else { return };
        if !conn.push(ws::items_frame(&given)) {
            warn!(
                robot_id = self.args.robot_id,
                "robot is not reading its WebSocket; disconnecting it"
            );
            for item in &given {
                self.handed.remove(&item.lease_key());
            }
            if let Some(conn) = self.ws.take() {
                conn.close("too slow: the server's queue for this connection is full");
            }
        }
    }
}

/// Fills in each item's process (items store their task, robots want the process too).
pub(crate) async fn fill_process_ids(
    store: &Store,
    items: &mut [LeasedItem],
) -> Result<(), StoreError> {
    let mut processes = HashMap::new();
    for item in items.iter_mut().filter(|i| i.process_id.is_none()) {
        let process = match processes.get(&item.task_id) {
            Some(process) => *process,
            None => {
                let process = store.task(item.task_id).await?.map(|t| t.process_id);
                processes.insert(item.task_id, process);
                process
            }
        };
        item.process_id = process;
    }
    Ok(())
}

impl LeasedItem {
    fn lease_key(&self) -> String {
        format!("{}:{}", self.id, self.lease_id)
    }
}

impl Actor for RobotSession {
    type Msg = RobotSessionMsg;
    type State = SessionState;
    type Arguments = RobotSessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SessionState {
            args,
            mailbox: Vec::new(),
            synced_at: None,
            handed: HashSet::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            ws: None,
            next_conn: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(conn) = state.ws.take() {
            conn.close("session ended");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RobotSessionMsg::Deliver { mut items } => {
                items.retain(|item| !state.handed.contains(&item.lease_key()));
                if state.ws.is_some() {
                    state.push_items(&mut items);
                }
                while !items.is_empty() {
                    let Some(waiter) = state.waiters.pop_front() else {
                        break;
                    };
                    let given = state.take_new(&mut items, waiter.max);
                    if given.is_empty() {
                        state.waiters.push_front(waiter);
                        break;
                    }
                    // A waiter that gave up (closed port) loses nothing: its items stay leased
                    // and are handed to the next claim.
                    let keys: Vec<String> = given.iter().map(LeasedItem::lease_key).collect();
                    if let Err(err) = waiter.reply.send(given) {
                        for key in keys {
                            state.handed.remove(&key);
                        }
                        if let ractor::MessagingErr::SendErr(given) = err {
                            state.mailbox.extend(given);
                        }
                    }
                }
                // What no connection or waiter took waits for the next claim.
                state.mailbox.extend(items);
            }
            RobotSessionMsg::Claim { max, wait, reply } => {
                if state.needs_sync(max) {
                    state.sync().await?;
                }
                let mut mailbox = std::mem::take(&mut state.mailbox);
                let given = state.take_new(&mut mailbox, max);
                state.mailbox = mailbox;
                if !given.is_empty() || wait.is_zero() {
                    let _ = reply.send(given);
                } else {
                    state.next_waiter += 1;
                    let id = state.next_waiter;
                    state.waiters.push_back(Waiter { id, max, reply });
                    myself.send_after(wait, move || RobotSessionMsg::WaitOver { waiter: id });
                }
            }
            RobotSessionMsg::WaitOver { waiter } => {
                if let Some(pos) = state.waiters.iter().position(|w| w.id == waiter)
                    && let Some(w) = state.waiters.remove(pos)
                {
                    let _ = w.reply.send(Vec::new());
                }
            }
            RobotSessionMsg::AttachWs(attach) => {
                let WsAttach {
                    robot,
                    link,
                    dispatcher,
                    ping_every,
                } = *attach;
                if let Some(old) = state.ws.take() {
                    old.close("replaced by a newer connection of the same robot");
                }
                state.next_conn += 1;
                let id = state.next_conn;
                let WsLink { inbound, outbound } = link;
                let reader = {
                    let outbound = outbound.clone();
                    let myself = myself.clone();
                    tokio::spawn(async move {
                        ws::read_frames(robot, dispatcher, inbound, outbound, ping_every).await;
                        let _ = myself.send_message(RobotSessionMsg::Detached { conn: id });
                    })
                };
                state.ws = Some(Connection {
                    id,
                    outbound,
                    reader,
                });
                info!(
                    robot_id = state.args.robot_id,
                    "robot connected by WebSocket"
                );
                // A new connection knows nothing yet: send everything the robot holds.
                state.handed.clear();
                state.mailbox.clear();
                let mut held = state
                    .args
                    .store
                    .held_items_of(state.args.robot_id, MAX_HELD)
                    .await?;
                fill_process_ids(&state.args.store, &mut held).await?;
                state.push_items(&mut held);
            }
            RobotSessionMsg::Detached { conn } => {
                if state.ws.as_ref().is_some_and(|c| c.id == conn) {
                    state.ws = None;
                    info!(robot_id = state.args.robot_id, "robot's WebSocket closed");
                }
            }
            RobotSessionMsg::Revoke { item_ids } => {
                let revoked: HashSet<i64> = item_ids.iter().copied().collect();
                state.mailbox.retain(|item| !revoked.contains(&item.id));
                state.handed.retain(|key| {
                    let id = key.split_once(':').and_then(|(id, _)| id.parse().ok());
                    id.is_none_or(|id| !revoked.contains(&id))
                });
                if let Some(conn) = &state.ws {
                    let _ = conn.push(ws::revoke_frame(&item_ids));
                }
            }
        }
        Ok(())
    }
}
