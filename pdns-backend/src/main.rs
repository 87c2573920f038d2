//! `nearhop-pdns-backend`: the PowerDNS remote backend of one region. It serves the zones from
//! memory, kept current from the region's replica, over the unix, http and pipe connectors.

mod answer;
mod apex;
mod config;
mod lag_race;
mod metrics;
mod protocol;
mod purge;
mod replica;
mod store;
mod transport;

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "PowerDNS remote backend serving nearhop's zones from memory"
)]
struct Cli {
    /// TOML configuration file (see docs/pdns-backend.md); env NEARHOP_PDNS_BACKEND_* overrides.
    #[arg(long, env = "NEARHOP_PDNS_BACKEND_CONFIG")]
    config: Option<PathBuf>,
    /// Serve the pipe connector on stdin/stdout (pdns starts one process per backend thread)
    /// instead of the unix socket; the HTTP listener is not started.
    #[arg(long)]
    pipe: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // stdout belongs to the pipe connector, so logs always go to stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = config::Config::load(cli.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(cfg, cli.pipe))
}

async fn run(cfg: config::Config, pipe: bool) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let store = Arc::new(store::Store::new());
    let purge_tx = match &cfg.pdns_socket_dir {
        Some(dir) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let purger = purge::Purger::new(
                dir,
                cfg.purge_repeat_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
                Arc::clone(&metrics),
                Arc::clone(&store),
            );
            tokio::spawn(purger.run(rx));
            Some(tx)
        }
        None => None,
    };
    let tailer = replica::Tailer::new(
        cfg.clone(),
        Arc::clone(&store),
        Arc::clone(&metrics),
        purge_tx,
    );
    tokio::spawn(tailer.run());
    let regions = apex::RegionMap::new(
        cfg.apex.prefixes.entries().to_vec(),
        cfg.apex.default_region.clone(),
        cfg.apex.heartbeat_bound_secs,
    );
    let backend = Arc::new(protocol::Backend::new(
        Arc::clone(&store),
        regions,
        answer::Rules {
            apex_ttl: cfg.apex.ttl,
            nearest_edge_zones: cfg.nearest_edge_zones().map(str::to_string).collect(),
        },
        Arc::clone(&metrics),
    ));

    if pipe {
        wait_loaded(&store).await;
        transport::pipe::serve(&backend, cfg.max_request_bytes).await?;
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding http listener {}", cfg.http_listen))?;
    tracing::info!(addr = %cfg.http_listen, "http listener (metrics, /v1, /dns connector)");
    let app = Arc::new(transport::http::HttpApp {
        backend: Arc::clone(&backend),
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        max_request: cfg.max_request_bytes,
        header_read_timeout: cfg.http_header_read_timeout(),
    });
    tokio::spawn(transport::http::serve(listener, app));

    if let Some(path) = &cfg.unix_socket {
        // pdns fetches the zone list once at start (getAllDomains): offering the socket before
        // the first load would leave it with an empty zone cache until its next refresh.
        wait_loaded(&store).await;
        let listener = transport::unix::bind(path)?;
        tracing::info!(path = %path.display(), "unix connector listening");
        tokio::spawn(transport::unix::serve(
            listener,
            Arc::clone(&backend),
            cfg.max_request_bytes,
        ));
    }
    shutdown_signal().await;
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopping");
    Ok(())
}

async fn wait_loaded(store: &store::Store) {
    let mut rx = store.watch_applied();
    while !store.is_loaded() {
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
