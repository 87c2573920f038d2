//! The `pipe` connector: pdns starts the backend as a coprocess and speaks the line protocol
//! on its stdin/stdout (logs go to stderr).

use super::lines::serve_stream;
use crate::protocol::Backend;
use tokio::io::BufReader;

/// Serves stdin/stdout until pdns closes stdin.
pub async fn serve(backend: &Backend, max_request: usize) -> std::io::Result<()> {
    let mut rd = BufReader::with_capacity(16 * 1024, tokio::io::stdin());
    let mut wr = tokio::io::stdout();
    serve_stream("pipe", &mut rd, &mut wr, backend, max_request).await
}
