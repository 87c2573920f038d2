//! The accept loop every listener of the edge shares, and how its listeners are bound.

use crate::process::open_files::Exhaustion;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Connections the kernel may hold complete for a listener before the edge accepts them
/// (capped by `net.core.somaxconn`, 4096 on current Linux). The standard library's and
/// tokio's `bind` ask for 128: under a burst of connections (a flood of visitors resetting
/// theirs, a crowd arriving at once) the queue overflowed while the machine was mostly idle,
/// the kernel dropped the SYNs, and every visitor arriving then waited a second for its
/// SYN to be sent again (`TcpExtListenOverflows`; docs/benchmarks.md, "Memory after visitor
/// floods"). nginx on Linux asks for 511, Go for `somaxconn`.
pub const BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The backlog the kernel reports for a listening socket: `ss` shows it as the
    /// listener's Send-Q.
    fn reported_backlog(port: u16) -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no listener in {text:?}"));
        line.split_whitespace()
            .nth(2)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("no Send-Q in {line:?}"))
    }

    #[tokio::test]
    async fn listeners_get_the_long_queue_not_the_standard_128() {
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(BACKLOG);
        let ours = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let port = ours.local_addr().expect("its address").port();
        assert_eq!(reported_backlog(port), BACKLOG.min(somaxconn));
        assert!(
            BACKLOG.min(somaxconn) > 128,
            "somaxconn {somaxconn} leaves no room"
        );
        let theirs = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = theirs.local_addr().expect("its address").port();
        assert_eq!(
            reported_backlog(port),
            128,
            "tokio's own bind, for comparison"
        );
    }
}
