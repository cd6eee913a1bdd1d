//! The `orchestrator` node: configuration, store bootstrap, actors and the HTTP server, wired
//! together so that `main` stays thin and tests can start a whole node in-process.
//!
//! ```text
//!   NodeConfig ──► Store::open ──► bootstrap admin, JWT secret
//!                       │
//!                       ├──► actors (UploadSweeper, …)
//!                       └──► warp server (web::routes) on `listen`
//! ```

pub mod config;
pub mod files;
pub mod health;

pub use config::{Cli, Command, ConfigError, NodeConfig, ServeArgs};

use orchestrator_actors::dispatch_config::DispatchConfig;
use orchestrator_actors::dispatcher::Dispatcher;
use orchestrator_actors::domain::{Clock, Role};
use orchestrator_actors::hints::{HintConfig, Hints};
use orchestrator_actors::security::{hash_password, random_password, random_secret};
use orchestrator_actors::store::NewUser;
use orchestrator_actors::{Store, StoreError};
use orchestrator_web::jwt::JwtKeys;
use orchestrator_web::{AppParts, AppState, WebConfig};
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start actor: {0}")]
    Actor(String),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    addr: SocketAddr,
    /// The metrics listener's address and server.
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    dispatcher: Dispatcher,
}

/// This node's hints to the other nodes of a cluster: over the cluster port when a cookie is
/// set, none otherwise.
async fn start_hints(
    config: &NodeConfig,
    connections: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Hints, NodeError> {
    match &config.cluster {
        Some(cluster) => Hints::start(HintConfig {
            node_id: config.node_id.clone(),
            listen: cluster.listen,
            advertise: cluster.advertise.clone(),
            cookie: cluster.cookie.clone(),
            budget: Some(connections.clone()),
        })
        .await
        .map_err(|e| NodeError::Actor(e.to_string())),
        None => {
            if config.store.url.starts_with("ws") {
                info!(
                    "no cluster cookie: this node exchanges no hints with other nodes on the \
                     store; it learns of their changes by polling (within a second)"
                );
            }
            Ok(Hints::alone())
        }
    }
}

/// Dispatch's settings from the node's.
fn dispatch_config(config: &NodeConfig, http: String, hints: Hints) -> DispatchConfig {
    DispatchConfig {
        node_id: config.node_id.clone(),
        http,
        dead_after: config.dead_after,
        pulse_timeout: config.pulse_timeout,
        lease_ttl: config.lease_ttl,
        sweep_period: config.sweep_period,
        backoff_base: config.retry_backoff,
        dispatch_delay: Duration::ZERO,
        ws_standby: config.ws_standby,
        recount_period: config.recount_period,
        payload_limits: config.payload_limits,
        stale_upload_after: config.stale_upload_after,
        clock: Clock::system(),
        hints,
    }
}

impl Node {
    /// Opens the store, bootstraps it, starts the actors and begins serving HTTP.
    pub async fn start(mut config: NodeConfig) -> Result<Node, NodeError> {
        config.server_limits.max_connections =
            files::fit(config.server_limits.max_connections).max_connections;
        let connections = orchestrator_web::server::connection_budget(&config.server_limits);
        let store = Store::open(&config.store).await?;
        bootstrap_admin(&store, config.admin_password.as_deref()).await?;
        let secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => {
                store
                    .setting_or_insert("jwt_secret", &random_secret())
                    .await?
            }
        };
        // Bound before dispatch starts, so the cluster row carries the real address.
        let listener = listen(config.listen).map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let hints = start_hints(&config, &connections).await?;
        let advertised = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let dispatcher =
            Dispatcher::start(store.clone(), dispatch_config(&config, advertised, hints))
                .await
                .map_err(|e| NodeError::Actor(e.to_string()))?;
        let state = AppState::new(AppParts {
            store: store.clone(),
            dispatcher: dispatcher.clone(),
            jwt: JwtKeys::new(&secret),
            logins: Default::default(),
            config: WebConfig {
                max_upload_bytes: config.max_upload_bytes,
                max_json_bytes: 1 << 20,
                body_timeout: config.body_timeout,
                upload_timeout: config.upload_timeout,
                csv_limits: config.csv_limits,
                jwt_ttl: config.jwt_ttl,
                pulse_timeout: config.pulse_timeout,
            },
        });
        if orchestrator_web::metrics::install().is_none() {
            warn!("another metrics recorder is installed in this process; /metrics stays empty");
        }
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = futures_util::FutureExt::shared(async move {
            // A dropped sender stops the server too.
            let _ = stop.await;
        });
        let metrics = match config.metrics_listen {
            Some(at) => Some(serve_metrics(at, state.clone(), stop.clone())?),
            None => None,
        };
        let routes = orchestrator_web::routes(state);
        let server = tokio::spawn(orchestrator_web::server::serve(
            listener,
            routes,
            config.server_limits,
            connections,
            config.access_log,
            stop,
        ));
        info!(%addr, store = %config.store.url, node = %config.node_id, "node ready");
        Ok(Node {
            addr,
            metrics,
            store,
            shutdown: Some(shutdown),
            server,
            dispatcher,
        })
    }

    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address `GET /metrics` is served on, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// The node's dispatch handle.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The node's store handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops accepting connections, tells WebSocket robots to reconnect elsewhere (close code
    /// 1012), lets requests in flight finish within the grace period, then stops the actors and
    /// closes the store.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may have ended already.
            let _ = tx.send(());
        }
        self.dispatcher.close_robot_connections().await;
        // The server's task ended; a panic in it was reported where it happened.
        let _ = (&mut self.server).await;
        if let Some((_, metrics)) = self.metrics.take() {
            // The metrics server's task ended; a panic in it was reported where it happened.
            let _ = metrics.await;
        }
        self.dispatcher.shutdown().await;
        self.dispatcher.config().hints.stop();
        self.store.close().await;
        info!("node stopped");
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        info!("shutdown requested");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                // Without a signal handler the node runs until killed.
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        // Without a signal handler the node runs until killed.
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Creates user `admin` on a store with no users. Without a configured password a random one is
/// generated and logged once.
async fn bootstrap_admin(store: &Store, password: Option<&str>) -> Result<(), StoreError> {
    // Nodes starting together on an empty store race here: a lost race is looked at again.
    let mut attempt = 0;
    loop {
        match create_first_admin(store, password).await {
            Err(err) if err.is_retryable() && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            other => return other,
        }
    }
}

async fn create_first_admin(store: &Store, password: Option<&str>) -> Result<(), StoreError> {
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p.to_string(), false),
        None => (random_password(), true),
    };
    let new = NewUser {
        username: "admin".into(),
        password_hash: hash_password(&password),
        role: Role::Admin,
    };
    match store.create_user(&new).await {
        Ok(_) if generated => warn!(
            username = "admin",
            password = %password,
            "created the first admin with a generated password; it is shown only now, change it"
        ),
        Ok(_) => info!(
            username = "admin",
            "created the first admin from ORCH_ADMIN_PASSWORD"
        ),
        // Another node sharing the store created it first (or is creating it right now).
        Err(StoreError::Conflict(_)) => {}
        Err(err) => return Err(err),
    }
    Ok(())
}

/// Serves `GET /metrics` alone on `at` until `stop`, with a small connection cap: scrapers,
/// not robots, connect there.
fn serve_metrics(
    at: SocketAddr,
    state: AppState,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, JoinHandle<()>), NodeError> {
    use warp::Filter;
    let bind = |source| NodeError::Bind { addr: at, source };
    let listener = listen(at).map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    let routes = orchestrator_web::metrics::routes(state)
        .recover(orchestrator_web::error::handle_rejection)
        .unify();
    let limits = orchestrator_web::server::ServerLimits {
        max_connections: 64,
        ..Default::default()
    };
    let permits = orchestrator_web::server::connection_budget(&limits);
    let server = tokio::spawn(orchestrator_web::server::serve(
        listener, routes, limits, permits, false, stop,
    ));
    info!(%addr, "metrics served at /metrics");
    Ok((addr, server))
}

/// Connections the kernel may queue before the node accepts them (capped by
/// `net.core.somaxconn`). Tokio's `bind` asks for 1,024; a fleet of thousands of robots
/// reconnecting at once after a restart overflowed that, and Linux answered some with a reset.
const LISTEN_BACKLOG: u32 = 8_192;

/// The node's listening socket. `TCP_NODELAY` is set on it, and Linux copies it to every
/// accepted connection (warp accepts them itself and sets nothing). Without it, the second of
/// two small WebSocket frames sent back to back (an `ack`, then the next `items`) waited for
/// the robot to acknowledge the first, which a delayed ACK holds up to 40 ms.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() -> std::io::Result<()> {
        let listener = listen("127.0.0.1:0".parse().expect("address"))?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        assert!(
            accepted.nodelay()?,
            "TCP_NODELAY is inherited from the listener"
        );
        drop(client);
        Ok(())
    }
}
