//! Shared by the ops test files: running `robot-sim` and reading its report.

use anyhow::{Result, ensure};
use serde_json::Value;

/// Runs `robot-sim` with `args` to its end; its JSON report and what it printed on stderr
/// (echoed). Exit 2 (the run finished but saw an item at two robots) is left to the caller.
pub async fn robot_sim(args: Vec<String>) -> Result<(Value, String)> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_robot-sim"))
        .args(&args)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success() || output.status.code() == Some(2),
        "robot-sim {} failed: {stdout} {stderr}",
        args.join(" ")
    );
    eprint!("{stderr}");
    let report = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    Ok((report, stderr.into_owned()))
}

/// Flags of a `robot-sim` fleet of `robots` robots on `api` (capacity 3, a pulse every 500 ms)
/// spread over `bases`, uploading and working a task of `items` items within `duration`.
pub fn fleet_args(
    bases: &str,
    admin_password: &str,
    api: &str,
    robots: usize,
    items: usize,
    duration: &str,
) -> Vec<String> {
    let robots = robots.to_string();
    let items = items.to_string();
    [
        "--base-url",
        bases,
        "--admin-password",
        admin_password,
        "--api",
        api,
        "--robots",
        &robots,
        "--capacity",
        "3",
        "--items",
        &items,
        "--duration",
        duration,
        "--pulse-every",
        "500ms",
    ]
    .map(String::from)
    .to_vec()
}
