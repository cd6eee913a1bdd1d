//! The handle the web layer and the node use to reach dispatch: it starts the registry and the
//! director, and turns robot requests into store transitions plus the messages that keep the
//! actors' view of load and pending work current. Cheap to clone.

use crate::domain::{Clock, Robot, RobotStatus};
use crate::error::StoreError;
use crate::lifecycle::{ItemState, RobotAction, TransitionError};
use crate::recovery::{self, PolicyDefaults};
use crate::robot_registry::{PulseBoard, RegistryArgs, RobotLoad, RobotRegistry, RobotRegistryMsg};
use crate::robot_session::ws::WsLink;
use crate::robot_session::{RobotSessionMsg, WsAttach};
use crate::store::{LeasedItem, RobotPatch, Store};
use crate::task_director::{TaskDirector, TaskDirectorArgs, TaskDirectorMsg};
use crate::transition_batcher::{ActRequest, BatcherArgs, BatcherMsg, TransitionBatcher};
use ractor::{Actor, ActorRef};
use std::time::Duration;
use thiserror::Error;

/// Timers and identity of a node's dispatch.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub node_id: String,
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
    /// Where dispatch reads the time (leases, pulses, backoff).
    pub clock: Clock,
}

/// Why a dispatch request failed.
#[derive(Debug, Error)]
pub enum DispatchError {
    #[error("item {0} not found")]
    ItemNotFound(i64),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dispatch is unavailable: {0}")]
    Unavailable(String),
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Entry point to the dispatch actors.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    registry: ActorRef<RobotRegistryMsg>,
    director: ActorRef<TaskDirectorMsg>,
    batcher: ActorRef<BatcherMsg>,
    pulses: PulseBoard,
    config: DispatchConfig,
}

impl Dispatcher {
    /// Starts the registry and the director, rebuilding task queues from the store.
    pub async fn start(store: Store, config: DispatchConfig) -> Result<Dispatcher, DispatchError> {
        let defaults = PolicyDefaults {
            lease_ttl: config.lease_ttl,
            backoff_base: config.backoff_base,
        };
        let pulses = PulseBoard::default();
        let (registry, _) = Actor::spawn(
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
            },
        )
        .await
        .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        // The batcher writes every item change, leases included, so it starts first; it learns
        // of the director once that exists, before any robot action can reach it.
        let (batcher, _) = Actor::spawn(
            None,
            TransitionBatcher,
            BatcherArgs {
                store: store.clone(),
                clock: config.clock.clone(),
                defaults,
                registry: registry.clone(),
                delay: config.dispatch_delay,
            },
        )
        .await
        .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        let (director, _) = Actor::spawn(
            None,
            TaskDirector,
            TaskDirectorArgs {
                store: store.clone(),
                registry: registry.clone(),
                batcher: batcher.clone(),
                default_lease_ttl: config.lease_ttl,
                clock: config.clock.clone(),
            },
        )
        .await
        .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        registry
            .send_message(RobotRegistryMsg::AttachDirector {
                director: director.clone(),
            })
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        batcher
            .send_message(BatcherMsg::AttachDirector {
                director: director.clone(),
            })
            .map_err(|e| DispatchError::Unavailable(e.to_string()))?;
        Ok(Dispatcher {
            store,
            registry,
            director,
            batcher,
            pulses,
            config,
        })
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
        if let Some(session) = self.pulses.session(robot.id) {
            self.pulse(robot.id);
            return Ok(session);
        }
        let robot = robot.clone();
        // A robot without a session here has its load counted now, outside the registry.
        let in_flight = self.store.robot_in_flight_count(robot.id).await?;
        self.registry
            .call(
                |reply| RobotRegistryMsg::Connect {
                    robot,
                    in_flight,
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
        self.pulses.record(robot_id, self.config.clock.now());
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
        if robot.status != RobotStatus::Active {
            let patch = RobotPatch {
                status: Some(RobotStatus::Active),
                ..RobotPatch::default()
            };
            if let Some(updated) = self.store.update_robot(robot.id, &patch).await? {
                robot = updated;
            }
        }
        self.registry
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
        let lease = lease.map(str::to_string);
        let action = action.clone();
        self.batcher
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

    /// A task was uploaded or reopened: start dispatching it.
    pub fn task_ready(&self, task_id: i64) {
        let _ = self
            .director
            .send_message(TaskDirectorMsg::Activate { task_id });
    }

    /// Cancels a task: dispatch stops and unstarted items go back to PENDING. `false` when the
    /// task was not dispatchable.
    pub async fn cancel(&self, task_id: i64) -> Result<bool, DispatchError> {
        let now = self.config.clock.now();
        if !self.store.cancel_task(task_id, now).await? {
            return Ok(false);
        }
        let _ = self
            .director
            .send_message(TaskDirectorMsg::Cancelled { task_id });
        let released =
            recovery::release_unstarted_of_task(&self.store, task_id, self.defaults(), now).await?;
        for (robot_id, count) in released.left_flight {
            let _ = self
                .registry
                .send_message(RobotRegistryMsg::ItemsLeftFlight { robot_id, count });
        }
        for (robot_id, item_ids) in released.revoked {
            let _ = self
                .registry
                .send_message(RobotRegistryMsg::Revoke { robot_id, item_ids });
        }
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

    /// A robot's settings changed (status, capacity, processes).
    pub fn robot_changed(&self, robot: &Robot) {
        let _ = self.registry.send_message(RobotRegistryMsg::RobotChanged {
            robot: robot.clone(),
        });
    }

    /// A robot was deleted or its token rotated.
    pub fn robot_revoked(&self, robot_id: i64) {
        let _ = self
            .registry
            .send_message(RobotRegistryMsg::RobotRevoked { robot_id });
    }

    /// Loads of robots connected to this node.
    pub async fn loads(&self) -> Result<Vec<RobotLoad>, DispatchError> {
        self.registry
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

    /// Stops the actors (sessions with them); leases stay in the store.
    pub async fn shutdown(&self) {
        let _ = self
            .batcher
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let _ = self
            .director
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        let _ = self
            .registry
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}
