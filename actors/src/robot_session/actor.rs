//! The RobotSession actor.

use crate::store::{LeasedItem, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, Message, RpcReplyPort};
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

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
}

impl Message for RobotSessionMsg {}

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

/// Session state: leases already handed out, and parked claims.
pub struct SessionState {
    args: RobotSessionArgs,
    handed: HashSet<String>,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("robot_id", &self.args.robot_id)
            .field("handed", &self.handed.len())
            .field("waiters", &self.waiters.len())
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
            handed: HashSet::new(),
            waiters: VecDeque::new(),
            next_waiter: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RobotSessionMsg::Deliver { mut items } => {
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
                    if waiter.reply.send(given).is_err() {
                        for key in keys {
                            state.handed.remove(&key);
                        }
                    }
                }
            }
            RobotSessionMsg::Claim { max, wait, reply } => {
                let limit = state.args.capacity.max(max) as i64 * 2;
                let mut leased = state
                    .args
                    .store
                    .leased_items_of(state.args.robot_id, limit)
                    .await?;
                // Forget handed leases that are no longer ASSIGNED (started, finished, lost).
                let live: HashSet<String> = leased.iter().map(LeasedItem::lease_key).collect();
                state.handed.retain(|key| live.contains(key));
                let given = state.take_new(&mut leased, max);
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
        }
        Ok(())
    }
}
