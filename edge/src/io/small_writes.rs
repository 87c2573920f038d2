//! Gathers an HTTP/2 connection's small writes into few TLS records and few system calls.
//!
//! The h2 crate copies a small DATA frame into its frame buffer (and so writes many answers
//! in one go) only when its stream does *not* do vectored writes; over a vectored stream
//! (rustls) it writes every DATA frame above 256 bytes on its own, which for small answers
//! means one TLS record and one `writev` per answer. [`GatheredWrites`] says it is not
//! vectored, so h2 gathers small frames, and holds a small write (a large frame's 9-byte
//! header) until the next write, so the header and its payload still leave as one vectored
//! write. Held bytes are always written out on flush and shutdown.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes shorter than this are held for the next write.
const HOLD_BELOW: usize = 4 * 1024;

/// At most this many bytes are held.
const HOLD_AT_MOST: usize = 16 * 1024;

/// A stream whose small writes wait for the next write or flush (see the module's doc).
pub struct GatheredWrites<S> {
    inner: S,
    held: Vec<u8>,
}

impl<S> GatheredWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> GatheredWrites<S> {
        GatheredWrites {
            inner,
            held: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> GatheredWrites<S> {
    /// Writes out what is held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatheredWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() < HOLD_BELOW && this.held.len() + buf.len() <= HOLD_AT_MOST {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        while !this.held.is_empty() {
            let both = [IoSlice::new(&this.held), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &both))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let of_buf = n - this.held.len();
            this.held.clear();
            if of_buf > 0 {
                return Poll::Ready(Ok(of_buf));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    /// Not vectored: that is what makes h2 gather small frames (see the module's doc).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records each write the inner stream gets, accepting at most `limit` bytes per call.
    struct Recorder {
        writes: Vec<Vec<u8>>,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.writes.push(all[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn recorder(limit: usize) -> GatheredWrites<Recorder> {
        GatheredWrites::new(Recorder {
            writes: Vec::new(),
            limit,
        })
    }

    #[tokio::test]
    async fn small_writes_leave_together_on_flush() {
        let mut s = recorder(usize::MAX);
        s.write_all(b"one ").await.unwrap();
        s.write_all(b"two ").await.unwrap();
        s.write_all(b"three").await.unwrap();
        assert!(
            s.inner.writes.is_empty(),
            "nothing may leave before the flush"
        );
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes, vec![b"one two three".to_vec()]);
    }

    #[tokio::test]
    async fn a_frame_header_leaves_with_its_payload() {
        let mut s = recorder(usize::MAX);
        let payload = vec![7u8; 16 * 1024];
        s.write_all(b"header!!!").await.unwrap();
        s.write_all(&payload).await.unwrap();
        let mut expected = b"header!!!".to_vec();
        expected.extend_from_slice(&payload);
        assert_eq!(s.inner.writes, vec![expected], "one write for both");
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.len(), 1);
    }

    #[tokio::test]
    async fn partial_writes_lose_and_repeat_nothing() {
        let mut s = recorder(1000);
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(b"header").await.unwrap();
        s.write_all(&payload).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.shutdown().await.unwrap();
        let got: Vec<u8> = s.inner.writes.concat();
        let mut expected = b"header".to_vec();
        expected.extend_from_slice(&payload);
        expected.extend_from_slice(b"tail");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn held_bytes_never_exceed_the_cap() {
        let mut s = recorder(usize::MAX);
        let chunk = vec![1u8; HOLD_BELOW - 1];
        for _ in 0..10 {
            s.write_all(&chunk).await.unwrap();
            assert!(s.held.len() <= HOLD_AT_MOST);
        }
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.concat().len(), 10 * chunk.len());
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = GatheredWrites::new(a);
        b.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(!s.is_write_vectored());
    }
}
