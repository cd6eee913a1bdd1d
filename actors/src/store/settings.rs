//! `setting:<name>` rows: schema version, the generated JWT secret.

use super::Store;
use crate::error::StoreError;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub(super) async fn get<T: DeserializeOwned>(
    store: &Store,
    name: &str,
) -> Result<Option<T>, StoreError> {
    let row: Option<Value> = store
        .row(
            "SELECT data FROM type::record('setting', $name);",
            json!({ "name": name }),
            0,
        )
        .await?;
    match row.and_then(|mut r| r.get_mut("data").map(Value::take)) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Ok(Some(serde_json::from_value(value)?)),
    }
}

pub(super) async fn put(store: &Store, name: &str, value: Value) -> Result<(), StoreError> {
    store
        .exec(
            "UPSERT type::record('setting', $name) SET data = $value;",
            json!({ "name": name, "value": value }),
        )
        .await
}

impl Store {
    /// Stores `candidate` under `name` unless a value exists; returns whichever value is stored.
    /// Nodes sharing a store agree on one value this way (the JWT secret).
    pub async fn setting_or_insert(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let sql = "UPSERT type::record('setting', $name) SET data = data ?? $candidate \
                   RETURN AFTER;";
        let vars = json!({ "name": name, "candidate": candidate });
        self.retry_conflicts(|| async {
            let row: Option<Value> = self.row(sql, vars.clone(), 0).await?;
            row.and_then(|r| r["data"].as_str().map(str::to_string))
                .ok_or_else(|| StoreError::Malformed(format!("setting {name} is not a string")))
        })
        .await
    }
}
