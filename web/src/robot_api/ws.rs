//! `GET /api/v1/robot/ws`: the robot's push channel. After robot authentication (the
//! `Authorization` header, or a `token` query parameter for tools that cannot set WebSocket
//! headers) the socket is handed to the robot's session actor. This module only moves frames
//! between the socket and the session's channels; the protocol lives in
//! `orchestrator_actors::robot_session::ws`.

use super::auth::authenticate;
use crate::error::{ApiError, respond};
use crate::state::AppState;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use orchestrator_actors::domain::Robot;
use orchestrator_actors::robot_session::ws::{Inbound, OUTBOUND_QUEUE, Outbound, WsLink};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Message, Role, WebSocketConfig};
use tracing::debug;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// Frames above this size end the connection (the protocol limit, far lower, is answered with
/// an `error` frame and the connection stays up).
const HARD_FRAME_LIMIT: usize = 4 << 20;

/// Bytes read from the socket at a time. tungstenite's default, 128 KiB, is allocated and
/// zeroed per connection: 1.3 GB for 10,000 idle robots. Robot frames are a few hundred bytes,
/// and a larger frame grows the buffer as it arrives.
const READ_BUFFER: usize = 4 << 10;

/// Frames read from the socket and not yet handled by the session.
const INBOUND_QUEUE: usize = 64;

/// The socket the session's frames travel on.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "robot" / "ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(
            move |headers: HeaderMap, query, on_upgrade: Option<OnUpgrade>| {
                let state = state.clone();
                async move { respond(upgrade(state, headers, query, on_upgrade).await) }
            },
        )
        .boxed()
}

/// The handshake (RFC 6455 section 4.2) is done here rather than by `warp::ws`, which cannot set
/// the read buffer size.
async fn upgrade(
    state: AppState,
    headers: HeaderMap,
    query: HashMap<String, String>,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let (key, on_upgrade) = websocket_key(&headers).zip(on_upgrade).ok_or_else(|| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_upgrade_required",
            "this route is a WebSocket: send GET with `Connection: Upgrade`, \
             `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`",
        )
    })?;
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get("token").map(|t| format!("Token {t}")));
    let robot = authenticate(&state, header.as_deref()).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(HARD_FRAME_LIMIT))
        .max_frame_size(Some(HARD_FRAME_LIMIT));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                pump(state, robot, socket).await;
            }
            Err(err) => debug!(robot_id = robot.id, error = %err, "WebSocket upgrade failed"),
        }
    });
    let reply = warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS);
    let reply = warp::reply::with_header(reply, "connection", "upgrade");
    let reply = warp::reply::with_header(reply, "upgrade", "websocket");
    Ok(warp::reply::with_header(reply, "sec-websocket-accept", key).into_response())
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request, `None` for anything else.
fn websocket_key(headers: &HeaderMap) -> Option<String> {
    let lists = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let version_13 = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    if !(lists("connection", "upgrade") && lists("upgrade", "websocket") && version_13) {
        return None;
    }
    let key = headers.get("sec-websocket-key")?;
    Some(derive_accept_key(key.as_bytes()))
}

/// Moves frames both ways until either side closes.
async fn pump(state: AppState, robot: Robot, socket: Socket) {
    let (mut sink, mut stream) = socket.split();
    let (to_robot, mut outbound) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let (inbound_tx, inbound) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let link = WsLink {
        inbound,
        outbound: to_robot,
    };
    if let Err(err) = state.dispatcher.attach_ws(&robot, link).await {
        // A close reason must fit in a control frame (123 bytes). The node could not take the
        // robot on just now (its registry or store is busy or away): 1013 tells it to come
        // back after a pause.
        let reason: String = err.public_message(None).chars().take(100).collect();
        let code = if err.is_transient() {
            CloseCode::Again
        } else {
            CloseCode::Error
        };
        // The robot may be gone already; there is no one left to tell.
        let _ = sink.send(close(code, reason)).await;
        return;
    }
    let _connected = crate::metrics::websocket_open();
    let frames_out = metrics::counter!("orchestrator_ws_frames_total", "direction" => "out");
    let frames_in = metrics::counter!("orchestrator_ws_frames_total", "direction" => "in");
    let writer = tokio::spawn(async move {
        // Frames queued together (acks and the next items) are written, then flushed once.
        'socket: while let Some(first) = outbound.recv().await {
            let mut next = Some(first);
            let mut last = false;
            while let Some(frame) = next.take() {
                let message = match frame {
                    Outbound::Text(text) => Message::text(text),
                    Outbound::Ping => Message::Ping(Default::default()),
                    Outbound::Close(reason) => {
                        last = true;
                        close(CloseCode::Normal, reason)
                    }
                    Outbound::Restart(reason) => {
                        last = true;
                        close(CloseCode::Restart, reason)
                    }
                };
                if sink.feed(message).await.is_err() {
                    break 'socket;
                }
                frames_out.increment(1);
                if !last {
                    next = outbound.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() || last {
                break;
            }
        }
        // The robot may be gone already; there is no one left to tell.
        let _ = sink.close().await;
    });
    while let Some(message) = stream.next().await {
        frames_in.increment(1);
        let inbound = match message {
            Ok(Message::Close(_)) => break,
            Ok(Message::Text(text)) => Inbound::Text(text.as_str().to_owned()),
            Ok(Message::Binary(_)) => Inbound::Binary,
            Ok(_) => Inbound::Activity,
            Err(err) => {
                debug!(robot_id = robot.id, error = %err, "robot WebSocket failed");
                break;
            }
        };
        if inbound_tx.send(inbound).await.is_err() {
            break;
        }
    }
    // Dropping the sender tells the session the connection is gone.
    drop(inbound_tx);
    // The writer ended with the connection; nothing is left to do with its outcome.
    let _ = writer.await;
}

fn close(code: CloseCode, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
