//! The `orchestrator` binary: parse flags, set up logging, start a node, wait for a signal.

use clap::Parser;
use orchestrator_node::{Cli, Command, Node};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            tracing_subscriber::fmt()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_env_filter(
                    EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .init();
            let node = Node::start(config).await?;
            node.run_until_signal().await;
        }
    }
    Ok(())
}
