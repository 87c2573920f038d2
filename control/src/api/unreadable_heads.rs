//! actix answers a request it cannot read (a malformed head, a head over its 128 KiB buffer
//! or with more than 96 fields, a head that did not arrive within 5 s) by itself, before any
//! handler sees it, with a bare status and no body: a script, an edge or `curl` gets an empty
//! error with nothing to act on. [`Explained`] sits between actix and the socket, recognises
//! that answer, and writes control's JSON error (`{"error":{"code":"bad_request",...}}`) in
//! its place, saying what was wrong. When actix then drops the connection, the socket is
//! closed lingering: a client still sending the rest of a head too large to read gets the
//! answer, not a reset.
//!
//! actix writes such an answer last on a connection, after the answers owed to the requests
//! before it (it may share one write with them), so only the end of a write is looked at:
//! it is taken for one when it is exactly actix's bytes, the status line of a 400, 408 or
//! 431, `content-length: 0`, perhaps `connection: close`, and `date`. No answer of the API's
//! is like that: every refusal of its own carries an ApiError body (`crate::error`), and
//! a JSON or Prometheus body never holds a bare `\r\n\r\n` at its end.

use nearhop_wire::{ApiError, ErrorCode};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Longest the socket is read after the answer before it is closed.
const LINGER: Duration = Duration::from_secs(2);

/// Bytes read and dropped after the answer before the socket is closed.
const LINGER_BYTES: usize = 64 * 1024;

/// The status lines of actix's bare answers (after the version, `HTTP/1.1 ` or, on an
/// HTTP/1.0 connection, `HTTP/1.0 `), and what control says instead.
const REFUSALS: [(&[u8], u16, &str, &str); 3] = [
    (
        b"400 Bad Request\r\n",
        400,
        "Bad Request",
        "the request is not valid HTTP/1.1 (a malformed request line, header field, \
         Content-Length or Transfer-Encoding); control's API takes JSON over HTTP/1.1",
    ),
    (
        b"408 Request Timeout\r\n",
        408,
        "Request Timeout",
        "the request's head did not arrive within 5 seconds of the connection; send the \
         whole head at once",
    ),
    (
        b"431 Request Header Fields Too Large\r\n",
        431,
        "Request Header Fields Too Large",
        "the request's head is larger than 128 KiB or has more than 96 header fields",
    ),
];

/// The field lines actix writes after the status line, before `date` (`keep-alive` on an
/// HTTP/1.0 connection that asked for it; actix closes it all the same).
const FIELDS: [&[u8]; 3] = [
    b"content-length: 0\r\nconnection: close\r\n",
    b"content-length: 0\r\nconnection: keep-alive\r\n",
    b"content-length: 0\r\n",
];

/// `HTTP/1.1 ` or `HTTP/1.0 `.
const VERSION: usize = "HTTP/1.1 ".len();

/// Length of the `date` field line: `date: `, an IMF-fixdate of 29 characters, CRLF.
const DATE_LINE: usize = "date: ".len() + 29 + 2;

/// The longest of actix's bare answers (the 431 with every field): no more of a write's end
/// is looked at.
const LONGEST: usize = VERSION + REFUSALS[2].0.len() + FIELDS[1].len() + DATE_LINE + 2;

/// Where actix's bare answer starts in `buf`, and which of [`REFUSALS`] it is, when `buf`
/// ends with one.
fn bare_answer_at_end(buf: &[u8]) -> Option<(usize, usize)> {
    let from = buf.len().saturating_sub(LONGEST);
    let tail = &buf[from..];
    // The answer's status line is the last "HTTP/1.x " in the tail: its fields hold none.
    let start = tail
        .windows(VERSION)
        .rposition(|w| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ")?;
    let answer = &tail[start + VERSION..];
    let which = REFUSALS.iter().position(|r| answer.starts_with(r.0))?;
    let fields = &answer[REFUSALS[which].0.len()..];
    let rest = FIELDS.iter().find_map(|f| fields.strip_prefix(*f))?;
    let dated =
        rest.len() == DATE_LINE + 2 && rest.starts_with(b"date: ") && rest.ends_with(b"\r\n\r\n");
    (rest == b"\r\n" || dated).then_some((from + start, which))
}

/// Control's answer in place of [`REFUSALS`]`[which]`: the same status, an ApiError body.
fn explained(which: usize) -> Vec<u8> {
    let (_, status, reason, message) = REFUSALS[which];
    ApiError::new(ErrorCode::BadRequest, message).closing_http1_answer(status, reason)
}

/// Where a connection stands with its answer.
enum Answer {
    /// Nothing refused yet.
    None,
    /// Control's answer is being written (from the offset) in place of actix's.
    Writing(Vec<u8>, usize),
    /// Control's answer is out: nothing more is written.
    Sent,
}

/// A connection under actix that writes control's JSON error in place of actix's bare
/// answer to a request it could not read, and closes lingering once actix drops it.
pub struct Explained<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Always `Some` until dropped.
    inner: Option<S>,
    answer: Answer,
    /// The client, for the log.
    peer: Option<SocketAddr>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Explained<S> {
    /// Wraps a connection accepted from `peer`.
    pub fn new(inner: S, peer: Option<SocketAddr>) -> Explained<S> {
        Explained {
            inner: Some(inner),
            answer: Answer::None,
            peer,
        }
    }

    fn inner(&mut self) -> Pin<&mut S> {
        Pin::new(self.inner.as_mut().expect("present until dropped"))
    }

    /// Writes what is left of control's answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Answer::Writing(page, at) = &mut self.answer {
            if *at == page.len() {
                self.answer = Answer::Sent;
                break;
            }
            let inner = Pin::new(self.inner.as_mut().expect("present until dropped"));
            let n = std::task::ready!(inner.poll_write(cx, &page[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Explained<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Explained<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.answer {
            // actix writes nothing after its bare answer; were it to, the bytes would follow
            // an answer that says how long it is, so they go nowhere.
            Answer::Sent => return Poll::Ready(Ok(buf.len())),
            // The same bare answer again, after a write that could not finish.
            Answer::Writing(..) => {
                std::task::ready!(this.poll_answer(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
            Answer::None => {}
        }
        match bare_answer_at_end(buf) {
            None => this.inner().poll_write(cx, buf),
            // The answers before it go out first; actix writes the rest again.
            Some((start, _)) if start > 0 => this.inner().poll_write(cx, &buf[..start]),
            Some((_, which)) => {
                let (_, status, _, message) = REFUSALS[which];
                let peer = this.peer.map(|p| p.to_string());
                tracing::info!(
                    status,
                    peer,
                    "refused a request it could not read: {message}"
                );
                this.answer = Answer::Writing(explained(which), 0);
                std::task::ready!(this.poll_answer(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_answer(cx))?;
        this.inner().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_answer(cx))?;
        this.inner().poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Explained<S> {
    /// After control's answer, the socket is shut for writing and read for a while before
    /// it closes: closing it with the rest of a long head unread would send a reset, which
    /// can overtake the answer.
    fn drop(&mut self) {
        if matches!(self.answer, Answer::None) {
            return;
        }
        let (Some(mut inner), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let page = match std::mem::replace(&mut self.answer, Answer::Sent) {
            Answer::Writing(page, at) => page[at..].to_vec(),
            _ => Vec::new(),
        };
        runtime.spawn(async move {
            let linger = async {
                if inner.write_all(&page).await.is_err() || inner.shutdown().await.is_err() {
                    return;
                }
                let mut scratch = [0u8; 4096];
                let mut left = LINGER_BYTES;
                while left > 0 {
                    match inner.read(&mut scratch).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, linger).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "date: Mon, 07 Dec 2026 16:54:14 GMT\r\n";

    fn bare(status_line: &str, close: bool) -> String {
        let close = if close { "connection: close\r\n" } else { "" };
        format!("{status_line}\r\ncontent-length: 0\r\n{close}{DATE}\r\n")
    }

    #[test]
    fn each_of_actix_bare_answers_is_recognised_alone_and_after_other_answers() {
        let answered = "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        for (which, line) in [
            "HTTP/1.1 400 Bad Request",
            "HTTP/1.1 408 Request Timeout",
            "HTTP/1.1 431 Request Header Fields Too Large",
        ]
        .into_iter()
        .enumerate()
        {
            let http10 = line.replace("HTTP/1.1", "HTTP/1.0");
            let keep_alive =
                format!("{http10}\r\ncontent-length: 0\r\nconnection: keep-alive\r\n{DATE}\r\n");
            assert_eq!(
                bare_answer_at_end(keep_alive.as_bytes()),
                Some((0, which)),
                "{keep_alive:?}"
            );
            for close in [true, false] {
                let alone = bare(line, close);
                assert_eq!(bare_answer_at_end(alone.as_bytes()), Some((0, which)));
                let after = format!("{answered}{alone}");
                assert_eq!(
                    bare_answer_at_end(after.as_bytes()),
                    Some((answered.len(), which)),
                    "{after:?}"
                );
            }
        }
    }

    #[test]
    fn the_api_own_answers_are_left_alone() {
        for buf in [
            // An answer with a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}".to_string(),
            // Another status, bare.
            bare("HTTP/1.1 404 Not Found", true),
            // A field of its own.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-a: b\r\n{DATE}\r\n"),
            // Not the end of the write.
            format!("{}HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", bare("HTTP/1.1 400 Bad Request", true)),
            // A body chunk.
            "x".repeat(10_000),
            String::new(),
        ] {
            assert_eq!(bare_answer_at_end(buf.as_bytes()), None, "{buf:?}");
        }
    }

    #[test]
    fn control_answer_is_json_that_says_why_with_the_same_status() {
        for (which, (_, status, _, message)) in REFUSALS.iter().enumerate() {
            let page = String::from_utf8(explained(which)).expect("text");
            let (head, body) = page.split_once("\r\n\r\n").expect("a head and a body");
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let error: ApiError = serde_json::from_str(body).expect("an ApiError");
            assert_eq!(error.error.code, ErrorCode::BadRequest);
            assert_eq!(error.error.message, *message);
        }
    }

    /// Writes `buf` the way actix does: again from where the last write stopped.
    async fn write_like_actix<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        s: &mut Explained<S>,
        buf: &[u8],
    ) {
        let mut at = 0;
        while at < buf.len() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut *s).poll_write(cx, &buf[at..]))
                .await
                .expect("write");
            assert!(n > 0);
            at += n;
        }
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_flush(cx))
            .await
            .expect("flush");
    }

    #[tokio::test]
    async fn the_bare_answer_is_replaced_after_the_answers_before_it_even_through_a_small_pipe() {
        // A pipe of 7 bytes: every write is partial and most of them wait.
        let (client, server) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        let answered = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}";
        let mut explained_stream = Explained::new(server, None);
        let mut write = answered.to_vec();
        write.extend_from_slice(
            bare("HTTP/1.1 431 Request Header Fields Too Large", true).as_bytes(),
        );
        write_like_actix(&mut explained_stream, &write).await;
        // What actix might still write goes nowhere.
        write_like_actix(&mut explained_stream, b"more").await;
        drop(explained_stream);
        let got = reader.await.expect("reader");
        let mut want = answered.to_vec();
        want.extend_from_slice(&explained(2));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }

    #[tokio::test]
    async fn an_ordinary_connection_passes_through_untouched() {
        let (client, server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        let mut s = Explained::new(server, None);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        write_like_actix(&mut s, answer).await;
        std::future::poll_fn(|cx| Pin::new(&mut s).poll_shutdown(cx))
            .await
            .expect("shutdown");
        drop(s);
        assert_eq!(reader.await.expect("reader"), answer.to_vec());
    }
}
