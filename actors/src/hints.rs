//! Hints between the nodes of a cluster: "a task is ready", "a task was cancelled", "read the
//! event rows now", "my robots with room for work" (load summaries). They travel over `ractor_cluster` (a full mesh dialled from the membership
//! rows, authenticated by a shared cookie) and only make other nodes act sooner: every hint
//! names something the store already holds, and every node finds it by polling the store anyway
//! (task directors every second, event rows every sweep). A lost hint costs latency, never a
//! decision; a hint received twice does nothing more.
//!
//! ```text
//!   Dispatcher ──Hints::send──► pg group "orchestrator.hints" ──► HintListener (each peer)
//!                                                                   └─► sink: director / member
//!   Member tick ──Hints::mesh(alive nodes' cluster addresses)──► dial the ones not connected
//! ```
//!
//! `ractor_cluster` documents itself as not production-ready (a reconnect may lose messages,
//! nothing times out a silent peer, its server does not redial): hence the store backstop, the
//! redial at every membership tick, and the counters of hints that reached no peer.
//! Nothing outside this module knows how hints travel. [`tell_items_released`] is the one
//! write-then-hint helper that dispatch shares.

use crate::cluster_view::{LoadBucket, parse_loads};
use crate::domain::Millis;
use crate::store::Store;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage, RactorClusterMessage};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use thiserror::Error;
use tracing::{debug, info, warn};

/// The process group every node's listener joins.
const GROUP: &str = "orchestrator.hints";
/// A peer may not send a frame larger than this (hints are a few dozen bytes).
const MAX_INBOUND_FRAME: u64 = 256 * 1024;
/// How long dialling a peer may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the node server may take to list its sessions.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Something another node should look at in the store now rather than at its next poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// A task was uploaded, reopened or retried: dispatch it.
    TaskReady { task_id: i64 },
    /// A task was cancelled: stop dispatching it, and read the event rows (items released).
    TaskCancelled { task_id: i64 },
    /// New event rows (a robot changed, was revoked, had items released): read them now.
    Events,
    /// `node`'s robots with room for work at `at` (its load summary, also in its membership
    /// row): plan against it now rather than at the next read of the rows.
    Loads {
        node: String,
        at: Millis,
        buckets: Vec<LoadBucket>,
    },
}

/// What is sent over the wire: the hint and the node that sent it.
#[derive(RactorClusterMessage)]
pub enum HintMsg {
    /// See [`Hint::TaskReady`].
    TaskReady(String, i64),
    /// See [`Hint::TaskCancelled`].
    TaskCancelled(String, i64),
    /// See [`Hint::Events`].
    Events(String),
    /// See [`Hint::Loads`]: the time and the summary as JSON.
    Loads(String, i64, String),
}

impl std::fmt::Debug for HintMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (from, hint) = self.parts();
        write!(f, "{hint:?} from {from}")
    }
}

impl HintMsg {
    fn new(from: &str, hint: &Hint) -> HintMsg {
        let from = from.to_string();
        match hint {
            Hint::TaskReady { task_id } => HintMsg::TaskReady(from, *task_id),
            Hint::TaskCancelled { task_id } => HintMsg::TaskCancelled(from, *task_id),
            Hint::Events => HintMsg::Events(from),
            Hint::Loads { at, buckets, .. } => HintMsg::Loads(
                from,
                *at,
                serde_json::to_string(buckets).unwrap_or_else(|_| "[]".into()),
            ),
        }
    }

    fn parts(&self) -> (&str, Hint) {
        match self {
            HintMsg::TaskReady(from, task_id) => (from, Hint::TaskReady { task_id: *task_id }),
            HintMsg::TaskCancelled(from, task_id) => {
                (from, Hint::TaskCancelled { task_id: *task_id })
            }
            HintMsg::Events(from) => (from, Hint::Events),
            // The summary is the sender's own: it names itself.
            HintMsg::Loads(from, at, json) => (
                from,
                Hint::Loads {
                    node: from.clone(),
                    at: *at,
                    buckets: parse_loads(json),
                },
            ),
        }
    }
}

/// Where this node listens for its peers and what it tells them.
#[derive(Debug, Clone)]
pub struct HintConfig {
    /// This node's id (the peers know it by it).
    pub node_id: String,
    /// Address the cluster listener binds.
    pub listen: SocketAddr,
    /// `host:port` the other nodes dial (written in this node's membership row).
    pub advertise: String,
    /// Shared secret: only nodes with the same cookie connect.
    pub cookie: String,
    /// The node's connection budget, shared with the HTTP server: every connection to the
    /// cluster port holds one permit while it is open.
    pub budget: Option<Arc<tokio::sync::Semaphore>>,
}

/// Why the hint transport did not start.
#[derive(Debug, Error)]
pub enum HintError {
    #[error("the cluster listener did not start: {0}")]
    Start(String),
}

/// Receives the hints other nodes send (set by dispatch once it runs).
pub type HintSink = Arc<dyn Fn(Hint) + Send + Sync>;

/// Counters of the hint transport, for the cluster page and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HintStats {
    /// `host:port` the other nodes dial; `None` when this node sends no hints.
    pub advertise: Option<String>,
    /// Nodes connected now, by id.
    pub peers: Vec<String>,
    /// Hints handed to a connected peer.
    pub sent: u64,
    /// Hints received from peers.
    pub received: u64,
    /// Hints that reached no connection to an alive peer (it was not connected, or the send
    /// failed): that peer learns from the store at its next poll.
    pub lost: u64,
    /// Connections to the cluster port closed at once: the node's connection budget or the
    /// cap on connections still handshaking was full.
    pub refused: u64,
    /// Connections to the cluster port closed for not authenticating in time.
    pub handshake_timeouts: u64,
}

#[derive(Default)]
struct Shared {
    sink: RwLock<Option<HintSink>>,
    sent: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    /// Alive peers (id, cluster address) at the last membership tick.
    expected: RwLock<Vec<(String, String)>>,
    /// Peers connected at the last look, by id.
    connected: RwLock<Vec<String>>,
    /// Peers being dialled now.
    dialling: Mutex<HashSet<String>>,
}

struct Transport {
    config: HintConfig,
    server: ActorRef<NodeServerMessage>,
    listener: ActorRef<HintMsg>,
    shared: Arc<Shared>,
    /// The cluster port's accept loop.
    accept: tokio::task::JoinHandle<()>,
    port_stats: Arc<crate::peer_listener::PeerPortStats>,
}

/// This node's end of the hints. Cheap to clone; [`Hints::alone`] sends nothing.
#[derive(Clone, Default)]
pub struct Hints {
    transport: Option<Arc<Transport>>,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.transport {
            Some(t) => write!(f, "Hints({} at {})", t.config.node_id, t.config.advertise),
            None => f.write_str("Hints(alone)"),
        }
    }
}

impl Hints {
    /// A node without a cluster listener: hints go nowhere, the store carries everything.
    pub fn alone() -> Hints {
        Hints::default()
    }

    /// Starts the cluster listener and this node's hint listener.
    pub async fn start(config: HintConfig) -> Result<Hints, HintError> {
        // The cluster port is this node's own listener (crate::peer_listener): the node
        // server's listener takes a loopback port nobody is told of.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| HintError::Start(format!("cannot listen on {}: {e}", config.listen)))?;
        let host = config
            .advertise
            .rsplit_once(':')
            .map_or(config.advertise.as_str(), |(host, _)| host)
            .to_string();
        let server = NodeServer::new(
            0,
            config.cookie.clone(),
            config.node_id.clone(),
            host,
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(MAX_INBOUND_FRAME);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| HintError::Start(e.to_string()))?;
        let port_stats = Arc::new(crate::peer_listener::PeerPortStats::default());
        let accept = tokio::spawn(crate::peer_listener::run(
            listener,
            server.clone(),
            config.budget.clone(),
            Arc::clone(&port_stats),
        ));
        let shared = Arc::new(Shared::default());
        let (listener, _) = Actor::spawn(None, HintListener, Arc::clone(&shared))
            .await
            .map_err(|e| HintError::Start(e.to_string()))?;
        info!(
            listen = %config.listen,
            advertise = config.advertise,
            "cluster hints: listening for the other nodes"
        );
        Ok(Hints {
            transport: Some(Arc::new(Transport {
                config,
                server,
                listener,
                shared,
                accept,
                port_stats,
            })),
        })
    }

    /// The address the other nodes dial, when this node takes part in hints.
    pub fn advertise(&self) -> Option<&str> {
        self.transport.as_ref().map(|t| t.config.advertise.as_str())
    }

    /// Where received hints go from now on.
    pub fn set_sink(&self, sink: HintSink) {
        if let Some(t) = &self.transport {
            *t.shared
                .sink
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(sink);
        }
    }

    /// Sends `hint` to every connected peer. Never waits.
    pub fn send(&self, hint: Hint) {
        let Some(t) = &self.transport else {
            return;
        };
        let shared = &t.shared;
        let mut delivered = 0u64;
        for cell in ractor::pg::get_members(&GROUP.to_string()) {
            if cell.get_id().is_local() {
                continue;
            }
            match cell.send_message(HintMsg::new(&t.config.node_id, &hint)) {
                Ok(()) => delivered += 1,
                Err(err) => {
                    debug!(error = %err, ?hint, "hint not sent");
                    shared.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        shared.sent.fetch_add(delivered, Ordering::Relaxed);
        let expected = read(&shared.expected).len() as u64;
        shared
            .lost
            .fetch_add(expected.saturating_sub(delivered), Ordering::Relaxed);
    }

    /// Dials the alive peers (id, cluster address) this node is not connected to; called at
    /// every membership tick, since the cluster's own server does not redial.
    pub async fn mesh(&self, peers: Vec<(String, String)>) {
        let Some(t) = &self.transport else {
            return;
        };
        let connected = t.connected().await;
        let missing: Vec<(String, String)> = peers
            .iter()
            .filter(|(id, _)| *id != t.config.node_id && !connected.contains(id))
            .cloned()
            .collect();
        *t.shared
            .expected
            .write()
            .unwrap_or_else(PoisonError::into_inner) = peers
            .into_iter()
            .filter(|(id, _)| *id != t.config.node_id)
            .collect();
        *t.shared
            .connected
            .write()
            .unwrap_or_else(PoisonError::into_inner) = connected;
        for (id, addr) in missing {
            if !t
                .shared
                .dialling
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone())
            {
                continue;
            }
            let transport = Arc::clone(t);
            tokio::spawn(async move {
                match tokio::time::timeout(
                    DIAL_TIMEOUT,
                    ractor_cluster::client_connect(&transport.server, addr.as_str()),
                )
                .await
                {
                    Ok(Ok(())) => info!(peer = id, addr, "cluster hints: dialled a peer"),
                    Ok(Err(err)) => {
                        debug!(peer = id, addr, error = ?err, "cluster hints: peer not reached")
                    }
                    Err(_) => debug!(peer = id, addr, "cluster hints: dialling timed out"),
                }
                transport
                    .shared
                    .dialling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
            });
        }
    }

    /// Counters and peers, for the cluster page.
    pub fn stats(&self) -> HintStats {
        let Some(t) = &self.transport else {
            return HintStats::default();
        };
        HintStats {
            advertise: Some(t.config.advertise.clone()),
            peers: read(&t.shared.connected).clone(),
            sent: t.shared.sent.load(Ordering::Relaxed),
            received: t.shared.received.load(Ordering::Relaxed),
            lost: t.shared.lost.load(Ordering::Relaxed),
            refused: t.port_stats.refused.load(Ordering::Relaxed),
            handshake_timeouts: t.port_stats.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Closes the listener and every peer connection.
    pub fn stop(&self) {
        if let Some(t) = &self.transport {
            t.accept.abort();
            t.listener.stop(None);
            t.server.stop(None);
        }
    }
}

impl Transport {
    /// Ids of the peers with an authenticated session now.
    async fn connected(&self) -> Vec<String> {
        let sessions = self
            .server
            .call(NodeServerMessage::GetSessions, Some(SERVER_TIMEOUT))
            .await;
        match sessions {
            Ok(ractor::rpc::CallResult::Success(sessions)) => sessions
                .values()
                .filter_map(|s| s.peer_name.as_ref())
                .map(|name| {
                    name.name
                        .rsplit_once('@')
                        .map_or(name.name.as_str(), |(id, _)| id)
                        .to_string()
                })
                .collect(),
            other => {
                warn!(result = ?other.map(|_| ()), "cluster hints: the node server did not answer");
                Vec::new()
            }
        }
    }
}

/// Tells the nodes holding these robots' sessions that their items were released here: an event
/// row per robot (the store carries it; every node reads events each sweep), then a hint so they
/// read it now. A failed write is logged; their periodic recount corrects the load.
pub async fn tell_items_released(
    store: &Store,
    hints: &Hints,
    node_id: &str,
    released: &[(i64, Vec<i64>)],
    at: Millis,
) {
    if released.is_empty() {
        return;
    }
    match store.publish_items_released(node_id, released, at).await {
        Ok(()) => hints.send(Hint::Events),
        Err(err) => warn!(error = %err, robots = released.len(),
            "could not tell the other nodes of released items"),
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Receives hints from the other nodes and hands them to the sink.
#[derive(Debug)]
struct HintListener;

impl Actor for HintListener {
    type Msg = HintMsg;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_string(), vec![myself.get_cell()]);
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (from, hint) = message.parts();
        debug!(from, ?hint, "cluster hint received");
        shared.received.fetch_add(1, Ordering::Relaxed);
        let sink = read(&shared.sink).clone();
        if let Some(sink) = sink {
            sink(hint);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(id: &str, port: u16) -> Hints {
        Hints::start(HintConfig {
            node_id: id.into(),
            listen: format!("127.0.0.1:{port}").parse().expect("address"),
            advertise: format!("127.0.0.1:{port}"),
            cookie: "a cookie for the tests only".into(),
            budget: None,
        })
        .await
        .expect("hints start")
    }

    /// Has `from` dial the two nodes "a" and "b" (on `ports`) until it is connected to `peer`.
    async fn dial_until_connected(from: &Hints, peer: &str, ports: (u16, u16)) {
        let peers = vec![
            ("a".to_string(), format!("127.0.0.1:{}", ports.0)),
            ("b".to_string(), format!("127.0.0.1:{}", ports.1)),
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while from.stats().peers != [peer] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never reached {peer}"
            );
            from.mesh(peers.clone()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port")
    }

    #[test]
    fn a_hint_survives_the_wire_format() {
        for hint in [
            Hint::TaskReady { task_id: 7 },
            Hint::TaskCancelled { task_id: -1 },
            Hint::Events,
            Hint::Loads {
                node: "n1".into(),
                at: 1_234,
                buckets: vec![LoadBucket {
                    processes: vec![3, 4],
                    capacity: 10,
                    load: 2,
                    robots: 7,
                }],
            },
        ] {
            let msg = HintMsg::new("n1", &hint);
            let bytes = ractor::Message::serialize(msg).expect("serializable");
            let back: HintMsg = ractor::Message::deserialize(bytes).expect("decodes");
            assert_eq!(back.parts(), ("n1", hint));
        }
    }

    #[test]
    fn garbage_from_a_peer_is_refused_not_decoded() {
        let bytes = ractor::message::SerializedMessage::Cast {
            variant: "NoSuchHint".into(),
            args: vec![1, 2, 3],
            metadata: None,
        };
        assert!(<HintMsg as ractor::Message>::deserialize(bytes).is_err());
    }

    // Two nodes in one process share ractor's process groups, so this checks the dialling and
    // counters; the process-level cluster test checks hints crossing between real nodes.
    #[tokio::test]
    async fn a_node_dials_its_peers_and_counts_what_it_sends() {
        let (pa, pb) = (free_port(), free_port());
        let a = node("a", pa).await;
        let b = node("b", pb).await;
        dial_until_connected(&a, "b", (pa, pb)).await;
        assert_eq!(a.stats().advertise, Some(format!("127.0.0.1:{pa}")));
        assert_eq!(Hints::alone().stats(), HintStats::default());
        a.stop();
        b.stop();
    }

    /// Connections to the cluster port that never authenticate are closed after the handshake
    /// deadline, and past the cap on such connections new ones are closed at once; a peer
    /// with the cookie still connects meanwhile.
    #[tokio::test]
    async fn connections_that_never_authenticate_are_bounded_and_closed() {
        use tokio::io::AsyncReadExt;
        let (pa, pb) = (free_port(), free_port());
        let a = node("a", pa).await;
        let mut idle = Vec::new();
        for _ in 0..crate::peer_listener::MAX_HANDSHAKES + 4 {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", pa))
                    .await
                    .expect("connect"),
            );
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while a.stats().refused < 4 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "over the cap: {:?}",
                a.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every idle socket reads end-of-stream by the deadline (plus the time to close).
        let opened = std::time::Instant::now();
        for mut socket in idle {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(
                crate::peer_listener::HANDSHAKE_DEADLINE + Duration::from_secs(5),
                socket.read(&mut byte),
            )
            .await
            .expect("the node closes a connection that never authenticates");
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "closed, not answered: {read:?}"
            );
        }
        assert!(
            opened.elapsed() < crate::peer_listener::HANDSHAKE_DEADLINE + Duration::from_secs(5)
        );
        assert_eq!(
            a.stats().handshake_timeouts,
            crate::peer_listener::MAX_HANDSHAKES as u64
        );
        // The handshake slots are free again: a real peer connects.
        let b = node("b", pb).await;
        dial_until_connected(&b, "a", (pa, pb)).await;
        a.stop();
        b.stop();
    }
}
