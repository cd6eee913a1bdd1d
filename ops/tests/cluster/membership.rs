//! Membership: nodes starting together, the lanes that keep heartbeats answering, fencing.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_on_an_empty_database_all_come_up() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(3).await?;
    let admin = cluster.login(2).await?;
    // Every node signs the same admin in (one admin was created, one JWT secret kept).
    for n in 1..=3 {
        cluster.login(n).await?;
    }
    let view = until(Duration::from_secs(10), "all three alive", || async {
        let view = cluster.cluster_view(3, &admin).await?;
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        let alive = nodes.len() == 3 && nodes.iter().all(|n| n["alive"] == true);
        Ok(if alive {
            Ok(view)
        } else {
            Err(view.to_string())
        })
    })
    .await?;
    let holder = view["housekeeping"]
        .as_str()
        .context("a housekeeping node")?;
    assert!(["n1", "n2", "n3"].contains(&holder), "{view}");
    for node in view["nodes"].as_array().into_iter().flatten() {
        assert_eq!(node["incarnation"], 1, "{view}");
        assert!(
            node["http"]
                .as_str()
                .is_some_and(|h| h.starts_with("http://127.0.0.1:"))
        );
    }
    // Without a valid sign-in the cluster is not shown.
    let (status, _) = cluster
        .call(3, Method::GET, "/api/v1/cluster", "Bearer nonsense", None)
        .await?;
    assert_eq!(status, 401);
    Ok(())
}

/// Time `ping` takes on `store`, or the limit when it answers false (the store's own bound).
async fn ping_time(store: &Store) -> Duration {
    let started = Instant::now();
    store.ping().await;
    started.elapsed()
}

/// A store on `cluster`'s server holding 1,000 robots: a read of the robot table then keeps the
/// server's task for the connection busy for a while.
async fn store_with_robots(cluster: &Cluster) -> Result<Store> {
    let store = Store::open(&StoreConfig {
        url: cluster.db.clone(),
        ..StoreConfig::memory()
    })
    .await?;
    for n in 0..1_000 {
        store
            .create_robot(&NewRobot {
                name: format!("bot-{n}"),
                platform: Platform::Python,
                capacity: 1,
                processes: Vec::new(),
                token_hash: format!("hash-{n}"),
            })
            .await?;
    }
    Ok(store)
}

/// Buries `store`'s main connection under 400 reads of the whole robot table, sent all at
/// once; 100 ms later runs `during` (which times itself) beside a ping on the main connection,
/// then waits for the reads. The ping must take at least 500 ms (or the test shows nothing) and
/// `during` under a quarter of it: `what` answered without queueing behind the main connection.
async fn answers_while_buried(
    store: &Store,
    what: &str,
    idle: Duration,
    during: impl Future<Output = Result<Duration>>,
) -> Result<()> {
    let burden: Vec<_> = (0..400)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.list_robots().await.map(|r| r.len()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (main, took) = tokio::join!(ping_time(store), during);
    for read in burden {
        assert_eq!(read.await??, 1_000);
    }
    let took = took?;
    eprintln!(
        "{what} while 400 table reads queue on the main connection: {took:?} (idle {idle:?}, \
         a ping on the main connection {main:?})"
    );
    ensure!(
        main >= Duration::from_millis(500),
        "the burden did not slow the main connection ({main:?}): the test shows nothing"
    );
    ensure!(
        took * 4 < main,
        "{what} waited behind the main connection: {took:?} vs {main:?}"
    );
    Ok(())
}

/// The server runs all requests of one connection in one task, so a heartbeat sent down the
/// connection that carries a node's bulk traffic waits behind all of it (heartbeats of 10 s and
/// more in a 30,000-robot connect storm, and nodes declared dead). Membership has a connection
/// of its own: it answers while the main one is buried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_lane_answers_while_the_main_connection_is_buried() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(0).await?;
    let store = store_with_robots(&cluster).await?;
    let lane = store.lane(Lane::Membership);
    let idle = ping_time(&lane).await;
    answers_while_buried(&store, "membership lane ping", idle, async {
        Ok(ping_time(&lane).await)
    })
    .await
}

/// Every robot connect waits for the registry. Its sweeps read and write the store each
/// period; down the main connection, a sweep waited behind a connect storm for 68 to 97 s
/// (30,000 robots on three nodes) and the connects meanwhile were refused. The registry's own
/// store work has a connection of its own: it answers while the main one is buried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_answers_while_the_main_connection_is_buried() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(0).await?;
    let store = store_with_robots(&cluster).await?;
    let dispatcher = Dispatcher::start(
        store.clone(),
        DispatchConfig {
            node_id: "buried".into(),
            http: "http://127.0.0.1:0".into(),
            dead_after: DEAD_AFTER,
            pulse_timeout: PULSE_TIMEOUT,
            lease_ttl: Duration::from_secs(60),
            // A sweep starts while the burden is sent, and several while it is read.
            sweep_period: Duration::from_millis(50),
            backoff_base: Duration::from_millis(100),
            dispatch_delay: Duration::from_millis(1),
            ws_standby: 0,
            recount_period: Duration::from_millis(100),
            payload_limits: Default::default(),
            stale_upload_after: Duration::from_secs(600),
            clock: Clock::system(),
            hints: Default::default(),
        },
    )
    .await?;
    // A robot with a session, so that recounts read the store too.
    let robot = store.list_robots().await?.remove(0);
    dispatcher.connect(&robot).await?;
    let loads_time = || async {
        let started = Instant::now();
        let loads = dispatcher.loads().await?;
        ensure!(loads.len() == 1, "loads of {} robots, not 1", loads.len());
        Ok(started.elapsed())
    };
    let idle = loads_time().await?;
    let answered = answers_while_buried(&store, "robot loads", idle, loads_time()).await;
    dispatcher.shutdown().await;
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_declared_dead_fences_itself_and_rejoins() -> Result<()> {
    let _turn = TURN.lock().await;
    let cluster = Cluster::start(3).await?;
    let admin = cluster.login(1).await?;
    cluster.node(3)?.signal("STOP")?;
    until(Duration::from_secs(15), "n3 declared dead", || async {
        let view = cluster.cluster_view(1, &admin).await?;
        let dead = node_in(&view, "n3")["alive"] == false;
        Ok(if dead { Ok(()) } else { Err(view.to_string()) })
    })
    .await?;
    tokio::time::sleep(DEAD_AFTER).await;
    cluster.node(3)?.signal("CONT")?;
    until(Duration::from_secs(15), "n3 rejoined", || async {
        let view = cluster.cluster_view(1, &admin).await?;
        let n3 = node_in(&view, "n3");
        let back = n3["alive"] == true && n3["incarnation"] == 2;
        Ok(if back {
            Ok(())
        } else {
            Err(format!("{view}\n{}", cluster.log(3)))
        })
    })
    .await?;
    assert!(
        cluster.log(3).contains("declared dead by the cluster"),
        "n3 says it fenced itself:\n{}",
        cluster.log(3)
    );
    cluster.wait_healthy(3).await?;
    Ok(())
}
