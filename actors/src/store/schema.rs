//! The SurrealDB schema, applied idempotently at start and recorded with a version.
//!
//! Every table is SCHEMAFULL. Timestamps are `int` milliseconds since the epoch. Counters for ids
//! live in `counter:<table>`; settings in `setting:<name>`; the schema version in `setting:schema`.

/// The schema version this binary writes and understands.
pub const SCHEMA_VERSION: i64 = 8;

/// The first version that stores items in chunks; older ones kept a row per item.
pub const CHUNKED_ITEMS_SINCE: i64 = 3;

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
-- Version 4: login tokens issued before this are revoked (sign-out, password change).
DEFINE FIELD IF NOT EXISTS tokens_after ON user TYPE option<int>;

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
-- Version 4: an administrator's INACTIVE, which the robot cannot undo.
DEFINE FIELD IF NOT EXISTS disabled_by_admin ON robot TYPE option<bool>;
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

-- Version 2: items finished per minute, `throughput:<epoch minute>`, for the dashboard's chart.
DEFINE TABLE IF NOT EXISTS throughput SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS completed ON throughput TYPE int;
DEFINE FIELD IF NOT EXISTS failed ON throughput TYPE int;

-- Version 3: items live in chunks of 256 (store/chunks.rs): `chunk:<n>` holds their state as one
-- JSON text with the summary fields queries use, `chunk_data:<n>` their lines and values.
DEFINE TABLE IF NOT EXISTS chunk SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS task ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS first ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS version ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS created_at ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS state ON chunk TYPE string;
DEFINE FIELD IF NOT EXISTS in_flight ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS lease_min ON chunk TYPE option<int>;
DEFINE FIELD IF NOT EXISTS holders ON chunk TYPE array<int>;
DEFINE FIELD IF NOT EXISTS counts ON chunk TYPE object;
DEFINE FIELD IF NOT EXISTS counts.pending ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS counts.assigned ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS counts.started ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS counts.completed ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS counts.failed ON chunk TYPE int;
DEFINE FIELD IF NOT EXISTS counts.abandoned ON chunk TYPE int;
DEFINE INDEX IF NOT EXISTS chunk_task ON chunk FIELDS task;
DEFINE INDEX IF NOT EXISTS chunk_holders ON chunk FIELDS holders.*;
DEFINE INDEX IF NOT EXISTS chunk_lease_min ON chunk FIELDS lease_min;

DEFINE TABLE IF NOT EXISTS chunk_data SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS task ON chunk_data TYPE int;
DEFINE FIELD IF NOT EXISTS data ON chunk_data TYPE string;
DEFINE INDEX IF NOT EXISTS chunk_data_task ON chunk_data FIELDS task;

-- Version 4: `worked:[task, robot]` exists once a robot was leased an item of the task (the
-- prototype's task PATCH answers 200 to such a robot, 404 to any other).
DEFINE TABLE IF NOT EXISTS worked SCHEMAFULL;

-- Version 5: `report:<item id>` holds an item's report (observation and output, as one JSON
-- text) when it is too long to stay in its chunk (store/reports.rs).
DEFINE TABLE IF NOT EXISTS report SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS task ON report TYPE int;
DEFINE FIELD IF NOT EXISTS body ON report TYPE string;

-- Version 6: the cluster (store/nodes.rs). `node:<id>` is a node's membership row, renewed every
-- sweep; `singleton:<job>` says which node runs a job that must run on one node at a time.
DEFINE TABLE IF NOT EXISTS node SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS http ON node TYPE string;
DEFINE FIELD IF NOT EXISTS incarnation ON node TYPE int;
DEFINE FIELD IF NOT EXISTS started_at ON node TYPE int;
DEFINE FIELD IF NOT EXISTS heartbeat_at ON node TYPE int;
DEFINE FIELD IF NOT EXISTS dead ON node TYPE bool;
DEFINE FIELD IF NOT EXISTS robots ON node TYPE int;
DEFINE FIELD IF NOT EXISTS leased_per_minute ON node TYPE int;

-- (Version 8 replaces the `robot_node` index of version 6 with `robot_node_pulse`, below.)

DEFINE TABLE IF NOT EXISTS singleton SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS holder ON singleton TYPE string;
DEFINE FIELD IF NOT EXISTS incarnation ON singleton TYPE int;
DEFINE FIELD IF NOT EXISTS expires_at ON singleton TYPE int;

-- Version 6: `event` rows tell the other nodes what one node changed (a robot's settings, its
-- token, its deletion); every node reads the new ones each sweep (cluster.rs).
DEFINE TABLE IF NOT EXISTS event SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS at ON event TYPE int;
DEFINE FIELD IF NOT EXISTS node ON event TYPE string;
DEFINE FIELD IF NOT EXISTS kind ON event TYPE string ASSERT $value IN ['robot_changed', 'robot_revoked'];
DEFINE FIELD IF NOT EXISTS robot ON event TYPE int;
DEFINE INDEX IF NOT EXISTS event_at ON event FIELDS at;

-- Version 7: a node's cluster address (hints, hints.rs), when it has one; `items_released` events
-- tell the node holding a robot's session which of its items another node released (a cancel,
-- an expired lease), so its planned load and pushed items follow.
DEFINE FIELD IF NOT EXISTS cluster ON node TYPE option<string>;
DEFINE FIELD OVERWRITE kind ON event TYPE string ASSERT $value IN ['robot_changed', 'robot_revoked', 'items_released'];
DEFINE FIELD IF NOT EXISTS items ON event TYPE option<array<int>>;

-- Version 8: hot counters sharded per node, so nodes sharing a task never write one row.
-- `task_count:[task, node]` holds the changes of a task's counts one node made (the task row keeps
-- the counts its upload set); readers add them up. `throughput:[minute, node]` replaces
-- `throughput:<minute>`, with the minute as a field (rows from before the upgrade lack it: the
-- chart skips them and the prune removes them).
DEFINE TABLE IF NOT EXISTS task_count SCHEMAFULL;
DEFINE FIELD IF NOT EXISTS task ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts ON task_count TYPE object;
DEFINE FIELD IF NOT EXISTS counts.pending ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts.assigned ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts.started ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts.completed ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts.failed ON task_count TYPE int;
DEFINE FIELD IF NOT EXISTS counts.abandoned ON task_count TYPE int;
DEFINE INDEX IF NOT EXISTS task_count_task ON task_count FIELDS task;
DEFINE FIELD IF NOT EXISTS minute ON throughput TYPE option<int>;

-- Still version 8 (a node of an earlier build neither writes nor reads it): each node's robots
-- with room for work, as a JSON list, renewed with its heartbeat (cluster_view.rs).
DEFINE FIELD IF NOT EXISTS loads ON node TYPE option<string>;

-- Still version 8 (nodes of either index work on the other): the sweeps look for a node's silent
-- robots by `node = $n AND last_pulse_at < $cutoff`, a range over this compound index. Through
-- the single-field `robot_node` each sweep read every robot of the node (30,000 robot reads a
-- second with 10,000 robots on each of three nodes); kept beside this one, the planner would
-- intersect both and still read them all, so it goes.
REMOVE INDEX IF EXISTS robot_node ON robot;
DEFINE INDEX IF NOT EXISTS robot_node_pulse ON robot FIELDS node, last_pulse_at;
"#;
