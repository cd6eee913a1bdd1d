//! `robot:<id>` rows. Tokens are stored as SHA-256 hashes only.

use super::Store;
use crate::domain::{Platform, Robot, RobotStatus, now_millis};
use crate::error::StoreError;
use serde_json::json;

const ROBOT_FIELDS: &str = "record::id(id) AS id, name, platform, capacity, processes, status, \
                            last_pulse_at, node, created_at, \
                            disabled_by_admin ?? false AS disabled_by_admin";

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
    /// Whether the status was set by an administrator (who alone can lift an INACTIVE).
    pub disabled_by_admin: Option<bool>,
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

    /// The robot whose token hashes to `token_hash`. A robot found is remembered for
    /// [`TOKEN_CACHE_TTL`], so a robot's requests do not each cost a query; this node forgets
    /// it at once when the robot is changed, deleted or given a new token here, other nodes of a
    /// cluster within the TTL. Unknown tokens are not remembered.
    pub async fn robot_by_token_hash(&self, token_hash: &str) -> Result<Option<Robot>, StoreError> {
        if let Some(robot) = self.tokens.get(token_hash) {
            return Ok(Some(robot));
        }
        let sql = format!("SELECT {ROBOT_FIELDS} FROM robot WHERE token_hash = $hash;");
        let robot: Option<Robot> = self.row(&sql, json!({ "hash": token_hash }), 0).await?;
        if let Some(robot) = &robot {
            self.tokens.put(token_hash, robot);
        }
        Ok(robot)
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
             processes = $processes ?? processes, status = $status ?? status, \
             disabled_by_admin = $disabled_by_admin ?? disabled_by_admin \
             RETURN {ROBOT_FIELDS};"
        );
        self.tokens.forget_robot(id);
        let vars = json!({
            "id": id, "name": patch.name, "platform": patch.platform.map(Platform::as_str),
            "capacity": patch.capacity, "processes": patch.processes,
            "status": patch.status.map(RobotStatus::as_str),
            "disabled_by_admin": patch.disabled_by_admin,
        });
        let robot = self
            .retry_conflicts(|| self.row(&sql, vars.clone(), 0))
            .await
            .map_err(|e| name_conflict(e, patch.name.as_deref().unwrap_or_default()));
        self.tokens.forget_robot(id);
        robot
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
        self.tokens.forget_robot(id);
        let robot = self
            .row(&sql, json!({ "id": id, "hash": token_hash }), 0)
            .await;
        // A lookup that ran during the write may have remembered the old token again.
        self.tokens.forget_robot(id);
        robot
    }

    /// Deletes robot `id`; returns whether it existed.
    pub async fn delete_robot(&self, id: i64) -> Result<bool, StoreError> {
        let sql = "DELETE type::record('robot', $id) RETURN BEFORE;";
        self.tokens.forget_robot(id);
        let gone = self
            .rows::<serde_json::Value>(sql, json!({ "id": id }), 0)
            .await;
        self.tokens.forget_robot(id);
        Ok(!gone?.is_empty())
    }
}

fn name_conflict(err: StoreError, name: &str) -> StoreError {
    match err {
        StoreError::Conflict(_) => StoreError::Conflict(format!("robot name '{name}' is taken")),
        other => other,
    }
}

/// How long a robot found by its token is remembered.
pub const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Robots recently found by token hash.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    inner: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Robot)>>,
}

impl TokenCache {
    fn get(&self, token_hash: &str) -> Option<Robot> {
        let map = self.inner.lock().ok()?;
        let (at, robot) = map.get(token_hash)?;
        (at.elapsed() < TOKEN_CACHE_TTL).then(|| robot.clone())
    }

    fn put(&self, token_hash: &str, robot: &Robot) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= 4_096 {
                map.retain(|_, (at, _)| at.elapsed() < TOKEN_CACHE_TTL);
            }
            map.insert(
                token_hash.to_string(),
                (std::time::Instant::now(), robot.clone()),
            );
        }
    }

    pub(crate) fn forget_robot(&self, id: i64) {
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|_, (_, robot)| robot.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    /// A robot found by token is remembered, and forgotten at once when it changes here.
    #[tokio::test]
    async fn remembered_tokens_are_forgotten_on_every_change() -> Result<(), StoreError> {
        let store = Store::open(&StoreConfig::memory()).await?;
        let robot = store
            .create_robot(&NewRobot {
                name: "r1".into(),
                platform: Platform::Python,
                capacity: 1,
                processes: Vec::new(),
                token_hash: "old".into(),
            })
            .await?;
        assert!(store.robot_by_token_hash("old").await?.is_some());
        assert!(store.tokens.get("old").is_some(), "remembered");
        let patch = RobotPatch {
            capacity: Some(5),
            ..RobotPatch::default()
        };
        store.update_robot(robot.id, &patch).await?;
        let found = store
            .robot_by_token_hash("old")
            .await?
            .expect("still valid");
        assert_eq!(found.capacity, 5, "a change is seen at once");
        store.replace_robot_token(robot.id, "new").await?;
        assert!(store.robot_by_token_hash("old").await?.is_none());
        assert!(store.robot_by_token_hash("new").await?.is_some());
        store.delete_robot(robot.id).await?;
        assert!(store.robot_by_token_hash("new").await?.is_none());
        assert!(store.tokens.get("new").is_none());
        Ok(())
    }
}
