//! The edge's last word on a connection it refuses before any protocol started (plain HTTP
//! on the TLS port, a PROXY header from an untrusted address): the answer, then a lingering
//! close. Closing a socket that still holds unread bytes makes the kernel send a reset, and
//! a reset that overtakes the answer makes the client see "connection reset" instead of the
//! sentence. So the edge stops writing, then reads and drops what the client still sends,
//! briefly and boundedly, before it closes.

use crate::io::discard::discard;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Longest the edge keeps reading after its answer.
pub const LINGER: Duration = Duration::from_secs(2);

/// Bytes it reads and drops after its answer before it stops reading.
pub const LINGER_BYTES: u64 = 64 * 1024;

/// Writes `answer`, shuts the writing side, and drains what the client sends for at most
/// [`LINGER`], and until [`LINGER_BYTES`] came (or it closes its side).
pub async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, answer: &[u8]) {
    if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let drain = discard(stream, LINGER_BYTES, |_| {});
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn the_answer_arrives_although_the_client_was_still_sending() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut first = [0u8; 4];
            s.read_exact(&mut first).await.expect("first bytes");
            answer_and_close(&mut s, b"HTTP/1.1 400 Bad Request\r\n\r\nno").await;
        });
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.set_nodelay(true).expect("nodelay");
        // The request in pieces: the server answers after the first and never reads the rest.
        for piece in [&b"GET "[..], b"/ HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"] {
            c.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .await
            .expect("the answer, not a reset");
        assert_eq!(got, b"HTTP/1.1 400 Bad Request\r\n\r\nno");
        server.await.expect("server");
    }
}
