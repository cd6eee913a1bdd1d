//! `bench`: runs the benchmark scenarios, each on a freshly started release build of the node on
//! the embedded `surrealkv://` store, with `robot-sim` in a separate process, and writes the
//! figures and the machine they ran on into `BENCHMARKS.md` (between the `bench:begin` and
//! `bench:end` markers; the rest of the file is kept). With `--only`, the scenarios not run keep
//! their last figures, each row saying when it was measured.
//!
//! Build first, then run (the binaries are found beside this one):
//! `cargo build --release -p orchestrator-node -p orchestrator-ops && cargo run --release -p orchestrator-ops --bin bench`

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Runs the benchmark scenarios and writes BENCHMARKS.md"
)]
struct Args {
    /// Scenarios to run (comma separated); all when unset.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// File to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Scale every item count by this factor (for a quick trial run; figures are then not
    /// comparable with the targets and the file is not written).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
}

mod procs;

use procs::{NodeProc, Nodes, http};

const ADMIN_PASSWORD: &str = "bench-admin-password";

/// One benchmark scenario: what it measures, its targets, and how to run it.
struct Scenario {
    key: &'static str,
    title: &'static str,
    target: &'static str,
    floor: &'static str,
    on: Setup,
    kind: Kind,
}

/// Where the scenario's nodes keep their data.
#[derive(Clone, Copy)]
enum Setup {
    /// One node on its embedded `surrealkv://` store.
    Embedded,
    /// `nodes` nodes on one `surreal` server (`ws://`), robots spread over them.
    Server { nodes: usize },
}

enum Kind {
    /// `robot-sim` flags; `metric` picks the figure compared with the target.
    Sim { flags: Vec<String>, metric: Metric },
    /// One `robot-sim` per node, each with these flags against its own node (a process holds at
    /// most 20,000 sockets on the machines we measure on); their reports are added up.
    SimPerNode { flags: Vec<String>, metric: Metric },
    /// Upload an N-row seed CSV.
    Upload { rows: usize },
}

#[derive(Clone, Copy)]
enum Metric {
    /// Items per second, higher is better: (target, floor).
    Throughput(f64, f64),
    /// Node RSS in MB at the end, lower is better.
    Rss(f64, f64),
    /// A latency p99 in ms, lower is better: (field, target, floor).
    P99(&'static str, f64, f64),
}

/// A scenario as written in [`SCENARIOS`]: `robot-sim` flags as one string, and the flags
/// whose value `--scale` multiplies.
struct Spec {
    key: &'static str,
    title: &'static str,
    target: &'static str,
    floor: &'static str,
    on: Setup,
    run: Run,
}

enum Run {
    /// One `robot-sim` over every node.
    Sim {
        flags: &'static str,
        scaled: &'static [(&'static str, usize)],
        metric: Metric,
    },
    /// One `robot-sim` per node.
    SimPerNode {
        flags: &'static str,
        scaled: &'static [(&'static str, usize)],
        metric: Metric,
    },
    /// Upload a seed CSV of this many rows.
    Upload { rows: usize },
}

const WS_FLEET: &str = "--api ws --robots 100 --capacity 10";
const IDLE_FLEET: &str = "--api ws --capacity 1 --items 0 --pulse-every 10s --duration 60s";

/// Every benchmark scenario.
const SCENARIOS: &[Spec] = &[
    Spec {
        key: "ws",
        title: "WebSocket, 100 robots, capacity 10, instant work, 200,000 items",
        target: "20,000 items/s",
        floor: "10,000 items/s",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: WS_FLEET,
            scaled: &[("--items", 200_000)],
            metric: Metric::Throughput(20_000.0, 10_000.0),
        },
    },
    Spec {
        key: "rest",
        title: "REST v1 claim/complete, 100 robots (capacity 10), 50,000 items",
        target: "10,000 items/s",
        floor: "5,000 items/s",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: "--api rest --robots 100 --capacity 10",
            scaled: &[("--items", 50_000)],
            metric: Metric::Throughput(10_000.0, 5_000.0),
        },
    },
    Spec {
        key: "seed",
        title: "seed-compatible REST, 20 robots (capacity 10), 20,000 items",
        target: "5,000 items/s",
        floor: "2,000 items/s",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: "--api seed --robots 20 --capacity 10",
            scaled: &[("--items", 20_000)],
            metric: Metric::Throughput(5_000.0, 2_000.0),
        },
    },
    Spec {
        key: "upload",
        title: "upload of a 1,000,000-row seed-format CSV",
        target: "10 s, peak RSS 200 MB",
        floor: "20 s, 400 MB",
        on: Setup::Embedded,
        run: Run::Upload { rows: 1_000_000 },
    },
    Spec {
        key: "idle",
        title: "10,000 WebSocket robots connected, pulse every 10 s (60 s)",
        target: "node RSS 250 MB",
        floor: "500 MB",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: IDLE_FLEET,
            scaled: &[("--robots", 10_000)],
            metric: Metric::Rss(250.0, 500.0),
        },
    },
    Spec {
        key: "assign",
        title: "upload → first item at an idle WebSocket robot (200 one-row uploads)",
        target: "p99 20 ms",
        floor: "p99 50 ms",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: "--api ws --robots 10 --capacity 1",
            scaled: &[("--items", 200), ("--uploads", 200)],
            metric: Metric::P99("assign_p99_ms", 20.0, 50.0),
        },
    },
    Spec {
        key: "next",
        title: "completion → next item, WebSocket, at 1,000 items/s (100 robots, capacity 1)",
        target: "p99 2 ms",
        floor: "p99 5 ms",
        on: Setup::Embedded,
        run: Run::Sim {
            flags: "--api ws --robots 100 --capacity 1 --rate 1000",
            scaled: &[("--items", 30_000)],
            metric: Metric::P99("next_item_p99_ms", 2.0, 5.0),
        },
    },
    Spec {
        key: "ws_server",
        title: "as `ws`, one node on a `ws://` SurrealDB server instead of its embedded store",
        target: "20,000 items/s",
        floor: "10,000 items/s",
        on: Setup::Server { nodes: 1 },
        run: Run::Sim {
            flags: WS_FLEET,
            scaled: &[("--items", 200_000)],
            metric: Metric::Throughput(20_000.0, 10_000.0),
        },
    },
    Spec {
        key: "cluster",
        title: "three nodes on one SurrealDB server, 100 WebSocket robots spread over them \
                (capacity 10), 200,000 items",
        target: "10,000 items/s",
        floor: "5,000 items/s",
        on: Setup::Server { nodes: 3 },
        run: Run::Sim {
            flags: WS_FLEET,
            scaled: &[("--items", 200_000)],
            metric: Metric::Throughput(10_000.0, 5_000.0),
        },
    },
    Spec {
        key: "cluster_idle",
        title: "30,000 WebSocket robots connected, 10,000 on each of three nodes on one \
                SurrealDB server (one robot-sim per node), pulse every 10 s (60 s); RSS of \
                the largest node",
        target: "node RSS 250 MB",
        floor: "500 MB",
        on: Setup::Server { nodes: 3 },
        run: Run::SimPerNode {
            flags: IDLE_FLEET,
            scaled: &[("--robots", 10_000)],
            metric: Metric::Rss(250.0, 500.0),
        },
    },
];

/// The scenarios with their counts multiplied by `scale`.
fn scenarios(scale: f64) -> Vec<Scenario> {
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);
    let flags = |line: &str, scaled: &[(&str, usize)]| {
        let mut flags: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        for (flag, count) in scaled {
            flags.extend([flag.to_string(), n(*count).to_string()]);
        }
        flags
    };
    SCENARIOS
        .iter()
        .map(|spec| Scenario {
            key: spec.key,
            title: spec.title,
            target: spec.target,
            floor: spec.floor,
            on: spec.on,
            kind: match &spec.run {
                Run::Sim {
                    flags: line,
                    scaled,
                    metric,
                } => Kind::Sim {
                    flags: flags(line, scaled),
                    metric: *metric,
                },
                Run::SimPerNode {
                    flags: line,
                    scaled,
                    metric,
                } => Kind::SimPerNode {
                    flags: flags(line, scaled),
                    metric: *metric,
                },
                Run::Upload { rows } => Kind::Upload {
                    rows: (*rows as f64 * scale).round() as usize,
                },
            },
        })
        .collect()
}

fn login(base: &str) -> Result<String> {
    let (status, body) = http::request(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        &[("content-type", "application/json")],
        json!({ "username": "admin", "password": ADMIN_PASSWORD })
            .to_string()
            .as_bytes(),
    )?;
    ensure!(status == 200, "login: {status}");
    let body: Value = serde_json::from_slice(&body)?;
    Ok(body["token"].as_str().context("token")?.to_string())
}

/// Uploads an N-row seed CSV to a fresh node; returns (seconds, peak RSS MB, item count).
fn run_upload(node: &NodeProc, rows: usize) -> Result<Value> {
    let token = login(&node.base)?;
    let auth = format!("Bearer {token}");
    let (status, body) = http::request(
        "POST",
        &format!("{}/api/v1/processes", node.base),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        br#"{"title":"bench upload"}"#,
    )?;
    ensure!(status == 201, "process: {status}");
    let process = serde_json::from_slice::<Value>(&body)?["id"]
        .as_i64()
        .context("process id")?;
    let mut csv = Vec::with_capacity(rows * 24);
    csv.extend_from_slice(b"linea,valor,field_name\n");
    for i in 1..=rows {
        csv.extend_from_slice(format!("{i},{},bench\n", 3_000_000_000u64 + i as u64).as_bytes());
    }
    let (_, before_peak) = node.rss_mb()?;
    let started = Instant::now();
    let (status, body) = http::request(
        "POST",
        &format!("{}/api/v1/tasks?process_id={process}", node.base),
        &[("content-type", "text/csv"), ("authorization", &auth)],
        &csv,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    ensure!(
        status == 201,
        "upload: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let task: Value = serde_json::from_slice(&body)?;
    let (rss, peak) = node.rss_mb()?;
    Ok(json!({
        "rows": rows, "bytes": csv.len(), "item_count": task["item_count"],
        "seconds": round(seconds, 2), "rows_per_s": round(rows as f64 / seconds, 0),
        "peak_rss_mb": round(peak, 1), "rss_after_mb": round(rss, 1),
        "peak_rss_before_upload_mb": round(before_peak, 1),
    }))
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// One `robot-sim` per node at once, each against its own node; counts are added up, the rest
/// is the first report's (RSS figures are the nodes', read after all have finished).
fn run_sim_per_node(nodes: &Nodes, sim: &Path, flags: &[String]) -> Result<Value> {
    let children: Vec<Child> = nodes
        .nodes
        .iter()
        .map(|node| {
            Command::new(sim)
                .args(["--base-url", &node.base, "--admin-password", ADMIN_PASSWORD])
                .args(flags)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("running robot-sim")
        })
        .collect::<Result<_>>()?;
    let mut reports = Vec::new();
    let mut exit = 0;
    for child in children {
        let output = child.wait_with_output()?;
        exit = exit.max(output.status.code().unwrap_or(-1));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().context("robot-sim printed nothing")?;
        reports.push(
            serde_json::from_str::<Value>(line)
                .with_context(|| format!("robot-sim said: {line}"))?,
        );
    }
    let mut report = reports.first().cloned().context("no node")?;
    for key in [
        "connected",
        "robots",
        "errors",
        "duplicates",
        "items_completed",
    ] {
        let sum: u64 = reports.iter().filter_map(|r| r[key].as_u64()).sum();
        report[key] = json!(sum);
    }
    report["processes"] = json!(reports.len());
    add_node_rss(nodes, &mut report)?;
    report["exit"] = json!(exit);
    Ok(report)
}

/// The largest node's RSS figures, and with several nodes each node's and their sum.
fn add_node_rss(nodes: &Nodes, report: &mut Value) -> Result<()> {
    let mut each = Vec::new();
    for node in &nodes.nodes {
        each.push(node.rss_mb()?);
    }
    let rss = each.iter().map(|r| r.0).fold(0.0, f64::max);
    let peak = each.iter().map(|r| r.1).fold(0.0, f64::max);
    report["node_rss_mb"] = json!(round(rss, 1));
    report["node_peak_rss_mb"] = json!(round(peak, 1));
    if each.len() > 1 {
        report["nodes_rss_mb"] = json!(each.iter().map(|r| round(r.0, 1)).collect::<Vec<_>>());
        report["total_rss_mb"] = json!(round(each.iter().map(|r| r.0).sum(), 1));
    }
    Ok(())
}

fn run_sim(nodes: &Nodes, sim: &Path, flags: &[String]) -> Result<Value> {
    let output = Command::new(sim)
        .args([
            "--base-url",
            &nodes.bases(),
            "--admin-password",
            ADMIN_PASSWORD,
        ])
        .args(flags)
        .stderr(Stdio::inherit())
        .output()
        .context("running robot-sim")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("robot-sim printed nothing")?;
    let mut report: Value =
        serde_json::from_str(line).with_context(|| format!("robot-sim said: {line}"))?;
    add_node_rss(nodes, &mut report)?;
    report["exit"] = json!(output.status.code());
    Ok(report)
}

/// Verdict and the figure shown in the table.
fn judge(scenario: &Scenario, report: &Value) -> (String, &'static str) {
    let grade = |meets: bool, floor: bool| {
        if meets {
            "meets target"
        } else if floor {
            "below target, above floor"
        } else {
            "MISSES the floor"
        }
    };
    match &scenario.kind {
        Kind::Upload { .. } => {
            let s = report["seconds"].as_f64().unwrap_or(f64::MAX);
            let rss = report["peak_rss_mb"].as_f64().unwrap_or(f64::MAX);
            (
                format!("{s:.1} s, peak RSS {rss:.0} MB"),
                grade(s <= 10.0 && rss <= 200.0, s <= 20.0 && rss <= 400.0),
            )
        }
        Kind::Sim { metric, .. } | Kind::SimPerNode { metric, .. } => match *metric {
            Metric::Throughput(target, floor) => {
                let v = report["items_per_s"].as_f64().unwrap_or(0.0);
                (format!("{v:.0} items/s"), grade(v >= target, v >= floor))
            }
            Metric::Rss(target, floor) => {
                let v = report["node_rss_mb"].as_f64().unwrap_or(f64::MAX);
                let connected = report["connected"].as_u64().unwrap_or(0);
                let robots = report["robots"].as_u64().unwrap_or(0);
                if connected < robots {
                    // Memory of a fleet that did not connect says nothing.
                    return (
                        format!("only {connected} of {robots} connected (node RSS {v:.0} MB)"),
                        "MISSES the floor",
                    );
                }
                (
                    format!("node RSS {v:.0} MB ({connected} connected)"),
                    grade(v <= target, v <= floor),
                )
            }
            Metric::P99(field, target, floor) => {
                let v = report[field].as_f64().unwrap_or(f64::MAX);
                (format!("p99 {v:.1} ms"), grade(v <= target, v <= floor))
            }
        },
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cores} cores ({cpu}), {mem} RAM, Linux {kernel}")
}

fn main() -> Result<()> {
    let args = Args::parse();
    let here = std::env::current_exe()?;
    let dir = here.parent().context("binary directory")?;
    let node_bin = dir.join("orchestrator");
    let sim_bin = dir.join("robot-sim");
    let surreal_bin = dir.join("surreal");
    for bin in [&node_bin, &sim_bin] {
        ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p orchestrator-node -p orchestrator-ops` first",
            bin.display()
        );
    }
    let old = std::fs::read_to_string(&args.out).unwrap_or_default();
    let earlier = earlier_reports(&old);
    let mut rows = Vec::new();
    for scenario in scenarios(args.scale) {
        if !args.only.is_empty() && !args.only.iter().any(|k| k == scenario.key) {
            if let Some(report) = earlier.iter().find(|(k, _)| k == scenario.key) {
                let report = report.1.clone();
                let (figure, verdict) = judge(&scenario, &report);
                rows.push((scenario, report, figure, verdict));
            }
            continue;
        }
        eprintln!("bench: {} ...", scenario.title);
        let nodes = Nodes::start(scenario.on, &node_bin, &surreal_bin)?;
        let report = match &scenario.kind {
            Kind::Upload { rows } => run_upload(&nodes.nodes[0], *rows),
            Kind::Sim { flags, .. } => run_sim(&nodes, &sim_bin, flags),
            Kind::SimPerNode { flags, .. } => run_sim_per_node(&nodes, &sim_bin, flags),
        };
        nodes.stop();
        let mut report = report.with_context(|| scenario.title.to_string())?;
        report["ran_at"] = json!(chrono_like_now());
        let (figure, verdict) = judge(&scenario, &report);
        eprintln!("bench: {figure} ({verdict}) {report}");
        rows.push((scenario, report, figure, verdict));
    }
    if args.scale != 1.0 {
        eprintln!("bench: scaled run; {} left as it was", args.out.display());
        return Ok(());
    }
    let mut section = String::new();
    section.push_str("<!-- bench:begin (written by `bench`; edit outside the markers) -->\n");
    section.push_str(&format!(
        "Written {} on {}, release build, `surrealkv://` store unless the scenario says \
         otherwise, `robot-sim` in its own process.\n\n",
        chrono_like_now(),
        machine()
    ));
    section.push_str(
        "| scenario | target | not resolved below | measured | verdict | measured at |\n\
         |---|---|---|---|---|---|\n",
    );
    for (scenario, report, figure, verdict) in &rows {
        section.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            scenario.title,
            scenario.target,
            scenario.floor,
            figure,
            verdict,
            report["ran_at"].as_str().unwrap_or("?")
        ));
    }
    section.push_str("\nRaw reports (robot-sim's JSON line plus the node's RSS):\n\n```\n");
    for (scenario, report, _, _) in &rows {
        section.push_str(&format!("{}: {}\n", scenario.key, report));
    }
    section.push_str("```\n<!-- bench:end -->\n");
    let new = match (old.find("<!-- bench:begin"), old.find("<!-- bench:end -->")) {
        (Some(start), Some(end)) => {
            let end = end + "<!-- bench:end -->\n".len();
            format!(
                "{}{}{}",
                &old[..start],
                section,
                old.get(end..).unwrap_or("")
            )
        }
        _ => format!("{old}\n{section}"),
    };
    std::fs::write(&args.out, new)?;
    eprintln!("bench: wrote {}", args.out.display());
    Ok(())
}

/// The raw reports of the last written run, by scenario key. Reports from before `ran_at` was
/// recorded take the date of the run's header line.
fn earlier_reports(file: &str) -> Vec<(String, Value)> {
    let Some(start) = file.find("<!-- bench:begin") else {
        return Vec::new();
    };
    let section = &file[start..];
    let header_date = section
        .lines()
        .find_map(|l| l.strip_prefix("Latest run: "))
        .and_then(|l| l.split(" on ").next())
        .unwrap_or("?")
        .to_string();
    section
        .lines()
        .take_while(|l| !l.starts_with("<!-- bench:end"))
        .filter_map(|line| {
            let (key, json) = line.split_once(": ")?;
            let mut report: Value = serde_json::from_str(json).ok()?;
            if report.get("ran_at").is_none() {
                report["ran_at"] = json!(header_date);
            }
            Some((key.to_string(), report))
        })
        .collect()
}

/// UTC date and time, from `date` (the runner avoids a date crate for one string).
fn chrono_like_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
