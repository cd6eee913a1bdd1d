//! The prototype's robot API, unchanged for robots written against it: `GET|PATCH /api/robots`,
//! `GET|PATCH /api/tasks`, `PATCH /api/items`, with and without a trailing slash, parameters in the
//! query string, `Authorization: Token ...`, the prototype's JSON shapes and `{"detail"}` errors.
//! Unlike the prototype, a robot may act only on its own `robot_id`. Every call is a pulse.

pub(crate) mod views;

use crate::error::ApiError;
use crate::robot_api::auth::authenticate;
use crate::state::{AppState, with_state};
use orchestrator_actors::domain::{Robot, RobotStatus};
use orchestrator_actors::error::DispatchError;
use orchestrator_actors::lifecycle::{FailKind, RobotAction, TransitionError};
use std::collections::{BTreeMap, HashMap};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Reply};

/// A seed-API error: status and `{"detail": ...}`.
#[derive(Debug)]
struct Detail(StatusCode, String);

impl Detail {
    fn missing() -> Self {
        Detail(
            StatusCode::BAD_REQUEST,
            "Missing or invalid parameters".into(),
        )
    }
    fn into_response(self) -> Response {
        warp::reply::with_status(
            warp::reply::json(&crate::views::DetailView { detail: self.1 }),
            self.0,
        )
        .into_response()
    }
}

impl From<ApiError> for Detail {
    fn from(err: ApiError) -> Self {
        Detail(err.status, err.message)
    }
}

impl From<DispatchError> for Detail {
    fn from(err: DispatchError) -> Self {
        match err {
            // The prototype answered 403 for any change to a finished item.
            DispatchError::Transition(TransitionError::Illegal { .. }) => {
                Detail(StatusCode::FORBIDDEN, err.to_string())
            }
            other => ApiError::from(other).into(),
        }
    }
}

impl From<orchestrator_actors::StoreError> for Detail {
    fn from(err: orchestrator_actors::StoreError) -> Self {
        ApiError::from(err).into()
    }
}

/// Matches `/api/<name>` and `/api/<name>/`.
fn seed_path(name: &'static str) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::full()
        .and_then(move |path: FullPath| async move {
            let p = path.as_str();
            let bare = p.strip_suffix('/').unwrap_or(p);
            if bare.strip_prefix("/api/") == Some(name) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

type Params = HashMap<String, String>;

fn params() -> impl Filter<Extract = (Params,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| {
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect::<Params>()
        })
}

fn int_param(params: &Params, name: &str) -> Result<i64, Detail> {
    params
        .get(name)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(Detail::missing)
}

/// The seed API's routes.
pub fn seed_api(state: AppState) -> BoxedFilter<(Response,)> {
    let route = |name: &'static str, method: warp::filters::BoxedFilter<()>| {
        seed_path(name)
            .and(method)
            .and(warp::header::optional::<String>("authorization"))
            .and(params())
            .and(with_state(state.clone()))
    };
    let get_robot =
        route("robots", warp::get().boxed()).then(|auth, p, s| handle(auth, p, s, get_robots));
    let patch_robot =
        route("robots", warp::patch().boxed()).then(|auth, p, s| handle(auth, p, s, patch_robots));
    let get_tasks =
        route("tasks", warp::get().boxed()).then(|auth, p, s| handle(auth, p, s, get_tasks));
    let patch_task =
        route("tasks", warp::patch().boxed()).then(|auth, p, s| handle(auth, p, s, patch_tasks));
    let patch_item =
        route("items", warp::patch().boxed()).then(|auth, p, s| handle(auth, p, s, patch_items));
    get_robot
        .or(patch_robot)
        .unify()
        .or(get_tasks)
        .unify()
        .or(patch_task)
        .unify()
        .or(patch_item)
        .unify()
        .boxed()
}

async fn handle<F, Fut>(auth: Option<String>, params: Params, state: AppState, f: F) -> Response
where
    F: FnOnce(Robot, Params, AppState) -> Fut,
    Fut: Future<Output = Result<Response, Detail>>,
{
    let outcome = async {
        let robot = authenticate(&state, auth.as_deref()).await?;
        state.dispatcher.connect(&robot).await?;
        let robot_id = int_param(&params, "robot_id")?;
        if robot_id != robot.id {
            return Err(Detail(
                StatusCode::FORBIDDEN,
                "a robot may act only on its own robot_id".into(),
            ));
        }
        f(robot, params, state).await
    }
    .await;
    match outcome {
        Ok(response) => response,
        Err(detail) => detail.into_response(),
    }
}

fn empty_ok() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::OK).into_response()
}

async fn get_robots(robot: Robot, _: Params, _: AppState) -> Result<Response, Detail> {
    Ok(warp::reply::json(&views::robot(&robot)).into_response())
}

async fn patch_robots(robot: Robot, params: Params, state: AppState) -> Result<Response, Detail> {
    let status: RobotStatus = params
        .get("status")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Detail(
                StatusCode::BAD_REQUEST,
                "status must be ACTIVE or INACTIVE".into(),
            )
        })?;
    state
        .dispatcher
        .set_own_status(&robot, status)
        .await?
        .ok_or_else(|| Detail(StatusCode::NOT_FOUND, "robot not found".into()))?;
    Ok(empty_ok())
}

async fn get_tasks(robot: Robot, _: Params, state: AppState) -> Result<Response, Detail> {
    let items = state.store.robot_items_full(robot.id).await?;
    let mut by_task: BTreeMap<i64, Vec<views::SeedItem>> = BTreeMap::new();
    let mut tasks = BTreeMap::new();
    for item in &items {
        if !tasks.contains_key(&item.task_id)
            && let Some(task) = state.store.task(item.task_id).await?
        {
            tasks.insert(item.task_id, task);
        }
        by_task
            .entry(item.task_id)
            .or_default()
            .push(views::item(item, robot.id));
    }
    let body: Vec<views::SeedTask> = tasks
        .values()
        .map(|task| views::task(task, robot.id, by_task.remove(&task.id).unwrap_or_default()))
        .collect();
    Ok(warp::reply::json(&body).into_response())
}

async fn patch_tasks(robot: Robot, params: Params, state: AppState) -> Result<Response, Detail> {
    let task_id = int_param(&params, "task_id")?;
    let status = params.get("status").map(String::as_str).unwrap_or_default();
    if !["CREATED", "STARTED", "COMPLETED", "ERROR"].contains(&status) {
        return Err(Detail(
            StatusCode::BAD_REQUEST,
            "status must be CREATED, STARTED, COMPLETED or ERROR".into(),
        ));
    }
    // "My share is done": the task completes by itself once all its items are final, so this
    // changes nothing and answers 200 to a robot that was leased items of the task, whether or
    // not the task has completed meanwhile. Any other task, existing or not, is "not found":
    // robots cannot probe task ids.
    if !state.store.robot_worked_on(task_id, robot.id).await? {
        return Err(Detail(
            StatusCode::NOT_FOUND,
            format!("task {task_id} not found"),
        ));
    }
    Ok(empty_ok())
}

async fn patch_items(robot: Robot, params: Params, state: AppState) -> Result<Response, Detail> {
    let item_id = int_param(&params, "item_id")?;
    let observation = params.get("observation").cloned();
    let action = match params.get("status").map(String::as_str) {
        Some("STARTED") => RobotAction::Start,
        Some("COMPLETED") => RobotAction::Complete {
            observation,
            output: None,
        },
        // The prototype's ERROR was final: a business failure here.
        Some("ERROR") => RobotAction::Fail {
            kind: FailKind::Business,
            message: observation.unwrap_or_default(),
        },
        _ => {
            return Err(Detail(
                StatusCode::BAD_REQUEST,
                "status must be STARTED, COMPLETED or ERROR".into(),
            ));
        }
    };
    // One batched write, no read first: the batcher refuses a finished item (and an unknown one).
    state
        .dispatcher
        .act_once(robot.id, item_id, &action)
        .await
        .map_err(|err| match err {
            DispatchError::Transition(TransitionError::Illegal { item, from, .. })
                if from.is_final() =>
            {
                Detail(
                    StatusCode::FORBIDDEN,
                    format!("item {item} is already {}", views::seed_status(from)),
                )
            }
            DispatchError::ItemNotFound(item) => {
                Detail(StatusCode::NOT_FOUND, format!("item {item} not found"))
            }
            other => Detail::from(other),
        })?;
    Ok(empty_ok())
}
