//! The `unix` connector: pdns connects once per backend thread and sends one JSON document
//! per line; each connection is served by its own task, strictly request → reply.

use super::lines::serve_stream;
use crate::protocol::Backend;
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

/// Binds `path` (replacing a stale socket file) with mode 0666 so that a pdns running as
/// another user can connect.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Accepts connections forever.
pub async fn serve(listener: UnixListener, backend: Arc<Backend>, max_request: usize) {
    let mut next_id: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                next_id += 1;
                let backend = Arc::clone(&backend);
                let span = tracing::debug_span!("unix", conn = next_id);
                tokio::spawn(serve_connection(stream, backend, max_request).instrument(span));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept on the unix socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, backend: Arc<Backend>, max_request: usize) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(16 * 1024, rd);
    if let Err(e) = serve_stream("unix", &mut rd, &mut wr, &backend, max_request).await {
        tracing::debug!(error = %e, "unix connection ended");
    }
}
