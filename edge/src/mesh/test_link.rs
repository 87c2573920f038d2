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
