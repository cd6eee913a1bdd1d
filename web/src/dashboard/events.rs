//! `GET /events`: server-sent events for the signed-in browser. Every two seconds a `tick`
//! event carries the stats, the last hour's items per minute, and the running tasks the user may
//! see; pages redraw from it and refresh their own tables, so nothing needs a reload.

use super::{Session, session};
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
        .and(with_state(state))
        .map(|session: Option<Session>, state: AppState| {
            let Some(session) = session else {
                return ApiError::unauthorized("sign in first").into_response();
            };
            // The stream must be Sync, store futures are not: a task produces, a channel carries.
            // The task ends when the browser goes away and the receiver is dropped.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<warp::sse::Event, Infallible>>(2);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(TICK);
                loop {
                    interval.tick().await;
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
        })
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
    Ok(json!({
        "stats": stats(state).await?,
        "throughput": throughput(state, 60).await?,
        "active_tasks": active,
    }))
}
