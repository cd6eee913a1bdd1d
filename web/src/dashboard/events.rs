//! `GET /events`: server-sent events for the signed-in browser. Every two seconds a `tick`
//! event carries the stats, the last hour's items per minute, and the running tasks the user may
//! see; pages redraw from it and refresh their own tables, so nothing needs a reload.
//!
//! The session is checked again before every tick: when the user is disabled, signs out, changes
//! password or loses a role, an `ended` event says why and the stream closes. An operator's
//! figures cover their own tasks, and the node-wide throughput is sent to admins only.

use super::{Session, session};
use crate::auth::{SESSION_COOKIE, cookie, user_of_token};
use crate::error::ApiError;
use crate::state::{AppState, with_state};
use crate::user_api::{stats::stats, throughput::throughput};
use crate::views;
use orchestrator_actors::domain::TaskStatus;
use orchestrator_actors::store::TaskFilter;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use warp::Filter;
use warp::Reply;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// How often a tick is sent.
const TICK: Duration = Duration::from_secs(2);

/// Running tasks listed per status in a tick.
const ACTIVE_TASKS: i64 = 20;

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("events")
        .and(warp::get())
        .and(session(state.clone()))
        .and(warp::header::optional::<String>("cookie"))
        .and(with_state(state))
        .map(
            |session: Option<Session>, cookies: Option<String>, state: AppState| {
                let (Some(session), Some(token)) = (
                    session,
                    cookie(cookies.as_deref(), SESSION_COOKIE).map(str::to_string),
                ) else {
                    return ApiError::unauthorized("sign in first").into_response();
                };
                // The stream must be Sync, store futures are not: a task produces, a channel carries.
                // The task ends when the browser goes away and the receiver is dropped.
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<warp::sse::Event, Infallible>>(2);
                tokio::spawn(async move {
                    let mut interval = tokio::time::interval(TICK);
                    loop {
                        interval.tick().await;
                        let still = match user_of_token(&state, &token).await {
                            Ok(user) if user.role == session.user.role => Ok(()),
                            Ok(_) => Err("your role changed; reload the page".to_string()),
                            Err(err) => Err(err.message),
                        };
                        if let Err(why) = still {
                            let ended = warp::sse::Event::default()
                                .event("ended")
                                .data(json!({ "message": why }).to_string());
                            // The browser may have gone already.
                            let _ = tx.send(Ok(ended)).await;
                            return;
                        }
                        let event = match tick(&state, &session).await {
                            Ok(body) => warp::sse::Event::default()
                                .event("tick")
                                .data(body.to_string()),
                            Err(err) => warp::sse::Event::default()
                                .event("problem")
                                .data(json!({ "message": err.message }).to_string()),
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                });
                let ticks = ReceiverStream::new(rx);
                warp::sse::reply(warp::sse::keep_alive().stream(ticks)).into_response()
            },
        )
        .boxed()
}

async fn tick(state: &AppState, session: &Session) -> Result<Value, ApiError> {
    let owner_id = (!session.user.is_admin()).then_some(session.user.id);
    let mut active = Vec::new();
    for status in [TaskStatus::Started, TaskStatus::Created] {
        let filter = TaskFilter {
            owner_id,
            status: Some(status),
            process_id: None,
            offset: 0,
            limit: ACTIVE_TASKS,
        };
        let (tasks, _) = state.store.list_tasks(&filter).await?;
        active.extend(tasks.iter().map(views::task));
    }
    let throughput = if session.user.is_admin() {
        throughput(state, 60).await?
    } else {
        // Throughput is the node's, not the operator's own: an empty chart, same shape.
        views::ThroughputView::default()
    };
    Ok(json!({
        "stats": stats(state, &session.user).await?,
        "throughput": throughput,
        "active_tasks": active,
    }))
}
