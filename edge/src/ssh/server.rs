//! The SSH listener: russh configuration (windows, keepalives), one task per client, and
//! the clean-up when a client goes away.

use crate::accept;
use crate::edge::Edge;
use crate::io::read_buffer::Prefixed;
use crate::ssh::session::SshSession;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::MethodSet;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Time a client has from TCP connect to successful authentication.
const AUTH_DEADLINE: Duration = Duration::from_secs(60);

/// The russh server configuration for this edge.
pub fn russh_config(edge: &Edge, key: PrivateKey) -> Config {
    let c = &edge.config;
    Config {
        server_id: russh::SshId::Standard("SSH-2.0-nearhop".into()),
        methods: MethodSet::from(
            &[
                russh::MethodKind::None,
                russh::MethodKind::Password,
                russh::MethodKind::PublicKey,
                russh::MethodKind::KeyboardInteractive,
            ][..],
        ),
        // Every method is accepted (the username carries the token), so there is nothing
        // for a timing attack to learn.
        auth_rejection_time: Duration::from_millis(0),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        keys: vec![key],
        window_size: c.ssh_window_bytes,
        maximum_packet_size: c.ssh_max_packet_bytes,
        channel_buffer_size: c.ssh_channel_buffer,
        event_buffer_size: 64,
        // A tunnel may be idle for hours; dead clients are found by keepalives instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(c.keepalive_interval_seconds.max(1))),
        keepalive_max: c.keepalive_max,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: Cow::Owned(c.ssh_ciphers.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Accepts SSH clients until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, key: PrivateKey) {
    let config = Arc::new(russh_config(&edge, key));
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "an SSH connection",
        |mut stream, tcp_peer| {
            let (edge, config) = (edge.clone(), config.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let behind = edge.real_peer("ssh", &mut stream, tcp_peer);
                let Some((peer, rest)) = behind.await else {
                    return;
                };
                // The client's own address from here on: control's per-address limits see it.
                let link = edge.open_session(peer);
                let span = tracing::info_span!("ssh", session = link.id, %peer);
                let stream = Prefixed::new(rest, stream);
                handle_connection(edge, config, stream, link)
                    .instrument(span)
                    .await;
            });
        },
    )
    .await;
}

async fn handle_connection(
    edge: Arc<Edge>,
    config: Arc<Config>,
    stream: Prefixed<TcpStream>,
    link: Arc<crate::ssh::link::SessionLink>,
) {
    let handler = SshSession::new(edge.clone(), link.clone());
    let started = tokio::time::timeout(
        AUTH_DEADLINE,
        russh::server::run_stream(
            config,
            crate::io::read_buffer::AdaptiveReader::new(stream),
            handler,
        ),
    )
    .await;
    let running = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "SSH handshake failed");
            edge.end_session(&link, "client_closed").await;
            return;
        }
        Err(_) => {
            tracing::debug!("client sent no SSH identification in time");
            edge.end_session(&link, "client_closed").await;
            return;
        }
    };
    link.set_handle(running.handle());
    let auth_watch = {
        let link = link.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(AUTH_DEADLINE) => {
                    if !link.authenticated() {
                        link.disconnect("Authentication took too long.").await;
                    }
                }
                _ = link.gone.cancelled() => {}
            }
        })
    };
    let result = running.await;
    auth_watch.abort();
    let reason = match &result {
        Err(e) if is_keepalive_timeout(e) => {
            tracing::info!("client stopped answering keepalives; closing its tunnels");
            "client_dead"
        }
        Err(e) => {
            tracing::debug!(error = %e, "session ended with an error");
            "client_closed"
        }
        Ok(()) => "client_closed",
    };
    edge.end_session(&link, reason).await;
}

fn is_keepalive_timeout(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<russh::Error>(),
        Some(russh::Error::KeepaliveTimeout)
    )
}
