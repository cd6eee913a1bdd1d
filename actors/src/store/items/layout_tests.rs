use crate::error::StoreError;
use crate::store::{Store, StoreConfig};
use serde_json::json;

/// A store left at schema 2 with `rows` item rows.
async fn schema_2_store(name: &str, rows: &str) -> Result<StoreConfig, StoreError> {
    let config = StoreConfig::on_disk(name);
    let store = Store::open(&config).await?;
    store
        .query_all(
            &format!("DEFINE TABLE item SCHEMALESS; {rows} UPSERT setting:schema SET data = 2;"),
            json!({}),
        )
        .await?;
    store.close().await;
    Ok(config)
}

/// A store of schema 2 that still holds item rows is refused; an empty one is upgraded.
#[tokio::test]
async fn a_store_holding_rows_per_item_is_refused() -> Result<(), StoreError> {
    let held = schema_2_store("rows", "CREATE item:1 SET task = 1;").await?;
    let refused = Store::open(&held).await;
    held.remove_files();
    assert!(
        matches!(refused, Err(StoreError::RowPerItemLayout { found: 2, .. })),
        "{refused:?}"
    );
    let config = schema_2_store("empty", "").await?;
    let store = Store::open(&config).await?;
    assert_eq!(
        store.setting::<i64>("schema").await?,
        Some(super::super::SCHEMA_VERSION)
    );
    let gone = store.query_all("SELECT * FROM item;", json!({})).await?;
    assert!(
        gone[0].to_string().contains("does not exist"),
        "the old table was removed: {gone:?}"
    );
    store.close().await;
    config.remove_files();
    Ok(())
}
