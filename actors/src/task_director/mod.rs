//! The TaskDirector supervises one TaskActor per task this node dispatches. A TaskActor keeps the
//! task's pending queue (scanned from the store by id range, plus items handed back) and leases
//! items to the robots the registry grants it. The lease itself is written by the
//! TransitionBatcher, in the same transaction as the robot actions gathered with it.
//!
//! ```text
//!   TaskDirector ──spawns──► TaskActor(task 7) ──TaskDemand──► RobotRegistry
//!                                  ▲  Lease{grants} ◄──────────────┘
//!                                  └──► TransitionBatcher (Lease) ──► RobotSession.Deliver
//! ```

mod director;
mod queue;
mod task_actor;

pub use director::{TaskDirector, TaskDirectorArgs, TaskDirectorMsg};
pub use queue::PendingQueue;
pub use task_actor::{GrantRequest, TaskActor, TaskArgs, TaskMsg};
