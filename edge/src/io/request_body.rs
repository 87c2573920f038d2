//! A request body read whole, up to a limit. An over-long body is refused, but the rest of
//! it is read and thrown away first (a bounded amount, for a bounded time): a connection
//! closed with unread bytes is reset by the kernel, and a sender still writing its body
//! would see a broken pipe instead of the answer that says what was wrong.
//! (`last_word.rs` does the same on a bare socket, for a refusal before any protocol.)

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::fmt;
use std::time::Duration;

/// Most bytes of a refused body read and thrown away.
const DRAIN_LIMIT: usize = 16 << 20;
/// Longest time spent reading and throwing away a refused body.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRefused {
    /// Longer than the limit, which it names.
    TooLong(usize),
    /// The connection failed or ended in the middle of the body.
    Unreadable(String),
}

impl fmt::Display for BodyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(max) => write!(f, "the body is longer than {max} bytes"),
            Self::Unreadable(e) => write!(f, "the body could not be read: {e}"),
        }
    }
}

/// Reads `body` whole if it is at most `max` bytes.
pub async fn read_limited(mut body: Incoming, max: usize) -> Result<Bytes, BodyRefused> {
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyRefused::Unreadable(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if got.len() + data.len() > max {
                drain(&mut body, got.len() + data.len()).await;
                return Err(BodyRefused::TooLong(max));
            }
            got.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(got))
}

/// Reads and drops what is left of `body`, up to [`DRAIN_LIMIT`] bytes (counting `already`)
/// and for at most [`DRAIN_TIME`]; whatever is still unread after that is left to the reset.
async fn drain(body: &mut Incoming, already: usize) {
    let mut dropped = already;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while dropped <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => dropped += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Serves one connection that answers each request with what `read_limited` said.
    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = service_fn(|req: Request<Incoming>| async move {
                let text = match read_limited(req.into_body(), 1024).await {
                    Ok(b) => format!("read {} bytes", b.len()),
                    Err(e) => e.to_string(),
                };
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(text))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        addr
    }

    #[tokio::test]
    async fn a_short_body_is_read_and_a_long_one_refused_with_the_connection_kept() {
        let addr = server().await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .expect("write");
        // Far more than the loopback socket buffers hold: without the drain, the close
        // resets the connection while this is still writing, and the answer is lost.
        let long = vec![b'z'; 4 << 20];
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            long.len()
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        conn.write_all(&long).await.expect("write body");
        conn.write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        )
        .await
        .expect("write the last request");
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        let first = answer.find("read 5 bytes").expect("first answer");
        let second = answer
            .find("the body is longer than 1024 bytes")
            .expect("the refusal");
        let third = answer.find("read 2 bytes").expect("the connection went on");
        assert!(first < second && second < third, "{answer}");
    }
}
