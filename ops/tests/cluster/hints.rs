//! Hints between nodes over ractor_cluster.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_a_cookie_hint_each_other_before_their_store_poll() -> Result<()> {
    let _turn = TURN.lock().await;
    // Sweeps, and the event poll with them, every 5 s: what a node does within a second of a
    // change made on another node, it did because a hint told it.
    let ports = vec![free_port()?, free_port()?];
    let timers = Timers {
        sweep: Duration::from_secs(5),
        dead_after: Duration::from_secs(15),
        hint_ports: Some(ports.clone()),
        recount: Some(Duration::from_secs(3_600)),
    };
    let cluster = Cluster::start_with(2, timers).await?;
    let admin = cluster.login(1).await?;
    let v1 = until(Duration::from_secs(30), "the nodes connected", || async {
        let (v1, v2) = (
            cluster.cluster_view(1, &admin).await?,
            cluster.cluster_view(2, &admin).await?,
        );
        let connected =
            v1["hints"]["peers"] == json!(["n2"]) && v2["hints"]["peers"] == json!(["n1"]);
        Ok(if connected {
            Ok(v1)
        } else {
            Err(format!("{v1} {v2}"))
        })
    })
    .await?;
    assert_eq!(v1["hints"]["enabled"], true, "{v1}");
    assert_eq!(
        node_in(&v1, "n2")["cluster"],
        format!("127.0.0.1:{}", ports[1]),
        "{v1}"
    );
    let work = cluster.work(&admin, "hints", 2, 40).await?;
    // Robot 0 polls node 2 over REST, robot 1 holds a WebSocket there.
    cluster.activate(2, &work.tokens[0]).await?;
    let claimed = cluster.claim(2, &work.tokens[0], 5).await?;
    ensure!(claimed.len() == 5, "claimed {claimed:?}");
    let mut socket = ws_robot_working(&cluster, 2, &work.tokens[1]).await?;
    // Cancel on node 1: node 2 stops counting the released items at once.
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/tasks/{}/cancel", work.task),
            &admin,
            None,
        )
        .await?;
    let took = wait_loads_zero(&cluster, 2, &admin, &work.ids, Duration::from_secs(1)).await?;
    eprintln!("cancel on node 1: node 2's robots at load 0 after {took:?}");
    // Rotate robot 1's token on node 1: node 2 closes its socket at once.
    cluster
        .json(
            1,
            Method::POST,
            &format!("/api/v1/robots/{}/token", work.ids[1]),
            &admin,
            None,
        )
        .await?;
    let closed_after = closed_within(&mut socket, Duration::from_secs(10)).await?;
    eprintln!("token rotated on node 1: node 2 closed the socket after {closed_after:?}");
    assert!(
        closed_after < Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
    let v2 = cluster.cluster_view(2, &admin).await?;
    assert!(v2["hints"]["received"].as_u64() >= Some(3), "{v2}");
    Ok(())
}
