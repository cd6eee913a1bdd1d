//! JSON shapes of the user API. Timestamps are RFC 3339 with offset.

use orchestrator_actors::domain::{Item, Process, Robot, Task, User, now_millis, rfc3339};
use serde_json::{Value, json};
use std::time::Duration;

fn time(at: Option<i64>) -> Value {
    at.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

pub fn user(u: &User) -> Value {
    json!({
        "id": u.id, "username": u.username, "role": u.role, "disabled": u.disabled,
        "created_at": rfc3339(u.created_at),
    })
}

pub fn process(p: &Process) -> Value {
    json!({
        "id": p.id, "title": p.title, "description": p.description, "enabled": p.enabled,
        "lease_ttl_ms": p.lease_ttl_ms, "max_attempts": p.max_attempts, "on_lost": p.on_lost,
        "created_at": rfc3339(p.created_at),
    })
}

/// A robot counts as connected while its last pulse is younger than `pulse_timeout`.
pub fn robot(r: &Robot, pulse_timeout: Duration) -> Value {
    let connected = r
        .last_pulse_at
        .is_some_and(|at| now_millis() - at <= pulse_timeout.as_millis() as i64);
    json!({
        "id": r.id, "name": r.name, "platform": r.platform, "capacity": r.capacity,
        "processes": r.processes, "status": r.status, "connected": connected,
        "last_pulse_at": time(r.last_pulse_at), "node": r.node,
        "created_at": rfc3339(r.created_at), "disabled_by_admin": r.disabled_by_admin,
    })
}

pub fn task(t: &Task) -> Value {
    let done = t.counts.completed + t.counts.failed + t.counts.abandoned;
    let progress = if t.item_count > 0 {
        done as f64 / t.item_count as f64
    } else {
        0.0
    };
    json!({
        "id": t.id, "process_id": t.process_id, "owner_id": t.owner_id, "status": t.status,
        "priority": t.priority, "item_count": t.item_count, "counts": t.counts,
        "progress": progress, "columns": t.columns, "filename": t.filename,
        "created_at": rfc3339(t.created_at), "started_at": time(t.started_at),
        "ended_at": time(t.ended_at),
    })
}

pub fn item(i: &Item) -> Value {
    json!({
        "id": i.id, "task_id": i.task_id, "line": i.line, "values": i.values, "status": i.status,
        "robot_id": i.robot_id, "attempt": i.attempt, "lease_id": i.lease_id,
        "lease_expires_at": time(i.lease_expires_at), "observation": i.observation,
        "output": i.output, "fail_kind": i.fail_kind, "created_at": rfc3339(i.created_at),
        "started_at": time(i.started_at), "ended_at": time(i.ended_at),
    })
}
