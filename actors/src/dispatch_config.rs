//! A node's dispatch settings: timers, identity, limits and the clock, handed to every actor
//! of dispatch when it is spawned.

use crate::domain::Clock;
use crate::hints::Hints;
use crate::limits::PayloadLimits;
use std::time::Duration;

/// Timers and identity of a node's dispatch.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub node_id: String,
    /// The HTTP address this node advertises in its cluster row.
    pub http: String,
    /// A node of the cluster without a heartbeat for this long is dead (its robots are
    /// released, its housekeeping role moves).
    pub dead_after: Duration,
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
    /// How often robot loads are recounted from the store (a backstop: a correction is a bug).
    pub recount_period: Duration,
    /// What a robot may report about an item (observation, output).
    pub payload_limits: PayloadLimits,
    /// A staged upload untouched this long was abandoned (the upload sweeper deletes it).
    pub stale_upload_after: Duration,
    /// Where dispatch reads the time (leases, pulses, backoff).
    pub clock: Clock,
    /// How this node hints other nodes of a cluster ([`Hints::alone`] for none).
    pub hints: Hints,
}
