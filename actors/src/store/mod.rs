//! The SurrealDB-backed store: the single source of truth for users, processes, robots, tasks and
//! items. SurrealQL lives only in this module tree, one file per table family.
//!
//! ```text
//!   web handlers ──┐
//!   actors ────────┼──► Store ──► embedded engine (surrealkv:// | mem://) or ws:// (shared server)
//!   ingest ────────┘
//! ```

mod chunks;
mod items;
mod nodes;
mod processes;
mod reports;
mod robots;
mod schema;
mod settings;
mod tasks;
mod throughput;
mod users;

pub(crate) use chunks::CHUNK_ITEMS;
pub use items::{Grant, LeasedItem, PendingItem};
pub use nodes::{EventKind, EventRow, NodeBeat, NodeRow, SingletonRow};
pub use processes::{NewProcess, ProcessPatch};
pub use robots::{NewRobot, RobotPatch};
pub use schema::SCHEMA_VERSION;
pub use tasks::{ItemFilter, NewItem, Stats, TaskFilter};
pub use throughput::MinuteCount;
pub(crate) use throughput::minute_of;
pub use users::{NewUser, UserPatch};

use crate::error::StoreError;
use crate::retry::Backoff;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use surrealdb::engine::any::Any;
use surrealdb::engine::local::Db as Local;
use surrealdb::{IndexedResults, Surreal};
use surrealdb_cnf::ConfigMap;
use surrealdb_engine_local::Datastore;
use tracing::{debug, info};

/// Where the store lives and how to sign in to it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `surrealkv://PATH`, `mem://` or `ws://HOST:PORT`.
    pub url: String,
    /// Root user for a `ws://` server.
    pub username: String,
    /// Root password for a `ws://` server.
    pub password: String,
    pub namespace: String,
    pub database: String,
    /// Bytes SurrealKV buffers in its memtable before flushing to disk (embedded store only).
    pub memtable_bytes: u64,
    /// Bytes of SurrealKV's block cache (embedded store only).
    pub block_cache_bytes: u64,
}

/// Default memtable size: the engine's own default is 1 GiB on a 16–64 GiB host, which an
/// upload of a million rows fills before the first flush.
pub const DEFAULT_MEMTABLE_BYTES: u64 = 64 << 20;
/// Default block cache size: the engine's own default is half the host's RAM less 1 GiB.
pub const DEFAULT_BLOCK_CACHE_BYTES: u64 = 64 << 20;

impl StoreConfig {
    /// An in-memory store, as tests use.
    pub fn memory() -> Self {
        StoreConfig {
            url: "mem://".into(),
            username: "root".into(),
            password: "root".into(),
            namespace: "orchestrator".into(),
            database: "orchestrator".into(),
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
        }
    }

    /// An embedded store on disk, in a fresh folder `orch-<name>-<pid>` under the temp folder,
    /// for tests and probes that need the real engine; [`Self::remove_files`] removes it.
    #[cfg(test)]
    pub(crate) fn on_disk(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("orch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StoreConfig {
            url: format!("surrealkv://{}", dir.display()),
            ..StoreConfig::memory()
        }
    }

    /// Removes the folder of a store made by [`Self::on_disk`].
    #[cfg(test)]
    pub(crate) fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(self.url.trim_start_matches("surrealkv://"));
    }
}

/// Handle to the database; cheap to clone. Clones share one SDK handle: cloning a `Surreal`
/// opens a new engine session with its own concurrent maps, which the engine registers on one
/// task before the clone's first query may run. With a store clone per robot session and per
/// request, those sessions were most of the node's memory with thousands of WebSocket robots
/// connected (heaptrack: 502 MB with 3,000).
/// The thread the item writes run on. A batch's transaction keeps the engine busy for a few
/// milliseconds of CPU at a time without yielding; on the node's own runtime that stalled
/// whatever shared its worker: the WebSocket reader and session that push a robot's next item,
/// and the socket pumps. On a runtime of its own the engine's work is one more thread the
/// kernel preempts, and the actors' workers stay free to answer. `None` if the thread could not
/// be started (the write then runs where it is awaited).
fn writer_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("store-writer")
                .enable_all()
                .build()
                .map_err(
                    |err| tracing::warn!(error = %err, "no store writer thread; writing inline"),
                )
                .ok()
        })
        .as_ref()
}

/// Work that must not queue behind the node's bulk traffic (robot connects, item writes) gets a
/// connection of its own to a `ws://` server, which runs the requests of one connection in one
/// task: under a connect storm of thousands of robots the main connection's queue was tens of
/// seconds long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Membership heartbeats: one that waits behind bulk traffic gets its node declared dead.
    Membership,
    /// The robot registry's own reads and writes (sweeps, recounts, releases): every robot
    /// connect waits for the registry, so a sweep that waits behind the storm refuses them.
    Control,
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Db>,
    /// The connection of [`Lane::Membership`]: on a `ws://` server a connection of its own,
    /// so that membership never queues behind the node's bulk traffic; else the same engine.
    membership: Arc<Db>,
    /// The connection of [`Lane::Control`], likewise.
    control: Arc<Db>,
    /// Recently used item chunks and the node's item write lock (see `chunks.rs`).
    chunks: Arc<chunks::ChunkCache>,
    /// Robots recently found by token (see `robots.rs`).
    tokens: Arc<robots::TokenCache>,
    /// Items this node leased since it started (the cluster view's items leased per minute).
    leased: Arc<std::sync::atomic::AtomicU64>,
    /// This node's shard of the hot counters (task counts, throughput): its node id.
    shard: Arc<std::sync::RwLock<Arc<str>>>,
}

/// The two ways the store reaches SurrealDB. The embedded engine is built here rather than by
/// the SDK's `connect`, because only the datastore builder accepts engine settings.
enum Db {
    Embedded(Surreal<Local>, Arc<Datastore>),
    Remote(Surreal<Any>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Embedded(..) => "Db::Embedded",
            Db::Remote(_) => "Db::Remote",
        })
    }
}

impl Db {
    /// Opens an embedded datastore at `path` (`memory` or `surrealkv://DIR`), sized by `config`.
    async fn embedded(path: &str, config: &StoreConfig) -> Result<Db, StoreError> {
        let engine = ConfigMap::empty()
            .with_key_value(
                "surrealkv_max_memtable_size",
                config.memtable_bytes.to_string(),
            )
            .with_key_value(
                "surrealkv_block_cache_capacity",
                config.block_cache_bytes.to_string(),
            );
        // The same steps as the SDK's local `connect`: maintenance tasks start only once the
        // storage version is settled.
        let datastore = Datastore::builder()
            .with_config(engine)
            .with_auth(false)
            .without_maintenance_tasks()
            .build_with_path(path)
            .await
            .map_err(|e| StoreError::Database(format!("cannot open {path}: {e}")))?;
        datastore
            .check_version()
            .await
            .map_err(|e| StoreError::Database(format!("cannot open {path}: {e}")))?;
        datastore
            .bootstrap()
            .await
            .map_err(|e| StoreError::Database(format!("cannot open {path}: {e}")))?;
        datastore.start_maintenance_tasks();
        let db = Surreal::<Local>::unstable_from_datastore(Arc::clone(&datastore), None).await?;
        let db = Db::Embedded(db, datastore);
        db.select(config).await?;
        Ok(db)
    }

    /// Connects and signs in to a `ws://` server, and selects the namespace and database.
    async fn remote(url: &str, config: &StoreConfig) -> Result<Db, StoreError> {
        let db = surrealdb::engine::any::connect(url).await?;
        db.signin(surrealdb::opt::auth::Root {
            username: config.username.clone(),
            password: config.password.clone(),
        })
        .await?;
        let db = Db::Remote(db);
        db.select(config).await?;
        Ok(db)
    }

    /// Selects the namespace and database. On a shared server, the first use defines them:
    /// nodes starting together on an empty server race there.
    async fn select(&self, config: &StoreConfig) -> Result<(), StoreError> {
        let backoff = Backoff::START;
        let selected = backoff
            .run(|attempt| async move {
                match self.use_ns_db(&config.namespace, &config.database).await {
                    Ok(()) => Ok(Some(())),
                    Err(err) => {
                        let err = StoreError::from(err);
                        if err.is_retryable() && !backoff.is_last(attempt) {
                            Ok(None)
                        } else {
                            Err(err)
                        }
                    }
                }
            })
            .await?;
        selected.ok_or_else(|| StoreError::Contention("selecting the database".into()))
    }

    async fn use_ns_db(&self, namespace: &str, database: &str) -> surrealdb::Result<()> {
        match self {
            Db::Embedded(db, _) => db.use_ns(namespace).use_db(database).await.map(drop),
            Db::Remote(db) => db.use_ns(namespace).use_db(database).await.map(drop),
        }
    }

    /// Runs `sql` with `vars` bound (a JSON object, or `Value::Null` for none).
    async fn run(&self, sql: &str, vars: Value) -> surrealdb::Result<IndexedResults> {
        let vars = unset_nulls(vars);
        match (self, vars) {
            (Db::Embedded(db, _), Value::Null) => db.query(sql).await,
            (Db::Embedded(db, _), vars) => db.query(sql).bind(vars).await,
            (Db::Remote(db), Value::Null) => db.query(sql).await,
            (Db::Remote(db), vars) => db.query(sql).bind(vars).await,
        }
    }
}

/// How long `/healthz` waits for the store.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Store {
    /// Opens (creating when absent) the store at `config.url` and applies the schema.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let url = config.url.trim();
        let (db, membership, control) = if let Some(path) = url.strip_prefix("surrealkv://") {
            if path.is_empty() {
                return Err(StoreError::UnsupportedUrl(url.into()));
            }
            std::fs::create_dir_all(path).map_err(|e| {
                StoreError::Database(format!("cannot create store directory {path}: {e}"))
            })?;
            let db = Arc::new(Db::embedded(url, config).await?);
            (Arc::clone(&db), Arc::clone(&db), db)
        } else if url == "mem://" || url == "memory" {
            let db = Arc::new(Db::embedded("memory", config).await?);
            (Arc::clone(&db), Arc::clone(&db), db)
        } else if url.starts_with("ws://") || url.starts_with("wss://") {
            // The server runs all requests of one connection in one task: a heartbeat sent
            // down the connection that carries a connect storm waits behind all of it.
            (
                Arc::new(Db::remote(url, config).await?),
                Arc::new(Db::remote(url, config).await?),
                Arc::new(Db::remote(url, config).await?),
            )
        } else {
            return Err(StoreError::UnsupportedUrl(url.into()));
        };
        let store = Store {
            db,
            membership,
            control,
            chunks: Arc::default(),
            tokens: Arc::default(),
            leased: Arc::default(),
            shard: Arc::new(std::sync::RwLock::new(Arc::from("local"))),
        };
        // Idempotent, and run by every node of a cluster at start: a lost race is run again.
        store.retry_conflicts(|| store.apply_schema()).await?;
        Ok(store)
    }

    async fn apply_schema(&self) -> Result<(), StoreError> {
        // SurrealDB 3 refuses to read a table that does not exist: define `setting` first.
        self.retry_conflicts(|| async {
            self.db
                .run(schema::SETTINGS_TABLE, Value::Null)
                .await?
                .check()?;
            Ok(())
        })
        .await?;
        let found: Option<i64> = self.setting("schema").await?;
        if let Some(found) = found
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if let Some(found) = found
            && found < schema::CHUNKED_ITEMS_SINCE
        {
            self.drop_row_per_item_table(found).await?;
        }
        self.retry_conflicts(|| async {
            self.db.run(schema::SCHEMA, Value::Null).await?.check()?;
            Ok(())
        })
        .await?;
        // Nodes starting together on an empty database all write the version.
        self.retry_conflicts(|| self.put_setting("schema", Value::from(SCHEMA_VERSION)))
            .await?;
        info!(version = SCHEMA_VERSION, "schema applied");
        Ok(())
    }

    /// Removes the one-row-per-item table of schema 2 and before, if it holds nothing; refuses
    /// to start if it holds items (they cannot be read as chunks).
    async fn drop_row_per_item_table(&self, found: i64) -> Result<(), StoreError> {
        // Reading a table that was never defined is an error in SurrealDB 3: nothing to drop.
        let Ok(held) = self
            .rows::<Value>("SELECT VALUE id FROM item LIMIT 1;", Value::Null, 0)
            .await
        else {
            return Ok(());
        };
        if !held.is_empty() {
            return Err(StoreError::RowPerItemLayout {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        self.exec("REMOVE TABLE IF EXISTS item;", Value::Null)
            .await?;
        info!(found, "removed the empty one-row-per-item table");
        Ok(())
    }

    /// Runs `sql` with `vars` (a JSON object) and deserializes the rows of statement `index`.
    pub(crate) async fn rows<T: DeserializeOwned>(
        &self,
        sql: &str,
        vars: Value,
        index: usize,
    ) -> Result<Vec<T>, StoreError> {
        let mut response = self.db.run(sql, vars).await?.check()?;
        let rows: Vec<Value> = response.take(index)?;
        rows.into_iter()
            .map(|row| serde_json::from_value(row).map_err(StoreError::from))
            .collect()
    }

    /// Like [`Store::rows`] but expects at most one row.
    pub(crate) async fn row<T: DeserializeOwned>(
        &self,
        sql: &str,
        vars: Value,
        index: usize,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(sql, vars, index).await?.into_iter().next())
    }

    /// Runs statements for their effect, failing if any statement failed.
    pub(crate) async fn exec(&self, sql: &str, vars: Value) -> Result<(), StoreError> {
        self.db.run(sql, vars).await?.check()?;
        Ok(())
    }

    /// Retries `op` while it fails with an optimistic-concurrency conflict.
    pub(crate) async fn retry_conflicts<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let backoff = Backoff::CONFLICT;
        let done = backoff
            .run(|attempt| {
                let attempted = op();
                async move {
                    match attempted.await {
                        Err(err) if err.is_retryable() && !backoff.is_last(attempt) => {
                            debug!(attempt, error = %err, "retrying after a write conflict");
                            metrics::counter!("orchestrator_store_conflicts_total", "op" => "retry")
                                .increment(1);
                            Ok(None)
                        }
                        other => other.map(Some),
                    }
                }
            })
            .await?;
        done.ok_or_else(|| StoreError::Contention("every attempt lost a race".into()))
    }

    /// Reserves `count` consecutive ids for `table`; returns the first.
    pub async fn reserve_ids(&self, table: &str, count: i64) -> Result<i64, StoreError> {
        self.advance_counter("(last ?? 0) + $count", table, count)
            .await
    }

    /// Reserves ids for `count` items, starting a new chunk, so a chunk never holds the items of
    /// two tasks or two batches; returns the first. The ids after the last up to the chunk's end
    /// stay unused.
    pub async fn reserve_item_ids(&self, count: i64) -> Result<i64, StoreError> {
        self.advance_counter(
            "(last ?? 0) - (last ?? 0) % $chunk + $chunk + $count - 1",
            "item",
            count,
        )
        .await
    }

    /// Sets `counter:<table>` to `next` (an expression of `last`, `$count` and `$chunk`) and
    /// returns the first of the `count` ids that ends at it.
    async fn advance_counter(
        &self,
        next: &str,
        table: &str,
        count: i64,
    ) -> Result<i64, StoreError> {
        let sql = format!("UPSERT type::record('counter', $table) SET last = {next} RETURN AFTER;");
        let vars = serde_json::json!({ "table": table, "count": count, "chunk": CHUNK_ITEMS });
        self.retry_conflicts(|| async {
            let row: Option<Value> = self.row(&sql, vars.clone(), 0).await?;
            let last = row
                .as_ref()
                .and_then(|r| r.get("last"))
                .and_then(Value::as_i64)
                .ok_or_else(|| StoreError::Malformed(format!("counter {table} has no value")))?;
            Ok(last - count + 1)
        })
        .await
    }

    /// Reads a setting.
    pub async fn setting<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        settings::get(self, name).await
    }

    /// Writes a setting.
    pub async fn put_setting(&self, name: &str, value: Value) -> Result<(), StoreError> {
        settings::put(self, name, value).await
    }

    /// Runs raw SurrealQL (for tools and tests); the first statement that failed, as its
    /// [`StoreError`].
    pub async fn execute(&self, sql: &str) -> Result<(), StoreError> {
        let mut response = self.db.run(sql, Value::Null).await?;
        let mut errors: Vec<(usize, surrealdb::Error)> =
            response.take_errors().into_iter().collect();
        // The statement that failed the transaction, not a sibling skipped because of it.
        errors.sort_by_key(|(index, err)| (crate::error::not_executed(err), *index));
        match errors.into_iter().next() {
            Some((_, err)) => Err(err.into()),
            None => Ok(()),
        }
    }

    /// Runs raw SurrealQL and returns every statement's result as JSON (for tools and tests).
    pub async fn query_all(&self, sql: &str, vars: Value) -> Result<Vec<Value>, StoreError> {
        let mut response = self.db.run(sql, vars).await?;
        let mut out = Vec::new();
        for index in 0..response.num_statements() {
            match response.take::<surrealdb::types::Value>(index) {
                Ok(v) => out.push(v.into_json_value()),
                Err(e) => out.push(serde_json::json!({ "ERROR": e.to_string() })),
            }
        }
        Ok(out)
    }

    /// How many rows `table` holds, staged ones included (a full count: for tests and tools,
    /// never on a request path).
    pub async fn count_rows(&self, table: &str) -> Result<i64, StoreError> {
        let sql = "SELECT count() AS n FROM type::table($table) GROUP ALL;";
        let row: Option<Value> = self
            .row(sql, serde_json::json!({ "table": table }), 0)
            .await?;
        Ok(row.and_then(|r| r["n"].as_i64()).unwrap_or(0))
    }

    /// Flushes and closes an embedded store (its background tasks stop cleanly); a no-op for a
    /// shared server. Call once, when nothing will use the store again.
    pub async fn close(&self) {
        if let Db::Embedded(_, datastore) = &*self.db {
            if let Err(err) = datastore.shutdown().await {
                tracing::warn!(error = %err, "store did not close cleanly");
            }
            // The engine shuts its datastore down again when the last SDK handle drops; that
            // second pass found the commit path closed and logged "ERROR The datastore is
            // shutting down" (a stop in three). The closed store keeps one handle for good.
            std::mem::forget(self.clone());
        }
    }

    /// Names this node's shard of the hot counters (its node id): every node of a cluster
    /// writes its own task-count and throughput rows, which reads sum.
    pub fn set_shard(&self, node_id: &str) {
        *self
            .shard
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::from(node_id);
    }

    pub(crate) fn shard(&self) -> Arc<str> {
        Arc::clone(
            &self
                .shard
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Items this node leased since it started.
    pub fn items_leased(&self) -> u64 {
        self.leased.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This store, with its queries sent down `lane`'s connection: on a `ws://` server a
    /// connection of its own (the embedded engine has no connection to wait in).
    pub fn lane(&self, lane: Lane) -> Store {
        let db = match lane {
            Lane::Membership => &self.membership,
            Lane::Control => &self.control,
        };
        Store {
            db: Arc::clone(db),
            ..self.clone()
        }
    }

    /// Whether the store answers a trivial query within two seconds (a `ws://` client waits
    /// for its server to come back rather than failing at once).
    pub async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(PING_TIMEOUT, self.db.run("RETURN 1;", Value::Null)).await,
            Ok(Ok(_))
        )
    }
}

/// Drops top-level `null` variables so they read as NONE in SurrealQL: `option<T>` fields accept
/// NONE but refuse NULL, and `$x ?? field` treats both alike.
pub(crate) fn unset_nulls(vars: Value) -> Value {
    match vars {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}
