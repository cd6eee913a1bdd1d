//! The RobotRegistry: one per node. It supervises one RobotSession per connected robot, tracks
//! load and pulses, and runs dispatch rounds that grant robot capacity to tasks with pending work.
//!
//! ```text
//!   web ──Connect/Ready──► RobotRegistry ──Lease{grants}──► TaskActor
//!   batcher ──ItemLeft───►   │   ▲ TaskDemand / GrantsSettled    │
//!                            ├── RobotSession (per robot) ◄─Deliver┘
//!                            │     ▲ Limits, Left, Withdraw, Expiring; Streaming ──► registry
//!                            └── Sweep (timer): silent robots, expired leases, aging standby
//!   web ──frame──► PulseBoard ◄──read at every sweep── RobotRegistry
//! ```

mod actor;
pub mod model;
mod pulses;

pub use actor::{RegistryArgs, RobotLoad, RobotRegistry, RobotRegistryMsg};
pub use pulses::PulseBoard;
