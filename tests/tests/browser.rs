//! The dashboard in a real browser: headless Chromium driven over WebDriver (Debian's `chromium`
//! and `chromium-driver`; `.ci/run` installs them when missing and sets `ORCH_REQUIRE_BROWSER`,
//! so CI fails rather than skips without them). One operator journey: a wrong password, a
//! keyboard-only sign-in, a refused and then an accepted CSV upload, the task reaching 100% live
//! while robots work, the results download, every main page, an admin creating a robot (token
//! shown once) and changing its capacity, a phone-sized dashboard, and sign-out. Screenshots land
//! in `$CARGO_TARGET_TMPDIR/screenshots` (and in `$ORCH_SCREENSHOTS` when set, which is how the
//! README's pictures are refreshed).

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use orchestrator_tests::{ADMIN_PASSWORD, RestRobot, TestNode, seed_csv};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn start_driver() -> Result<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start chromedriver")?;
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http
        .get(format!("{}/status", driver.url))
        .send()
        .await
        .is_err()
    {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("chromedriver did not answer on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(driver)
}

async fn browser(driver: &Driver, downloads: &Path) -> Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--window-size=1280,900",
            ],
            "prefs": {
                "download.default_directory": downloads.to_string_lossy(),
                "download.prompt_for_download": false,
            },
        }),
    );
    // chromedriver listens on plain HTTP on loopback: no TLS stack needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .context("open a browser session")
}

/// Polls the text of `css` until `ok` holds for it; returns it.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if ok(&text) {
                return Ok(text);
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{css} never matched; last text: {last:?}")
}

async fn click(c: &Client, css: &str) -> Result<()> {
    c.find(Locator::Css(css)).await?.click().await?;
    Ok(())
}

async fn type_into(c: &Client, css: &str, text: &str) -> Result<()> {
    c.find(Locator::Css(css)).await?.send_keys(text).await?;
    Ok(())
}

async fn wait_path(c: &Client, ok: impl Fn(&str) -> bool) -> Result<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let path = c.current_url().await?.path().to_string();
        if ok(&path) {
            return Ok(path);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the browser stayed at {}", c.current_url().await?)
}

fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")];
    if let Some(extra) = std::env::var_os("ORCH_SCREENSHOTS") {
        dirs.push(PathBuf::from(extra));
    }
    dirs
}

async fn screenshot(c: &Client, name: &str) -> Result<()> {
    let png = c.screenshot().await?;
    for dir in screenshot_dirs() {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.png")), &png)?;
    }
    Ok(())
}

/// Two robots that take a tenth of a second per item, until `stop`.
fn work(robots: Vec<RestRobot>, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    robots
        .into_iter()
        .map(|robot| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for item in robot.claim(2, 0.5).await? {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        robot.finish(&item).await?;
                    }
                }
                Ok(())
            })
        })
        .collect()
}

#[tokio::test]
async fn an_operator_runs_a_task_from_the_browser() -> Result<()> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        if std::env::var_os("ORCH_REQUIRE_BROWSER").is_some() {
            bail!(
                "{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
            );
        }
        eprintln!("skipped: install chromium and chromium-driver to run the browser test");
        return Ok(());
    }
    let t = TestNode::start().await?;
    let process = t.process("Invoices").await?;
    let robots = vec![
        RestRobot::create(
            &t,
            "uipath-01",
            json!({ "capacity": 2, "platform": "uipath" }),
        )
        .await?,
        RestRobot::create(
            &t,
            "python-01",
            json!({ "capacity": 2, "platform": "python" }),
        )
        .await?,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let workers = work(robots, stop.clone());
    let downloads = tempfile::tempdir()?;
    let csv_dir = tempfile::tempdir()?;
    let csv_path = csv_dir.path().join("invoices.csv");
    std::fs::write(&csv_path, seed_csv(40))?;

    let driver = start_driver().await?;
    let c = browser(&driver, downloads.path()).await?;
    let outcome = journey(&t, &c, process, &csv_path, downloads.path()).await;
    stop.store(true, Ordering::Relaxed);
    if outcome.is_err() {
        let _ = screenshot(&c, "failure").await;
    }
    c.close().await?;
    for worker in workers {
        worker.await??;
    }
    outcome
}

async fn journey(
    t: &TestNode,
    c: &Client,
    process: i64,
    csv: &Path,
    downloads: &Path,
) -> Result<()> {
    // Signed out, the dashboard sends the browser to the sign-in form.
    c.goto(&t.url("/")).await?;
    wait_path(c, |p| p == "/login").await?;

    // A wrong password shows an error and keeps the user on the form.
    type_into(c, "#username", "admin").await?;
    type_into(c, "#password", "not the password").await?;
    click(c, "#login-form button[type=submit]").await?;
    wait_text(c, "#login-error", |t| {
        t.contains("Wrong username or password")
    })
    .await?;
    screenshot(c, "login-error").await?;

    // Keyboard only: the username field has focus; Tab to the password, Enter submits.
    let focused = c.active_element().await?.attr("id").await?;
    assert_eq!(
        focused.as_deref(),
        Some("username"),
        "the form focuses the username"
    );
    let username = c.find(Locator::Css("#username")).await?;
    username.clear().await?;
    username.send_keys("admin").await?;
    c.active_element().await?.send_keys("\u{E004}").await?; // Tab
    let focused = c.active_element().await?.attr("id").await?;
    assert_eq!(
        focused.as_deref(),
        Some("password"),
        "Tab moves to the password"
    );
    c.active_element()
        .await?
        .send_keys(&format!("{ADMIN_PASSWORD}\u{E007}")) // Enter
        .await?;
    wait_path(c, |p| p == "/").await?;
    wait_text(c, "#stat-connected", |t| t == "2").await?;
    wait_text(c, "#live-status", |t| t == "live").await?;
    screenshot(c, "dashboard-idle").await?;

    // Upload a CSV; the page shows progress and then opens the task.
    c.goto(&t.url("/tasks/new")).await?;
    let select = c
        .wait()
        .for_element(Locator::Css("#process option"))
        .await?;
    assert_eq!(select.text().await?, "Invoices");
    c.find(Locator::Css("#process"))
        .await?
        .select_by_value(&process.to_string())
        .await?;
    // A ragged file is refused with its line number, and nothing is stored.
    let ragged = csv.with_file_name("ragged.csv");
    std::fs::write(&ragged, "linea,valor,field_name\n1,2,x\n2,3\n")?;
    type_into(c, "#file", &ragged.to_string_lossy()).await?;
    click(c, "#upload-button").await?;
    wait_text(c, "#upload-error", |t| {
        t.contains("line 3") && t.contains("Nothing was stored")
    })
    .await?;
    screenshot(c, "upload-refused").await?;
    assert_eq!(t.get("/api/v1/tasks").await?["total"], 0);
    type_into(c, "#file", &csv.to_string_lossy()).await?;
    screenshot(c, "new-task").await?;
    click(c, "#upload-button").await?;
    let path = wait_path(c, |p| p.starts_with("/tasks/") && p != "/tasks/new").await?;
    let task_id: i64 = path.trim_start_matches("/tasks/").parse()?;

    // Robots work; the page follows live, without a reload, to 100%.
    wait_text(c, "#task-percent", |t| t == "100%").await?;
    wait_text(c, "#fact-status", |t| t == "COMPLETED").await?;
    wait_text(c, "#count-completed", |t| t == "40").await?;
    let first_row = wait_text(c, "#items-table tbody tr", |t| t.contains("COMPLETED")).await?;
    assert!(
        first_row.contains("done by"),
        "observations are shown: {first_row}"
    );
    assert!(
        first_row.contains("uipath-01") || first_row.contains("python-01"),
        "robots are named: {first_row}"
    );
    assert!(
        first_row.contains("linea=1 · valor=3000001 · field_name=hello"),
        "values follow the file's column order: {first_row}"
    );
    screenshot(c, "task").await?;

    // Download the results as CSV.
    click(c, "#download-results").await?;
    let file = downloads.join(format!("task-{task_id}-results.csv"));
    let start = Instant::now();
    while !file.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no download appeared in {}", downloads.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&file)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    assert_eq!(header[..4], ["linea", "valor", "field_name", "status"]);
    let statuses: Vec<String> = reader
        .records()
        .map(|r| Ok(r?[3].to_string()))
        .collect::<Result<_>>()?;
    assert_eq!(statuses.len(), 40);
    assert!(statuses.iter().all(|s| s == "COMPLETED"), "{statuses:?}");

    // The other pages render their data.
    c.goto(&t.url("/")).await?;
    wait_text(c, "#count-completed", |t| t == "40").await?;
    wait_text(c, "#stat-rate", |t| !t.is_empty() && t != "–").await?;
    c.wait()
        .for_element(Locator::Css("#chart svg rect"))
        .await?;
    screenshot(c, "dashboard").await?;
    c.goto(&t.url("/tasks")).await?;
    wait_text(c, "#tasks-table tbody", |t| {
        t.contains("COMPLETED") && t.contains("Invoices")
    })
    .await?;
    let filled = c
        .execute(
            "const bar = document.querySelector('#tasks-table .bar'); \
             return bar.getBoundingClientRect().width / bar.parentElement.getBoundingClientRect().width;",
            vec![],
        )
        .await?;
    assert!(
        filled.as_f64().is_some_and(|f| f > 0.99),
        "a finished task's bar is full, got {filled}"
    );
    screenshot(c, "tasks").await?;
    c.goto(&t.url("/robots")).await?;
    wait_text(c, "#robots-table tbody", |t| {
        t.contains("uipath-01") && t.contains("python-01")
    })
    .await?;
    // An admin creates a robot: its token is shown once; then sets its capacity inline.
    let form = c.find(Locator::Css("#robot-form")).await?;
    form.find(Locator::Css("input[name=name]"))
        .await?
        .send_keys("power-01")
        .await?;
    form.find(Locator::Css("button[type=submit]"))
        .await?
        .click()
        .await?;
    let token = wait_text(c, "#token-value", |t| t.len() > 20).await?;
    let robots = t.get("/api/v1/robots").await?;
    let created = robots
        .as_array()
        .and_then(|list| list.iter().find(|r| r["name"] == "power-01"))
        .context("robot created from the page")?;
    let id = created["id"].as_i64().context("id")?;
    let row = format!("#robots-table tr[data-robot-id=\"{id}\"]");
    let capacity = c
        .find(Locator::Css(&format!("{row} input[type=number]")))
        .await?;
    capacity.clear().await?;
    capacity.send_keys("7").await?;
    click(c, &format!("{row} button")).await?;
    wait_text(c, &format!("{row} .live-load"), |t| t.ends_with("/ 7")).await?;
    assert_eq!(t.get(&format!("/api/v1/robots/{id}")).await?["capacity"], 7);
    // The token shown is the robot's: it authenticates a pulse.
    let pulse = t
        .http
        .post(t.url("/api/v1/robot/pulse"))
        .header("authorization", format!("Token {token}"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(pulse.status(), reqwest::StatusCode::OK);
    screenshot(c, "robots").await?;
    c.goto(&t.url("/processes")).await?;
    wait_text(c, "#processes-table tbody", |t| t.contains("Invoices")).await?;
    c.goto(&t.url("/users")).await?;
    wait_text(c, "#users-table tbody", |t| t.contains("admin")).await?;
    // The cluster page lists the nodes sharing the store: here the one test node.
    c.goto(&t.url("/cluster")).await?;
    wait_text(c, "#nodes-table tbody", |t| {
        t.contains("(this node)") && t.contains("ALIVE")
    })
    .await?;
    wait_text(c, "#hints-summary", |t| t.contains("Hints: off")).await?;
    c.goto(&t.url("/docs")).await?;
    // Routes, and the schemas derived from the Rust types.
    wait_text(c, "#spec", |t| {
        t.contains("/api/v1/robot/items/claim") && t.contains("LeasedItemView")
    })
    .await?;
    screenshot(c, "docs").await?;

    // A phone-sized screen: no sideways scrolling of the page itself.
    c.set_window_size(390, 844).await?;
    c.goto(&t.url("/")).await?;
    wait_text(c, "#count-completed", |t| t == "40").await?;
    let fits = c
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await?;
    assert_eq!(fits, json!(true), "the dashboard fits a 390 px wide screen");
    screenshot(c, "dashboard-phone").await?;
    c.set_window_size(1280, 900).await?;

    // Sign out: back to the form, and the dashboard is closed again.
    click(c, "#logout").await?;
    wait_path(c, |p| p == "/login").await?;
    c.goto(&t.url("/tasks")).await?;
    wait_path(c, |p| p == "/login").await?;
    Ok(())
}
