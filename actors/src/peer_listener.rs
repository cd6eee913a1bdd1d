//! The cluster port's listener, in front of `ractor_cluster`'s node server.
//!
//! The node server's own listener accepts without bound: a connection that never completes the
//! handshake is held for ever, and out of file descriptors its accept loop logs every failure
//! as fast as it can (millions of lines a minute). So the node server listens on a loopback
//! port nobody is told of, and this listener takes the cluster port:
//!
//! ```text
//!   accept ──(fails: AcceptErrors backoff, one log line per 10 s)
//!     │ a permit of the node's connection budget (shared with HTTP), else closed
//!     │ a handshake permit (at most MAX_HANDSHAKES unauthenticated), else closed
//!     ▼
//!   PeerStream ──ConnectionOpenedExternal──► NodeServer ──► NodeSession (cookie handshake)
//!     │ authenticated (node event) → handshake permit given back, no deadline
//!     └ not authenticated within HANDSHAKE_DEADLINE → reads end, the session closes
//! ```

use crate::accept::AcceptErrors;
use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, info};

/// A peer must prove the cookie within this long of connecting.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections to the cluster port that have not authenticated yet, at most.
pub const MAX_HANDSHAKES: usize = 16;

/// Counters of the cluster port, for logs and tests.
#[derive(Debug, Default)]
pub struct PeerPortStats {
    /// Connections refused because the node's connection budget or the handshake cap was full.
    pub refused: AtomicU64,
    /// Connections closed because they did not authenticate in time.
    pub timed_out: AtomicU64,
}

/// One accepted connection's handshake: set once the peer authenticated.
#[derive(Debug)]
struct Handshake {
    authenticated: AtomicBool,
    /// Given back on authentication (or when the connection ends).
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// The connection's place in the node's connection budget, for its whole life.
    _budget: Option<OwnedSemaphorePermit>,
}

type Pending = Arc<Mutex<HashMap<String, Arc<Handshake>>>>;

/// Marks connections authenticated when the node server says so.
struct Watcher {
    pending: Pending,
}

impl NodeEventSubscription for Watcher {
    fn node_session_opened(&self, _: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ses.peer_addr);
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let handshake = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&ses.peer_addr);
        if let Some(handshake) = handshake {
            handshake.authenticated.store(true, Ordering::Release);
            handshake
                .permit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }
}

/// Accepts peers on `listener` until the node server stops, handing each to `server`.
/// `budget`, when given, is the node's connection budget shared with the HTTP server.
pub async fn run(
    listener: TcpListener,
    server: ActorRef<NodeServerMessage>,
    budget: Option<Arc<Semaphore>>,
    stats: Arc<PeerPortStats>,
) {
    let pending: Pending = Arc::default();
    let subscribed = server.send_message(NodeServerMessage::SubscribeToEvents {
        id: "peer-listener".into(),
        subscription: Box::new(Watcher {
            pending: Arc::clone(&pending),
        }),
    });
    if subscribed.is_err() {
        return;
    }
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut errors = AcceptErrors::new("cluster");
    let mut next = 0u64;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                let wait = errors.failed(&err);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        errors.accepted();
        let budget_permit = match &budget {
            Some(budget) => match Arc::clone(budget).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    refuse(&stats, addr, "the node's connection limit is reached");
                    continue;
                }
            },
            None => None,
        };
        let Ok(handshake_permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            refuse(
                &stats,
                addr,
                "too many cluster connections are still handshaking",
            );
            continue;
        };
        // Nagle on is slower, not wrong.
        let _ = stream.set_nodelay(true);
        next += 1;
        let label = format!("{addr}#{next}");
        let handshake = Arc::new(Handshake {
            authenticated: AtomicBool::new(false),
            permit: Mutex::new(Some(handshake_permit)),
            _budget: budget_permit,
        });
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(label.clone(), Arc::clone(&handshake));
        let stream = PeerStream {
            stream,
            label,
            handshake,
            stats: Arc::clone(&stats),
        };
        let opened = server.send_message(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(stream),
            is_server: true,
        });
        if opened.is_err() {
            // The node server stopped: so does this listener (the socket closes with it).
            debug!("cluster listener: the node server is gone; closing");
            return;
        }
    }
}

fn refuse(stats: &PeerPortStats, addr: SocketAddr, why: &str) {
    let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
    // The first refusal and then one in a thousand, so a flood cannot fill the log.
    if refused == 1 || refused.is_multiple_of(1_000) {
        info!(peer = %addr, refused, why, "cluster connection refused");
    }
}

/// An accepted peer connection, as `ractor_cluster` takes external transports.
struct PeerStream {
    stream: TcpStream,
    label: String,
    handshake: Arc<Handshake>,
    stats: Arc<PeerPortStats>,
}

impl ractor_cluster::ClusterBidiStream for PeerStream {
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        let (read, write) = self.stream.into_split();
        let reader = DeadlineRead {
            inner: read,
            handshake: Arc::clone(&self.handshake),
            deadline: Box::pin(tokio::time::sleep(HANDSHAKE_DEADLINE)),
            stats: self.stats,
            timed_out: false,
        };
        let writer = HeldWrite {
            inner: write,
            _handshake: self.handshake,
        };
        (Box::new(reader), Box::new(writer))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }

    fn local_label(&self) -> Option<String> {
        self.stream.local_addr().ok().map(|a| a.to_string())
    }
}

/// The read half: until the peer authenticated, reading ends (as at end of stream) once the
/// handshake deadline passed, which closes the session.
struct DeadlineRead {
    inner: tokio::net::tcp::OwnedReadHalf,
    handshake: Arc<Handshake>,
    deadline: Pin<Box<Sleep>>,
    stats: Arc<PeerPortStats>,
    timed_out: bool,
}

impl AsyncRead for DeadlineRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.timed_out {
            return Poll::Ready(Ok(()));
        }
        if !self.handshake.authenticated.load(Ordering::Acquire)
            && self.deadline.as_mut().poll(cx).is_ready()
        {
            self.timed_out = true;
            self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The write half, holding the connection's permits as long as the reader does.
struct HeldWrite {
    inner: tokio::net::tcp::OwnedWriteHalf,
    _handshake: Arc<Handshake>,
}

impl AsyncWrite for HeldWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
