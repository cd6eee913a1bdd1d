//! JSON shapes of the user API and the robot REST API, as types: the handlers serialize them and
//! the OpenAPI description derives its schemas from them (`dashboard/openapi.rs`), so the two
//! cannot drift apart. Timestamps are RFC 3339 with offset.

use orchestrator_actors::domain::{
    Item, ItemCounts, ItemStatus, LostItemPolicy, Platform, Process, Robot, RobotStatus, Role,
    Task, TaskStatus, User, now_millis, rfc3339,
};
use orchestrator_actors::lifecycle::ItemState;
use orchestrator_actors::store::{LeasedItem, MinuteCount, Stats};
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::Duration;
use utoipa::ToSchema;

fn time(at: Option<i64>) -> Option<String> {
    at.map(rfc3339)
}

/// A user of the dashboard and the user API.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: String,
}

pub fn user(u: &User) -> UserView {
    UserView {
        id: u.id,
        username: u.username.clone(),
        role: u.role,
        disabled: u.disabled,
        created_at: rfc3339(u.created_at),
    }
}

/// What `POST /api/v1/auth/login` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginView {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_at: String,
    pub user: UserView,
}

/// A kind of work robots know how to do.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessView {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub enabled: bool,
    /// Lease time of this process's items; null uses the node's default.
    pub lease_ttl_ms: Option<i64>,
    pub max_attempts: i64,
    pub on_lost: LostItemPolicy,
    pub created_at: String,
}

pub fn process(p: &Process) -> ProcessView {
    ProcessView {
        id: p.id,
        title: p.title.clone(),
        description: p.description.clone(),
        enabled: p.enabled,
        lease_ttl_ms: p.lease_ttl_ms,
        max_attempts: p.max_attempts,
        on_lost: p.on_lost,
        created_at: rfc3339(p.created_at),
    }
}

/// A registered robot.
#[derive(Debug, Serialize, ToSchema)]
pub struct RobotView {
    pub id: i64,
    pub name: String,
    pub platform: Platform,
    pub capacity: i64,
    /// Eligible process ids; empty means every process.
    pub processes: Vec<i64>,
    pub status: RobotStatus,
    /// A pulse arrived within the pulse timeout.
    pub connected: bool,
    pub last_pulse_at: Option<String>,
    /// The node holding the robot's session.
    pub node: Option<String>,
    pub created_at: String,
    /// An administrator set the robot INACTIVE; the robot cannot set itself ACTIVE.
    pub disabled_by_admin: bool,
    /// Items the robot holds (in the robot list only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<i64>,
    /// The robot's token: only in the answers that create or rotate it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A robot counts as connected while its last pulse is younger than `pulse_timeout`.
pub fn robot(r: &Robot, pulse_timeout: Duration) -> RobotView {
    let connected = r
        .last_pulse_at
        .is_some_and(|at| now_millis() - at <= pulse_timeout.as_millis() as i64);
    RobotView {
        id: r.id,
        name: r.name.clone(),
        platform: r.platform,
        capacity: r.capacity,
        processes: r.processes.clone(),
        status: r.status,
        connected,
        last_pulse_at: time(r.last_pulse_at),
        node: r.node.clone(),
        created_at: rfc3339(r.created_at),
        disabled_by_admin: r.disabled_by_admin,
        load: None,
        token: None,
    }
}

/// One CSV upload and how far its items are.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    pub process_id: i64,
    pub owner_id: i64,
    pub status: TaskStatus,
    pub priority: i64,
    pub item_count: i64,
    pub counts: ItemCounts,
    /// Finished items (completed, failed, abandoned) over all items, 0 to 1.
    pub progress: f64,
    /// CSV header names, in file order.
    pub columns: Vec<String>,
    pub filename: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// Items put back to PENDING (in the answer of retry-failed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reopened: Option<i64>,
}

pub fn task(t: &Task) -> TaskView {
    let done = t.counts.completed + t.counts.failed + t.counts.abandoned;
    let progress = if t.item_count > 0 {
        done as f64 / t.item_count as f64
    } else {
        0.0
    };
    TaskView {
        id: t.id,
        process_id: t.process_id,
        owner_id: t.owner_id,
        status: t.status,
        priority: t.priority,
        item_count: t.item_count,
        counts: t.counts,
        progress,
        columns: t.columns.clone(),
        filename: t.filename.clone(),
        created_at: rfc3339(t.created_at),
        started_at: time(t.started_at),
        ended_at: time(t.ended_at),
        reopened: None,
    }
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

/// One CSV row and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemView {
    pub id: i64,
    pub task_id: i64,
    /// Line in the uploaded file (the header is line 1).
    pub line: i64,
    /// Every CSV column by header name.
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
    pub status: ItemStatus,
    pub robot_id: Option<i64>,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<String>,
    pub observation: Option<String>,
    /// Whatever JSON the robot sent.
    pub output: Option<Value>,
    pub fail_kind: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

pub fn item(i: &Item) -> ItemView {
    ItemView {
        id: i.id,
        task_id: i.task_id,
        line: i.line,
        values: i.values.clone(),
        status: i.status,
        robot_id: i.robot_id,
        attempt: i.attempt,
        lease_id: i.lease_id.clone(),
        lease_expires_at: time(i.lease_expires_at),
        observation: i.observation.clone(),
        output: i.output.clone(),
        fail_kind: i.fail_kind.clone(),
        created_at: rfc3339(i.created_at),
        started_at: time(i.started_at),
        ended_at: time(i.ended_at),
    }
}

/// A page of a task's items.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemView>,
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

/// Figures for the dashboard; an operator's task and item figures cover their own tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub robots: RobotFigures,
    pub tasks: TaskFigures,
    pub items: ItemCounts,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RobotFigures {
    pub total: i64,
    pub active: i64,
    pub connected: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskFigures {
    pub total: i64,
    /// Tasks by status name.
    #[schema(value_type = Object)]
    pub by_status: Map<String, Value>,
}

pub fn stats(s: &Stats) -> StatsView {
    StatsView {
        robots: RobotFigures {
            total: s.robots_total,
            active: s.robots_active,
            connected: s.robots_connected,
        },
        tasks: TaskFigures {
            total: s.tasks_total,
            by_status: s.tasks_by_status.clone(),
        },
        items: s.items,
    }
}

/// Items robots finished per minute, oldest first.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ThroughputView {
    pub minutes: Vec<MinuteView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteView {
    /// The minute's start.
    pub minute: String,
    pub completed: i64,
    pub failed: i64,
}

pub fn throughput(rows: &[MinuteCount]) -> ThroughputView {
    ThroughputView {
        minutes: rows
            .iter()
            .map(|m| MinuteView {
                minute: rfc3339(m.minute * 60_000),
                completed: m.completed,
                failed: m.failed,
            })
            .collect(),
    }
}

/// What `GET /healthz` answers while the node can work.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `ok`, or `degraded` while some chunks cannot be read.
    pub status: String,
    pub unreadable_chunks: Vec<i64>,
}

/// What a robot's pulse answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct PulseView {
    pub id: i64,
    pub name: String,
    pub status: RobotStatus,
    pub capacity: i64,
    pub processes: Vec<i64>,
    /// Pulse at least this often.
    pub pulse_interval_ms: u64,
    /// The robot is lost after this long without a pulse.
    pub pulse_timeout_ms: u64,
    pub disabled_by_admin: bool,
}

/// An item leased to a robot.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeasedItemView {
    pub id: i64,
    pub task_id: i64,
    pub process_id: Option<i64>,
    pub line: i64,
    #[schema(value_type = Object)]
    pub values: Map<String, Value>,
    pub attempt: i64,
    pub status: ItemStatus,
    /// Send it back with every action on the item.
    pub lease_id: String,
    pub lease_expires_at: String,
}

pub fn leased_item(i: &LeasedItem) -> LeasedItemView {
    LeasedItemView {
        id: i.id,
        task_id: i.task_id,
        process_id: i.process_id,
        line: i.line,
        values: i.values.clone(),
        attempt: i.attempt,
        status: i.status,
        lease_id: i.lease_id.clone(),
        lease_expires_at: rfc3339(i.lease_expires_at),
    }
}

/// An item's state after a robot's action.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemStateView {
    pub id: i64,
    pub task_id: i64,
    pub status: ItemStatus,
    pub robot_id: Option<i64>,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<String>,
    pub observation: Option<String>,
    pub output: Option<Value>,
    pub fail_kind: Option<String>,
}

pub fn item_state(i: &ItemState) -> ItemStateView {
    ItemStateView {
        id: i.id,
        task_id: i.task_id,
        status: i.status,
        robot_id: i.robot_id,
        attempt: i.attempt,
        lease_id: i.lease_id.clone(),
        lease_expires_at: time(i.lease_expires_at),
        observation: i.observation.clone(),
        output: i.output.clone(),
        fail_kind: i.fail_kind.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The REST claim and the WebSocket push describe a leased item the same way.
    #[test]
    fn a_leased_item_reads_the_same_on_both_channels() {
        let leased = LeasedItem {
            id: 7,
            task_id: 2,
            process_id: Some(1),
            line: 9,
            values: Map::from_iter([("a".to_string(), Value::from("x"))]),
            attempt: 1,
            lease_id: "1-abc".into(),
            lease_expires_at: 1_700_000_000_000,
            status: ItemStatus::Assigned,
            leased_at: None,
        };
        assert_eq!(
            serde_json::to_value(leased_item(&leased)).ok(),
            Some(leased.view())
        );
    }
}

/// Every error of the user and robot v1 APIs: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorView {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `not_found`, `csv_too_many_columns`, ...
    pub code: String,
    /// For people; store errors are never passed through.
    pub message: String,
    /// The request's id (also in the `x-request-id` header): the node's log lines about the
    /// request carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Errors of the seed-compatible API, as the prototype's Django REST Framework wrote them.
#[derive(Debug, Serialize, ToSchema)]
pub struct DetailView {
    pub detail: String,
}

/// The cluster as the store records it: `GET /api/v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterView {
    /// The node that answered.
    pub this_node: String,
    /// The node holding the housekeeping role (lease expiry, robots of dead nodes, stale
    /// uploads), or null while nobody holds it.
    pub housekeeping: Option<String>,
    /// A node without a heartbeat for this long is declared dead.
    pub dead_after_ms: i64,
    pub nodes: Vec<NodeView>,
    /// The answering node's hints to the other nodes (over the cluster listener).
    pub hints: HintsView,
}

/// The answering node's end of the hints between nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct HintsView {
    /// Whether this node has a cluster listener (a cookie); without it, the store alone
    /// carries changes between nodes, within a second.
    pub enabled: bool,
    /// Nodes connected now, by id.
    pub peers: Vec<String>,
    /// Hints handed to a connected peer since start.
    pub sent: u64,
    /// Hints received from peers since start.
    pub received: u64,
    /// Hints that reached no connection to an alive peer (that node polled the store instead).
    pub lost: u64,
    /// Connections to the cluster port closed at once (connection cap, or too many handshaking).
    pub refused: u64,
    /// Connections to the cluster port closed for not proving the cookie within 5 s.
    pub handshake_timeouts: u64,
}

/// One node of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// The HTTP address the node advertises.
    pub http: String,
    /// Where the node takes hints from the others (`host:port`), or null without a cookie.
    pub cluster: Option<String>,
    /// Grows each time the node joins again under the same id (a restart, or a rejoin after
    /// it was declared dead).
    pub incarnation: i64,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Heartbeat within the dead-node time and not declared dead.
    pub alive: bool,
    /// Robots with a session on the node at its last heartbeat.
    pub robots: i64,
    /// Items the node leased in the minute before its last heartbeat.
    pub leased_per_minute: i64,
    /// Items its robots had room for at its last heartbeat (its load summary: the other nodes
    /// leave a scarce item to a robot of this node that holds fewer than theirs).
    pub free_slots: i64,
}

pub fn cluster(
    this_node: &str,
    dead_after: Duration,
    nodes: &[orchestrator_actors::store::NodeRow],
    singletons: &[orchestrator_actors::store::SingletonRow],
    hints: orchestrator_actors::hints::HintStats,
    now: i64,
) -> ClusterView {
    let dead_after_ms = dead_after.as_millis() as i64;
    ClusterView {
        this_node: this_node.to_string(),
        housekeeping: singletons
            .iter()
            .find(|s| s.job == orchestrator_actors::cluster::HOUSEKEEPING && s.expires_at >= now)
            .map(|s| s.holder.clone()),
        dead_after_ms,
        nodes: nodes
            .iter()
            .map(|n| NodeView {
                id: n.id.clone(),
                http: n.http.clone(),
                cluster: n.cluster.clone(),
                incarnation: n.incarnation,
                started_at: rfc3339(n.started_at),
                heartbeat_at: rfc3339(n.heartbeat_at),
                alive: !n.dead && n.heartbeat_at >= now - dead_after_ms,
                robots: n.robots,
                leased_per_minute: n.leased_per_minute,
                free_slots: n.load_buckets().iter().map(|b| b.free()).sum(),
            })
            .collect(),
        hints: HintsView {
            enabled: hints.advertise.is_some(),
            peers: hints.peers,
            sent: hints.sent,
            received: hints.received,
            lost: hints.lost,
            refused: hints.refused,
            handshake_timeouts: hints.handshake_timeouts,
        },
    }
}
