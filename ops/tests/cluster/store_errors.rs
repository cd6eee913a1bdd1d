//! SurrealDB errors are classified once, where they become a `StoreError`: a real write-write
//! conflict, a guard's THROW and a unique index's refusal, on the embedded store and on a
//! `ws://` server (where the error's kind travels over the wire).

use crate::harness::*;
use orchestrator_actors::StoreError;

/// Makes each kind of failure happen on `store` and checks how it is classified.
async fn failures_are_classified(store: &Store) -> Result<()> {
    store
        .execute(
            "DEFINE TABLE probe SCHEMALESS; \
             DEFINE INDEX probe_name ON probe FIELDS name UNIQUE; \
             UPSERT probe:counter SET n = 0;",
        )
        .await?;
    // Writers racing on one row: some transactions lose, and say they may be sent again.
    let racers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..40 {
                outcomes.push(
                    store
                        .execute("BEGIN; UPDATE probe:counter SET n += 1; COMMIT;")
                        .await,
                );
            }
            outcomes
        })
    });
    let mut lost = 0;
    for racer in racers.collect::<Vec<_>>() {
        for outcome in racer.await? {
            match outcome {
                Ok(()) => {}
                Err(err @ StoreError::Contention(_)) => {
                    ensure!(err.is_retryable(), "{err}");
                    lost += 1;
                }
                Err(other) => bail!("a lost race classified as {other:?}"),
            }
        }
    }
    eprintln!("{lost} of 320 racing transactions lost a write-write race");
    ensure!(lost > 0, "no transaction lost: the test made no conflict");
    match store
        .execute("BEGIN; UPDATE probe:counter SET n += 1; THROW 'moved on'; COMMIT;")
        .await
    {
        Err(StoreError::Moved(_)) => {}
        other => bail!("a guard's THROW classified as {other:?}"),
    }
    store.execute("CREATE probe:a SET name = 'same';").await?;
    match store.execute("CREATE probe:b SET name = 'same';").await {
        Err(err @ StoreError::Conflict(_)) => ensure!(!err.is_retryable()),
        other => bail!("a unique index's refusal classified as {other:?}"),
    }
    match store.execute("SELECT * FROM ;").await {
        Err(err @ StoreError::Database(_)) => ensure!(!err.is_retryable()),
        other => bail!("a malformed query classified as {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_the_embedded_store_are_classified_by_kind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreConfig {
        url: format!("surrealkv://{}", dir.path().join("db").display()),
        ..StoreConfig::memory()
    })
    .await?;
    failures_are_classified(&store).await?;
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_a_server_are_classified_by_kind() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(0).await?;
    let store = Store::open(&StoreConfig {
        url: cluster.db.clone(),
        ..StoreConfig::memory()
    })
    .await?;
    failures_are_classified(&store).await
}
