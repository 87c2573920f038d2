//! hyper answers a request head it cannot read (malformed, too large, a URL too long) by
//! itself, before the edge's service sees anything, with a bare status and no body: a
//! browser shows a blank page and a script an empty error. [`ToldWhy`] sits between hyper
//! and the socket, recognises that answer and writes a page of the edge's own in its place,
//! saying what was wrong and what to do. Then it closes lingering, as the edge's other
//! refusals do (`io::last_word`): a client still sending the rest of a head too large to
//! read gets the page, not a reset.
//!
//! hyper writes such an answer only when every request it handed to the service has been
//! answered, so a write is taken for one only when [`Answering`] counted no request handed
//! over since the last write (hyper's own `100 Continue` aside), and only when its bytes are
//! exactly hyper's: the status line of a 400, 414 or 431, then `connection: close`,
//! `content-length: 0` and `date`, in that order and nothing else. An answer of the
//! service's (the tunnel's) passes through whatever it says; so does everything after a
//! `101` (an upgraded connection).

use crate::io::last_word::{LINGER, LINGER_BYTES};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Requests of one connection handed to the service so far. hyper writes an answer of its
/// own only when every request handed over was answered, so a write made while no request
/// was handed over since the last write may be one; any other is the service's.
#[derive(Clone, Default)]
pub struct Answering(Arc<AtomicU64>);

impl Answering {
    /// A request handed to the service.
    pub fn begin(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn handed(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where a connection stands with its own refusal.
enum Told {
    /// Nothing refused.
    Not,
    /// The connection was upgraded (a `101` went out): what follows is not HTTP, and no
    /// write is looked at again.
    Off,
    /// The page is being written (from the offset).
    Writing(Vec<u8>, usize),
    /// The page is out and the writing side shut: what the client still sends is read and
    /// dropped, up to the byte count left and the deadline.
    Lingering(Pin<Box<Sleep>>, u64),
    /// Done with the connection.
    Done,
}

/// A stream under hyper that writes `page(status)` (a whole HTTP/1.1 answer) in place of
/// hyper's bare answer to a head it could not read.
pub struct ToldWhy<S, P> {
    inner: S,
    answering: Answering,
    /// Requests handed to the service as of the last write that went through.
    handed_at_last_write: u64,
    page: P,
    told: Told,
}

impl<S, P: FnMut(u16) -> Vec<u8>> ToldWhy<S, P> {
    /// Wraps `inner`; `answering` is the count the connection's service keeps.
    pub fn new(inner: S, answering: Answering, page: P) -> ToldWhy<S, P> {
        ToldWhy {
            inner,
            answering,
            handed_at_last_write: 0,
            page,
            told: Told::Not,
        }
    }

    /// Whether `buf`, written now, is hyper's answer to a head it could not read: then the
    /// page takes its place.
    fn takes_the_place_of(&mut self, buf: &[u8]) -> bool {
        if !matches!(self.told, Told::Not) || self.answering.handed() != self.handed_at_last_write {
            return false;
        }
        let Some(status) = hyper_refusal(buf) else {
            return false;
        };
        self.told = Told::Writing((self.page)(status), 0);
        true
    }

    /// Notes a write that went through: the requests handed over before it are answered
    /// or being answered. A write still pending is not one (hyper tries the same bytes
    /// again, and they are the service's).
    fn went_through<T>(&mut self, handed: u64, buf: &[u8], written: &Poll<io::Result<T>>) {
        if let Poll::Ready(Ok(_)) = written {
            if buf.starts_with(b"HTTP/1.1 101 ") {
                self.told = Told::Off;
            } else if buf != CONTINUE {
                // hyper's `100 Continue` goes out before the answer it announces.
                self.handed_at_last_write = handed;
            }
        }
    }
}

/// The heads of hyper's answers to a head it cannot read, up to their `date` field: hyper
/// writes the status line, then `connection: close` (the connection ends), then the
/// implicit `content-length: 0`. An answer of the service's has fields of its own first (a
/// proxied answer carries the local service's `content-length`, `date` or more), so its
/// bytes differ even when it is a bare 400 on a closing connection.
const HYPER_REFUSALS: [(u16, &[u8]); 3] = [
    (
        400,
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
    ),
    (
        414,
        b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\n",
    ),
    (
        431,
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n",
    ),
];

/// Length of hyper's `date` field line: `date: ` and an IMF-fixdate of 29 characters.
const DATE_LINE: usize = "date: ".len() + 29 + 2;

/// The longest of hyper's answers (the 431, dated): a longer write, such as any body
/// chunk, is never one, and costs one comparison.
const LONGEST_REFUSAL: usize = HYPER_REFUSALS[2].1.len() + DATE_LINE + 2;

/// The status of `buf` when it is exactly what hyper writes for a head it cannot read.
fn hyper_refusal(buf: &[u8]) -> Option<u16> {
    if buf.len() > LONGEST_REFUSAL {
        return None;
    }
    let (status, head) = HYPER_REFUSALS.iter().find(|(_, h)| buf.starts_with(h))?;
    let rest = &buf[head.len()..];
    let dated =
        rest.len() == DATE_LINE + 2 && rest.starts_with(b"date: ") && rest.ends_with(b"\r\n\r\n");
    (rest == b"\r\n" || dated).then_some(*status)
}

/// What hyper writes itself when a request expects `100-continue`: not an answer.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<S: AsyncRead + AsyncWrite + Unpin, P: FnMut(u16) -> Vec<u8> + Unpin> ToldWhy<S, P> {
    /// Writes what is left of the page.
    fn poll_page(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Told::Writing(page, at) = &mut self.told {
            if *at == page.len() {
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &page[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and drops what the client still sends, within the linger bounds.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Told::Lingering(until, left) = &mut self.told else {
            return Poll::Ready(());
        };
        loop {
            if until.as_mut().poll(cx).is_ready() {
                break;
            }
            let mut scratch = [0u8; 4096];
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                    *left = left.saturating_sub(read.filled().len() as u64);
                    if *left == 0 {
                        break;
                    }
                }
                Poll::Ready(_) => break,
            }
        }
        self.told = Told::Done;
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin, P: Unpin> AsyncRead for ToldWhy<S, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S, P> AsyncWrite for ToldWhy<S, P>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: FnMut(u16) -> Vec<u8> + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.told {
            Told::Off => return Pin::new(&mut this.inner).poll_write(cx, buf),
            // After its refusal hyper writes nothing more; were it to, the bytes would
            // follow a page that says how long it is, so they go nowhere.
            Told::Writing(..) | Told::Lingering(..) | Told::Done => {
                return Poll::Ready(Ok(buf.len()))
            }
            Told::Not => {}
        }
        if this.takes_the_place_of(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        let handed = this.answering.handed();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.went_through(handed, buf, &written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        match this.told {
            Told::Off => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            Told::Writing(..) | Told::Lingering(..) | Told::Done => return Poll::Ready(Ok(total)),
            Told::Not => {}
        }
        // hyper's refusal is a head alone: one piece.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if first.len() == total && this.takes_the_place_of(first) {
            return Poll::Ready(Ok(total));
        }
        let handed = this.answering.handed();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.went_through(handed, first, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_page(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Told::Writing(..) = this.told {
            std::task::ready!(this.poll_page(cx))?;
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.told = Told::Lingering(Box::pin(tokio::time::sleep(LINGER)), LINGER_BYTES);
        }
        if let Told::Lingering(..) = this.told {
            std::task::ready!(this.poll_linger(cx));
            return Poll::Ready(Ok(()));
        }
        if let Told::Done = this.told {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor::pages::full;
    use bytes::Bytes;
    use hyper::service::service_fn;
    use hyper::{Request, StatusCode};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn page(status: u16) -> Vec<u8> {
        let body = format!("why {status}");
        format!(
            "HTTP/1.1 {status} Refused\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A real hyper server behind `ToldWhy` on one end of a duplex; its service answers
    /// `/empty400` with a bare 400 of its own, anything else 200 "ok".
    fn serve(max_head: usize) -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let answering = Answering::default();
            let counted = answering.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                counted.begin();
                async move {
                    if req.uri().path() == "/upload400" {
                        // Reading the body makes hyper send `100 Continue` first.
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        let mut r = hyper::Response::new(full(Bytes::new()));
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        return Ok::<_, Infallible>(r);
                    }
                    let resp = if req.uri().path() == "/empty400" {
                        let mut r = hyper::Response::new(full(Bytes::new()));
                        *r.status_mut() = StatusCode::BAD_REQUEST;
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        r
                    } else {
                        hyper::Response::new(full("ok"))
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = TokioIo::new(ToldWhy::new(server, answering, page));
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(max_head)
                .serve_connection(io, service)
                .await;
        });
        client
    }

    async fn exchange(sent: &[u8], max_head: usize) -> String {
        let mut client = serve(max_head);
        client.write_all(sent).await.expect("write");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn heads_hyper_cannot_read_get_the_page_instead_of_a_bare_status() {
        for (sent, status) in [
            (&b"GARBAGE\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
            (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                400,
            ),
        ] {
            let got = exchange(sent, 8192).await;
            assert_eq!(
                got,
                String::from_utf8(page(status)).expect("utf-8"),
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
        let cookie = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
            "c".repeat(20_000)
        );
        assert_eq!(
            exchange(cookie.as_bytes(), 8192).await,
            "HTTP/1.1 431 Refused\r\ncontent-length: 7\r\nconnection: close\r\n\r\nwhy 431"
        );
    }

    #[tokio::test]
    async fn a_bad_head_after_good_requests_gets_the_page_and_answers_pass_untouched() {
        let got = exchange(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n",
            8192,
        )
        .await;
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
        assert!(got.ends_with("\r\n\r\nwhy 400"), "{got}");
        // The service's own bare 400 (with `connection: close`) is not taken for hyper's.
        let got = exchange(b"GET /empty400 HTTP/1.1\r\nHost: x\r\n\r\n", 8192).await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(!got.contains("why"), "{got}");
        // Nor after hyper's own `100 Continue`, which went out alone: the client waited
        // for it before sending the body.
        let mut client = serve(8192);
        client
            .write_all(b"POST /upload400 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .await
            .expect("write");
        let mut went_on = vec![0u8; CONTINUE.len()];
        client.read_exact(&mut went_on).await.expect("100 Continue");
        assert_eq!(went_on, CONTINUE);
        client.write_all(b"hi").await.expect("body");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(!got.contains("why"), "{got}");
    }

    /// Takes nothing at its first write, everything after.
    struct PendingOnce {
        pended: bool,
        out: Vec<u8>,
    }

    impl AsyncRead for PendingOnce {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for PendingOnce {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if !self.pended {
                self.pended = true;
                return Poll::Pending;
            }
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_services_answer_tried_again_after_a_full_socket_is_still_the_services() {
        let answering = Answering::default();
        let inner = PendingOnce {
            pended: false,
            out: Vec::new(),
        };
        let mut told = ToldWhy::new(inner, answering.clone(), page);
        let services =
            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        answering.begin();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut told)
            .poll_write(&mut cx, services)
            .is_pending());
        assert!(matches!(
            Pin::new(&mut told).poll_write(&mut cx, services),
            Poll::Ready(Ok(n)) if n == services.len()
        ));
        assert_eq!(told.inner.out, services);
        // hyper's own answer to a bad head after it is taken.
        let hypers = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let _ = Pin::new(&mut told).poll_write(&mut cx, hypers);
        let _ = Pin::new(&mut told).poll_flush(&mut cx);
        assert!(told.inner.out.ends_with(b"why 400"));
    }

    #[test]
    fn only_hypers_exact_refusal_is_recognised() {
        let date = "date: Mon, 07 Dec 2026 07:33:59 GMT\r\n";
        let hyper = format!("HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n");
        assert_eq!(hyper_refusal(hyper.as_bytes()), Some(431));
        let undated = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_refusal(undated.as_bytes()), Some(400));
        for other in [
            // Another status, a body, another field, a head cut short.
            format!(
                "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n"
            ),
            format!(
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\nx"
            ),
            format!("HTTP/1.1 400 Bad Request\r\nserver: x\r\ncontent-length: 0\r\n{date}\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n{date}\r\n"),
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n".to_string(),
            // A service's bare 400 on a closing connection: its own length comes first.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{date}connection: close\r\n\r\n"
            ),
            // One on a kept-alive connection.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{date}\r\n"),
        ] {
            assert_eq!(hyper_refusal(other.as_bytes()), None, "{other}");
        }
    }
}
