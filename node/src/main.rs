//! The `orchestrator` binary: parse flags, set up logging, start a node, wait for a signal.

use clap::Parser;
use orchestrator_node::config::{DEFAULT_LOG, LogFormat};
use orchestrator_node::{Cli, Command, Node, NodeConfig, health};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc malloc. The embedded store frees and reallocates memtables, cached
/// blocks and compaction buffers all the time; glibc kept much of that freed memory, so the node's
/// peak RSS crept upward with the data written. A 2,000,000-row upload (release, `bench --only
/// upload --scale 2`): glibc 292 MB, jemalloc 252 MB, mimalloc was worse than glibc (371 MB for
/// 1,000,000 rows).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A refused setting or a node that cannot start ends with one line on stderr and exit code 1
/// (an `anyhow` error returned from `main` printed a stack trace with `RUST_BACKTRACE=1`).
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("orchestrator: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            init_logging(&config);
            let node = Node::start(config).await?;
            node.run_until_signal().await;
            // The store is closed and flushed. Ending here spares the embedded engine's own
            // second shutdown as the runtime drops its handles, which found the store closed
            // and logged "ERROR The datastore is shutting down" on every graceful stop.
            std::process::exit(0);
        }
        Command::Health(args) => match health::probe(&args.url, args.timeout).await {
            Ok((200, body)) => println!("{}", body.trim()),
            Ok((status, body)) => {
                eprintln!("{} answered {status}: {}", args.url, body.trim());
                std::process::exit(1);
            }
            Err(err) => {
                eprintln!("{err}");
                std::process::exit(1);
            }
        },
    }
    Ok(())
}

/// Log lines to stdout as text (coloured on a terminal) or as one JSON object per line; a
/// request's lines carry its `request_id` (the span `request`), in text and in JSON alike.
fn init_logging(config: &NodeConfig) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|err| {
        eprintln!(
            "log filter '{}' is not valid ({err}); using the default",
            config.log
        );
        EnvFilter::new(DEFAULT_LOG)
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
