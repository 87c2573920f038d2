//! `nearhop-edge`: reads its configuration and runs the edge until SIGTERM.

use clap::Parser;
use std::path::PathBuf;

/// nearhop edge: SSH server for tunnel creators, HTTP/TLS/TCP listeners for visitors.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; every key can be overridden with NEARHOP_EDGE_<KEY>.
    #[arg(long, env = "NEARHOP_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NEARHOP_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,russh=warn,h2=error,rustls=error")
    });
    // Colours only on a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if args.json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    let config = nearhop_edge::config::Config::load(args.config.as_deref())?;
    nearhop_edge::process::allocator::set_trim_threshold(config.malloc_trim_threshold_bytes);
    nearhop_edge::process::open_files::raise_and_report(config.max_visitor_connections);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(nearhop_edge::run::run(config))
}
