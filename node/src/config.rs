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
    #[error("cannot read config file {path}: {source}")]
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

impl ServeArgs {
    /// Fills what flags and environment left unset from the TOML file, then applies defaults.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<ServeArgs>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => ServeArgs::default(),
        };
        let merged = self.over(file);
        let listen_text = merged.listen.unwrap_or_else(|| "127.0.0.1:8000".into());
        let listen = listen_text.parse().map_err(|e| ConfigError::Invalid {
            setting: "listen",
            message: format!("'{listen_text}' is not an address: {e}"),
        })?;
        let url = merged
            .db
            .unwrap_or_else(|| "surrealkv://./data/orchestrator".into());
        if !(url.starts_with("surrealkv://") && url.len() > "surrealkv://".len()
            || url == "mem://"
            || url.starts_with("ws://")
            || url.starts_with("wss://"))
        {
            return Err(ConfigError::Invalid {
                setting: "db",
                message: format!("'{url}' is not surrealkv://PATH, mem:// or ws://HOST:PORT"),
            });
        }
        let pulse_timeout = duration("pulse_timeout", merged.pulse_timeout, "30s")?;
        let sweep_period = duration("sweep_period", merged.sweep_period, "1s")?;
        let dead_after = duration("dead_after", merged.dead_after, "5s")?;
        if dead_after < sweep_period * 3 {
            return Err(ConfigError::Invalid {
                setting: "dead_after",
                message: format!(
                    "must be at least three sweep periods ({})",
                    humantime::format_duration(sweep_period * 3)
                ),
            });
        }
        let ws_standby = merged.ws_standby.unwrap_or(1);
        if !(0..=100).contains(&ws_standby) {
            return Err(ConfigError::Invalid {
                setting: "ws_standby",
                message: format!("{ws_standby} is not between 0 and 100"),
            });
        }
        Ok(NodeConfig {
            listen,
            store: StoreConfig {
                url,
                username: merged.db_user.unwrap_or_else(|| "root".into()),
                password: merged.db_pass.unwrap_or_else(|| "root".into()),
                namespace: merged.db_namespace.unwrap_or_else(|| "orchestrator".into()),
                database: merged.db_database.unwrap_or_else(|| "orchestrator".into()),
                memtable_bytes: byte_size(
                    "db_memtable",
                    merged.db_memtable.as_deref().unwrap_or("64MiB"),
                )?,
                block_cache_bytes: byte_size(
                    "db_cache",
                    merged.db_cache.as_deref().unwrap_or("64MiB"),
                )?,
            },
            jwt_secret: match merged.jwt_secret.filter(|s| !s.is_empty()) {
                Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => {
                    return Err(ConfigError::Invalid {
                        setting: "jwt_secret",
                        message: format!(
                            "is {} bytes; use at least {MIN_JWT_SECRET_BYTES} random bytes \
                             (or leave it unset to have one generated and kept in the store)",
                            secret.len()
                        ),
                    });
                }
                secret => secret,
            },
            jwt_ttl: duration("jwt_ttl", merged.jwt_ttl, "12h")?,
            max_upload_bytes: byte_size(
                "max_upload",
                merged.max_upload.as_deref().unwrap_or("1GiB"),
            )?,
            server_limits: {
                let limits = ServerLimits {
                    idle_timeout: duration("http_idle_timeout", merged.http_idle_timeout, "30s")?,
                    io_timeout: duration("http_io_timeout", merged.http_io_timeout, "120s")?,
                    max_connections: bounded(
                        "max_connections",
                        merged.max_connections,
                        20_000,
                        1..=1_000_000,
                    )?,
                    grace: duration("shutdown_grace", merged.shutdown_grace, "10s")?,
                };
                // A parked claim waits up to 60 s and a WebSocket robot is pinged every third
                // of the pulse timeout: neither may look like a stalled connection.
                let floor = pulse_timeout.max(Duration::from_secs(60));
                if limits.io_timeout <= floor {
                    return Err(ConfigError::Invalid {
                        setting: "http_io_timeout",
                        message: format!(
                            "must be longer than 60s and than the pulse timeout ({})",
                            humantime::format_duration(pulse_timeout)
                        ),
                    });
                }
                limits
            },
            body_timeout: duration("http_body_timeout", merged.http_body_timeout, "30s")?,
            upload_timeout: duration("upload_timeout", merged.upload_timeout, "1h")?,
            csv_limits: CsvLimits {
                max_columns: bounded("max_columns", merged.max_columns, 512, 1..=100_000)?,
                max_field_bytes: size_or("max_field", merged.max_field, "32KiB")?,
                max_row_bytes: size_or("max_row", merged.max_row, "64KiB")?,
            },
            payload_limits: PayloadLimits {
                max_observation_bytes: size_or("max_observation", merged.max_observation, "64KiB")?,
                max_output_bytes: size_or("max_output", merged.max_output, "64KiB")?,
                // serde_json reads at most 128 levels, and a chunk's text wraps an output in 3.
                max_output_depth: bounded(
                    "max_output_depth",
                    merged.max_output_depth,
                    32,
                    1..=100,
                )?,
            },
            pulse_timeout,
            stale_upload_after: duration("stale_upload_after", merged.stale_upload_after, "10m")?,
            lease_ttl: duration("lease_ttl", merged.lease_ttl, "5m")?,
            sweep_period,
            retry_backoff: duration("retry_backoff", merged.retry_backoff, "5s")?,
            ws_standby,
            recount_period: duration("recount_period", merged.recount_period, "10s")?,
            node_id: merged
                .node_id
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("node-{:06x}", rand_suffix())),
            advertise: match merged.advertise.filter(|s| !s.is_empty()) {
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(ConfigError::Invalid {
                        setting: "advertise",
                        message: format!("'{url}' is not an http:// or https:// address"),
                    });
                }
                url => url,
            },
            dead_after,
            cluster: cluster_config(
                merged.cluster_listen,
                merged.cluster_advertise,
                merged.cluster_cookie,
            )?,
            admin_password: match merged.admin_password.filter(|s| !s.is_empty()) {
                Some(password) if password.chars().count() < MIN_ADMIN_PASSWORD_CHARS => {
                    return Err(ConfigError::Invalid {
                        setting: "admin_password",
                        message: format!(
                            "is {} characters; use at least {MIN_ADMIN_PASSWORD_CHARS} \
                             (or leave it unset to have one generated and printed once)",
                            password.chars().count()
                        ),
                    });
                }
                password => password,
            },
            log: merged
                .log
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_LOG.into()),
            log_format: match merged.log_format.as_deref().unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Invalid {
                        setting: "log_format",
                        message: format!("'{other}' is not text or json"),
                    });
                }
            },
            access_log: merged.access_log.unwrap_or(false),
            metrics_listen: match merged.metrics_listen.filter(|s| !s.is_empty()) {
                Some(text) => Some(text.parse().map_err(|e| ConfigError::Invalid {
                    setting: "metrics_listen",
                    message: format!("'{text}' is not an address: {e}"),
                })?),
                None => None,
            },
        })
    }

    /// `self` wins field by field; `lower` fills the gaps.
    fn over(self, lower: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            listen: self.listen.or(lower.listen),
            db: self.db.or(lower.db),
            db_user: self.db_user.or(lower.db_user),
            db_pass: self.db_pass.or(lower.db_pass),
            db_namespace: self.db_namespace.or(lower.db_namespace),
            db_database: self.db_database.or(lower.db_database),
            db_memtable: self.db_memtable.or(lower.db_memtable),
            db_cache: self.db_cache.or(lower.db_cache),
            jwt_secret: self.jwt_secret.or(lower.jwt_secret),
            jwt_ttl: self.jwt_ttl.or(lower.jwt_ttl),
            max_upload: self.max_upload.or(lower.max_upload),
            http_idle_timeout: self.http_idle_timeout.or(lower.http_idle_timeout),
            http_io_timeout: self.http_io_timeout.or(lower.http_io_timeout),
            http_body_timeout: self.http_body_timeout.or(lower.http_body_timeout),
            upload_timeout: self.upload_timeout.or(lower.upload_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            max_columns: self.max_columns.or(lower.max_columns),
            max_field: self.max_field.or(lower.max_field),
            max_row: self.max_row.or(lower.max_row),
            max_observation: self.max_observation.or(lower.max_observation),
            max_output: self.max_output.or(lower.max_output),
            max_output_depth: self.max_output_depth.or(lower.max_output_depth),
            pulse_timeout: self.pulse_timeout.or(lower.pulse_timeout),
            stale_upload_after: self.stale_upload_after.or(lower.stale_upload_after),
            lease_ttl: self.lease_ttl.or(lower.lease_ttl),
            sweep_period: self.sweep_period.or(lower.sweep_period),
            retry_backoff: self.retry_backoff.or(lower.retry_backoff),
            ws_standby: self.ws_standby.or(lower.ws_standby),
            recount_period: self.recount_period.or(lower.recount_period),
            node_id: self.node_id.or(lower.node_id),
            advertise: self.advertise.or(lower.advertise),
            dead_after: self.dead_after.or(lower.dead_after),
            cluster_listen: self.cluster_listen.or(lower.cluster_listen),
            cluster_advertise: self.cluster_advertise.or(lower.cluster_advertise),
            cluster_cookie: self.cluster_cookie.or(lower.cluster_cookie),
            admin_password: self.admin_password.or(lower.admin_password),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            access_log: self.access_log.or(lower.access_log),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
        }
    }
}

/// The cluster listener from its three settings: all or nothing (the cookie is what turns hints
/// on), with a cookie long enough to be a secret and an address the other nodes can dial.
fn cluster_config(
    listen: Option<String>,
    advertise: Option<String>,
    cookie: Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let listen = listen.filter(|s| !s.is_empty());
    let advertise = advertise.filter(|s| !s.is_empty());
    let Some(cookie) = cookie.filter(|s| !s.is_empty()) else {
        if listen.is_some() || advertise.is_some() {
            return Err(ConfigError::Invalid {
                setting: "cluster_cookie",
                message: "is needed with cluster_listen or cluster_advertise".into(),
            });
        }
        return Ok(None);
    };
    if cookie.chars().count() < MIN_CLUSTER_COOKIE_CHARS {
        return Err(ConfigError::Invalid {
            setting: "cluster_cookie",
            message: format!(
                "is {} characters; use at least {MIN_CLUSTER_COOKIE_CHARS}",
                cookie.chars().count()
            ),
        });
    }
    let Some(listen_text) = listen else {
        return Err(ConfigError::Invalid {
            setting: "cluster_listen",
            message: "is needed with cluster_cookie, e.g. 0.0.0.0:7100".into(),
        });
    };
    let listen: SocketAddr = listen_text.parse().map_err(|e| ConfigError::Invalid {
        setting: "cluster_listen",
        message: format!("'{listen_text}' is not an address: {e}"),
    })?;
    if listen.port() == 0 {
        return Err(ConfigError::Invalid {
            setting: "cluster_listen",
            message: "needs a fixed port: the other nodes dial it".into(),
        });
    }
    let advertise = match advertise {
        Some(addr) => {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConfigError::Invalid {
                    setting: "cluster_advertise",
                    message: format!("'{addr}' is not host:port"),
                });
            }
            addr
        }
        None if listen.ip().is_unspecified() => {
            return Err(ConfigError::Invalid {
                setting: "cluster_advertise",
                message: format!(
                    "is needed when cluster_listen is the wildcard {listen}: the address \
                     other nodes dial"
                ),
            });
        }
        None => listen.to_string(),
    };
    Ok(Some(ClusterConfig {
        listen,
        advertise,
        cookie,
    }))
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default()
        & 0xff_ffff
}

/// A size setting in bytes as `usize`, with its default.
fn size_or(
    setting: &'static str,
    text: Option<String>,
    default: &str,
) -> Result<usize, ConfigError> {
    let bytes = byte_size(setting, text.as_deref().unwrap_or(default))?;
    usize::try_from(bytes).map_err(|_| ConfigError::Invalid {
        setting,
        message: format!("{bytes} bytes is more than this machine can address"),
    })
}

/// A count setting within `range`, with its default.
fn bounded(
    setting: &'static str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        return Err(ConfigError::Invalid {
            setting,
            message: format!(
                "{value} is not between {} and {}",
                range.start(),
                range.end()
            ),
        });
    }
    Ok(value)
}

/// Parses `500ms`, `3s`, `5m`, `12h`; zero is refused.
pub fn duration(
    setting: &'static str,
    text: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = text.unwrap_or_else(|| default.to_string());
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Invalid {
        setting,
        message: format!("'{text}' is not a duration like 500ms, 3s or 5m: {e}"),
    })?;
    if parsed.is_zero() {
        return Err(ConfigError::Invalid {
            setting,
            message: "must be longer than zero".into(),
        });
    }
    Ok(parsed)
}

/// Parses `1048576`, `64KiB`, `500MB`, `1GiB` (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024).
pub fn byte_size(setting: &'static str, text: &str) -> Result<u64, ConfigError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if factor > 0 && n > 0 => Ok(n.saturating_mul(factor)),
        _ => Err(ConfigError::Invalid {
            setting,
            message: format!("'{text}' is not a size like 1048576, 500MB or 1GiB"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            duration("x", Some("500ms".into()), "1s").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            duration("x", None, "5m").ok(),
            Some(Duration::from_secs(300))
        );
        assert!(duration("x", Some("soon".into()), "1s").is_err());
        assert!(duration("x", Some("0s".into()), "1s").is_err());
        assert_eq!(byte_size("x", "1GiB").ok(), Some(1 << 30));
        assert_eq!(byte_size("x", "500MB").ok(), Some(500_000_000));
        assert_eq!(byte_size("x", "1048576").ok(), Some(1 << 20));
        assert!(byte_size("x", "lots").is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9100\"\npulse_timeout = \"3s\"\ndb = \"mem://\"\n",
        )
        .expect("write");
        let flags = ServeArgs {
            config: Some(path),
            pulse_timeout: Some("500ms".into()),
            ..ServeArgs::default()
        };
        let config = flags.resolve().expect("valid");
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.pulse_timeout, Duration::from_millis(500));
        assert_eq!(config.store.url, "mem://");
        assert_eq!(config.jwt_ttl, Duration::from_secs(12 * 3600));
    }

    #[test]
    fn logging_and_metrics_settings_parse_from_flags_env_and_file() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "orchestrator",
            "serve",
            "--db",
            "mem://",
            "--access-log",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9100",
        ])
        .expect("flags");
        let Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        let config = args.resolve().expect("valid");
        assert!(config.access_log);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.metrics_listen, "127.0.0.1:9100".parse().ok());
        assert_eq!(config.log, DEFAULT_LOG);
        // Operators write 1/0, yes/no, on/off in environment files.
        for (text, expected) in [("1", true), ("on", true), ("no", false), ("false", false)] {
            let cli = Cli::try_parse_from(["orchestrator", "serve", "--access-log", text])
                .expect("boolish");
            let Command::Serve(args) = cli.command else {
                panic!("serve");
            };
            assert_eq!(args.access_log, Some(expected), "{text}");
        }
        // TOML, and refusals naming the setting.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "db = \"mem://\"\naccess_log = true\nlog_format = \"xml\"\n",
        )
        .expect("write");
        let err = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("log_format: "), "{err}");
        let err = ServeArgs {
            db: Some("mem://".into()),
            metrics_listen: Some("anywhere".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("metrics_listen: "), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let err = ServeArgs {
            db: Some("postgres://x".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().starts_with("db: "), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        let err = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn weak_secrets_are_refused_at_start() {
        let err = ServeArgs {
            jwt_secret: Some("short-secret".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().starts_with("jwt_secret: is 12 bytes"),
            "{err}"
        );
        let err = ServeArgs {
            admin_password: Some("admin".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("admin_password: is 5 characters"),
            "{err}"
        );
        let ok = ServeArgs {
            jwt_secret: Some("x".repeat(MIN_JWT_SECRET_BYTES)),
            admin_password: Some("correct horse battery".into()),
            ..ServeArgs::default()
        }
        .resolve();
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn cluster_hints_need_a_cookie_a_fixed_port_and_a_dialable_address() {
        let resolve = |listen: Option<&str>, advertise: Option<&str>, cookie: Option<&str>| {
            ServeArgs {
                cluster_listen: listen.map(str::to_string),
                cluster_advertise: advertise.map(str::to_string),
                cluster_cookie: cookie.map(str::to_string),
                ..ServeArgs::default()
            }
            .resolve()
            .map(|c| c.cluster)
        };
        let cookie = Some("a cookie of 24 characters");
        assert!(resolve(None, None, None).expect("alone").is_none());
        let refused = [
            (
                Some("127.0.0.1:7100"),
                None,
                None,
                "cluster_cookie: is needed",
            ),
            (
                Some("127.0.0.1:7100"),
                None,
                Some("short"),
                "cluster_cookie: is 5",
            ),
            (None, None, cookie, "cluster_listen: is needed"),
            (
                Some("127.0.0.1:0"),
                None,
                cookie,
                "cluster_listen: needs a fixed port",
            ),
            (
                Some("0.0.0.0:7100"),
                None,
                cookie,
                "cluster_advertise: is needed",
            ),
            (
                Some("0.0.0.0:7100"),
                Some("n1"),
                cookie,
                "cluster_advertise: 'n1'",
            ),
        ];
        for (listen, advertise, cookie, expected) in refused {
            let err = resolve(listen, advertise, cookie).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err}");
        }
        let on = resolve(Some("0.0.0.0:7100"), Some("n1:7100"), cookie)
            .expect("valid")
            .expect("on");
        assert_eq!((on.listen.port(), on.advertise.as_str()), (7100, "n1:7100"));
        assert!(
            !format!("{on:?}").contains("24 characters"),
            "cookie in Debug"
        );
        let local = resolve(Some("127.0.0.1:7101"), None, cookie)
            .expect("valid")
            .expect("on");
        assert_eq!(local.advertise, "127.0.0.1:7101");
    }
}
