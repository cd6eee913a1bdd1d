//! What a robot session asks of dispatch. The session knows dispatch only through this handle,
//! given to it with a WebSocket; the [`crate::dispatcher::Dispatcher`] implements it.

use crate::domain::Robot;
use crate::error::DispatchError;
use crate::lifecycle::{ItemState, RobotAction};
use crate::limits::PayloadLimits;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Dispatch as a robot session sees it.
pub trait DispatchDesk: Send + Sync + std::fmt::Debug {
    /// A sign of life from the robot.
    fn pulse(&self, robot_id: i64);

    /// The robot is ready for work, `capacity` items at once at most when given.
    fn ready<'a>(
        &'a self,
        robot: &'a Robot,
        capacity: Option<i64>,
    ) -> BoxFuture<'a, Result<(), DispatchError>>;

    /// Applies the robot's action to one of its items; returns the item's new state.
    fn act<'a>(
        &'a self,
        robot_id: i64,
        item_id: i64,
        lease: Option<&'a str>,
        action: &'a RobotAction,
    ) -> BoxFuture<'a, Result<ItemState, DispatchError>>;

    /// What a robot may report about an item.
    fn payload_limits(&self) -> &PayloadLimits;
}

/// A shared [`DispatchDesk`].
pub type Desk = Arc<dyn DispatchDesk>;
