//! The SurrealDB schema, applied idempotently at start and recorded with a version.
//!
//! Every table is SCHEMAFULL. Timestamps are `int` milliseconds since the epoch. Counters for ids
//! live in `counter:<table>`; settings in `setting:<name>`; the schema version in `setting:schema`.

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: i64 = 2;

/// The table holding the schema version; defined before the version is read.
pub const SETTINGS_TABLE: &str = "DEFINE TABLE IF NOT EXISTS setting SCHEMAFULL; \
                                  DEFINE FIELD IF NOT EXISTS data ON setting TYPE any;";

/// Statements that bring an empty or older database to [`SCHEMA_VERSION`]. Each is idempotent.
pub const SCHEMA: &str = r#"
DEFINE TABLE IF NOT EXISTS counter SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS last ON counter TYPE int;

DEFINE TABLE IF NOT EXISTS user SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS username ON user TYPE string;
DEFINE FIELD IF NOT EXISTS password_hash ON user TYPE string;
DEFINE FIELD IF NOT EXISTS role ON user TYPE string ASSERT $value IN ['admin', 'operator'];
DEFINE FIELD IF NOT EXISTS disabled ON user TYPE bool;
DEFINE FIELD IF NOT EXISTS created_at ON user TYPE int;
DEFINE INDEX IF NOT EXISTS user_username ON user FIELDS username UNIQUE;

DEFINE TABLE IF NOT EXISTS process SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS title ON process TYPE string;
DEFINE FIELD IF NOT EXISTS description ON process TYPE string;
DEFINE FIELD IF NOT EXISTS enabled ON process TYPE bool;
DEFINE FIELD IF NOT EXISTS lease_ttl_ms ON process TYPE option<int>;
DEFINE FIELD IF NOT EXISTS max_attempts ON process TYPE int;
DEFINE FIELD IF NOT EXISTS on_lost ON process TYPE string ASSERT $value IN ['abandon', 'retry'];
DEFINE FIELD IF NOT EXISTS created_at ON process TYPE int;
DEFINE INDEX IF NOT EXISTS process_title ON process FIELDS title UNIQUE;

DEFINE TABLE IF NOT EXISTS robot SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS name ON robot TYPE string;
DEFINE FIELD IF NOT EXISTS platform ON robot TYPE string;
DEFINE FIELD IF NOT EXISTS token_hash ON robot TYPE string;
DEFINE FIELD IF NOT EXISTS capacity ON robot TYPE int;
DEFINE FIELD IF NOT EXISTS processes ON robot TYPE array<int>;
DEFINE FIELD IF NOT EXISTS status ON robot TYPE string ASSERT $value IN ['ACTIVE', 'INACTIVE'];
DEFINE FIELD IF NOT EXISTS last_pulse_at ON robot TYPE option<int>;
DEFINE FIELD IF NOT EXISTS node ON robot TYPE option<string>;
DEFINE FIELD IF NOT EXISTS created_at ON robot TYPE int;
DEFINE INDEX IF NOT EXISTS robot_name ON robot FIELDS name UNIQUE;
DEFINE INDEX IF NOT EXISTS robot_token_hash ON robot FIELDS token_hash UNIQUE;

DEFINE TABLE IF NOT EXISTS task SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS process ON task TYPE int;
DEFINE FIELD IF NOT EXISTS owner ON task TYPE int;
DEFINE FIELD IF NOT EXISTS status ON task TYPE string;
DEFINE FIELD IF NOT EXISTS priority ON task TYPE int;
DEFINE FIELD IF NOT EXISTS item_count ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts ON task TYPE object;
DEFINE FIELD IF NOT EXISTS counts.pending ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts.assigned ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts.started ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts.completed ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts.failed ON task TYPE int;
DEFINE FIELD IF NOT EXISTS counts.abandoned ON task TYPE int;
DEFINE FIELD IF NOT EXISTS columns ON task TYPE array<string>;
DEFINE FIELD IF NOT EXISTS filename ON task TYPE option<string>;
DEFINE FIELD IF NOT EXISTS id_ranges ON task TYPE array<array<int>>;
DEFINE FIELD IF NOT EXISTS created_at ON task TYPE int;
DEFINE FIELD IF NOT EXISTS touched_at ON task TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON task TYPE option<int>;
DEFINE FIELD IF NOT EXISTS ended_at ON task TYPE option<int>;
DEFINE INDEX IF NOT EXISTS task_status ON task FIELDS status;
DEFINE INDEX IF NOT EXISTS task_owner ON task FIELDS owner;

DEFINE TABLE IF NOT EXISTS item SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS task ON item TYPE int;
DEFINE FIELD IF NOT EXISTS line ON item TYPE int;
DEFINE FIELD IF NOT EXISTS values ON item TYPE object FLEXIBLE;
DEFINE FIELD IF NOT EXISTS status ON item TYPE string;
DEFINE FIELD IF NOT EXISTS robot ON item TYPE option<int>;
DEFINE FIELD IF NOT EXISTS attempt ON item TYPE int;
DEFINE FIELD IF NOT EXISTS lease_id ON item TYPE option<string>;
DEFINE FIELD IF NOT EXISTS lease_expires_at ON item TYPE option<int>;
DEFINE FIELD IF NOT EXISTS lease_expiries ON item TYPE int;
DEFINE FIELD IF NOT EXISTS observation ON item TYPE option<string>;
DEFINE FIELD IF NOT EXISTS output ON item TYPE any;
DEFINE FIELD IF NOT EXISTS fail_kind ON item TYPE option<string>;
DEFINE FIELD IF NOT EXISTS not_before ON item TYPE option<int>;
DEFINE FIELD IF NOT EXISTS created_at ON item TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON item TYPE option<int>;
DEFINE FIELD IF NOT EXISTS ended_at ON item TYPE option<int>;
DEFINE INDEX IF NOT EXISTS item_task_status ON item FIELDS task, status;
DEFINE INDEX IF NOT EXISTS item_robot_status ON item FIELDS robot, status;
DEFINE INDEX IF NOT EXISTS item_lease_expiry ON item FIELDS lease_expires_at;

-- Version 2: items finished per minute, `throughput:<epoch minute>`, for the dashboard's chart.
DEFINE TABLE IF NOT EXISTS throughput SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS completed ON throughput TYPE int;
DEFINE FIELD IF NOT EXISTS failed ON throughput TYPE int;
"#;
