//! The orchestration core: the domain model, the SurrealDB store, CSV ingest, and (as dispatch
//! lands) the ractor actors that parcel items out to robots.
//!
//! ```text
//!   web (warp) ──► ingest ──► csv_ingest (parser)
//!        │            │
//!        └────────────┴──► store ──► SurrealDB (surrealkv:// | mem:// | ws://)
//! ```

pub mod accept;
pub mod cluster;
pub mod cluster_view;
pub mod codes;
pub mod csv_ingest;
pub mod dispatch_config;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod gather;
pub mod hints;
pub mod ingest;
pub mod lifecycle;
pub mod limits;
pub mod mailbox;
pub mod peer_listener;
pub mod recovery;
pub mod retry;
pub mod robot_registry;
pub mod robot_session;
pub mod security;
pub mod store;
pub mod supervisor;
pub mod task_director;
pub mod transition_batcher;
pub mod upload_sweeper;

pub use error::StoreError;
pub use store::{Store, StoreConfig};
