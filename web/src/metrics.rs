//! `GET /metrics` in the Prometheus text format, served on its own address
//! (`--metrics-listen`), without sign-in: keep that address on a private network.
//!
//! Counters and histograms are recorded where things happen, through the `metrics` facade
//! (transitions and batches in `actors`, frames and responses here); figures that the store or
//! the registry already hold (items by status, robots connected, members alive, hints) are read
//! when Prometheus scrapes, so they cannot drift.

use crate::state::AppState;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use orchestrator_actors::domain::{ItemStatus, now_millis};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// WebSocket robots connected to this node now.
static WEBSOCKETS: AtomicI64 = AtomicI64::new(0);

/// Installs the process's recorder once (every node of a process shares it: one in production,
/// several in tests); `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("orchestrator_batch_size".into()),
                    &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0,
                        ],
                    )
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// HELP lines of what the node records.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "orchestrator_transitions_total",
        "Item transitions written by this node, by the status reached"
    );
    describe_counter!(
        "orchestrator_items_leased_total",
        "Items this node leased to its robots"
    );
    describe_counter!(
        "orchestrator_items_left_to_peers_total",
        "Items a dispatch plan left in the queue for a less loaded robot of another node"
    );
    describe_counter!(
        "orchestrator_lease_expiries_total",
        "Items taken back because their lease expired"
    );
    describe_histogram!(
        "orchestrator_batch_size",
        "Transitions and grants written per store transaction"
    );
    describe_histogram!(
        "orchestrator_batch_write_seconds",
        "Time to write one batch of transitions and grants"
    );
    describe_histogram!(
        "orchestrator_registry_message_seconds",
        "Time the robot registry spent on one message, by message; connects and dispatch wait meanwhile"
    );
    describe_counter!(
        "orchestrator_store_conflicts_total",
        "Store write conflicts: a batch that lost a race (op=batch), a write retried (op=retry)"
    );
    describe_counter!(
        "orchestrator_upload_rows_total",
        "CSV rows committed as items by uploads on this node"
    );
    describe_counter!(
        "orchestrator_ws_frames_total",
        "WebSocket frames from robots (direction=in) and to robots (direction=out)"
    );
    describe_counter!(
        "orchestrator_http_responses_total",
        "HTTP responses by status class"
    );
    describe_gauge!(
        "orchestrator_robots_connected",
        "Robot sessions on this node: websocket (a socket open) or rest (none open)"
    );
    describe_gauge!(
        "orchestrator_items",
        "Items of every task in the store, by status"
    );
    describe_gauge!(
        "orchestrator_cluster_members_alive",
        "Nodes of the cluster with a fresh heartbeat, this one included"
    );
    describe_counter!(
        "orchestrator_hints_sent_total",
        "Hints handed to a connected peer"
    );
    describe_counter!(
        "orchestrator_hints_received_total",
        "Hints received from peers"
    );
    describe_counter!(
        "orchestrator_hints_lost_total",
        "Hints that reached no connection to an alive peer (the store poll covers them)"
    );
    describe_counter!(
        "orchestrator_cluster_connections_refused_total",
        "Connections to the cluster port closed at once (connection cap or handshake cap)"
    );
    describe_counter!(
        "orchestrator_cluster_handshake_timeouts_total",
        "Connections to the cluster port closed for not proving the cookie in time"
    );
}

/// Counts one HTTP response.
pub fn response(status: u16) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("orchestrator_http_responses_total", "class" => class).increment(1);
}

/// A WebSocket robot connected; the guard counts it until dropped.
pub fn websocket_open() -> WebSocketGuard {
    WEBSOCKETS.fetch_add(1, Ordering::Relaxed);
    WebSocketGuard(())
}

/// Counts an open WebSocket while it lives.
#[derive(Debug)]
pub struct WebSocketGuard(());

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        WEBSOCKETS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /metrics`.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(crate::state::with_state(state))
        .then(|state: AppState| async move { render(&state).await })
        .boxed()
}

async fn render(state: &AppState) -> Response {
    use warp::Reply;
    let Some(handle) = install() else {
        return crate::error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder is installed in this process",
        )
        .into_response();
    };
    read_gauges(state).await;
    handle.run_upkeep();
    warp::reply::with_header(
        handle.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}

/// Sets the figures read at scrape time. A store that does not answer leaves the last ones.
async fn read_gauges(state: &AppState) {
    let dispatcher = &state.dispatcher;
    let websockets = WEBSOCKETS.load(Ordering::Relaxed).max(0);
    if let Ok(loads) = dispatcher.loads().await {
        let sessions = loads.len() as i64;
        metrics::gauge!("orchestrator_robots_connected", "transport" => "websocket")
            .set(websockets as f64);
        metrics::gauge!("orchestrator_robots_connected", "transport" => "rest")
            .set((sessions - websockets).max(0) as f64);
    }
    let since = now_millis() - state.config.pulse_timeout.as_millis() as i64;
    if let Ok(stats) = state.store.stats(since, None).await {
        for &status in ItemStatus::ALL {
            metrics::gauge!("orchestrator_items", "status" => status.as_str())
                .set(stats.items.get(status) as f64);
        }
    }
    metrics::gauge!("orchestrator_cluster_members_alive")
        .set(dispatcher.cluster().alive().len().max(1) as f64);
    let hints = dispatcher.config().hints.stats();
    metrics::counter!("orchestrator_hints_sent_total").absolute(hints.sent);
    metrics::counter!("orchestrator_hints_received_total").absolute(hints.received);
    metrics::counter!("orchestrator_hints_lost_total").absolute(hints.lost);
    metrics::counter!("orchestrator_cluster_connections_refused_total").absolute(hints.refused);
    metrics::counter!("orchestrator_cluster_handshake_timeouts_total")
        .absolute(hints.handshake_timeouts);
}
