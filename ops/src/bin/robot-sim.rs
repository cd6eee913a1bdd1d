//! `robot-sim`: a fleet of simulated robots against a running node. Prints one JSON line.

use clap::Parser;
use orchestrator_ops::sim::{SimArgs, run};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = SimArgs::parse();
    match run(args).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
            // Two robots holding one item is the one thing a run must never show.
            if report.duplicates > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("robot-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}
