//! Three `orchestrator` processes on one `surreal` server, all on loopback with short timers:
//! they start together on an empty database, keep one housekeeping node, stop leasing a task
//! cancelled on another node, release the robots of a killed node and finish its fleet's work,
//! and fence a node that was frozen past the dead-node time.
//!
//! The node binary is looked for next to `surreal` (both are built by `cargo test
//! --workspace`). The tests take turns: each runs four servers and a fleet on a 2-core host.

#[path = "../support/mod.rs"]
mod support;

mod dispatch;
mod faults;
mod harness;
mod hints;
mod membership;
mod store_errors;
