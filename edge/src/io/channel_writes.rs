//! Writes to an SSH channel that hand a large body chunk over as it is.
//!
//! hyper copies every body chunk behind the head into one buffer ("flatten") when its
//! stream says it does not take vectored writes, and russh's channel stream says so: each
//! byte an edge sends over a channel was copied once more than it needed to be (on the
//! holder, about 70 ms of CPU per GB relayed; docs/benchmarks.md). [`ChannelWrites`] says it
//! does take vectored writes, so hyper keeps the head and the body chunks apart, and then:
//!
//! - a first piece of [`DIRECT`] bytes or more (a body chunk) goes to the channel as it is;
//! - smaller pieces (a head, a small answer, chunked encoding's size lines) are copied
//!   together, up to [`GATHER`] bytes, into one write, so one SSH packet still carries a
//!   small answer whole.
//!
//! The channel copies what it is given into its packet anyway; what goes is hyper's copy.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A first piece at least this large is written as it is.
pub const DIRECT: usize = 4 * 1024;
/// Most bytes copied together into one write.
pub const GATHER: usize = 16 * 1024;

/// `inner` (a channel stream), taking vectored writes (see the module's doc).
pub struct ChannelWrites<S> {
    inner: S,
    /// Where small pieces are gathered: kept between writes (a small answer per request
    /// costs no allocation), given back when a gather needed more than [`DIRECT`] bytes.
    gathered: Vec<u8>,
}

impl<S> ChannelWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> ChannelWrites<S> {
        ChannelWrites {
            inner,
            gathered: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChannelWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChannelWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut pieces = bufs.iter().filter(|b| !b.is_empty());
        let Some(first) = pieces.next() else {
            return Poll::Ready(Ok(0));
        };
        let mut rest = pieces.peekable();
        if first.len() >= DIRECT || rest.peek().is_none() {
            return Pin::new(&mut this.inner).poll_write(cx, first);
        }
        let gathered = &mut this.gathered;
        gathered.clear();
        for piece in std::iter::once(first).chain(rest) {
            let room = GATHER - gathered.len();
            if room == 0 {
                break;
            }
            gathered.extend_from_slice(&piece[..piece.len().min(room)]);
        }
        // What the channel takes is a prefix of `gathered`, so of `bufs` in order.
        let written = Pin::new(&mut this.inner).poll_write(cx, gathered);
        if gathered.capacity() > DIRECT {
            *gathered = Vec::new();
        }
        written
    }

    /// Yes: that keeps hyper from flattening (see the module's doc).
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncWriteExt;

    /// Records each write (its address and bytes), taking at most `limit` bytes per call;
    /// it takes no vectored writes, as russh's channel stream. Reads give `incoming`.
    struct Channel {
        writes: Vec<(usize, Vec<u8>)>,
        limit: usize,
        incoming: std::io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for Channel {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.incoming).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Channel {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.writes.push((buf.as_ptr() as usize, buf[..n].to_vec()));
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn channel(limit: usize) -> ChannelWrites<Channel> {
        ChannelWrites::new(Channel {
            writes: Vec::new(),
            limit,
            incoming: Default::default(),
        })
    }

    #[tokio::test]
    async fn a_large_piece_goes_to_the_channel_as_it_is() {
        let mut w = channel(usize::MAX);
        let body = vec![7u8; 64 * 1024];
        let n = w
            .write_vectored(&[
                IoSlice::new(&[]),
                IoSlice::new(&body),
                IoSlice::new(b"\r\n"),
            ])
            .await
            .unwrap();
        assert_eq!(n, body.len());
        let (at, bytes) = &w.inner.writes[0];
        assert_eq!(*at, body.as_ptr() as usize, "the piece was copied");
        assert_eq!(bytes, &body);
    }

    #[tokio::test]
    async fn small_pieces_leave_together_up_to_the_gather_limit() {
        let mut w = channel(usize::MAX);
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n".to_vec();
        let body = vec![1u8; 70_000];
        let n = w
            .write_vectored(&[IoSlice::new(&head), IoSlice::new(&body)])
            .await
            .unwrap();
        assert_eq!(n, GATHER);
        let mut expected = head.clone();
        expected.extend_from_slice(&body[..GATHER - head.len()]);
        assert_eq!(w.inner.writes.len(), 1);
        assert_eq!(w.inner.writes[0].1, expected);

        let small = [
            IoSlice::new(b"5\r\n"),
            IoSlice::new(b"hello"),
            IoSlice::new(b"\r\n"),
        ];
        assert_eq!(w.write_vectored(&small).await.unwrap(), 10);
        assert_eq!(w.inner.writes[1].1, b"5\r\nhello\r\n");
    }

    #[tokio::test]
    async fn a_short_write_of_gathered_pieces_counts_what_the_channel_took() {
        let mut w = channel(4);
        let n = w
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cdef")])
            .await
            .unwrap();
        assert_eq!(n, 4);
        assert_eq!(w.inner.writes[0].1, b"abcd");
    }

    #[tokio::test]
    async fn nothing_to_write_writes_nothing() {
        let mut w = channel(usize::MAX);
        let n = w
            .write_vectored(&[IoSlice::new(&[]), IoSlice::new(&[])])
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert!(w.inner.writes.is_empty());
    }

    /// Through hyper: a streamed answer reaches the channel whole, and every body chunk but
    /// the first (which leaves partly gathered with the head) reaches it from hyper's own
    /// `Bytes`, uncopied.
    #[tokio::test]
    async fn hyper_hands_body_chunks_over_uncopied() {
        let chunks: Vec<Bytes> = (0..8u8).map(|i| Bytes::from(vec![i; 32 * 1024])).collect();
        let served = chunks.clone();
        let service = hyper::service::service_fn(move |_req| {
            let frames = served
                .clone()
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c)));
            let body = StreamBody::new(futures::stream::iter(frames)).boxed();
            let answer = hyper::Response::builder()
                .header("content-length", 8 * 32 * 1024)
                .body(body);
            async move { answer }
        });
        let mut io = channel(usize::MAX);
        io.inner.incoming = std::io::Cursor::new(
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        );
        let mut io = TokioIo::new(io);
        hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(&mut io, service)
            .await
            .unwrap();
        let writes = &io.inner().inner.writes;
        let answer: Vec<u8> = writes.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&answer[body_at..], &expected[..]);
        for chunk in &chunks[1..] {
            let at = chunk.as_ptr() as usize;
            assert!(
                writes.iter().any(|(w, _)| *w == at),
                "a body chunk was copied before the channel"
            );
        }
    }
}
