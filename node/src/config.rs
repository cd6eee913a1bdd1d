//! Node configuration in one place, layered: defaults < TOML file (`--config`) < `ORCH_*`
//! environment variables < command-line flags; validated before anything starts.

use clap::{Args, Parser, Subcommand};
use orchestrator_actors::StoreConfig;
use orchestrator_actors::csv_ingest::CsvLimits;
use orchestrator_actors::limits::PayloadLimits;
use orchestrator_web::server::ServerLimits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// A configuration problem, reported before the node starts.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// The `orchestrator` command line.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about = "Orchestrator RPA node")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node: HTTP surfaces, dispatch, and the store.
    Serve(Box<ServeArgs>),
    /// Ask a node's /healthz; exit 0 when it answers 200, 1 otherwise (a container health check).
    Health(HealthArgs),
}

/// Flags of `orchestrator health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The node's base address.
    #[arg(long, env = "ORCH_HEALTH_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Flags of `orchestrator serve`; each also reads an `ORCH_*` variable and a TOML key.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, env = "ORCH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "ORCH_LISTEN")]
    pub listen: Option<String>,
    /// Store URL: surrealkv://PATH, mem://, or ws://HOST:PORT [default: surrealkv://./data/orchestrator].
    #[arg(long, env = "ORCH_DB")]
    pub db: Option<String>,
    /// Root user for a ws:// store [default: root].
    #[arg(long, env = "ORCH_DB_USER")]
    pub db_user: Option<String>,
    /// Root password for a ws:// store [default: root].
    #[arg(long, env = "ORCH_DB_PASS", hide_env_values = true)]
    pub db_pass: Option<String>,
    /// Namespace [default: orchestrator].
    #[arg(long, env = "ORCH_DB_NAMESPACE")]
    pub db_namespace: Option<String>,
    /// Database [default: orchestrator].
    #[arg(long, env = "ORCH_DB_DATABASE")]
    pub db_database: Option<String>,
    /// Embedded store: SurrealKV memtable size, the bulk of the node's memory [default: 64MiB].
    #[arg(long, env = "ORCH_DB_MEMTABLE")]
    pub db_memtable: Option<String>,
    /// Embedded store: SurrealKV block cache size [default: 64MiB].
    #[arg(long, env = "ORCH_DB_CACHE")]
    pub db_cache: Option<String>,
    /// Secret for signing login tokens [default: generated once and kept in the store].
    #[arg(long, env = "ORCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How long a login stays valid, e.g. 12h [default: 12h].
    #[arg(long, env = "ORCH_JWT_TTL")]
    pub jwt_ttl: Option<String>,
    /// Largest CSV upload, e.g. 1GiB, 500MB, 1048576 [default: 1GiB].
    #[arg(long, env = "ORCH_MAX_UPLOAD")]
    pub max_upload: Option<String>,
    /// Most columns an uploaded CSV may have [default: 512].
    #[arg(long, env = "ORCH_MAX_COLUMNS")]
    pub max_columns: Option<usize>,
    /// Largest field of an uploaded CSV, e.g. 32KiB [default: 32KiB].
    #[arg(long, env = "ORCH_MAX_FIELD")]
    pub max_field: Option<String>,
    /// Largest row of an uploaded CSV as written in the file, e.g. 64KiB [default: 64KiB].
    #[arg(long, env = "ORCH_MAX_ROW")]
    pub max_row: Option<String>,
    /// Largest observation (or failure message) a robot may report [default: 64KiB].
    #[arg(long, env = "ORCH_MAX_OBSERVATION")]
    pub max_observation: Option<String>,
    /// Largest output a robot may report, as compact JSON [default: 64KiB].
    #[arg(long, env = "ORCH_MAX_OUTPUT")]
    pub max_output: Option<String>,
    /// Deepest nesting of a robot's output [default: 32].
    #[arg(long, env = "ORCH_MAX_OUTPUT_DEPTH")]
    pub max_output_depth: Option<usize>,
    /// A connection must send a complete request head within this long of opening or of its
    /// previous response (slow headers and idle keep-alive) [default: 30s].
    #[arg(long, env = "ORCH_HTTP_IDLE_TIMEOUT")]
    pub http_idle_timeout: Option<String>,
    /// A connection on which nothing moves either way for this long is closed; longer than
    /// the 60 s claim long-poll and the pulse timeout [default: 120s].
    #[arg(long, env = "ORCH_HTTP_IO_TIMEOUT")]
    pub http_io_timeout: Option<String>,
    /// A JSON body must arrive whole within this long; an upload must send data at least this
    /// often [default: 30s].
    #[arg(long, env = "ORCH_HTTP_BODY_TIMEOUT")]
    pub http_body_timeout: Option<String>,
    /// A whole CSV upload must arrive within this long [default: 1h].
    #[arg(long, env = "ORCH_UPLOAD_TIMEOUT")]
    pub upload_timeout: Option<String>,
    /// Most open connections, WebSocket robots included; one more gets a 503 [default: 20000].
    #[arg(long, env = "ORCH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// On SIGTERM, how long requests in flight may take to finish [default: 10s].
    #[arg(long, env = "ORCH_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// A robot silent this long is disconnected, e.g. 30s [default: 30s].
    #[arg(long, env = "ORCH_PULSE_TIMEOUT")]
    pub pulse_timeout: Option<String>,
    /// How long a robot holds an item before it must renew, e.g. 5m [default: 5m].
    #[arg(long, env = "ORCH_LEASE_TTL")]
    pub lease_ttl: Option<String>,
    /// How often silent robots and expired leases are looked for [default: 1s].
    #[arg(long, env = "ORCH_SWEEP_PERIOD")]
    pub sweep_period: Option<String>,
    /// First retry delay after an application failure; doubles per attempt [default: 5s].
    #[arg(long, env = "ORCH_RETRY_BACKOFF")]
    pub retry_backoff: Option<String>,
    /// Items a WebSocket robot holds in standby beyond its capacity, pushed the moment it
    /// reports one done (0 turns standby off) [default: 1].
    #[arg(long, env = "ORCH_WS_STANDBY")]
    pub ws_standby: Option<i64>,
    /// How often robot loads are recounted from the store, as a backstop; a correction is
    /// logged at WARN [default: 10s].
    #[arg(long, env = "ORCH_RECOUNT_PERIOD")]
    pub recount_period: Option<String>,
    /// This node's name in the store and the cluster; set it to keep one identity across
    /// restarts [default: node-<random>].
    #[arg(long, env = "ORCH_NODE_ID")]
    pub node_id: Option<String>,
    /// The HTTP address other nodes and the dashboard show for this node, e.g.
    /// http://10.0.0.5:8000 [default: http://<listen>].
    #[arg(long, env = "ORCH_ADVERTISE")]
    pub advertise: Option<String>,
    /// A node of the cluster without a heartbeat for this long is dead: its robots are released
    /// and its housekeeping role moves; at least three sweep periods [default: 5s].
    #[arg(long, env = "ORCH_DEAD_AFTER")]
    pub dead_after: Option<String>,
    /// Address this node listens on for hints from the other nodes of a cluster, e.g.
    /// 0.0.0.0:7100; needs --cluster-cookie [default: none, no hints].
    #[arg(long, env = "ORCH_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,
    /// host:port the other nodes dial to reach this node's cluster listener
    /// [default: --cluster-listen, unless it is a wildcard address].
    #[arg(long, env = "ORCH_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Shared secret of the cluster's nodes (at least 16 characters); only nodes with the same
    /// cookie exchange hints.
    #[arg(long, env = "ORCH_CLUSTER_COOKIE", hide_env_values = true)]
    pub cluster_cookie: Option<String>,
    /// A staged upload untouched this long was abandoned by a dead node [default: 10m].
    #[arg(long, env = "ORCH_STALE_UPLOAD_AFTER")]
    pub stale_upload_after: Option<String>,
    /// Password of the bootstrap `admin` user, used only when the store has no users.
    #[arg(long, env = "ORCH_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Log filter, e.g. info or orchestrator_actors=debug [default: the node's own events at
    /// info, every crate's warnings].
    #[arg(long, env = "ORCH_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` or `json` (one object per line, for log shippers) [default: text].
    #[arg(long, env = "ORCH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// One INFO line per HTTP request (client, method, path, status, time, request id)
    /// [default: off].
    #[arg(
        long,
        env = "ORCH_ACCESS_LOG",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub access_log: Option<bool>,
    /// Address serving `GET /metrics` (Prometheus text) without sign-in, e.g. 127.0.0.1:9100;
    /// keep it on a private network [default: none, no metrics endpoint].
    #[arg(long, env = "ORCH_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// The log filter when none is set: the node's own events at INFO, every warning, and no
/// start-up internals or per-request lines from dependencies.
pub const DEFAULT_LOG: &str = "warn,orchestrator=info,orchestrator_node=info,\
                               orchestrator_actors=info,orchestrator_web=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The JWT secret of test nodes (long enough to pass the start-up check).
pub const TEST_JWT_SECRET: &str = "test-secret-of-the-orchestrator-suite";

/// Shortest JWT secret accepted: HS256 wants at least its 256-bit output as key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Shortest bootstrap admin password accepted.
pub const MIN_ADMIN_PASSWORD_CHARS: usize = 12;

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub jwt_secret: Option<String>,
    pub jwt_ttl: Duration,
    pub max_upload_bytes: u64,
    /// Timeouts and the connection cap of the HTTP server.
    pub server_limits: ServerLimits,
    /// JSON bodies must arrive within this; uploads must send data at least this often.
    pub body_timeout: Duration,
    /// A whole upload must arrive within this.
    pub upload_timeout: Duration,
    /// What an uploaded CSV may hold.
    pub csv_limits: CsvLimits,
    /// What a robot may report about an item.
    pub payload_limits: PayloadLimits,
    pub pulse_timeout: Duration,
    pub stale_upload_after: Duration,
    pub lease_ttl: Duration,
    pub sweep_period: Duration,
    pub retry_backoff: Duration,
    pub ws_standby: i64,
    /// How often robot loads are recounted from the store (a backstop; see the README).
    pub recount_period: Duration,
    pub node_id: String,
    /// The HTTP address advertised in the cluster (None: `http://<bound address>`).
    pub advertise: Option<String>,
    pub dead_after: Duration,
    /// Where this node exchanges hints with the other nodes (None: it does not).
    pub cluster: Option<ClusterConfig>,
    pub admin_password: Option<String>,
    pub log: String,
    pub log_format: LogFormat,
    /// One log line per HTTP request.
    pub access_log: bool,
    /// Where `GET /metrics` is served (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
}

/// The cluster listener of a node that exchanges hints with the others.
#[derive(Clone)]
pub struct ClusterConfig {
    pub listen: SocketAddr,
    /// `host:port` the other nodes dial.
    pub advertise: String,
    pub cookie: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Shortest cluster cookie accepted.
pub const MIN_CLUSTER_COOKIE_CHARS: usize = 16;

impl NodeConfig {
    /// A node on an in-memory store and a free loopback port, for tests.
    pub fn for_tests() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: StoreConfig::memory(),
            jwt_secret: Some(TEST_JWT_SECRET.into()),
            jwt_ttl: Duration::from_secs(3600),
            max_upload_bytes: 1 << 30,
            server_limits: ServerLimits::default(),
            body_timeout: Duration::from_secs(30),
            upload_timeout: Duration::from_secs(3_600),
            csv_limits: CsvLimits::default(),
            payload_limits: PayloadLimits::default(),
            pulse_timeout: Duration::from_secs(30),
            stale_upload_after: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(300),
            sweep_period: Duration::from_millis(200),
            retry_backoff: Duration::from_millis(100),
            ws_standby: 1,
            recount_period: Duration::from_secs(2),
            node_id: "test-node".into(),
            advertise: None,
            dead_after: Duration::from_secs(1),
            cluster: None,
            admin_password: Some("admin-password".into()),
            log: "warn".into(),
            log_format: LogFormat::Text,
            access_log: false,
            metrics_listen: None,
        }
    }
}

mod resolve;
pub use resolve::{byte_size, duration};

#[cfg(test)]
mod tests;
