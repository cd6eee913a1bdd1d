//! A node on the embedded `surrealkv://` store keeps its data, schema version and generated JWT
//! secret across restarts; stale staged uploads are swept.

use anyhow::Result;
use orchestrator_actors::{Store, StoreConfig, StoreError};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{TestNode, eventually, expect, seed_csv};
use reqwest::{Method, StatusCode};
use std::time::Duration;

fn surrealkv_config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::for_tests();
    config.store.url = format!("surrealkv://{}", dir.join("db").display());
    config.jwt_secret = None;
    config
}

#[tokio::test]
async fn data_and_sessions_survive_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (token, task_id) = {
        let t = TestNode::start_with(surrealkv_config(dir.path())).await?;
        let process = t.process("Balance reload").await?;
        let task = expect(
            t.upload(&t.admin, process, seed_csv(1200)).await?,
            StatusCode::CREATED,
        )
        .await?;
        let token = t.admin.clone();
        t.node.shutdown().await;
        (token, task["id"].as_i64().unwrap_or_default())
    };
    // The embedded engine releases its file lock shortly after the last handle is dropped.
    let t = eventually(Duration::from_secs(20), || async {
        Ok(TestNode::start_with(surrealkv_config(dir.path()))
            .await
            .ok())
    })
    .await?;
    // The generated JWT secret was kept, so the old login still works.
    let resp = t
        .req(Method::GET, &format!("/api/v1/tasks/{task_id}"), &token)
        .send()
        .await?;
    let task = expect(resp, StatusCode::OK).await?;
    assert_eq!(task["item_count"], 1200);
    assert_eq!(task["counts"]["pending"], 1200);
    assert_eq!(
        t.get("/api/v1/users").await?.as_array().map(Vec::len),
        Some(1)
    );
    let version: Option<i64> = t.node.store().setting("schema").await?;
    assert_eq!(version, Some(orchestrator_actors::store::SCHEMA_VERSION));
    t.node.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_newer_schema_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        url: format!("surrealkv://{}", dir.path().join("db").display()),
        ..StoreConfig::memory()
    };
    {
        let store = Store::open(&config).await?;
        store.put_setting("schema", serde_json::json!(999)).await?;
    }
    let err = eventually(Duration::from_secs(10), || async {
        match Store::open(&config).await {
            Err(StoreError::SchemaTooNew { found, .. }) => Ok(Some(found)),
            // The previous handle may still be closing its files.
            Err(_) => Ok(None),
            Ok(_) => anyhow::bail!("a newer schema was accepted"),
        }
    })
    .await?;
    assert_eq!(err, 999);
    Ok(())
}

#[tokio::test]
async fn abandoned_staged_uploads_are_swept() -> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.stale_upload_after = Duration::from_millis(400);
    let t = TestNode::start_with(config).await?;
    let store = t.node.store();
    // What a node that died mid-upload leaves behind.
    let staged = store
        .create_staged_task(1, &["a".to_string()], None, 0)
        .await?;
    let first = store.reserve_item_ids(2).await?;
    let rows = (0..2)
        .map(|i| orchestrator_actors::store::NewItem {
            line: i + 2,
            values: serde_json::Map::from_iter([("a".to_string(), serde_json::json!("x"))]),
        })
        .collect();
    store.insert_staged_items(staged, first, rows).await?;
    assert_eq!(store.count_items().await?, 2);
    assert_eq!(
        t.get("/api/v1/tasks").await?["total"],
        0,
        "staged tasks are invisible"
    );
    eventually(Duration::from_secs(10), || async {
        Ok((store.count_rows("task").await? == 0
            && store.count_rows("chunk").await? == 0
            && store.count_rows("chunk_data").await? == 0)
            .then_some(()))
    })
    .await?;
    Ok(())
}
