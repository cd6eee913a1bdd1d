//! CSV task upload end to end: formats, streaming, all-or-nothing refusals, visibility and paging.

use anyhow::Result;
use bytes::Bytes;
use futures_util::stream;
use orchestrator_node::NodeConfig;
use orchestrator_tests::{TestNode, expect, expect_error, seed_csv};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn seed_format_upload_creates_a_task_with_every_column() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Balance reload").await?;
    let resp = t
        .upload(
            &t.admin,
            process,
            "linea,valor,field_name\n1,a,hello\n2,b,hello\n3,c,hello\n",
        )
        .await?;
    let task = expect(resp, StatusCode::CREATED).await?;
    assert_eq!(task["process_id"], process);
    assert_eq!(task["item_count"], 3);
    assert_eq!(task["status"], "CREATED");
    assert_eq!(task["columns"], json!(["linea", "valor", "field_name"]));
    let id = task["id"].as_i64().unwrap_or_default();

    let detail = t.get(&format!("/api/v1/tasks/{id}")).await?;
    assert_eq!(
        detail["counts"],
        json!({ "pending": 3, "assigned": 0, "started": 0, "completed": 0, "failed": 0, "abandoned": 0 })
    );
    assert!(
        detail["created_at"]
            .as_str()
            .is_some_and(|s| s.ends_with("+00:00"))
    );
    let items = t.get(&format!("/api/v1/tasks/{id}/items")).await?;
    assert_eq!(items["total"], 3);
    let first = &items["items"][0];
    assert_eq!(first["line"], 2);
    assert_eq!(
        first["values"],
        json!({ "linea": "1", "valor": "a", "field_name": "hello" })
    );
    assert_eq!(first["status"], "PENDING");
    assert_eq!(first["robot_id"], Value::Null);
    assert_eq!(first["observation"], Value::Null);
    assert_eq!(first["attempt"], 0);
    let ids: Vec<i64> = items["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 3);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "integer ids in file order: {ids:?}"
    );

    let stats = t.get("/api/v1/stats").await?;
    assert_eq!(stats["items"]["pending"], 3);
    assert_eq!(stats["tasks"]["total"], 1);
    assert_eq!(stats["tasks"]["by_status"]["CREATED"], 1);
    Ok(())
}

#[tokio::test]
async fn any_header_delimiter_bom_and_quoting_are_accepted() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let cases: [(&[u8], Value); 3] = [
        (
            b"phone;amount\n555-1;10\n",
            json!({ "phone": "555-1", "amount": "10" }),
        ),
        (
            b"phone\tamount\n555-1\t10\n",
            json!({ "phone": "555-1", "amount": "10" }),
        ),
        (
            b"\xEF\xBB\xBFname,note\r\n\"Doe, Jane\",\"a \"\"b\"\"\"\r\n",
            json!({ "name": "Doe, Jane", "note": "a \"b\"" }),
        ),
    ];
    for (csv, expected) in cases {
        let task = expect(
            t.upload(&t.admin, process, csv.to_vec()).await?,
            StatusCode::CREATED,
        )
        .await?;
        let items = t
            .get(&format!("/api/v1/tasks/{}/items", task["id"]))
            .await?;
        assert_eq!(items["items"][0]["values"], expected);
    }
    Ok(())
}

#[tokio::test]
async fn multipart_upload_takes_process_before_or_after_the_file() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let csv = "account,name\n1001,Ana\n1002,Ben\n";
    let before = Form::new()
        .text("process_id", process.to_string())
        .text("csrf", "ignored")
        .part(
            "file",
            Part::text(csv)
                .file_name("accounts.csv")
                .mime_str("text/csv")?,
        );
    let after = Form::new()
        .part("file", Part::text(csv).file_name("later.csv"))
        .text("process_id", process.to_string());
    for (form, name) in [(before, "accounts.csv"), (after, "later.csv")] {
        let resp = t
            .req(Method::POST, "/api/v1/tasks", &t.admin)
            .multipart(form)
            .send()
            .await?;
        let task = expect(resp, StatusCode::CREATED).await?;
        assert_eq!(task["item_count"], 2);
        assert_eq!(task["filename"], name);
    }
    let before = t.snapshot().await?;
    let no_process = Form::new().part("file", Part::text(csv));
    let resp = t
        .req(Method::POST, "/api/v1/tasks", &t.admin)
        .multipart(no_process)
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::BAD_REQUEST,
        "missing_process",
        "process_id",
    )
    .await?;
    let no_file = Form::new().text("process_id", process.to_string());
    let resp = t
        .req(Method::POST, "/api/v1/tasks", &t.admin)
        .multipart(no_file)
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_multipart",
        "no 'file'",
    )
    .await?;
    let ragged = Form::new()
        .part("file", Part::text("a,b\n1,2\n3\n"))
        .text("process_id", process.to_string());
    let resp = t
        .req(Method::POST, "/api/v1/tasks", &t.admin)
        .multipart(ragged)
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "csv_ragged_row",
        "line 3",
    )
    .await?;
    assert_eq!(t.snapshot().await?, before);
    Ok(())
}

#[tokio::test]
async fn bad_uploads_are_refused_and_store_nothing() -> Result<()> {
    let mut config = NodeConfig::for_tests();
    config.max_upload_bytes = 64 * 1024;
    config.csv_limits = orchestrator_actors::csv_ingest::CsvLimits {
        max_columns: 50,
        max_field_bytes: 1_000,
        max_row_bytes: 4_000,
    };
    let t = TestNode::start_with(config).await?;
    let process = t.process("Balance reload").await?;
    let disabled = t.process("Paused").await?;
    let resp = t
        .req(
            Method::PATCH,
            &format!("/api/v1/processes/{disabled}"),
            &t.admin,
        )
        .json(&json!({ "enabled": false }))
        .send()
        .await?;
    expect(resp, StatusCode::OK).await?;
    expect(
        t.upload(&t.admin, process, seed_csv(5)).await?,
        StatusCode::CREATED,
    )
    .await?;
    let before = t.snapshot().await?;

    let mut big_ragged = seed_csv(1500);
    big_ragged.push_str("9999,only-two\n");
    let wide = format!("{}\n{}\n", vec!["c"; 51].join(","), vec!["1"; 51].join(","));
    let long_field = format!("a,b\n1,2\n3,{}\n", "x".repeat(1_001));
    let long_row = format!(
        "a,b,c,d,e\n1,2,3,4,5\n{}\n",
        vec!["y".repeat(900); 5].join(",")
    );
    let mut unterminated = seed_csv(300);
    unterminated.push_str("301,\"3001,hello\n302,3002,hello\n");
    let cases: Vec<(i64, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            process,
            b"".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_empty",
            "empty",
        ),
        (
            process,
            b"linea,valor\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_no_rows",
            "no rows",
        ),
        (
            process,
            b"a,,c\n1,2,3\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_bad_header",
            "column 2",
        ),
        (
            process,
            b"a,b,a\n1,2,3\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_bad_header",
            "'a'",
        ),
        (
            process,
            b"a,b\n1,2\n3,4,5\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_ragged_row",
            "line 3",
        ),
        (
            process,
            b"a,b\n1,2\n3,\xFF\xFE\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_invalid_utf8",
            "line 3",
        ),
        // A ragged row after the first batches were written: everything staged is removed.
        (
            process,
            big_ragged.into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_ragged_row",
            "line 1502",
        ),
        (
            process,
            wide.into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_too_many_columns",
            "51 columns",
        ),
        (
            process,
            long_field.into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_field_too_large",
            "line 3: field 'b' is 1001 bytes",
        ),
        (
            process,
            long_row.into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_row_too_large",
            "line 3",
        ),
        (
            process,
            unterminated.into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "csv_unterminated_quote",
            "line 302",
        ),
        (
            999,
            seed_csv(2).into_bytes(),
            StatusCode::NOT_FOUND,
            "process_not_found",
            "process 999",
        ),
        (
            disabled,
            seed_csv(2).into_bytes(),
            StatusCode::CONFLICT,
            "process_disabled",
            "disabled",
        ),
        (
            process,
            seed_csv(5000).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "65536",
        ),
    ];
    for (process_id, body, status, code, fragment) in cases {
        let resp = t.upload(&t.admin, process_id, body).await?;
        expect_error(resp, status, code, fragment).await?;
        assert_eq!(t.snapshot().await?, before, "after {code}");
    }

    // Over the limit without a Content-Length: the streamed byte count stops it.
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..40)
        .map(|i| {
            Ok(Bytes::from(if i == 0 {
                seed_csv(100)
            } else {
                seed_csv(100)[23..].to_string()
            }))
        })
        .collect();
    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/tasks?process_id={process}"),
            &t.admin,
        )
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "limit",
    )
    .await?;

    let resp = t
        .req(Method::POST, "/api/v1/tasks", &t.admin)
        .header("content-type", "text/csv")
        .body(seed_csv(2))
        .send()
        .await?;
    expect_error(
        resp,
        StatusCode::BAD_REQUEST,
        "missing_process",
        "process_id",
    )
    .await?;
    let resp = t
        .req(Method::POST, "/api/v1/tasks?process_id=abc", &t.admin)
        .body(seed_csv(2))
        .send()
        .await?;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_query", "process_id").await?;
    assert_eq!(t.snapshot().await?, before);
    Ok(())
}

#[tokio::test]
async fn large_uploads_stream_in_batches_with_distinct_ids() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Bulk").await?;
    let rows = 25_000;
    // Sent as many small chunks, as a browser or curl would stream it.
    let csv = seed_csv(rows);
    let chunks: Vec<Result<Bytes, std::io::Error>> = csv
        .as_bytes()
        .chunks(7_777)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = t
        .req(
            Method::POST,
            &format!("/api/v1/tasks?process_id={process}"),
            &t.admin,
        )
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await?;
    let task = expect(resp, StatusCode::CREATED).await?;
    assert_eq!(task["item_count"], rows);
    let id = task["id"].as_i64().unwrap_or_default();
    assert_eq!(t.node.store().count_items().await?, rows as i64);

    let page = t
        .get(&format!("/api/v1/tasks/{id}/items?offset=24990&limit=20"))
        .await?;
    let lines: Vec<i64> = page["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["line"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(lines, (24_992..=25_001).collect::<Vec<_>>());
    assert_eq!(page["items"][9]["values"]["linea"], "25000");

    let filtered = t
        .get(&format!("/api/v1/tasks/{id}/items?status=COMPLETED"))
        .await?;
    assert_eq!(
        (filtered["total"].clone(), filtered["items"].clone()),
        (json!(0), json!([]))
    );
    let resp = t
        .req(
            Method::GET,
            &format!("/api/v1/tasks/{id}/items?status=DONE"),
            &t.admin,
        )
        .send()
        .await?;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_status", "PENDING").await?;
    let resp = t
        .req(
            Method::GET,
            &format!("/api/v1/tasks/{id}/items?limit=0"),
            &t.admin,
        )
        .send()
        .await?;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_page", "limit").await?;
    Ok(())
}

#[tokio::test]
async fn operators_see_their_own_tasks_and_admins_see_all() -> Result<()> {
    let t = TestNode::start().await?;
    let process = t.process("Registration").await?;
    let ana = t.user("ana", "operator").await?;
    let ben = t.user("ben", "operator").await?;
    let ana_task = expect(
        t.upload(&ana, process, seed_csv(2)).await?,
        StatusCode::CREATED,
    )
    .await?;
    expect(
        t.upload(&ben, process, seed_csv(3)).await?,
        StatusCode::CREATED,
    )
    .await?;
    expect(
        t.upload(&ben, process, seed_csv(4)).await?,
        StatusCode::CREATED,
    )
    .await?;

    let all = t.get("/api/v1/tasks").await?;
    assert_eq!(all["total"], 3);
    let newest_first: Vec<i64> = all["tasks"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["item_count"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(newest_first, [4, 3, 2]);
    let paged = t.get("/api/v1/tasks?limit=1&offset=1").await?;
    assert_eq!(
        (
            paged["total"].clone(),
            paged["tasks"][0]["item_count"].clone()
        ),
        (json!(3), json!(3))
    );

    let resp = t.req(Method::GET, "/api/v1/tasks", &ana).send().await?;
    let mine = expect(resp, StatusCode::OK).await?;
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["tasks"][0]["id"], ana_task["id"]);
    let path = format!("/api/v1/tasks/{}", ana_task["id"]);
    let resp = t.req(Method::GET, &path, &ben).send().await?;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found", "task").await?;
    let resp = t
        .req(Method::GET, &format!("{path}/items"), &ben)
        .send()
        .await?;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found", "task").await?;
    let resp = t.req(Method::GET, &path, &ana).send().await?;
    expect(resp, StatusCode::OK).await?;
    let resp = t
        .req(Method::GET, "/api/v1/tasks?status=CREATED&limit=5000", &ana)
        .send()
        .await?;
    expect_error(resp, StatusCode::BAD_REQUEST, "invalid_page", "limit").await?;
    Ok(())
}
