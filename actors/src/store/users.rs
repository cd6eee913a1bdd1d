//! `user:<id>` rows.

use super::Store;
use crate::domain::{Role, User, now_millis};
use crate::error::StoreError;
use serde::Deserialize;
use serde_json::json;

const USER_FIELDS: &str =
    "record::id(id) AS id, username, role, disabled, created_at, tokens_after";

/// A user to create; the password is already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// A user with the password hash, for sign-in only.
#[derive(Debug, Clone, Deserialize)]
pub struct UserCredentials {
    #[serde(flatten)]
    pub user: User,
    pub password_hash: String,
}

impl Store {
    /// Creates a user; a taken username is a [`StoreError::Conflict`].
    pub async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let id = self.reserve_ids("user", 1).await?;
        let sql = format!(
            "CREATE type::record('user', $id) SET username = $username, \
             password_hash = $password_hash, role = $role, disabled = false, \
             created_at = $now RETURN {USER_FIELDS};"
        );
        let vars = json!({
            "id": id, "username": new.username, "password_hash": new.password_hash,
            "role": new.role.as_str(), "now": now_millis(),
        });
        self.row(&sql, vars, 0)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("username '{}' is taken", new.username))
                }
                other => other,
            })?
            .ok_or_else(|| StoreError::Malformed("user create returned nothing".into()))
    }

    /// Every user, by id.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_FIELDS} FROM user ORDER BY id;");
        self.rows(&sql, json!({}), 0).await
    }

    /// One user by id.
    pub async fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_FIELDS} FROM type::record('user', $id);");
        self.row(&sql, json!({ "id": id }), 0).await
    }

    /// A user with the password hash, by username.
    pub async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<UserCredentials>, StoreError> {
        let sql =
            format!("SELECT {USER_FIELDS}, password_hash FROM user WHERE username = $username;");
        self.row(&sql, json!({ "username": username }), 0).await
    }

    /// How many users exist.
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row: Option<serde_json::Value> = self
            .row("SELECT count() AS n FROM user GROUP ALL;", json!({}), 0)
            .await?;
        Ok(row.and_then(|r| r["n"].as_i64()).unwrap_or(0))
    }

    /// Applies `patch` to user `id`; `None` when no such user.
    pub async fn update_user(
        &self,
        id: i64,
        patch: &UserPatch,
    ) -> Result<Option<User>, StoreError> {
        let sql = format!(
            "UPDATE type::record('user', $id) SET \
             password_hash = $password_hash ?? password_hash, role = $role ?? role, \
             disabled = $disabled ?? disabled, \
             tokens_after = IF $password_hash != NONE OR $disabled = true THEN $now \
               ELSE tokens_after END \
             RETURN {USER_FIELDS};"
        );
        // A new password signs out every session that used the old one; disabling a user
        // revokes its tokens for good, so enabling it again does not bring them back.
        let vars = json!({
            "id": id, "password_hash": patch.password_hash,
            "role": patch.role.map(Role::as_str), "disabled": patch.disabled,
            "now": now_millis(),
        });
        self.row(&sql, vars, 0).await
    }

    /// Refuses every login token of user `id` issued until now (sign-out).
    pub async fn revoke_tokens(&self, id: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE type::record('user', $id) SET tokens_after = $now RETURN NONE;",
            json!({ "id": id, "now": now_millis() }),
        )
        .await
    }
}
