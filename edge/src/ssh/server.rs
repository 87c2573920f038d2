//! The SSH listener: russh configuration (windows, keepalives, the cipher offers), one task
//! per client, and the clean-up when a client goes away.

use crate::edge::{Edge, UnauthenticatedSlot};
use crate::io::accept;
use crate::io::proxy_header;
use crate::io::read_buffer::Prefixed;
use crate::io::receive_window::OPENING_WINDOW;
use crate::ssh::hello::{self, AlreadyIdentified, Offer};
use crate::ssh::session::SshSession;
use russh::keys::PrivateKey;
use russh::server::Config;
use russh::MethodSet;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

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
        // Visitor channels (opened by the edge) start at 32 KiB and their readers grant the
        // rest out of `tunnel_window_budget_bytes` (`io::receive_window`); channels the
        // client opens (its session, the request inspector) keep `ssh_window_bytes`, granted
        // by russh as data arrives.
        window_by_reader: Some(OPENING_WINDOW),
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

/// Where SSH connections are served: from the SSH listener, and from the TLS listener
/// when a client speaks SSH there (`ssh_on_tls_port`).
pub struct SshEntry {
    edge: Arc<Edge>,
    offers: Offers,
}

impl SshEntry {
    /// The entry for this edge, with its host key.
    pub fn new(edge: Arc<Edge>, key: PrivateKey) -> Arc<SshEntry> {
        let offers = Offers::new(&edge, key);
        Arc::new(SshEntry { edge, offers })
    }

    /// Serves one SSH connection from `peer` (the client's own address, behind any
    /// balancer); `read` holds bytes already read from `stream`.
    pub async fn take(&self, stream: TcpStream, peer: SocketAddr, read: Vec<u8>) {
        let edge = self.edge.clone();
        // Held until the client authenticates: a flood of key exchanges from one network
        // cannot take every place, nor a flood from many the edge's CPU.
        let Some(unauthenticated) = edge.unauthenticated_ssh_slot(peer.ip()) else {
            refuse(stream).await;
            return;
        };
        // The client's own address from here on: control's per-address limits see it.
        let link = edge.open_session(peer);
        let span = tracing::info_span!("ssh", session = link.id, %peer);
        handle_connection(edge, &self.offers, stream, read, link, unauthenticated)
            .instrument(span)
            .await;
    }
}

/// Accepts SSH clients until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, entry: Arc<SshEntry>) {
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "an SSH connection",
        |mut stream, tcp_peer| {
            let (edge, entry) = (edge.clone(), entry.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let behind = edge.real_peer("ssh", &mut stream, tcp_peer);
                let Some((peer, rest)) = behind.await else {
                    return;
                };
                entry.take(stream, peer, rest).await;
            });
        },
    )
    .await;
}

async fn handle_connection(
    edge: Arc<Edge>,
    offers: &Offers,
    mut stream: TcpStream,
    mut read: Vec<u8>,
    link: Arc<crate::ssh::link::SessionLink>,
    unauthenticated: UnauthenticatedSlot,
) {
    // One deadline from here to authentication, however the client splits its time between
    // identification, key exchange and authentication.
    let auth_deadline = tokio::time::Instant::now()
        + Duration::from_secs(edge.config.ssh_auth_deadline_seconds.max(1));
    // Inside key exchange russh does not act on a disconnect asked through its handle: at
    // the deadline the socket is shut through this second handle too (io::cut_off).
    let cut = match crate::io::cut_off::second_handle(&stream) {
        Ok(cut) => cut,
        Err(e) => {
            tracing::warn!(error = %e, "SSH connection dropped: its socket could not be duplicated");
            edge.end_session(&link, "client_closed").await;
            return;
        }
    };
    let start = async {
        let hello = hello::greet(&mut stream, &mut read, hello::KEXINIT_WAIT).await?;
        // A trusted balancer's header was taken off before (`Edge::real_peer`).
        if hello.id.is_empty() && proxy_header::looks_like_header(&read) {
            proxy_header::count_untrusted(&edge.metrics, "ssh");
            tracing::debug!("PROXY protocol header from an untrusted address refused");
            return Err(anyhow::anyhow!(
                "a PROXY protocol header from an address not in proxy_protocol_from"
            ));
        }
        // A client that is no SSH-2 client is told so, in the words sshd uses, rather than
        // meeting russh's silence: an SSH-1 client, or bytes that are no identification.
        if let Some(said) = hello::not_ssh2(&hello.id, &read) {
            // Lingering, so that what the client still sends does not reset the sentence.
            crate::io::last_word::answer_and_close(&mut stream, said.as_bytes()).await;
            return Err(anyhow::anyhow!("{}", said.trim_end()));
        }
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
    let started = tokio::time::timeout_at(auth_deadline, start).await;
    let running = match started {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "SSH handshake failed");
            edge.end_session(&link, "client_closed").await;
            return;
        }
        Err(_) => {
            tracing::debug!("client not through identification and key exchange by the deadline");
            edge.metrics.ssh_auth_timeouts_total.inc();
            edge.end_session(&link, "client_closed").await;
            return;
        }
    };
    link.set_handle(running.handle());
    let auth_watch = {
        let link = link.clone();
        let timeouts = edge.metrics.ssh_auth_timeouts_total.clone();
        tokio::spawn(async move {
            let authenticated = tokio::time::timeout_at(auth_deadline, link.until_authenticated());
            if authenticated.await.is_err() {
                timeouts.inc();
                link.disconnect("Authentication took too long.").await;
                // Time for the message to leave; a session still inside key exchange has
                // not acted on it, and its socket is shut.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = cut.shutdown(std::net::Shutdown::Both);
            }
            drop(cut);
            // The place among unauthenticated connections is given back here.
            drop(unauthenticated);
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
            tracing::info!(error = %e, "session ended with an error");
            "client_closed"
        }
        Ok(()) => "client_closed",
    };
    edge.end_session(&link, reason).await;
}

/// What a client refused at the unauthenticated-connection limits is told.
const TOO_MANY_UNAUTHENTICATED: &str =
    "Too many connections are logging in to this edge right now, from your address or from \
     everyone. Please try again in a few seconds.";

/// Tells a client over the limits so, then lets it finish sending before closing: a close
/// while its identification and KEXINIT are still arriving would reset the connection, and
/// the client would lose the sentence.
async fn refuse(mut stream: TcpStream) {
    if stream
        .write_all(&refusal(TOO_MANY_UNAUTHENTICATED))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = crate::io::discard::discard(&mut stream, u64::MAX, |_| {});
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// SSH_DISCONNECT_TOO_MANY_CONNECTIONS (RFC 4253 §11.1).
const TOO_MANY_CONNECTIONS: u32 = 12;

/// The edge's identification, then an unencrypted `SSH_MSG_DISCONNECT` with `text`: before
/// key exchange packets travel in the clear, and OpenSSH prints the text ("Received
/// disconnect from ...: 12: ...").
fn refusal(text: &str) -> Vec<u8> {
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&TOO_MANY_CONNECTIONS.to_be_bytes());
    payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
    payload.extend_from_slice(text.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
                                                    // packet_length (4) + padding_length (1) + payload + padding is a multiple of 8, with
                                                    // at least 4 bytes of padding.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = b"SSH-2.0-nearhop\r\n".to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
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

    #[test]
    fn the_refusal_is_an_identification_and_one_well_formed_disconnect() {
        let bytes = refusal("go away");
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("line") + 2;
        assert_eq!(&bytes[..line_end], b"SSH-2.0-nearhop\r\n");
        let packet = &bytes[line_end..];
        let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
        assert_eq!(packet.len(), 4 + length);
        assert_eq!(packet.len() % 8, 0);
        let padding = packet[4] as usize;
        assert!(padding >= 4);
        let payload = &packet[5..4 + length - padding];
        assert_eq!(payload[0], 1, "SSH_MSG_DISCONNECT");
        assert_eq!(u32::from_be_bytes(payload[1..5].try_into().unwrap()), 12);
        let text_len = u32::from_be_bytes(payload[5..9].try_into().unwrap()) as usize;
        assert_eq!(&payload[9..9 + text_len], b"go away");
    }
}
