//! The RobotRegistry: one per node. It supervises one RobotSession per connected robot, tracks
//! load and pulses, and runs dispatch rounds that grant robot capacity to tasks with pending work.
//!
//! ```text
//!   web ──Connect/ItemsLeftFlight──► RobotRegistry ──Lease{grants}──► TaskActor
//!                                      │   ▲ TaskDemand / GrantsSettled    │
//!                                      ├── RobotSession (per robot) ◄─Deliver┘
//!                                      └── Sweep (timer): silent robots, expired leases
//!   web ──frame──► PulseBoard ◄──read at every sweep── RobotRegistry
//! ```

mod actor;
pub mod model;
mod pulses;

pub use actor::{RegistryArgs, RobotLoad, RobotRegistry, RobotRegistryMsg};
pub use pulses::PulseBoard;
