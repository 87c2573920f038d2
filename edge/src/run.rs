//! Start-up: binds every listener, builds the shared state, starts the SSH server, the
//! visitor listeners and the control tasks, and on SIGTERM or SIGINT runs the graceful
//! shutdown. The only module that imports the listeners it starts.

use crate::config::Config;
use crate::control::{admin_api, sync as control_sync};
use crate::edge::{shutdown, Edge};
use crate::io::accept;
use crate::mesh::listener as mesh_listener;
use crate::ssh::{host_key, server as ssh_server};
use crate::visitor::{http as visitor_http, tls as visitor_tls};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;

/// Runs an edge until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(config: Config) -> Result<()> {
    let key = host_key::load_or_generate(&config.host_key_path)?;
    let ssh = accept::bind(config.ssh_listen)
        .with_context(|| format!("binding SSH listener {}", config.ssh_listen))?;
    let http = accept::bind(config.http_listen)
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;
    let tls = accept::bind(config.tls_listen)
        .with_context(|| format!("binding TLS listener {}", config.tls_listen))?;
    let admin = accept::bind(config.admin_listen)
        .with_context(|| format!("binding admin listener {}", config.admin_listen))?;
    let mesh = match config.mesh_listen {
        Some(addr) => {
            Some(accept::bind(addr).with_context(|| format!("binding mesh listener {addr}"))?)
        }
        None => None,
    };
    let mesh_key = host_key::load_or_generate(&config.mesh_key_path())?;
    let edge = Arc::new(Edge::new(config, Arc::new(mesh_key))?);
    tracing::info!(
        edge = %edge.config.edge_id,
        region = %edge.config.region,
        ssh = %edge.config.ssh_listen,
        http = %edge.config.http_listen,
        tls = %edge.config.tls_listen,
        admin = %edge.config.admin_listen,
        mesh = ?edge.config.mesh_listen,
        "edge listening"
    );
    let ssh_entry = ssh_server::SshEntry::new(edge.clone(), key);
    let ssh_task = tokio::spawn(ssh_server::serve(edge.clone(), ssh, ssh_entry.clone()));
    let http_task = tokio::spawn(visitor_http::serve(edge.clone(), http));
    let ssh_on_tls = edge.config.ssh_on_tls_port.then_some(ssh_entry);
    let tls_task = tokio::spawn(visitor_tls::serve(edge.clone(), tls, ssh_on_tls));
    tokio::spawn(admin_api::serve(edge.clone(), admin));
    tokio::spawn(crate::mesh::local::follow_registry(edge.clone()));
    if let Some(mesh) = mesh {
        tokio::spawn(mesh_listener::serve(edge.clone(), mesh));
    }
    tokio::spawn(control_sync::run(edge.clone()));
    if edge.config.malloc_trim_interval_seconds > 0 && crate::process::allocator::CAN_RELEASE {
        tokio::spawn(crate::process::allocator::release_periodically(
            Duration::from_secs(edge.config.malloc_trim_interval_seconds),
            edge.shutdown.clone(),
            edge.metrics.malloc_trims_total.clone(),
            edge.metrics.malloc_trim_seconds_total.clone(),
        ));
    }

    wait_for_signal().await;
    shutdown(&edge).await;
    let _ = ssh_task.await;
    let _ = http_task.await;
    let _ = tls_task.await;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the edge");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
