//! `process:<id>` rows.

use super::Store;
use crate::domain::{LostItemPolicy, Process, now_millis};
use crate::error::StoreError;
use serde_json::json;

const PROCESS_FIELDS: &str = "record::id(id) AS id, title, description, enabled, lease_ttl_ms, \
                              max_attempts, on_lost, created_at";

/// A process to create.
#[derive(Debug, Clone)]
pub struct NewProcess {
    pub title: String,
    pub description: String,
    pub lease_ttl_ms: Option<i64>,
    pub max_attempts: i64,
    pub on_lost: LostItemPolicy,
}

/// Changes to a process; `None` leaves a field as it is. `lease_ttl_ms: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProcessPatch {
    pub title: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub lease_ttl_ms: Option<Option<i64>>,
    pub max_attempts: Option<i64>,
    pub on_lost: Option<LostItemPolicy>,
}

impl Store {
    /// Creates a process; a taken title is a [`StoreError::Conflict`].
    pub async fn create_process(&self, new: &NewProcess) -> Result<Process, StoreError> {
        let id = self.reserve_ids("process", 1).await?;
        let sql = format!(
            "CREATE type::record('process', $id) SET title = $title, description = $description, \
             enabled = true, lease_ttl_ms = $lease_ttl_ms, max_attempts = $max_attempts, \
             on_lost = $on_lost, created_at = $now RETURN {PROCESS_FIELDS};"
        );
        let vars = json!({
            "id": id, "title": new.title, "description": new.description,
            "lease_ttl_ms": new.lease_ttl_ms, "max_attempts": new.max_attempts,
            "on_lost": new.on_lost.as_str(), "now": now_millis(),
        });
        self.row(&sql, vars, 0)
            .await
            .map_err(|e| title_conflict(e, &new.title))?
            .ok_or_else(|| StoreError::Malformed("process create returned nothing".into()))
    }

    /// Every process, by id.
    pub async fn list_processes(&self) -> Result<Vec<Process>, StoreError> {
        let sql = format!("SELECT {PROCESS_FIELDS} FROM process ORDER BY id;");
        self.rows(&sql, json!({}), 0).await
    }

    /// One process by id.
    pub async fn process(&self, id: i64) -> Result<Option<Process>, StoreError> {
        let sql = format!("SELECT {PROCESS_FIELDS} FROM type::record('process', $id);");
        self.row(&sql, json!({ "id": id }), 0).await
    }

    /// Applies `patch` to process `id`; `None` when no such process.
    pub async fn update_process(
        &self,
        id: i64,
        patch: &ProcessPatch,
    ) -> Result<Option<Process>, StoreError> {
        let (set_ttl, ttl) = match patch.lease_ttl_ms {
            None => (false, None),
            Some(ttl) => (true, ttl),
        };
        let sql = format!(
            "UPDATE type::record('process', $id) SET title = $title ?? title, \
             description = $description ?? description, enabled = $enabled ?? enabled, \
             lease_ttl_ms = IF $set_ttl THEN $ttl ELSE lease_ttl_ms END, \
             max_attempts = $max_attempts ?? max_attempts, on_lost = $on_lost ?? on_lost \
             RETURN {PROCESS_FIELDS};"
        );
        let vars = json!({
            "id": id, "title": patch.title, "description": patch.description,
            "enabled": patch.enabled, "set_ttl": set_ttl, "ttl": ttl,
            "max_attempts": patch.max_attempts, "on_lost": patch.on_lost.map(LostItemPolicy::as_str),
        });
        self.row(&sql, vars, 0)
            .await
            .map_err(|e| title_conflict(e, patch.title.as_deref().unwrap_or_default()))
    }
}

fn title_conflict(err: StoreError, title: &str) -> StoreError {
    match err {
        StoreError::Conflict(_) => StoreError::Conflict(format!("process '{title}' exists")),
        other => other,
    }
}
