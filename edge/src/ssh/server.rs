//! The SSH listener: russh configuration (windows, keepalives), one task per client, and
//! the clean-up when a client goes away.

use crate::accept;
use crate::config::SUPPORTED_CIPHERS;
use crate::edge::Edge;
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
            cipher: Cow::Owned(cipher_names(&c.ssh_ciphers)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// russh's names for the configured ciphers (checked against [`SUPPORTED_CIPHERS`] when the
/// configuration was loaded).
fn cipher_names(configured: &[String]) -> Vec<russh::cipher::Name> {
    configured
        .iter()
        .filter_map(|c| {
            SUPPORTED_CIPHERS
                .iter()
                .find(|k| k.as_ref() == c.as_str())
                .copied()
        })
        .collect()
}

/// Accepts SSH clients until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, key: PrivateKey) {
    let config = Arc::new(russh_config(&edge, key));
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "an SSH connection",
        |stream, peer| {
            let link = edge.open_session(peer);
            let span = tracing::info_span!("ssh", session = link.id, %peer);
            tokio::spawn(
                handle_connection(edge.clone(), config.clone(), stream, link).instrument(span),
            );
        },
    )
    .await;
}

async fn handle_connection(
    edge: Arc<Edge>,
    config: Arc<Config>,
    stream: TcpStream,
    link: Arc<crate::ssh::link::SessionLink>,
) {
    let _ = stream.set_nodelay(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The names as operators write them (docs/edge.md, "Cipher choice"), spelled out here
    /// rather than read back from [`SUPPORTED_CIPHERS`]: the old test turned the table into
    /// strings and looked them up in the same table, which holds whatever the table says.
    const DOCUMENTED: [&str; 6] = [
        "aes256-ctr",
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes192-ctr",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
    ];

    #[test]
    fn documented_cipher_names_reach_russh_as_its_ciphers_in_the_configured_order() {
        let configured = DOCUMENTED.map(String::from);
        let names = cipher_names(&configured);
        let got: Vec<&str> = names.iter().map(|n| n.as_ref()).collect();
        assert_eq!(
            got, DOCUMENTED,
            "a documented cipher was dropped or reordered"
        );
        for name in &names {
            // russh's own lookup, over the ciphers it negotiates with.
            assert_eq!(russh::cipher::Name::try_from(name.as_ref()), Ok(*name));
        }
    }

    #[test]
    fn the_default_offer_is_aes_gcm_only_128_first() {
        let names = cipher_names(&crate::config::Config::default().ssh_ciphers);
        assert_eq!(
            names,
            [russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM]
        );
    }
}
