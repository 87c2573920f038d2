//! The accept loop every listener of the edge shares.

use crate::process::open_files::Exhaustion;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` until `stop` completes (typically the edge's shutdown
/// token being cancelled) and hands each to `on_accept`. Accept errors (EMFILE and friends)
/// are logged with `what` and followed by a short pause instead of a spin.
pub async fn until_stopped(
    listener: &TcpListener,
    stop: impl Future<Output = ()>,
    what: &str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => break,
        };
        match accepted {
            Ok((stream, peer)) => on_accept(stream, peer),
            Err(e) => match crate::process::open_files::exhaustion(&e) {
                // Out of descriptors: the connection waits in the listen queue until one
                // is let go; pausing longer keeps the log readable meanwhile.
                Some(whose) => {
                    let advice = match whose {
                        Exhaustion::System => "the system is out of open files (raise fs.file-max)",
                        Exhaustion::Process => {
                            "this process is at its open-file limit (raise LimitNOFILE=; see \
                             process_open_fds / process_max_fds)"
                        }
                    };
                    tracing::error!(
                        error = %e,
                        "accepting {what}: out of file descriptors; new connections wait \
                         until some close: {advice}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => {
                    tracing::warn!(error = %e, "accepting {what}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
