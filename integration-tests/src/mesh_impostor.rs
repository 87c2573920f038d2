//! A compromised edge for the mesh's hostile tests: it holds a genuine credential issued by
//! the real CLI, registers with control under its own id with a mesh key of its own, keeps
//! heartbeating so that control lists it to the real edges, and serves those edges a
//! holdings feed of the lines the test gives it (claims to names it does not hold). Relay
//! channels it is asked to open are refused: a visitor sent to it gets nothing.

use crate::control::ControlProcess;
use crate::ports::free_port;
use anyhow::{Context, Result};
use nearhop_wire::RegisterEdgeRequest;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The impostor; it stops heartbeating and serving when dropped.
pub struct MeshImpostor {
    /// Its edge id.
    pub edge_id: String,
    stop: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MeshImpostor {
    /// Issues a credential for `edge_id` in `region`, listens at a free mesh port on `ip`,
    /// registers and heartbeats every `heartbeat` (control's setting), and answers every
    /// edge that asks for its holdings with `feed` (lines ending in `\n`).
    pub fn start(
        control: &ControlProcess,
        edge_id: &str,
        region: &str,
        ip: Ipv4Addr,
        heartbeat: Duration,
        feed: String,
    ) -> Result<MeshImpostor> {
        let issued = control.cli(&["edge", "issue", edge_id, "--region", region])?;
        let issued: serde_json::Value = serde_json::from_str(issued.trim())?;
        let credential = issued["credential"]
            .as_str()
            .context("edge issue printed no credential")?
            .to_string();
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&rand_seed()));
        let host_key = key.public_key().to_openssh()?;
        let port = free_port(ip);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind((ip, port)))?;
        let config = Arc::new(russh::server::Config {
            keys: vec![key],
            ..Default::default()
        });
        runtime.spawn(serve(listener, config, Arc::new(feed)));
        let register = RegisterEdgeRequest {
            edge_id: edge_id.into(),
            region: region.into(),
            admin_url: format!("http://{ip}:9"),
            mesh_addr: Some(format!("{ip}:{port}")),
            host_key: Some(host_key),
            admin_key: Some(format!("{edge_id}-admin-key-0123456789abcdef0123456789")),
        };
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let r = http
            .post(format!("{}/v1/edges/register", control.url))
            .bearer_auth(&credential)
            .json(&register)
            .send()?;
        anyhow::ensure!(r.status() == 200, "registering: {}", r.text()?);
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, url) = (stop.clone(), control.url.clone());
        let heartbeat_url = format!("{url}/v1/edges/{edge_id}/heartbeat");
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let _ = http
                    .post(&heartbeat_url)
                    .bearer_auth(&credential)
                    .json(&serde_json::json!({ "tunnel_ids": [] }))
                    .send();
                std::thread::sleep(heartbeat);
            }
        });
        Ok(MeshImpostor {
            edge_id: edge_id.into(),
            stop,
            runtime: Some(runtime),
        })
    }
}

impl Drop for MeshImpostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    seed[..16].copy_from_slice(&now.to_le_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    seed
}

async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    feed: Arc<String>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let handler = Impostor { feed: feed.clone() };
        let config = config.clone();
        tokio::spawn(async move {
            if let Ok(running) = russh::server::run_stream(config, stream, handler).await {
                let _ = running.await;
            }
        });
    }
}

/// One real edge's connection to the impostor.
struct Impostor {
    feed: Arc<String>,
}

impl russh::server::Handler for Impostor {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Whatever version the edge asks for, the same lines.
        if !data.starts_with(b"nearhop-holdings ") {
            session.channel_failure(channel)?;
            return Ok(());
        }
        session.channel_success(channel)?;
        session.data(channel, self.feed.as_bytes().to_vec())?;
        Ok(())
    }
}
