//! `GET /api/v1/tasks/{id}/results.csv`: a task's items as CSV, the original columns in file
//! order followed by the outcome of each item. Streamed: items are read by id range a thousand
//! at a time, so a million-item task costs the node one slice of memory, not the whole file.

use super::tasks::visible_task;
use crate::auth::{AuthUser, signed_in};
use crate::error::{ApiError, respond};
use crate::state::{AppState, with_state};
use bytes::Bytes;
use orchestrator_actors::Store;
use orchestrator_actors::domain::{Item, Task, rfc3339};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use warp::reply::Response;

/// The outcome columns appended after the original ones.
const OUTCOME_COLUMNS: [&str; 9] = [
    "status",
    "robot_id",
    "attempt",
    "observation",
    "output",
    "fail_kind",
    "created_at",
    "started_at",
    "ended_at",
];

pub(super) fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "tasks" / i64 / "results.csv")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .and(with_state(state))
        .then(|id: i64, user: AuthUser, state: AppState| async move {
            respond(
                async {
                    let task = visible_task(&state, &user, id).await?;
                    Ok::<_, ApiError>(results_csv(state.store.clone(), task))
                }
                .await,
            )
        })
        .boxed()
}

fn results_csv(store: Store, task: Task) -> Response {
    let filename = format!("task-{}-results.csv", task.id);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if let Err(err) = write_results(&store, &task, &tx).await {
            tracing::warn!(task_id = task.id, error = %err.message, "results export stopped");
            // The status line is gone already; a broken body tells the client it is incomplete.
            let _ = tx.send(Err(std::io::Error::other(err.message))).await;
        }
    });
    let mut response =
        warp::reply::Reply::into_response(warp::reply::stream(ReceiverStream::new(rx)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        warp::http::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = format!("attachment; filename=\"{filename}\"").parse() {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

async fn write_results(
    store: &Store,
    task: &Task,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), ApiError> {
    let header = header_row(&task.columns);
    if tx.send(Ok(csv_rows(&[header])?)).await.is_err() {
        return Ok(());
    }
    for (from, to) in store.task_slices(task.id).await? {
        let items = store.items_in_range(from, to).await?;
        let rows: Vec<Vec<String>> = items
            .iter()
            .filter(|item| item.task_id == task.id)
            .map(|item| result_row(&task.columns, item))
            .collect();
        if !rows.is_empty() && tx.send(Ok(csv_rows(&rows)?)).await.is_err() {
            return Ok(()); // the client went away
        }
    }
    Ok(())
}

/// The original header, then the outcome columns; an outcome column whose name the file already
/// uses is prefixed with `result_` so no two columns share a name.
pub(crate) fn header_row(columns: &[String]) -> Vec<String> {
    let mut header = columns.to_vec();
    for name in OUTCOME_COLUMNS {
        let mut name = name.to_string();
        while header.contains(&name) {
            name = format!("result_{name}");
        }
        header.push(name);
    }
    header
}

pub(crate) fn result_row(columns: &[String], item: &Item) -> Vec<String> {
    let text = |value: Option<&Value>| match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let time = |at: Option<i64>| at.map(rfc3339).unwrap_or_default();
    let mut row: Vec<String> = columns
        .iter()
        .map(|column| text(item.values.get(column)))
        .collect();
    row.extend([
        item.status.as_str().to_string(),
        item.robot_id.map(|id| id.to_string()).unwrap_or_default(),
        item.attempt.to_string(),
        item.observation.clone().unwrap_or_default(),
        text(item.output.as_ref()),
        item.fail_kind.clone().unwrap_or_default(),
        rfc3339(item.created_at),
        time(item.started_at),
        time(item.ended_at),
    ]);
    row
}

fn csv_rows(rows: &[Vec<String>]) -> Result<Bytes, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(rows.len() * 96));
    for row in rows {
        writer
            .write_record(row)
            .map_err(|e| ApiError::internal(format!("cannot write CSV: {e}")))?;
    }
    writer
        .into_inner()
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(format!("cannot write CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_actors::domain::ItemStatus;
    use serde_json::json;

    #[test]
    fn outcome_columns_never_shadow_the_files_own() {
        let header = header_row(&["id".into(), "status".into(), "result_status".into()]);
        assert_eq!(
            header[..4],
            ["id", "status", "result_status", "result_result_status"]
        );
        assert_eq!(header.len(), 3 + OUTCOME_COLUMNS.len());
    }

    #[test]
    fn rows_keep_file_order_and_render_outputs_as_json() {
        let item = Item {
            id: 9,
            task_id: 1,
            line: 2,
            values: json!({"b": "2", "a": "1"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            status: ItemStatus::Completed,
            robot_id: Some(4),
            attempt: 1,
            lease_id: None,
            lease_expires_at: None,
            observation: Some("ok, done".into()),
            output: Some(json!({"total": 3})),
            fail_kind: None,
            created_at: 0,
            started_at: None,
            ended_at: Some(1_000),
        };
        let row = result_row(&["a".into(), "b".into()], &item);
        assert_eq!(
            row[..7],
            ["1", "2", "COMPLETED", "4", "1", "ok, done", "{\"total\":3}"]
        );
        assert_eq!(row[10], "1970-01-01T00:00:01.000+00:00");
        let bytes = csv_rows(&[row]).expect("csv");
        assert!(String::from_utf8_lossy(&bytes).contains("\"ok, done\""));
    }
}
