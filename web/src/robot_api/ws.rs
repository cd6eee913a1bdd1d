//! `GET /api/v1/robot/ws`: the robot's push channel. After robot authentication (the
//! `Authorization` header, or a `token` query parameter for tools that cannot set WebSocket
//! headers) the socket is handed to the robot's session actor. This module only moves frames
//! between the socket and the session's channels; the protocol lives in
//! `orchestrator_actors::robot_session::ws`.

use super::auth::authenticate;
use crate::error::{ApiError, respond};
use crate::state::AppState;
use futures_util::{SinkExt, StreamExt};
use orchestrator_actors::domain::Robot;
use orchestrator_actors::robot_session::ws::{Inbound, OUTBOUND_QUEUE, Outbound, WsLink};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tracing::debug;
use warp::filters::BoxedFilter;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::reply::Response;
use warp::{Filter, Reply};

/// Frames above this size end the connection (the protocol limit, far lower, is answered with
/// an `error` frame and the connection stays up).
const HARD_FRAME_LIMIT: usize = 4 << 20;

/// Frames read from the socket and not yet handled by the session.
const INBOUND_QUEUE: usize = 64;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "robot" / "ws")
        .and(warp::get())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::ws())
        .then(move |header: Option<String>, query, ws: Ws| {
            let state = state.clone();
            async move { respond(upgrade(state, header, query, ws).await) }
        })
        .boxed()
}

async fn upgrade(
    state: AppState,
    header: Option<String>,
    query: HashMap<String, String>,
    ws: Ws,
) -> Result<Response, ApiError> {
    let header = header.or_else(|| query.get("token").map(|t| format!("Token {t}")));
    let robot = authenticate(&state, header.as_deref()).await?;
    Ok(ws
        .max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
        .on_upgrade(move |socket| pump(state, robot, socket))
        .into_response())
}

/// Moves frames both ways until either side closes.
async fn pump(state: AppState, robot: Robot, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (to_robot, mut outbound) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let (inbound_tx, inbound) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    let link = WsLink {
        inbound,
        outbound: to_robot,
    };
    if let Err(err) = state.dispatcher.attach_ws(&robot, link).await {
        // A close reason must fit in a control frame (123 bytes).
        let reason: String = err.to_string().chars().take(100).collect();
        let _ = sink.send(Message::close_with(1011u16, reason)).await;
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            let (message, last) = match frame {
                Outbound::Text(text) => (Message::text(text), false),
                Outbound::Ping => (Message::ping(Vec::new()), false),
                Outbound::Close(reason) => (Message::close_with(1000u16, reason), true),
            };
            if sink.send(message).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(message) = stream.next().await {
        let inbound = match message {
            Ok(m) if m.is_close() => break,
            Ok(m) if m.is_text() => Inbound::Text(m.to_str().unwrap_or_default().to_owned()),
            Ok(m) if m.is_binary() => Inbound::Binary,
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
    let _ = writer.await;
}
