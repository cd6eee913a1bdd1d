//! The item lifecycle as plain functions: given an item's current state and what a robot (or the
//! node) wants, compute the next state or refuse. No IO: the store writes the planned state with a
//! compare-and-set on the old status and lease, and re-plans if someone else got there first.
//!
//! ```text
//!  PENDING ──assign──► ASSIGNED ──start──► STARTED ──complete──► COMPLETED
//!     ▲                   │                   │ fail(business) ──► FAILED
//!     │ release / lost    │                   │ fail(application) ─► PENDING (backoff) or FAILED
//!     └───────────────────┘                   │ lost ──► ABANDONED, or PENDING if the process says retry
//!                         lease expired 3 times ──► FAILED (poison)
//! ```

use crate::domain::{ItemCounts, ItemStatus, LostItemPolicy, Millis};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Leases that may expire on one item before it is quarantined.
pub const POISON_AFTER_EXPIRIES: i64 = 3;

/// The mutable part of an item, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    pub id: i64,
    pub task_id: i64,
    pub status: ItemStatus,
    pub robot_id: Option<i64>,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub lease_expiries: i64,
    pub observation: Option<String>,
    pub output: Option<serde_json::Value>,
    /// The report (observation and output) is stored apart from the chunk, too long to keep
    /// in it; `observation` and `output` are then empty here (see `store/reports.rs`).
    #[serde(default)]
    pub report_apart: bool,
    pub fail_kind: Option<String>,
    pub not_before: Option<Millis>,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
}

/// How a failure is classified by the robot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailKind {
    /// The data is wrong: never retried.
    Business,
    /// The target system misbehaved: retried up to the process's max attempts.
    Application,
}

/// What a robot asks to do with an item it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum RobotAction {
    Start,
    Renew,
    Complete {
        observation: Option<String>,
        output: Option<serde_json::Value>,
    },
    Fail {
        kind: FailKind,
        message: String,
    },
    Release,
}

/// Process rules that shape transitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub lease_ttl_ms: i64,
    pub max_attempts: i64,
    pub on_lost: LostItemPolicy,
    /// First retry delay after an application failure; doubles with each attempt.
    pub backoff_base_ms: i64,
}

/// Policy knobs that are node configuration rather than process settings.
#[derive(Debug, Clone, Copy)]
pub struct PolicyDefaults {
    pub lease_ttl: Duration,
    pub backoff_base: Duration,
}

/// Why a robot's request was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransitionError {
    /// 403: the item is not leased to this robot.
    #[error("item {item} is not held by robot {robot}")]
    NotYours { item: i64, robot: i64 },
    /// 409: the lease given is not the item's current lease (it expired or was reassigned).
    #[error("lease {given} is not the current lease of item {item}")]
    StaleLease { item: i64, given: String },
    /// 409: the transition is not allowed from the item's status.
    #[error("item {item} is {from}; it cannot be {action}")]
    Illegal {
        item: i64,
        from: ItemStatus,
        action: &'static str,
    },
}

/// The outcome of planning: a new state to write, or nothing to do (a repeated request).
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Write(Box<ItemState>),
    Unchanged,
}

/// Plans a robot's action. `lease` is `None` for the seed API, whose robots know no leases; the
/// item must then be held by `robot` and that is enough.
pub fn plan_robot_action(
    item: &ItemState,
    robot: i64,
    lease: Option<&str>,
    action: &RobotAction,
    policy: &Policy,
    now: Millis,
) -> Result<Plan, TransitionError> {
    let name = action_name(action);
    let mine = item.robot_id == Some(robot);
    let in_flight = matches!(item.status, ItemStatus::Assigned | ItemStatus::Started);
    let stale = || TransitionError::StaleLease {
        item: item.id,
        given: lease.unwrap_or_default().to_string(),
    };
    if !(mine && (in_flight || item.status.is_final())) {
        // A lease this robot was issued earlier means it lost the item: a conflict, not a trespass.
        return Err(match lease {
            Some(l) if lease_robot(l) == Some(robot) => stale(),
            _ => TransitionError::NotYours {
                item: item.id,
                robot,
            },
        });
    }
    if !lease_matches(item, lease) {
        return Err(stale());
    }
    if item.status.is_final() {
        // Repeating the request that finished the item is harmless; anything else is illegal.
        return match (action, item.status) {
            (RobotAction::Complete { .. }, ItemStatus::Completed)
            | (RobotAction::Fail { .. }, ItemStatus::Failed) => Ok(Plan::Unchanged),
            _ => Err(TransitionError::Illegal {
                item: item.id,
                from: item.status,
                action: name,
            }),
        };
    }
    let mut next = item.clone();
    match action {
        RobotAction::Start => {
            if item.status == ItemStatus::Started {
                return Ok(Plan::Unchanged);
            }
            next.status = ItemStatus::Started;
            next.started_at = Some(now);
            next.lease_expires_at = Some(now + policy.lease_ttl_ms);
        }
        RobotAction::Renew => {
            next.lease_expires_at = Some(now + policy.lease_ttl_ms);
        }
        RobotAction::Complete {
            observation,
            output,
        } => {
            next.status = ItemStatus::Completed;
            next.observation = observation.clone();
            next.output = output.clone();
            next.report_apart = false;
            next.ended_at = Some(now);
            next.lease_expires_at = None;
        }
        RobotAction::Fail { kind, message } => {
            next.observation = Some(message.clone());
            next.report_apart = false;
            next.fail_kind = Some(
                match kind {
                    FailKind::Business => "business",
                    FailKind::Application => "application",
                }
                .into(),
            );
            next.lease_expires_at = None;
            if *kind == FailKind::Application && item.attempt < policy.max_attempts {
                back_to_pending(&mut next);
                let exponent = (item.attempt - 1).clamp(0, 16) as u32;
                next.not_before = Some(now + policy.backoff_base_ms * 2i64.pow(exponent));
            } else {
                next.status = ItemStatus::Failed;
                next.ended_at = Some(now);
            }
        }
        RobotAction::Release => {
            back_to_pending(&mut next);
            // A release is the robot giving the item back unstarted: not an attempt.
            if item.status == ItemStatus::Assigned {
                next.attempt = (item.attempt - 1).max(0);
            }
        }
    }
    Ok(Plan::Write(Box::new(next)))
}

/// Plans what happens to an item whose robot was lost (pulse timeout, drained, deleted, token
/// rotated) or whose lease expired. `None` when the item is not in flight.
pub fn plan_lost(
    item: &ItemState,
    policy: &Policy,
    lease_expired: bool,
    now: Millis,
) -> Option<ItemState> {
    let mut next = item.clone();
    if lease_expired {
        next.lease_expiries += 1;
    }
    match item.status {
        ItemStatus::Assigned | ItemStatus::Started
            if next.lease_expiries >= POISON_AFTER_EXPIRIES =>
        {
            next.status = ItemStatus::Failed;
            next.fail_kind = Some("poison".into());
            next.observation = Some(format!(
                "quarantined: its lease expired {} times",
                next.lease_expiries
            ));
            next.report_apart = false;
            next.lease_id = None;
            next.lease_expires_at = None;
            next.ended_at = Some(now);
        }
        ItemStatus::Assigned => {
            back_to_pending(&mut next);
            // Never started: handing it to another robot is not a new attempt.
            next.attempt = (item.attempt - 1).max(0);
        }
        ItemStatus::Started => match policy.on_lost {
            LostItemPolicy::Retry => back_to_pending(&mut next),
            LostItemPolicy::Abandon => {
                next.status = ItemStatus::Abandoned;
                next.observation = Some("abandoned: the robot was lost after starting it".into());
                next.report_apart = false;
                next.lease_id = None;
                next.lease_expires_at = None;
                next.ended_at = Some(now);
            }
        },
        _ => return None,
    }
    Some(next)
}

/// Counter changes for moving one item from `from` to `to`.
pub fn count_delta(from: ItemStatus, to: ItemStatus) -> ItemCounts {
    let mut delta = ItemCounts::default();
    if from != to {
        *slot(&mut delta, from) -= 1;
        *slot(&mut delta, to) += 1;
    }
    delta
}

/// Adds `other` into `into`, field by field.
pub fn add_counts(into: &mut ItemCounts, other: &ItemCounts) {
    for status in ItemStatus::ALL {
        *slot(into, *status) += other.get(*status);
    }
}

fn slot(counts: &mut ItemCounts, status: ItemStatus) -> &mut i64 {
    match status {
        ItemStatus::Pending => &mut counts.pending,
        ItemStatus::Assigned => &mut counts.assigned,
        ItemStatus::Started => &mut counts.started,
        ItemStatus::Completed => &mut counts.completed,
        ItemStatus::Failed => &mut counts.failed,
        ItemStatus::Abandoned => &mut counts.abandoned,
    }
}

fn back_to_pending(item: &mut ItemState) {
    item.status = ItemStatus::Pending;
    item.robot_id = None;
    item.lease_id = None;
    item.lease_expires_at = None;
    item.started_at = None;
}

/// A new lease id for `robot`: the robot id, then 128 random bits, so a request can tell a lease
/// this robot lost from one it never had.
pub fn new_lease_id(robot: i64) -> String {
    let bits: u128 = rand::random();
    format!("{robot}-{bits:032x}")
}

/// The robot a lease id was issued to.
pub fn lease_robot(lease: &str) -> Option<i64> {
    lease
        .split_once('-')
        .and_then(|(robot, _)| robot.parse().ok())
}

fn lease_matches(item: &ItemState, lease: Option<&str>) -> bool {
    match lease {
        None => true,
        Some(given) => item.lease_id.as_deref() == Some(given),
    }
}

/// The verb of `action` as error messages use it.
pub fn action_name(action: &RobotAction) -> &'static str {
    match action {
        RobotAction::Start => "started",
        RobotAction::Renew => "renewed",
        RobotAction::Complete { .. } => "completed",
        RobotAction::Fail { .. } => "failed",
        RobotAction::Release => "released",
    }
}

#[cfg(test)]
mod tests;
