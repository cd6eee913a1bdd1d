//! What an operator watches: `/metrics` in the Prometheus text format on its own address, and
//! request ids on every response (header, and error bodies) that the log lines carry too.

use anyhow::{Context, Result};
use orchestrator_node::NodeConfig;
use orchestrator_tests::{RestRobot, TestNode, WsRobot, wait_for_task_status};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The value of the sample `name` (with its labels, as rendered) in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(http: &reqwest::Client, at: SocketAddr) -> Result<String> {
    let resp = http.get(format!("http://{at}/metrics")).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Ok(resp.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_robots_did_and_what_the_store_holds() -> Result<()> {
    let config = NodeConfig {
        metrics_listen: Some("127.0.0.1:0".parse()?),
        ..NodeConfig::for_tests()
    };
    let node = TestNode::start_with(config).await?;
    let at = node.node.metrics_addr().context("metrics address")?;
    // Counters are process-wide (every node of this test binary shares the recorder), so the
    // test compares figures before and after its own work.
    let before = scrape(&node.http, at).await?;
    let completed = |page: &str| {
        sample(page, r#"orchestrator_transitions_total{to="COMPLETED"}"#).unwrap_or(0.0)
    };
    let frames_in =
        |page: &str| sample(page, r#"orchestrator_ws_frames_total{direction="in"}"#).unwrap_or(0.0);
    let uploaded = |page: &str| sample(page, "orchestrator_upload_rows_total").unwrap_or(0.0);

    let process = node.process("observed").await?;
    let task = node.upload_seed_rows(process, 6).await?;
    let rest = RestRobot::create(&node, "rest-robot", json!({ "capacity": 3 })).await?;
    let mut ws = WsRobot::create(&node, "ws-robot", json!({ "capacity": 3 })).await?;
    ws.send(json!({ "type": "ready" })).await?;
    let mut done = 0;
    for item in rest.claim(3, 5.0).await? {
        rest.finish(&item).await?;
        done += 1;
    }
    while done < 6 {
        let Some(frame) = ws.next_within(std::time::Duration::from_secs(5)).await? else {
            for item in rest.claim(3, 1.0).await? {
                rest.finish(&item).await?;
                done += 1;
            }
            continue;
        };
        if frame["type"] == "items" {
            for item in frame["items"].as_array().cloned().unwrap_or_default() {
                ws.act("completed", &item, &format!("c{}", item["id"]), Value::Null)
                    .await?;
                done += 1;
            }
        }
    }
    wait_for_task_status(&node, task, "COMPLETED").await?;

    let after = scrape(&node.http, at).await?;
    assert!(
        completed(&after) - completed(&before) >= 6.0,
        "six completions counted:\n{after}"
    );
    assert!(uploaded(&after) - uploaded(&before) >= 6.0, "{after}");
    assert!(frames_in(&after) - frames_in(&before) >= 2.0, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"orchestrator_robots_connected{transport="websocket"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert!(
        sample(&after, r#"orchestrator_items{status="COMPLETED"}"#).unwrap_or(0.0) >= 6.0,
        "items by status come from the store: {after}"
    );
    assert_eq!(
        sample(&after, "orchestrator_cluster_members_alive"),
        Some(1.0)
    );
    for histogram in [
        "orchestrator_batch_size_bucket",
        "orchestrator_batch_write_seconds_bucket",
        r#"orchestrator_registry_message_seconds_bucket{message="connect""#,
        r#"orchestrator_registry_message_seconds_bucket{message="dispatch""#,
    ] {
        assert!(after.contains(histogram), "{histogram} in:\n{after}");
    }
    assert!(after.contains("# HELP orchestrator_transitions_total"));
    // The main address has no /metrics: it is not for robots and browsers.
    let main = node.http.get(node.url("/metrics")).send().await?;
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    ws.close().await?;
    Ok(())
}

#[tokio::test]
async fn every_response_names_its_request_and_errors_carry_the_id() -> Result<()> {
    let node = TestNode::start().await?;
    // A balancer's (or robot's) own id is kept.
    let resp = node
        .http
        .get(node.url("/api/v1/tasks"))
        .header("x-request-id", "lb-42.a_b")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["x-request-id"], "lb-42.a_b");
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["request_id"], "lb-42.a_b", "{body}");

    // An id that is not a short plain token is replaced, in the header and the body alike.
    let resp = node
        .http
        .get(node.url("/api/v1/no-such-route"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let header = resp.headers()["x-request-id"].to_str()?.to_string();
    assert_eq!(header.len(), 16, "{header}");
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["request_id"], header.as_str());

    // Successes carry the header too (no body field: the body is the resource).
    let ok = node.http.get(node.url("/healthz")).send().await?;
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().contains_key("x-request-id"));
    Ok(())
}
