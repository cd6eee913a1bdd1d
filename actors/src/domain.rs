//! Plain domain types shared by the store, the actors and the web layer.
//!
//! Timestamps are milliseconds since the Unix epoch (`i64`) everywhere inside the system; the web
//! layer renders them as RFC 3339. Integer ids are what the prototype's robots expect.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Where dispatch reads the time: the wall clock in production, a hand-moved clock in tests.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> Millis + Send + Sync>);

impl Clock {
    /// The system wall clock.
    pub fn system() -> Self {
        Clock(std::sync::Arc::new(now_millis))
    }

    /// A clock reading `source`.
    pub fn from_fn(source: impl Fn() -> Millis + Send + Sync + 'static) -> Self {
        Clock(std::sync::Arc::new(source))
    }

    /// The current time in milliseconds since the epoch.
    pub fn now(&self) -> Millis {
        (self.0)()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// Renders epoch milliseconds as an RFC 3339 timestamp with offset (`2026-11-28T15:46:27.123+00:00`).
pub fn rfc3339(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        // By hand: utoipa's derive does not see a `rename` whose text comes through a macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
                let object = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([$($text),+]))
                    .build();
                utoipa::openapi::RefOr::T(Schema::Object(object))
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(stringify!($name))
            }
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire and storage spelling of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s.eq_ignore_ascii_case($text) { return Ok($name::$variant); })+
                let allowed: Vec<&str> = vec![$($text),+];
                Err(format!("'{s}' is not one of {}", allowed.join(", ")))
            }
        }
    };
}

string_enum!(
    /// What a user may do: admins manage users, processes and robots; operators upload and watch tasks.
    Role { Admin => "admin", Operator => "operator" }
);

string_enum!(
    /// The automation platform a robot runs on (informational; dispatch treats all alike).
    Platform {
        UiPath => "UIPATH",
        AutomationAnywhere => "AUTOMATION_ANYWHERE",
        BluePrism => "BLUEPRISM",
        PowerAutomate => "POWER_AUTOMATE",
        Python => "PYTHON",
        Other => "OTHER",
    }
);

string_enum!(
    /// Whether an operator wants a robot to receive work.
    RobotStatus { Active => "ACTIVE", Inactive => "INACTIVE" }
);

string_enum!(
    /// What happens to an item a robot started and then lost.
    LostItemPolicy {
        /// The item becomes ABANDONED: it may have had side effects, a person decides.
        Abandon => "abandon",
        /// The item goes back to PENDING and runs again.
        Retry => "retry",
    }
);

string_enum!(
    /// Task lifecycle. `Uploading` is internal: such a task is invisible until its upload commits.
    TaskStatus {
        Uploading => "UPLOADING",
        Created => "CREATED",
        Started => "STARTED",
        Completed => "COMPLETED",
        Cancelled => "CANCELLED",
    }
);

string_enum!(
    /// Item lifecycle: PENDING → ASSIGNED → STARTED → COMPLETED | FAILED | ABANDONED.
    ItemStatus {
        Pending => "PENDING",
        Assigned => "ASSIGNED",
        Started => "STARTED",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Abandoned => "ABANDONED",
    }
);

impl ItemStatus {
    /// Whether no further transition is possible without an operator's retry.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ItemStatus::Completed | ItemStatus::Failed | ItemStatus::Abandoned
        )
    }
}

/// A person who signs in to the dashboard or the user API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Millis,
    /// Login tokens issued before this (a sign-out, a password change) are refused.
    #[serde(default)]
    pub tokens_after: Option<Millis>,
}

/// A kind of work robots know how to do ("Balance reload").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub enabled: bool,
    /// Per-process lease TTL override in milliseconds; `None` uses the node default.
    pub lease_ttl_ms: Option<i64>,
    pub max_attempts: i64,
    pub on_lost: LostItemPolicy,
    pub created_at: Millis,
}

/// A registered robot. Its token is stored only as a SHA-256 hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Robot {
    pub id: i64,
    pub name: String,
    pub platform: Platform,
    pub capacity: i64,
    /// Eligible process ids; empty means every process.
    pub processes: Vec<i64>,
    pub status: RobotStatus,
    pub last_pulse_at: Option<Millis>,
    pub node: Option<String>,
    pub created_at: Millis,
    /// An administrator set the robot INACTIVE: the robot cannot make itself ACTIVE again.
    #[serde(default)]
    pub disabled_by_admin: bool,
}

impl Robot {
    /// Whether the robot may set `status` on itself (a pulse, the prototype's PATCH, a
    /// WebSocket `ready`): anything but ACTIVE while an administrator's INACTIVE holds.
    pub fn may_set_own_status(&self, status: RobotStatus) -> bool {
        !(status == RobotStatus::Active && self.disabled_by_admin)
    }
}

/// Whether an administrator setting `status` holds the robot there: an administrator's
/// INACTIVE holds until an administrator sets ACTIVE (the robot cannot undo it).
pub fn admin_holds(status: RobotStatus) -> bool {
    status == RobotStatus::Inactive
}

/// Item counts of one task by status, maintained incrementally with every transition.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ItemCounts {
    pub pending: i64,
    pub assigned: i64,
    pub started: i64,
    pub completed: i64,
    pub failed: i64,
    pub abandoned: i64,
}

impl ItemCounts {
    /// The counter for one status.
    pub fn get(&self, status: ItemStatus) -> i64 {
        match status {
            ItemStatus::Pending => self.pending,
            ItemStatus::Assigned => self.assigned,
            ItemStatus::Started => self.started,
            ItemStatus::Completed => self.completed,
            ItemStatus::Failed => self.failed,
            ItemStatus::Abandoned => self.abandoned,
        }
    }

    /// Sum over all statuses.
    pub fn total(&self) -> i64 {
        ItemStatus::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// One CSV upload for a process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub id: i64,
    pub process_id: i64,
    pub owner_id: i64,
    pub status: TaskStatus,
    pub priority: i64,
    pub item_count: i64,
    pub counts: ItemCounts,
    /// CSV header names, in file order.
    pub columns: Vec<String>,
    pub filename: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
}

/// One CSV row: the unit of work a robot receives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    pub id: i64,
    pub task_id: i64,
    /// 1-based line number in the uploaded file (the header is line 1).
    pub line: i64,
    /// Every CSV column by header name.
    pub values: serde_json::Map<String, serde_json::Value>,
    pub status: ItemStatus,
    pub robot_id: Option<i64>,
    pub attempt: i64,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub observation: Option<String>,
    pub output: Option<serde_json::Value>,
    pub fail_kind: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub ended_at: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_administrator_s_inactive_holds_against_the_robot_until_an_administrator_lifts_it() {
        let mut robot = Robot {
            id: 1,
            name: "r".into(),
            platform: Platform::Python,
            capacity: 1,
            processes: Vec::new(),
            status: RobotStatus::Inactive,
            last_pulse_at: None,
            node: None,
            created_at: 0,
            disabled_by_admin: admin_holds(RobotStatus::Inactive),
        };
        assert!(!robot.may_set_own_status(RobotStatus::Active));
        assert!(robot.may_set_own_status(RobotStatus::Inactive));
        robot.disabled_by_admin = admin_holds(RobotStatus::Active);
        assert!(robot.may_set_own_status(RobotStatus::Active));
    }

    #[test]
    fn enums_parse_case_insensitively_and_name_the_choices() {
        assert_eq!("uipath".parse::<Platform>(), Ok(Platform::UiPath));
        assert_eq!("ADMIN".parse::<Role>(), Ok(Role::Admin));
        let err = "robot".parse::<Role>().unwrap_err();
        assert!(err.contains("admin, operator"), "{err}");
    }

    #[test]
    fn final_states_are_exactly_the_three_terminal_ones() {
        let finals: Vec<_> = ItemStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                &ItemStatus::Completed,
                &ItemStatus::Failed,
                &ItemStatus::Abandoned
            ]
        );
    }

    #[test]
    fn rfc3339_has_an_offset() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000+00:00");
    }
}
