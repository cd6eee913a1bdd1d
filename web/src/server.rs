//! The HTTP server. warp's filters are served by hyper here instead of by `warp::serve`, which
//! sets no timeout and no connection cap: a client that never finished its headers, or sent a
//! body a byte at a time, held its connection (and blocked a graceful stop) for ever.
//!
//! ```text
//!   accept ──► over the cap? ── yes ──► 503 + close
//!                 │ no (a permit, held until the socket closes, WebSocket or not)
//!                 ▼
//!   Bounded(io): no progress for `io_timeout` ──► closed
//!                 ▼
//!   hyper http1: request head within `idle_timeout` of opening or of the last response
//!                 ▼
//!   span `request{request_id}` ──► warp filters (+ ClientAddr)   body deadlines: `crate::body`
//!                 ▼
//!   response + `x-request-id`; one access-log line when switched on
//! ```
//!
//! Stopping: the listener closes at once, connections finish the request they are serving and
//! close, and after `grace` whatever is left is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};
use warp::Filter;
use warp::Reply;

/// What one client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection must deliver a complete request head within this long of opening, or of
    /// the end of its previous response: it bounds slow headers and idle keep-alive alike.
    pub idle_timeout: Duration,
    /// A connection on which nothing moves for this long, either way, is closed (a body
    /// trickling in, a client that stopped reading, a silent WebSocket).
    pub io_timeout: Duration,
    /// Open connections at most, WebSockets included; one more is answered 503 and closed.
    pub max_connections: usize,
    /// How long a stop waits for requests in flight before it drops their connections.
    pub grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            idle_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(120),
            max_connections: 20_000,
            grace: Duration::from_secs(10),
        }
    }
}

/// The client's address, on every request (warp's own extension is private to its server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The address of the client making the request, when it came through [`serve`].
pub fn client_addr()
-> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<ClientAddr>().map(|addr: Option<ClientAddr>| addr.map(|a| a.0))
}

/// The permits of a node's open connections, `max_connections` in all: the HTTP server and the
/// cluster port draw from one budget, so together they never hold more sockets than it.
pub fn connection_budget(limits: &ServerLimits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_connections))
}

/// Serves `filter` on `listener` within `limits` until `stop` resolves; then stops as the
/// module says. Every connection holds one of `permits` (see [`connection_budget`]) while open.
/// Returns once every connection is closed or the grace ran out. With `access_log`, each
/// request ends with one INFO line (target `orchestrator::access`).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: ServerLimits,
    permits: Arc<Semaphore>,
    access_log: bool,
    stop: impl Future<Output = ()> + Send,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
{
    let mut accept_errors = orchestrator_actors::accept::AcceptErrors::new("http");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    accept_errors.accepted();
                    pair
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait (longer each time) instead
                    // of spinning, and log once in a while.
                    let wait = accept_errors.failed(&err);
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            },
        };
        // Finished connections are reaped as we go, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            connections.spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let io = hyper_util::rt::TokioIo::new(Bounded::new(stream, limits.io_timeout, permit));
        let service = warp::service(filter.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ClientAddr(addr));
            let mut service = service.clone();
            traced(request, addr, access_log, move |request| {
                tower_service::Service::call(&mut service, request)
            })
        });
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.idle_timeout);
        let connection = graceful.watch(
            builder
                .serve_connection_with_upgrades(io, service)
                .into_owned(),
        );
        connections.spawn(async move {
            if let Err(err) = connection.await {
                debug!(client = %addr, error = %err, "connection ended with an error");
            }
        });
    }
    let local = listener.local_addr().ok();
    drop(listener);
    info!(
        addr = ?local,
        open = graceful.count(),
        grace = ?limits.grace,
        "no longer accepting connections; finishing requests in flight"
    );
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            open = connections.len(),
            "grace period over; dropping the connections still open"
        );
    }
    connections.shutdown().await;
}

/// Serves one request in its request-id span and scope; adds the id to the response, counts
/// the response, and writes the access-log line.
fn traced<B, RB, Fut, E>(
    request: hyper::Request<B>,
    client: SocketAddr,
    access_log: bool,
    call: impl FnOnce(hyper::Request<B>) -> Fut,
) -> impl Future<Output = Result<warp::http::Response<RB>, E>>
where
    Fut: Future<Output = Result<warp::http::Response<RB>, E>>,
{
    let id = crate::request_id::pick(request.headers().get(crate::request_id::HEADER));
    let span = tracing::info_span!("request", request_id = %id);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let header = warp::http::HeaderValue::from_str(&id);
    // Called inside the span and scope: warp starts matching filters in `call` already.
    let served = async move {
        let mut response = call(request).await?;
        if let Ok(value) = header {
            response
                .headers_mut()
                .insert(crate::request_id::HEADER, value);
        }
        let status = response.status().as_u16();
        crate::metrics::response(status);
        if access_log {
            info!(
                target: "orchestrator::access",
                %client,
                %method,
                %path,
                status,
                millis = started.elapsed().as_secs_f64() * 1e3,
                "request"
            );
        }
        Ok(response)
    };
    tracing::Instrument::instrument(crate::request_id::scope(id, served), span)
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, cap: usize) {
    use tokio::io::AsyncWriteExt;
    let body = format!(
        r#"{{"error":{{"code":"too_many_connections","message":"the node holds {cap} connections, its limit; retry shortly"}}}}"#
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A refused client that does not read is dropped after two seconds either way.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A connection's socket with a progress deadline, holding the connection's permit until it
/// is dropped (after a WebSocket upgrade too, since the upgraded stream is this one).
struct Bounded {
    inner: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Bounded {
    fn new(inner: TcpStream, timeout: Duration, permit: OwnedSemaphorePermit) -> Self {
        Bounded {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            _permit: permit,
        }
    }

    fn progressed(&mut self) {
        let timeout = self.timeout;
        self.deadline.as_mut().reset(Instant::now() + timeout);
    }

    /// `Pending` while the deadline has not passed; an error once it has.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no progress on the connection",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
