//! Robots written for the prototype work unchanged: same paths (with and without a trailing
//! slash), query-string parameters, `Token` header, JSON shapes and `{"detail"}` errors.

use anyhow::Result;
use orchestrator_tests::{
    RestRobot, TestNode, eventually, expect, seed_csv, seed_robot, wait_for_task_status,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn prototype_and_v1_robots_finish_one_task_together() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Balance reload").await?;
    let seed_a = seed_robot(&t, "seed-a").await?;
    let seed_b = seed_robot(&t, "seed-b").await?;
    let v1 = RestRobot::create(&t, "v1", json!({ "capacity": 2 })).await?;
    let task = expect(
        t.upload(&t.admin, process, seed_csv(120)).await?,
        StatusCode::CREATED,
    )
    .await?;
    let task_id = task["id"].as_i64().unwrap_or_default();

    let a = tokio::spawn(seed_a.run(10));
    let b = tokio::spawn(seed_b.run(10));
    let v = tokio::spawn(async move {
        let mut done = Vec::new();
        let mut idle = 0;
        while idle < 5 {
            let items = v1.claim(2, 0.2).await?;
            idle = if items.is_empty() { idle + 1 } else { 0 };
            for item in items {
                v1.finish(&item).await?;
                done.push(item["id"].as_i64().unwrap_or_default());
            }
        }
        anyhow::Ok(done)
    });
    let (a, b, v) = (a.await??, b.await??, v.await??);
    let all: Vec<i64> = a.iter().chain(&b).chain(&v).copied().collect();
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), unique.len()),
        (120, 120),
        "each item done once: {} {} {}",
        a.len(),
        b.len(),
        v.len()
    );
    assert!(
        !a.is_empty() && !b.is_empty() && !v.is_empty(),
        "everyone got work"
    );
    let task = wait_for_task_status(&t, task_id, "COMPLETED").await?;
    assert_eq!(task["counts"]["completed"], 120);
    Ok(())
}

#[tokio::test]
async fn the_prototypes_shapes_and_errors_are_kept() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Balance reload").await?;
    let robot = seed_robot(&t, "seed").await?;
    let other = seed_robot(&t, "other").await?;

    let (code, body) = robot
        .call(Method::GET, &format!("/api/robots?robot_id={}", robot.id))
        .await?;
    assert_eq!(code, StatusCode::OK);
    let shown: Value = serde_json::from_str(&body)?;
    assert_eq!(
        shown,
        json!({ "id": robot.id, "user_id": null, "ip_address": null, "platform": "UIPATH", "status": "INACTIVE" })
    );
    // An idle robot gets an empty list, so it sleeps instead of spinning.
    let (code, body) = robot
        .call(Method::GET, &format!("/api/tasks?robot_id={}", robot.id))
        .await?;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));

    for (method, path, status, detail) in [
        (
            Method::GET,
            "/api/robots/".to_string(),
            StatusCode::BAD_REQUEST,
            "Missing or invalid parameters",
        ),
        (
            Method::GET,
            "/api/tasks?robot_id=abc".into(),
            StatusCode::BAD_REQUEST,
            "Missing or invalid parameters",
        ),
        (
            Method::GET,
            format!("/api/robots?robot_id={}", other.id),
            StatusCode::FORBIDDEN,
            "its own robot_id",
        ),
        (
            Method::PATCH,
            format!("/api/robots?robot_id={}&status=SLEEPY", robot.id),
            StatusCode::BAD_REQUEST,
            "ACTIVE or INACTIVE",
        ),
        (
            Method::PATCH,
            format!(
                "/api/items?robot_id={}&item_id=999&status=STARTED",
                robot.id
            ),
            StatusCode::NOT_FOUND,
            "item 999",
        ),
        (
            Method::PATCH,
            format!("/api/items?robot_id={}&item_id=1&status=DONE", robot.id),
            StatusCode::BAD_REQUEST,
            "STARTED, COMPLETED or ERROR",
        ),
        (
            Method::PATCH,
            format!(
                "/api/tasks?robot_id={}&task_id=999&status=COMPLETED",
                robot.id
            ),
            StatusCode::NOT_FOUND,
            "task 999",
        ),
    ] {
        let (code, body) = robot.call(method.clone(), &path).await?;
        let body: Value = serde_json::from_str(&body)?;
        assert_eq!(code, status, "{method} {path}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(detail)),
            "{method} {path}: {body}"
        );
    }
    let resp = t.http.get(t.url("/api/robots?robot_id=1")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.json::<Value>().await?["detail"].is_string());

    let csv = "linea,valor,field_name\n100,3001234567,recarga\n7,x,hello\n";
    let task = expect(t.upload(&t.admin, process, csv).await?, StatusCode::CREATED).await?;
    let (code, _) = robot
        .call(
            Method::PATCH,
            &format!("/api/robots/?robot_id={}&status=ACTIVE", robot.id),
        )
        .await?;
    assert_eq!(code, StatusCode::OK);
    let tasks: Value = eventually(Duration::from_secs(10), || async {
        let (_, body) = robot
            .call(Method::GET, &format!("/api/tasks/?robot_id={}", robot.id))
            .await?;
        let tasks: Value = serde_json::from_str(&body)?;
        Ok((tasks[0]["item_set"].as_array().map(Vec::len) == Some(2)).then_some(tasks))
    })
    .await?;
    let shown = &tasks[0];
    assert_eq!(shown["id"], task["id"]);
    assert_eq!(shown["status"], "STARTED");
    assert_eq!(shown["robot_id"], robot.id);
    assert_eq!(shown["process_id"], process);
    let item = &shown["item_set"][0];
    assert_eq!(item["status"], "CREATED");
    assert_eq!(
        item["value"],
        json!({ "id": item["id"], "name": "recarga", "value_number": "100.00", "value_text": "3001234567", "item_id": item["id"] })
    );
    assert_eq!(shown["item_set"][1]["value"]["value_number"], "7.00");
    assert!(
        item["created_at"]
            .as_str()
            .is_some_and(|s| s.ends_with("+00:00"))
    );

    let id = item["id"].as_i64().unwrap_or_default();
    let (code, body) = other
        .call(
            Method::PATCH,
            &format!(
                "/api/items?robot_id={}&item_id={id}&status=STARTED",
                other.id
            ),
        )
        .await?;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let path = format!(
        "/api/items?robot_id={}&item_id={id}&status=ERROR&observation=bad%20number",
        robot.id
    );
    assert_eq!(robot.call(Method::PATCH, &path).await?.0, StatusCode::OK);
    // Changing a finished item answers 403, as the prototype did.
    let path = format!(
        "/api/items?robot_id={}&item_id={id}&status=COMPLETED",
        robot.id
    );
    let (code, body) = robot.call(Method::PATCH, &path).await?;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        serde_json::from_str::<Value>(&body)?["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ERROR"))
    );
    let items = t
        .get(&format!("/api/v1/tasks/{}/items?status=FAILED", task["id"]))
        .await?;
    assert_eq!(items["items"][0]["observation"], "bad number");

    // "My share is done" after the task finished by itself: 200 and no change for a robot that
    // held items of it; the same 404 as for a missing task for one that never did.
    let last = shown["item_set"][1]["id"].as_i64().unwrap_or_default();
    for status in ["STARTED", "COMPLETED"] {
        let path = format!(
            "/api/items?robot_id={}&item_id={last}&status={status}",
            robot.id
        );
        assert_eq!(robot.call(Method::PATCH, &path).await?.0, StatusCode::OK);
    }
    let task_id = task["id"].as_i64().unwrap_or_default();
    wait_for_task_status(&t, task_id, "COMPLETED").await?;
    let before = t.get(&format!("/api/v1/tasks/{task_id}")).await?;
    for status in ["COMPLETED", "ERROR"] {
        let path = format!(
            "/api/tasks?robot_id={}&task_id={task_id}&status={status}",
            robot.id
        );
        let (code, body) = robot.call(Method::PATCH, &path).await?;
        assert_eq!((code, body.as_str()), (StatusCode::OK, ""));
    }
    let (code, body) = other
        .call(
            Method::PATCH,
            &format!(
                "/api/tasks/?robot_id={}&task_id={task_id}&status=COMPLETED",
                other.id
            ),
        )
        .await?;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["detail"],
        format!("task {task_id} not found")
    );
    assert_eq!(t.get(&format!("/api/v1/tasks/{task_id}")).await?, before);
    Ok(())
}
