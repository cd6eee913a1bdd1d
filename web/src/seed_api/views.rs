//! The prototype's JSON shapes (its Django REST Framework serializers).

use orchestrator_actors::domain::{Item, ItemStatus, Robot, Task, TaskStatus, rfc3339};
use serde_json::{Value, json};

fn time(at: Option<i64>) -> Value {
    at.map_or(Value::Null, |t| Value::String(rfc3339(t)))
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

pub fn robot(r: &Robot) -> Value {
    json!({
        "id": r.id, "user_id": Value::Null, "ip_address": Value::Null,
        "platform": r.platform, "status": r.status,
    })
}

/// A number as the prototype's DecimalField rendered it (`"100.00"`), or null.
fn decimal(text: Option<&str>) -> Value {
    text.and_then(|t| t.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite())
        .map_or(Value::Null, |n| Value::String(format!("{n:.2}")))
}

/// The prototype's `value`: its CSV columns `linea`, `valor`, `field_name`. Files with other
/// headers map their first, second and third columns the same way.
fn value(item: &Item) -> Value {
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
    json!({
        "id": item.id, "name": name, "value_number": decimal(number.as_deref()),
        "value_text": text_value, "item_id": item.id,
    })
}

pub fn item(i: &Item, robot_id: i64) -> Value {
    json!({
        "id": i.id, "value": value(i), "created_at": rfc3339(i.created_at),
        "started_at": time(i.started_at), "ended_at": time(i.ended_at),
        "observation": i.observation, "status": seed_status(i.status), "task_id": i.task_id,
        "robot_id": robot_id,
    })
}

pub fn task(t: &Task, robot_id: i64, items: Vec<Value>) -> Value {
    json!({
        "id": t.id, "created_at": rfc3339(t.created_at), "started_at": time(t.started_at),
        "ended_at": time(t.ended_at), "status": seed_task_status(t.status), "user_id": t.owner_id,
        "process_id": t.process_id, "robot_id": robot_id, "item_set": items,
    })
}
