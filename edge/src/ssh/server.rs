//! The SSH listener: russh configuration (windows, keepalives, the cipher offers), one task
//! per client, and the clean-up when a client goes away.

use crate::accept;
use crate::edge::Edge;
use crate::io::read_buffer::Prefixed;
use crate::ssh::hello::{self, AlreadyIdentified, Offer};
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

/// The russh server configurations of this edge, one per cipher offer.
pub struct Offers {
    usual: Arc<Config>,
    widened: Arc<Config>,
}

impl Offers {
    /// Both configurations, with the host key.
    pub fn new(edge: &Edge, key: PrivateKey) -> Offers {
        let c = &edge.config;
        let config = |offer| {
            let ciphers = hello::offered_ciphers(offer, &c.ssh_ciphers, &c.ssh_fallback_ciphers);
            Arc::new(russh_config(edge, key.clone(), ciphers))
        };
        Offers {
            usual: config(Offer::Usual),
            widened: config(Offer::Widened),
        }
    }

    /// The configuration for `offer`.
    pub fn config(&self, offer: Offer) -> Arc<Config> {
        match offer {
            Offer::Usual => self.usual.clone(),
            Offer::Widened => self.widened.clone(),
        }
    }
}

/// The russh server configuration for this edge, offering `ciphers`.
pub fn russh_config(edge: &Edge, key: PrivateKey, ciphers: Vec<russh::cipher::Name>) -> Config {
    let c = &edge.config;
    Config {
        // `hello::greet` sends the identification; russh's copy is dropped (see there).
        server_id: russh::SshId::Standard(hello::SERVER_ID.into()),
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
        // russh's default MACs are SHA-2 only (with and without encrypt-then-MAC); they
        // matter only to AES-CTR.
        preferred: russh::Preferred {
            cipher: Cow::Owned(ciphers),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Accepts SSH clients until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, key: PrivateKey) {
    let offers = Arc::new(Offers::new(&edge, key));
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "an SSH connection",
        |mut stream, tcp_peer| {
            let (edge, offers) = (edge.clone(), offers.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let behind = edge.real_peer("ssh", &mut stream, tcp_peer);
                let Some((peer, rest)) = behind.await else {
                    return;
                };
                // The client's own address from here on: control's per-address limits see it.
                let link = edge.open_session(peer);
                let span = tracing::info_span!("ssh", session = link.id, %peer);
                handle_connection(edge, offers, stream, rest, link)
                    .instrument(span)
                    .await;
            });
        },
    )
    .await;
}

async fn handle_connection(
    edge: Arc<Edge>,
    offers: Arc<Offers>,
    mut stream: TcpStream,
    mut read: Vec<u8>,
    link: Arc<crate::ssh::link::SessionLink>,
) {
    let start = async {
        let hello = hello::greet(&mut stream, &mut read, hello::KEXINIT_WAIT).await?;
        let offer = hello.offer(&edge.config.ssh_ciphers);
        tracing::debug!(client = ?hello.id, offer = offer.as_str(), "client identified");
        let stream = AlreadyIdentified::new(Prefixed::new(read, stream));
        let handler = SshSession::new(edge.clone(), link.clone(), hello.software);
        russh::server::run_stream(
            offers.config(offer),
            crate::io::read_buffer::AdaptiveReader::new(stream),
            handler,
        )
        .await
    };
    let started = tokio::time::timeout(AUTH_DEADLINE, start).await;
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
