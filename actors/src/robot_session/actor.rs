//! The RobotSession actor.

use super::desk::Desk;
use super::ws::{self, Outbound, WsLink};
use crate::domain::{ItemStatus, Millis, Robot};
use crate::error::StoreError;
use crate::lifecycle::RobotAction;
use crate::robot_registry::RobotRegistryMsg;
use crate::store::{LeasedItem, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message, RpcReplyPort};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

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
    /// How many items the robot works on at once (its capacity, narrowed by its `ready`).
    Limits { window: usize },
    /// The robot's frame reported an item done (completed, failed or released): its slot is
    /// free, and a standby item goes out now, before the report is written.
    Finished { item_id: i64, lease_id: String },
    /// A written transition took the item out of the robot's hands (any cause).
    Left {
        item_id: i64,
        lease_id: Option<String>,
    },
    /// Robots elsewhere sit idle: hand back standby items of these processes (`None`: all).
    Withdraw { processes: Option<Vec<i64>> },
    /// Sweep tick: hand back standby items past half their lease, before it can expire.
    Expiring { now: Millis },
    /// The node is stopping: hand back standby, close the WebSocket telling the robot to
    /// reconnect, answer parked claims (empty), reply, and stop.
    Shutdown { reply: RpcReplyPort<()> },
}

impl Message for RobotSessionMsg {}

/// What a session needs to serve a WebSocket.
#[derive(Debug)]
pub struct WsAttach {
    pub robot: Robot,
    pub link: WsLink,
    /// Where the robot's frames go (actions, pulses, ready).
    pub dispatcher: Desk,
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
    /// Told when a WebSocket attaches or goes (it sizes the robot's standby).
    pub registry: ActorRef<RobotRegistryMsg>,
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

/// A connection dropped without a close (its session was killed) stops reading too: its
/// reader holds a sender, and the socket stays open while any sender lives.
impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Queues `frame`; `false` when the robot stopped reading (the queue is full) or left.
    /// Queues `frame` for the connection's writer: `Err(true)` when the queue is full (the
    /// robot stopped reading), `Err(false)` when the connection is already gone.
    fn push(&self, frame: Outbound) -> Result<(), bool> {
        self.outbound
            .try_send(frame)
            .map_err(|err| matches!(err, tokio::sync::mpsc::error::TrySendError::Full(_)))
    }

    fn close(self, reason: &str) {
        // A full or closed queue: the reader is aborted next, which ends the connection anyway.
        let _ = self.outbound.try_send(Outbound::Close(reason.into()));
        self.reader.abort();
    }

    fn restart(self, reason: &str) {
        // A full or closed queue: the reader is aborted next, which ends the connection anyway.
        let _ = self.outbound.try_send(Outbound::Restart(reason.into()));
        self.reader.abort();
    }
}

/// Session state: items delivered and not yet claimed, leases already handed out, parked
/// claims, and the WebSocket if one is open.
pub struct SessionState {
    args: RobotSessionArgs,
    /// Items leased to the robot and delivered here, not handed out yet (REST claims take
    /// them without reading the store). On a WebSocket these are the robot's standby: pushed
    /// as soon as the window has room.
    mailbox: Vec<LeasedItem>,
    /// When claims last read the robot's leased items from the store.
    synced_at: Option<Instant>,
    /// Leases handed out, by item: claimed over REST, or pushed over the WebSocket and not
    /// reported done yet.
    handed: HashMap<i64, String>,
    /// Items pushed at once over a WebSocket.
    window: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    ws: Option<Connection>,
    next_conn: u64,
    /// Reaches the store's transitions, to hand standby items back (kept from the first
    /// WebSocket; a session that never had one holds no standby).
    dispatcher: Option<Desk>,
    /// Standby items found in the store when the WebSocket connected: an earlier connection
    /// (on this node or another) may have shown them to the robot, which may be working on
    /// them, so they are never handed back; they are pushed when the window has room, or stay
    /// the robot's until it is lost.
    maybe_shown: HashSet<i64>,
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
            if self.is_handed(&item) {
                continue;
            }
            if out.len() < max {
                self.handed.insert(item.id, item.lease_id.clone());
                out.push(item);
            } else {
                rest.push(item);
            }
        }
        *items = rest;
        out
    }

    fn is_handed(&self, item: &LeasedItem) -> bool {
        self.handed.get(&item.id) == Some(&item.lease_id)
    }

    /// Forgets a handed lease; `true` when it was handed (its slot is free now).
    fn forget_handed(&mut self, item_id: i64, lease_id: Option<&str>) -> bool {
        match self.handed.get(&item_id) {
            Some(held) if lease_id.is_none_or(|l| l == held) => {
                self.handed.remove(&item_id);
                true
            }
            _ => false,
        }
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
        self.handed
            .retain(|id, lease| live.contains(&format!("{id}:{lease}")));
        self.mailbox.retain(|item| live.contains(&item.lease_key()));
        let queued: HashSet<String> = self.mailbox.iter().map(LeasedItem::lease_key).collect();
        leased.retain(|item| !self.is_handed(item) && !queued.contains(&item.lease_key()));
        fill_process_ids(&self.args.store, &mut leased).await?;
        self.mailbox.extend(leased);
        self.mailbox.sort_by_key(|item| item.id);
        self.synced_at = Some(Instant::now());
        Ok(())
    }

    /// Pushes mailbox items over the WebSocket while the robot's window has room; the rest
    /// wait as standby. A robot that stopped reading is disconnected: its leases stay, and it
    /// gets them again when it reconnects.
    fn fill_window(&mut self) {
        if self.ws.is_none() || self.mailbox.is_empty() {
            return;
        }
        let room = self.window.saturating_sub(self.handed.len());
        if room == 0 {
            return;
        }
        let mut mailbox = std::mem::take(&mut self.mailbox);
        let given = self.take_new(&mut mailbox, room);
        self.mailbox = mailbox;
        self.push(given);
    }

    fn push(&mut self, given: Vec<LeasedItem>) {
        if given.is_empty() {
            return;
        }
        let Some(conn) = &self.ws else { return };
        if let Err(full) = conn.push(ws::items_frame(&given)) {
            // A robot that dropped its connection is not a slow reader: its session ends as
            // the closed socket is noticed; only a full queue is worth a warning.
            if full {
                warn!(
                    robot_id = self.args.robot_id,
                    "robot is not reading its WebSocket; disconnecting it"
                );
            } else {
                debug!(
                    robot_id = self.args.robot_id,
                    "robot's WebSocket already closed"
                );
            }
            for item in &given {
                self.handed.remove(&item.id);
            }
            if let Some(conn) = self.ws.take() {
                conn.close("too slow: the server's queue for this connection is full");
            }
        }
    }

    /// Hands standby items back to the queue (they were leased but never shown to the robot:
    /// not an attempt). Takes the mailbox items `pick` selects, and waits until the releases are
    /// written: a WebSocket that attaches next reads the robot's held items from the store, and
    /// must not find (and push) an item that is on its way back.
    async fn give_back(&mut self, pick: impl Fn(&LeasedItem) -> bool) {
        let Some(dispatcher) = self.dispatcher.clone() else {
            return;
        };
        let maybe_shown = &self.maybe_shown;
        let (back, keep): (Vec<LeasedItem>, Vec<LeasedItem>) = std::mem::take(&mut self.mailbox)
            .into_iter()
            .partition(|item| pick(item) && !maybe_shown.contains(&item.id));
        self.mailbox = keep;
        if back.is_empty() {
            return;
        }
        let robot_id = self.args.robot_id;
        debug!(robot_id, items = back.len(), "standby items handed back");
        // The releases join one batch. A lease that changed meanwhile (revoked, expired) is
        // refused: nothing to hand back then.
        futures_util::future::join_all(back.iter().map(|item| {
            dispatcher.act(
                robot_id,
                item.id,
                Some(&item.lease_id),
                &RobotAction::Release,
            )
        }))
        .await;
    }

    fn streaming(&self, on: bool) {
        crate::mailbox::tell(
            &self.args.registry,
            RobotRegistryMsg::Streaming {
                robot_id: self.args.robot_id,
                on,
            },
        );
    }

    /// Items leased to the robot: pushed on its WebSocket, given to parked claims, or kept
    /// for the next claim.
    fn deliver(&mut self, mut items: Vec<LeasedItem>) {
        items.retain(|item| !self.is_handed(item));
        if self.ws.is_some() {
            self.mailbox.extend(items);
            self.fill_window();
            return;
        }
        while !items.is_empty() {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            let given = self.take_new(&mut items, waiter.max);
            if given.is_empty() {
                self.waiters.push_front(waiter);
                break;
            }
            // A waiter that gave up (closed port) loses nothing: its items stay leased
            // and are handed to the next claim.
            let ids: Vec<i64> = given.iter().map(|item| item.id).collect();
            if let Err(err) = waiter.reply.send(given) {
                for id in ids {
                    self.handed.remove(&id);
                }
                if let ractor::MessagingErr::SendErr(given) = err {
                    self.mailbox.extend(given);
                }
            }
        }
        // What no connection or waiter took waits for the next claim.
        self.mailbox.extend(items);
    }

    /// A REST claim: answered with what is here, or parked for up to `wait`.
    async fn claim(
        &mut self,
        myself: &ActorRef<RobotSessionMsg>,
        max: usize,
        wait: Duration,
        reply: RpcReplyPort<Vec<LeasedItem>>,
    ) -> Result<(), ActorProcessingErr> {
        if self.needs_sync(max) {
            self.sync().await?;
        }
        let mut mailbox = std::mem::take(&mut self.mailbox);
        let given = self.take_new(&mut mailbox, max);
        self.mailbox = mailbox;
        if !given.is_empty() || wait.is_zero() {
            crate::mailbox::answer(reply, given);
        } else {
            self.next_waiter += 1;
            let id = self.next_waiter;
            self.waiters.push_back(Waiter { id, max, reply });
            myself.send_after(wait, move || RobotSessionMsg::WaitOver { waiter: id });
        }
        Ok(())
    }

    /// Takes the robot's WebSocket (replacing an older one) and sends what the robot holds.
    async fn attach_ws(
        &mut self,
        myself: &ActorRef<RobotSessionMsg>,
        attach: WsAttach,
    ) -> Result<(), ActorProcessingErr> {
        let WsAttach {
            robot,
            link,
            dispatcher,
            ping_every,
        } = attach;
        self.dispatcher = Some(dispatcher.clone());
        if let Some(old) = self.ws.take() {
            old.close("replaced by a newer connection of the same robot");
        }
        self.next_conn += 1;
        let id = self.next_conn;
        let WsLink { inbound, outbound } = link;
        let reader = {
            let outbound = outbound.clone();
            let myself = myself.clone();
            tokio::spawn(async move {
                let link = ws::ReaderLink {
                    inbound,
                    outbound,
                    session: myself.clone(),
                };
                ws::read_frames(robot, dispatcher, link, ping_every).await;
                crate::mailbox::tell(&myself, RobotSessionMsg::Detached { conn: id });
            })
        };
        self.ws = Some(Connection {
            id,
            outbound,
            reader,
        });
        info!(
            robot_id = self.args.robot_id,
            "robot connected by WebSocket"
        );
        // A new connection knows nothing yet: send what the robot holds, items it
        // started first (all of them: it is working on them), then the rest up to its
        // window; what is left waits as standby.
        self.handed.clear();
        self.mailbox.clear();
        let mut held = self
            .args
            .store
            .held_items_of(self.args.robot_id, MAX_HELD)
            .await?;
        fill_process_ids(&self.args.store, &mut held).await?;
        held.sort_by_key(|item| (item.status != ItemStatus::Started, item.id));
        let started = held
            .iter()
            .take_while(|item| item.status == ItemStatus::Started)
            .count();
        let room = self.window.saturating_sub(started);
        let waiting = held.split_off((started + room).min(held.len()));
        self.maybe_shown = waiting.iter().map(|item| item.id).collect();
        self.mailbox = waiting;
        let mut resent = held;
        let given = self.take_new(&mut resent, usize::MAX);
        self.push(given);
        self.streaming(true);
        Ok(())
    }

    /// Items taken from the robot (cancel, another node): forgotten, and the robot told of
    /// those it was shown.
    fn revoke(&mut self, item_ids: Vec<i64>) {
        let revoked: HashSet<i64> = item_ids.iter().copied().collect();
        self.mailbox.retain(|item| !revoked.contains(&item.id));
        // The robot hears only of items it was shown; standby simply goes away.
        let shown: Vec<i64> = item_ids
            .iter()
            .copied()
            .filter(|id| self.handed.contains_key(id))
            .collect();
        self.handed.retain(|id, _| !revoked.contains(id));
        if let Some(conn) = &self.ws
            && !shown.is_empty()
        {
            // A connection that cannot take the frame is being closed; the robot resumes from the store.
            let _ = conn.push(ws::revoke_frame(&shown));
        }
        self.fill_window();
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
            window: args.capacity,
            args,
            mailbox: Vec::new(),
            maybe_shown: HashSet::new(),
            synced_at: None,
            handed: HashMap::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
            ws: None,
            next_conn: 0,
            dispatcher: None,
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
            RobotSessionMsg::Deliver { items } => state.deliver(items),
            RobotSessionMsg::Claim { max, wait, reply } => {
                state.claim(&myself, max, wait, reply).await?
            }
            RobotSessionMsg::WaitOver { waiter } => {
                if let Some(pos) = state.waiters.iter().position(|w| w.id == waiter)
                    && let Some(w) = state.waiters.remove(pos)
                {
                    crate::mailbox::answer(w.reply, Vec::new());
                }
            }
            RobotSessionMsg::AttachWs(attach) => state.attach_ws(&myself, *attach).await?,
            RobotSessionMsg::Detached { conn } => {
                if state.ws.as_ref().is_some_and(|c| c.id == conn) {
                    state.ws = None;
                    info!(robot_id = state.args.robot_id, "robot's WebSocket closed");
                    state.streaming(false);
                    // The robot never saw its standby: back to the queue, not an attempt.
                    state.give_back(|_| true).await;
                }
            }
            RobotSessionMsg::Revoke { item_ids } => state.revoke(item_ids),
            RobotSessionMsg::Limits { window } => {
                state.window = window;
                state.fill_window();
            }
            RobotSessionMsg::Finished { item_id, lease_id } => {
                if state.forget_handed(item_id, Some(&lease_id)) {
                    state.fill_window();
                }
            }
            RobotSessionMsg::Left { item_id, lease_id } => {
                state
                    .mailbox
                    .retain(|item| item.id != item_id || lease_id.as_ref() != Some(&item.lease_id));
                if state.forget_handed(item_id, lease_id.as_deref()) {
                    state.fill_window();
                }
            }
            RobotSessionMsg::Withdraw { processes } => {
                if state.ws.is_some() {
                    state
                        .give_back(|item| match (&processes, item.process_id) {
                            (None, _) => true,
                            (Some(processes), Some(process)) => processes.contains(&process),
                            (Some(_), None) => false,
                        })
                        .await;
                }
            }
            RobotSessionMsg::Shutdown { reply } => {
                if state.ws.is_some() {
                    state.give_back(|_| true).await;
                }
                if let Some(conn) = state.ws.take() {
                    conn.restart("the node is shutting down; reconnect");
                }
                for waiter in state.waiters.drain(..) {
                    crate::mailbox::answer(waiter.reply, Vec::new());
                }
                crate::mailbox::answer(reply, ());
                myself.stop(Some("node shutting down".into()));
            }
            RobotSessionMsg::Expiring { now } => {
                if state.ws.is_some() {
                    state
                        .give_back(|item| {
                            item.leased_at
                                .is_none_or(|at| now - at >= (item.lease_expires_at - at) / 2)
                        })
                        .await;
                }
            }
        }
        Ok(())
    }
}
