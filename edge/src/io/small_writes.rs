//! Gathers an HTTP/2 connection's writes into few TLS records and few system calls.
//!
//! Two habits of the h2 crate make many small writes out of what could be a few large ones:
//!
//! - It copies a small DATA frame into its frame buffer (and so writes many answers in one
//!   go) only when its stream does *not* do vectored writes; over a vectored stream (rustls)
//!   it writes every DATA frame above 256 bytes on its own. [`GatheredWrites`] says it is
//!   not vectored.
//! - It flushes its stream after every large DATA frame, and tokio-rustls writes each TLS
//!   record to the socket as soon as it is sealed: a download left in one 16 KiB `writev`
//!   per frame, four times the system calls (and TCP segments) per byte of HTTP/1.1.
//!
//! So every write is held here, up to [`BATCH`] bytes, and a flush is *put off* once: it
//! returns at once and wakes the task, and the next flush or read with no write in between
//! (h2 flushes and reads each time the task runs) writes out what is held and flushes for
//! real. What h2 writes in one run of its task thus leaves in one go, before the task
//! sleeps, and nothing waits longer than the task's next turn. Held bytes are also written
//! out on shutdown, and before more than [`BATCH`] would be held.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held: four full TLS records' worth, which rustls's 64 KiB send buffer takes
/// in one go and tokio-rustls writes in one `writev`. With the record-sized DATA frames of
/// `visitor::http2` (16,384 bytes with their headers), four frames exactly.
pub const BATCH: usize = 64 * 1024;

/// The held buffer is kept between batches only after a batch at least this large (a
/// download in progress); otherwise it is given back, so an idle connection holds none.
const KEEP_AFTER: usize = BATCH / 2;

/// A stream whose writes wait for a flush, and whose first flush waits for the task's next
/// turn (see the module's doc).
pub struct GatheredWrites<S> {
    inner: S,
    held: Vec<u8>,
    /// A flush was put off: the next flush or read with no write in between does it.
    put_off: bool,
}

impl<S> GatheredWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> GatheredWrites<S> {
        GatheredWrites {
            inner,
            held: Vec::new(),
            put_off: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> GatheredWrites<S> {
    /// Writes out what is held (keeping what `inner` did not take when it is not ready).
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut done = 0;
        let result = loop {
            if done == self.held.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        if done == self.held.len() && done < KEEP_AFTER {
            self.held = Vec::new();
        } else {
            self.held.drain(..done);
        }
        result
    }

    /// Writes out what is held and flushes `inner`.
    fn poll_flush_now(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        self.put_off = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GatheredWrites<S> {
    /// Does a flush that was put off (if the socket takes it now), then reads.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.put_off {
            // Not ready: the socket wakes the task when it is, and the next flush or read
            // tries again.
            if let Poll::Ready(Err(e)) = this.poll_flush_now(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.held.is_empty() && this.held.len() + buf.len() > BATCH {
            ready!(this.poll_write_held(cx))?;
        }
        if buf.len() >= BATCH {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.held.capacity() == 0 {
            this.held.reserve_exact(BATCH);
        }
        this.held.extend_from_slice(buf);
        this.put_off = false;
        Poll::Ready(Ok(buf.len()))
    }

    /// Not vectored: that is what makes h2 gather small frames (see the module's doc).
    fn is_write_vectored(&self) -> bool {
        false
    }

    /// The first flush after a write is put off to the task's next turn (see the module's
    /// doc); the next one with no write in between is done.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() && !this.put_off {
            this.put_off = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        this.poll_flush_now(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        this.put_off = false;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
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

    /// Counts the wake-ups it is asked for.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flushes once by hand, as h2 does in one turn of its task: whether the flush said it
    /// was done, and how many wake-ups it asked for.
    fn flush_once(s: &mut GatheredWrites<Recorder>) -> (bool, usize) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let done = matches!(Pin::new(s).poll_flush(&mut cx), Poll::Ready(Ok(())));
        (done, wakes.0.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn writes_leave_together_on_the_flush_after_the_put_off_one() {
        let mut s = recorder(usize::MAX);
        s.write_all(b"one ").await.unwrap();
        s.write_all(b"two ").await.unwrap();
        assert_eq!(flush_once(&mut s), (true, 1), "put off, and the task woken");
        assert!(
            s.inner.writes.is_empty(),
            "nothing leaves on a put-off flush"
        );
        s.write_all(b"three").await.unwrap();
        assert_eq!(
            flush_once(&mut s),
            (true, 1),
            "a write in between: put off again"
        );
        assert!(s.inner.writes.is_empty());
        assert_eq!(
            flush_once(&mut s),
            (true, 0),
            "the next turn's flush is done"
        );
        assert_eq!(s.inner.writes, vec![b"one two three".to_vec()]);
        assert_eq!(
            flush_once(&mut s),
            (true, 0),
            "nothing held: nothing to put off"
        );
        assert_eq!(s.inner.writes.len(), 1);
    }

    #[tokio::test]
    async fn a_download_leaves_in_batches_of_at_most_the_cap() {
        let mut s = recorder(usize::MAX);
        // h2's large DATA frames: a 9-byte header, then a 16,375-byte payload.
        let mut sent = Vec::new();
        for i in 0..20u8 {
            let header = [i; 9];
            let payload = vec![i; 16 * 1024 - 9];
            s.write_all(&header).await.unwrap();
            s.write_all(&payload).await.unwrap();
            assert!(s.held.len() <= BATCH);
            sent.extend_from_slice(&header);
            sent.extend_from_slice(&payload);
        }
        s.flush().await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.inner.writes.concat(), sent, "every byte, in order");
        assert_eq!(s.inner.writes.len(), 5, "four frames per write");
        assert!(s.inner.writes.iter().all(|w| w.len() == BATCH));
    }

    #[tokio::test]
    async fn a_write_of_a_whole_batch_passes_straight_through() {
        let mut s = recorder(usize::MAX);
        let big = vec![3u8; BATCH];
        s.write_all(&big).await.unwrap();
        assert_eq!(s.inner.writes, vec![big]);
        assert!(s.held.is_empty());
    }

    #[tokio::test]
    async fn partial_writes_lose_and_repeat_nothing() {
        let mut s = recorder(1000);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(b"header").await.unwrap();
        s.write_all(&payload[..10_000]).await.unwrap();
        s.write_all(&payload[10_000..]).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.shutdown().await.unwrap();
        let got: Vec<u8> = s.inner.writes.concat();
        let mut expected = b"header".to_vec();
        expected.extend_from_slice(&payload);
        expected.extend_from_slice(b"tail");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_buffer() {
        let mut s = recorder(usize::MAX);
        s.write_all(&vec![1u8; KEEP_AFTER]).await.unwrap();
        s.flush().await.unwrap();
        s.flush().await.unwrap();
        assert!(s.held.capacity() >= BATCH, "kept while a download runs");
        s.write_all(b"a PING's answer").await.unwrap();
        s.flush().await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.held.capacity(), 0, "given back after a small batch");
    }

    #[tokio::test]
    async fn a_read_does_a_put_off_flush() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut s = GatheredWrites::new(a);
        s.write_all(b"pong").await.unwrap();
        s.flush().await.unwrap(); // put off
        b.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let mut sent = [0u8; 4];
        b.read_exact(&mut sent).await.unwrap();
        assert_eq!(&sent, b"pong", "written out by the read");
        assert!(!s.is_write_vectored());
    }
}
