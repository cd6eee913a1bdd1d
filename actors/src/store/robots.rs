//! `robot:<id>` rows. Tokens are stored as SHA-256 hashes only.

use super::Store;
use crate::domain::{Platform, Robot, RobotStatus, now_millis};
use crate::error::StoreError;
use serde_json::json;

const ROBOT_FIELDS: &str = "record::id(id) AS id, name, platform, capacity, processes, status, \
                            last_pulse_at, node, created_at";

/// A robot to create, with the hash of its freshly generated token.
#[derive(Debug, Clone)]
pub struct NewRobot {
    pub name: String,
    pub platform: Platform,
    pub capacity: i64,
    pub processes: Vec<i64>,
    pub token_hash: String,
}

/// Changes to a robot; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct RobotPatch {
    pub name: Option<String>,
    pub platform: Option<Platform>,
    pub capacity: Option<i64>,
    pub processes: Option<Vec<i64>>,
    pub status: Option<RobotStatus>,
}

impl Store {
    /// Creates a robot (INACTIVE until it says otherwise); a taken name is a conflict.
    pub async fn create_robot(&self, new: &NewRobot) -> Result<Robot, StoreError> {
        let id = self.reserve_ids("robot", 1).await?;
        let sql = format!(
            "CREATE type::record('robot', $id) SET name = $name, platform = $platform, \
             token_hash = $token_hash, capacity = $capacity, processes = $processes, \
             status = 'INACTIVE', created_at = $now RETURN {ROBOT_FIELDS};"
        );
        let vars = json!({
            "id": id, "name": new.name, "platform": new.platform.as_str(),
            "token_hash": new.token_hash, "capacity": new.capacity,
            "processes": new.processes, "now": now_millis(),
        });
        self.row(&sql, vars, 0)
            .await
            .map_err(|e| name_conflict(e, &new.name))?
            .ok_or_else(|| StoreError::Malformed("robot create returned nothing".into()))
    }

    /// Every robot, by id.
    pub async fn list_robots(&self) -> Result<Vec<Robot>, StoreError> {
        let sql = format!("SELECT {ROBOT_FIELDS} FROM robot ORDER BY id;");
        self.rows(&sql, json!({}), 0).await
    }

    /// One robot by id.
    pub async fn robot(&self, id: i64) -> Result<Option<Robot>, StoreError> {
        let sql = format!("SELECT {ROBOT_FIELDS} FROM type::record('robot', $id);");
        self.row(&sql, json!({ "id": id }), 0).await
    }

    /// The robot whose token hashes to `token_hash`.
    pub async fn robot_by_token_hash(&self, token_hash: &str) -> Result<Option<Robot>, StoreError> {
        let sql = format!("SELECT {ROBOT_FIELDS} FROM robot WHERE token_hash = $hash;");
        self.row(&sql, json!({ "hash": token_hash }), 0).await
    }

    /// Applies `patch` to robot `id`; `None` when no such robot.
    pub async fn update_robot(
        &self,
        id: i64,
        patch: &RobotPatch,
    ) -> Result<Option<Robot>, StoreError> {
        let sql = format!(
            "UPDATE type::record('robot', $id) SET name = $name ?? name, \
             platform = $platform ?? platform, capacity = $capacity ?? capacity, \
             processes = $processes ?? processes, status = $status ?? status \
             RETURN {ROBOT_FIELDS};"
        );
        let vars = json!({
            "id": id, "name": patch.name, "platform": patch.platform.map(Platform::as_str),
            "capacity": patch.capacity, "processes": patch.processes,
            "status": patch.status.map(RobotStatus::as_str),
        });
        self.retry_conflicts(|| self.row(&sql, vars.clone(), 0))
            .await
            .map_err(|e| name_conflict(e, patch.name.as_deref().unwrap_or_default()))
    }

    /// Replaces robot `id`'s token hash; the old token stops working with this write.
    pub async fn replace_robot_token(
        &self,
        id: i64,
        token_hash: &str,
    ) -> Result<Option<Robot>, StoreError> {
        let sql = format!(
            "UPDATE type::record('robot', $id) SET token_hash = $hash RETURN {ROBOT_FIELDS};"
        );
        self.row(&sql, json!({ "id": id, "hash": token_hash }), 0)
            .await
    }

    /// Deletes robot `id`; returns whether it existed.
    pub async fn delete_robot(&self, id: i64) -> Result<bool, StoreError> {
        let sql = "DELETE type::record('robot', $id) RETURN BEFORE;";
        let gone: Vec<serde_json::Value> = self.rows(sql, json!({ "id": id }), 0).await?;
        Ok(!gone.is_empty())
    }
}

fn name_conflict(err: StoreError, name: &str) -> StoreError {
    match err {
        StoreError::Conflict(_) => StoreError::Conflict(format!("robot name '{name}' is taken")),
        other => other,
    }
}
