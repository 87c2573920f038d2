//! Tests' SSH link over loopback: a russh server running the test's handler, and a
//! connected, authenticated client the way a peer edge connects (`links::PeerClient`
//! pinning the server's key).

use super::links::{client_config, PeerClient};
use crate::config::Config;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use std::sync::Arc;

/// A key for tests, from `seed`.
fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &[seed; 32],
    ))
}

/// A client connected as `us-1` to a server running `handler` (which must accept its key).
pub async fn connect<H: russh::server::Handler<Error = russh::Error> + Send + 'static>(
    handler: H,
) -> Handle<PeerClient> {
    let server_key = key(6);
    let expected = server_key.public_key().clone();
    let server_config = Arc::new(russh::server::Config {
        keys: vec![server_key],
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let running = russh::server::run_stream(server_config, stream, handler)
            .await
            .expect("handshake");
        let _ = running.await;
    });
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let config = Arc::new(client_config(&Config::default()));
    let mut handle = client::connect_stream(config, stream, PeerClient::new(expected))
        .await
        .expect("client handshake");
    let auth = handle
        .authenticate_publickey("us-1", PrivateKeyWithHashAlg::new(Arc::new(key(7)), None))
        .await
        .expect("authenticate");
    assert!(auth.success());
    handle
}

/// A mesh listener that accepts every key and hands each `direct-tcpip` channel to the test
/// with its opening unanswered: the test confirms or refuses it, or leaves it waiting.
pub struct Asked(pub tokio::sync::mpsc::UnboundedSender<Opening>);

/// One channel opening the test peer was asked for, unanswered.
pub type Opening = (
    russh::server::ChannelOpenHandle,
    russh::Channel<russh::server::Msg>,
);

impl russh::server::Handler for Asked {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::Accept)
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<russh::server::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut russh::server::Session,
    ) -> Result<(), Self::Error> {
        let _ = self.0.send((reply, channel));
        Ok(())
    }
}

/// A client connected to a mesh listener that confirms every relay channel, and the
/// listener's halves of the channels, as they are confirmed.
pub async fn connect_confirming() -> (
    Handle<PeerClient>,
    tokio::sync::mpsc::UnboundedReceiver<russh::Channel<russh::server::Msg>>,
) {
    let (asked, mut openings) = tokio::sync::mpsc::unbounded_channel();
    let handle = connect(Asked(asked)).await;
    let (confirmed, channels) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((reply, channel)) = openings.recv().await {
            reply.accept().await;
            if confirmed.send(channel).is_err() {
                break;
            }
        }
    });
    (handle, channels)
}
