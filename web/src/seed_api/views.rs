//! The prototype's JSON shapes (its Django REST Framework serializers), as types the OpenAPI
//! description derives its schemas from.

use orchestrator_actors::domain::{
    Item, ItemStatus, Platform, Robot, RobotStatus, Task, TaskStatus, rfc3339,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

fn time(at: Option<i64>) -> Option<String> {
    at.map(rfc3339)
}

/// The prototype's four item statuses.
pub fn seed_status(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Pending | ItemStatus::Assigned => "CREATED",
        ItemStatus::Started => "STARTED",
        ItemStatus::Completed => "COMPLETED",
        ItemStatus::Failed | ItemStatus::Abandoned => "ERROR",
    }
}

fn seed_task_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Uploading | TaskStatus::Created => "CREATED",
        TaskStatus::Started => "STARTED",
        TaskStatus::Completed => "COMPLETED",
        TaskStatus::Cancelled => "ERROR",
    }
}

/// `GET /api/robots/`: the calling robot as the prototype showed it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeedRobot {
    pub id: i64,
    /// Always null: robots here are not tied to a user.
    pub user_id: Option<i64>,
    /// Always null.
    pub ip_address: Option<String>,
    pub platform: Platform,
    pub status: RobotStatus,
}

pub fn robot(r: &Robot) -> SeedRobot {
    SeedRobot {
        id: r.id,
        user_id: None,
        ip_address: None,
        platform: r.platform,
        status: r.status,
    }
}

/// A number as the prototype's DecimalField rendered it (`"100.00"`), or null.
fn decimal(text: Option<&str>) -> Option<String> {
    text.and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite())
        .map(|n| format!("{n:.2}"))
}

/// The prototype's `value`: its CSV columns `linea`, `valor`, `field_name`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeedValue {
    pub id: i64,
    pub name: Option<String>,
    pub value_number: Option<String>,
    pub value_text: Option<String>,
    pub item_id: i64,
}

/// Files with other headers map their first, second and third columns the way the prototype's
/// `linea`, `valor` and `field_name` are mapped.
fn value(item: &Item) -> SeedValue {
    let text = |key: &str, index: usize| -> Option<String> {
        item.values
            .get(key)
            .or_else(|| item.values.values().nth(index))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let (number, text_value, name) =
        if item.values.contains_key("linea") || item.values.contains_key("valor") {
            (
                text("linea", usize::MAX),
                text("valor", usize::MAX),
                text("field_name", usize::MAX),
            )
        } else {
            (text("", 0), text("", 1), text("", 2))
        };
    SeedValue {
        id: item.id,
        name,
        value_number: decimal(number.as_deref()),
        value_text: text_value,
        item_id: item.id,
    }
}

/// An item in a task's `item_set`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeedItem {
    pub id: i64,
    pub value: SeedValue,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub observation: Option<String>,
    /// CREATED, STARTED, COMPLETED or ERROR.
    pub status: &'static str,
    pub task_id: i64,
    pub robot_id: i64,
}

pub fn item(i: &Item, robot_id: i64) -> SeedItem {
    SeedItem {
        id: i.id,
        value: value(i),
        created_at: rfc3339(i.created_at),
        started_at: time(i.started_at),
        ended_at: time(i.ended_at),
        observation: i.observation.clone(),
        status: seed_status(i.status),
        task_id: i.task_id,
        robot_id,
    }
}

/// `GET /api/tasks/`: a task with the items the calling robot holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeedTask {
    pub id: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// CREATED, STARTED, COMPLETED or ERROR.
    pub status: &'static str,
    pub user_id: i64,
    pub process_id: i64,
    pub robot_id: i64,
    pub item_set: Vec<SeedItem>,
}

pub fn task(t: &Task, robot_id: i64, items: Vec<SeedItem>) -> SeedTask {
    SeedTask {
        id: t.id,
        created_at: rfc3339(t.created_at),
        started_at: time(t.started_at),
        ended_at: time(t.ended_at),
        status: seed_task_status(t.status),
        user_id: t.owner_id,
        process_id: t.process_id,
        robot_id,
        item_set: items,
    }
}
