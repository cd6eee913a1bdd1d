//! `/api/v1/tasks`: streaming CSV upload (raw `text/csv` body or `multipart/form-data`), listings,
//! detail with counts, and items with filters and paging. Operators see their own tasks only.

use super::Page;
use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::query::query;
use crate::state::{AppState, with_state};
use crate::views;
use bytes::Buf;
use futures_util::{Stream, StreamExt};
use orchestrator_actors::domain::{ItemStatus, Task, TaskStatus};
use orchestrator_actors::ingest::{self, IngestError, UploadOptions};
use orchestrator_actors::store::{ItemFilter, TaskFilter};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    process_id: Option<i64>,
    #[serde(default)]
    priority: i64,
    filename: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    process_id: Option<i64>,
    #[serde(default)]
    offset: i64,
    #[serde(default = "super::default_limit")]
    limit: i64,
}

#[derive(Debug, Deserialize)]
struct ItemsQuery {
    status: Option<String>,
    #[serde(default)]
    offset: i64,
    #[serde(default = "super::default_limit")]
    limit: i64,
}

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let upload = warp::path!("api" / "v1" / "tasks")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(query::<UploadQuery>())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(|user, state, q, content_type, length, body| async move {
            respond(upload(user, state, q, content_type, length, body).await)
        });
    let list = warp::path!("api" / "v1" / "tasks")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(query::<ListQuery>())
        .then(|user, state, q| async move { respond(list(user, state, q).await) });
    let get = warp::path!("api" / "v1" / "tasks" / i64)
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: i64, user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let task = visible_task(&state, &user, id).await?;
                    Ok::<_, ApiError>(warp::reply::json(&views::task(&task)))
                }
                .await,
            )
        });
    let items = warp::path!("api" / "v1" / "tasks" / i64 / "items")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .and(query::<ItemsQuery>())
        .then(|id, user, state, q| async move { respond(items(id, user, state, q).await) });
    let cancel = warp::path!("api" / "v1" / "tasks" / i64 / "cancel")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: i64, user: AuthUser, state: AppState| async move {
            respond(async {
                visible_task(&state, &user, id).await?;
                if !state.dispatcher.cancel(id).await? {
                    return Err(ApiError::conflict(format!(
                        "task {id} is not running; only CREATED or STARTED tasks can be cancelled"
                    )));
                }
                let task = visible_task(&state, &user, id).await?;
                Ok(warp::reply::json(&views::task(&task)))
            }
            .await)
        });
    let retry = warp::path!("api" / "v1" / "tasks" / i64 / "retry-failed")
        .and(warp::post())
        .and(signed_in(state.clone()))
        .and(with_state(state.clone()))
        .then(|id: i64, user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let task = visible_task(&state, &user, id).await?;
                    if task.status == TaskStatus::Cancelled {
                        return Err(ApiError::conflict(format!("task {id} is cancelled")));
                    }
                    let reopened = state.dispatcher.retry_failed(id).await?;
                    let task = visible_task(&state, &user, id).await?;
                    let mut body = views::task(&task);
                    body.reopened = Some(reopened);
                    Ok(warp::reply::json(&body))
                }
                .await,
            )
        });
    upload
        .or(cancel)
        .unify()
        .or(retry)
        .unify()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(items)
        .unify()
        .boxed()
}

/// The task if it exists and `user` may see it (operators: their own); 404 otherwise.
pub(super) async fn visible_task(
    state: &AppState,
    user: &AuthUser,
    id: i64,
) -> Result<Task, ApiError> {
    match state.store.task(id).await? {
        Some(task) if user.is_admin() || task.owner_id == user.id => Ok(task),
        _ => Err(ApiError::not_found(format!("task {id} not found"))),
    }
}

fn parse_status<T: std::str::FromStr<Err = String>>(
    text: Option<&str>,
) -> Result<Option<T>, ApiError> {
    text.filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| ApiError::bad_request("invalid_status", format!("status {e}")))
        })
        .transpose()
}

/// Priorities an operator may give a task; admins may use [`ADMIN_PRIORITY`].
pub const OPERATOR_PRIORITY: std::ops::RangeInclusive<i64> = -10..=10;
/// Priorities an admin may give a task.
pub const ADMIN_PRIORITY: std::ops::RangeInclusive<i64> = -1_000..=1_000;

fn valid_priority(user: &AuthUser, priority: i64) -> Result<(), ApiError> {
    let range = if user.is_admin() {
        ADMIN_PRIORITY
    } else {
        OPERATOR_PRIORITY
    };
    if range.contains(&priority) {
        return Ok(());
    }
    Err(ApiError::unprocessable(
        "invalid_priority",
        format!(
            "priority runs from {} to {} for {}",
            range.start(),
            range.end(),
            if user.is_admin() {
                "admins"
            } else {
                "operators"
            }
        ),
    ))
}

async fn upload<S, B>(
    user: AuthUser,
    state: AppState,
    q: UploadQuery,
    content_type: Option<String>,
    length: Option<u64>,
    body: S,
) -> Result<impl warp::Reply, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send,
{
    valid_priority(&user, q.priority)?;
    let max = state.config.max_upload_bytes;
    if length.is_some_and(|l| l > max) {
        return Err(IngestError::TooLarge { limit: max }.into());
    }
    let options = UploadOptions {
        owner_id: user.id,
        filename: q.filename.clone(),
        priority: q.priority,
        max_bytes: max,
        csv_limits: state.config.csv_limits,
        idle_timeout: state.config.body_timeout,
        total_timeout: state.config.upload_timeout,
    };
    let multipart_boundary = content_type
        .as_deref()
        .filter(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
        .map(|ct| {
            multer::parse_boundary(ct).map_err(|e| {
                ApiError::bad_request("invalid_multipart", format!("bad multipart header: {e}"))
            })
        })
        .transpose()?;
    let task = match multipart_boundary {
        None => {
            let process_id = q.process_id.ok_or(IngestError::MissingProcess)?;
            ingest::check_process(&state.store, process_id).await?;
            let staged = ingest::stage_csv(&state.store, body, &options).await?;
            state.dispatcher.commit_upload(staged, process_id).await?
        }
        Some(boundary) => upload_multipart(&state, &user, q, options, body, boundary).await?,
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&views::task(&task)),
        StatusCode::CREATED,
    ))
}

/// Reads form fields `process_id` (before or after the file), `priority` (before the file) and
/// `file`.
async fn upload_multipart<S, B>(
    state: &AppState,
    user: &AuthUser,
    q: UploadQuery,
    mut options: UploadOptions,
    body: S,
    boundary: String,
) -> Result<Task, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send,
{
    let stream = body.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
    let mut form = multer::Multipart::new(stream, boundary);
    let mut process_id = q.process_id;
    let mut staged = None;
    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            match field.name().unwrap_or_default() {
                "file" => {
                    if staged.is_some() {
                        return Err(ApiError::bad_request(
                            "invalid_multipart",
                            "the form carries more than one file",
                        ));
                    }
                    if options.filename.is_none() {
                        options.filename = field.file_name().map(str::to_string);
                    }
                    if let Some(id) = process_id {
                        ingest::check_process(&state.store, id).await?;
                    }
                    staged = Some(ingest::stage_csv(&state.store, &mut field, &options).await?);
                }
                "process_id" | "priority" => {
                    let name = field.name().unwrap_or_default().to_string();
                    let text = small_field(&mut field).await?;
                    let value = text.trim().parse::<i64>().map_err(|_| {
                        ApiError::bad_request(
                            "invalid_form",
                            format!("form field {name} must be an integer"),
                        )
                    })?;
                    if name == "process_id" {
                        process_id = Some(value);
                    } else if staged.is_none() {
                        // A priority after the file arrives too late to apply: only before it.
                        valid_priority(user, value)?;
                        options.priority = value;
                    }
                }
                _ => {
                    // Unknown fields (anti-forgery tokens and the like) are read and ignored.
                    small_field(&mut field).await?;
                }
            }
        }
        Ok(())
    }
    .await;
    let staged = match (outcome, staged) {
        (Ok(()), Some(staged)) => staged,
        (Ok(()), None) => {
            return Err(ApiError::bad_request(
                "invalid_multipart",
                "the form has no 'file' field",
            ));
        }
        (Err(err), staged) => {
            if let Some(staged) = staged {
                staged.discard(&state.store).await;
            }
            return Err(err);
        }
    };
    let Some(process_id) = process_id else {
        staged.discard(&state.store).await;
        return Err(IngestError::MissingProcess.into());
    };
    Ok(state.dispatcher.commit_upload(staged, process_id).await?)
}

async fn small_field(field: &mut multer::Field<'_>) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        text.extend_from_slice(&chunk);
        if text.len() > 4096 {
            return Err(ApiError::bad_request(
                "invalid_form",
                "form fields other than 'file' are limited to 4 KiB",
            ));
        }
    }
    String::from_utf8(text)
        .map_err(|_| ApiError::bad_request("invalid_form", "form fields must be UTF-8"))
}

fn multipart_error(err: multer::Error) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("malformed multipart body: {err}"),
    )
}

async fn list(user: AuthUser, state: AppState, q: ListQuery) -> Result<impl warp::Reply, ApiError> {
    let page = Page {
        offset: q.offset,
        limit: q.limit,
    }
    .checked()?;
    let filter = TaskFilter {
        owner_id: (!user.is_admin()).then_some(user.id),
        status: parse_status::<TaskStatus>(q.status.as_deref())?,
        process_id: q.process_id,
        offset: page.offset,
        limit: page.limit,
    };
    let (tasks, total) = state.store.list_tasks(&filter).await?;
    let views: Vec<_> = tasks.iter().map(views::task).collect();
    Ok(warp::reply::json(&views::TaskPage {
        tasks: views,
        total,
        offset: page.offset,
        limit: page.limit,
    }))
}

async fn items(
    id: i64,
    user: AuthUser,
    state: AppState,
    q: ItemsQuery,
) -> Result<impl warp::Reply, ApiError> {
    let page = Page {
        offset: q.offset,
        limit: q.limit,
    }
    .checked()?;
    let task = visible_task(&state, &user, id).await?;
    let status = parse_status::<ItemStatus>(q.status.as_deref())?;
    let total = status.map_or(task.item_count, |s| task.counts.get(s));
    let filter = ItemFilter {
        status,
        offset: page.offset,
        limit: page.limit,
    };
    let items = state.store.list_items(id, &filter).await?;
    let views: Vec<_> = items.iter().map(views::item).collect();
    Ok(warp::reply::json(&views::ItemPage {
        items: views,
        total,
        offset: page.offset,
        limit: page.limit,
    }))
}
