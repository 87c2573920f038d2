//! A read buffer for the SSH connection that grows while data streams in and is released
//! when the connection goes quiet.
//!
//! russh reads each packet with two exact reads (length, then body) straight from the
//! socket: two `recv` calls per 32 KiB packet on a bulk transfer. A buffer in front of the
//! socket turns that into one `recv` per many packets, but a fixed 128 KiB buffer per
//! session nearly doubled the memory of an idle tunnel (docs/benchmarks.md). This one starts
//! small, doubles while reads fill it, halves while reads stay small, and is freed when the
//! socket has nothing to read and the buffer is back at its smallest size.
//!
//! Two more read wrappers live here: [`Coalescing`] for tunnel channels and [`Prefixed`],
//! which puts bytes read ahead (to route a visitor) back in front of a stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Smallest read size, and the size below which the buffer is freed when idle.
pub const MIN_READ: usize = 4 * 1024;
/// Largest read size.
pub const MAX_READ: usize = 256 * 1024;

/// `inner` with an adaptive read buffer; writes pass straight through.
pub struct AdaptiveReader<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    want: usize,
}

impl<S> AdaptiveReader<S> {
    /// Wraps `inner`; nothing is allocated until the first read.
    pub fn new(inner: S) -> AdaptiveReader<S> {
        AdaptiveReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            want: MIN_READ,
        }
    }

    /// Bytes currently allocated for buffering.
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// The size of the next read from the socket.
    pub fn read_size(&self) -> usize {
        self.want
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AdaptiveReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.end {
            // Nothing buffered. A caller asking for at least a whole read gets it directly.
            if out.remaining() >= this.want {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.len() < this.want {
                this.buf = vec![0; this.want];
            }
            let want = this.want;
            let mut rb = ReadBuf::new(&mut this.buf[..want]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if !this.buf.is_empty()
                        && (this.want == MIN_READ || this.buf.len() > 4 * this.want)
                    {
                        // Quiet, or far bigger than reads need lately: give the memory
                        // back (the next read allocates what it needs).
                        this.buf = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    this.pos = 0;
                    this.end = n;
                    if n == want {
                        this.want = (want * 2).min(MAX_READ);
                    } else if n < want / 8 {
                        this.want = (want / 2).max(MIN_READ);
                    }
                    if n == 0 {
                        // End of stream.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Hands a reader everything that is already available, not one SSH message per read.
///
/// A tunnel channel delivers one SSH packet (at most 32 KiB) per read; hyper then makes
/// one body chunk, one wake-up of the visitor's task and one socket write of each. Reading
/// on while the channel has more queued lets one read carry many packets.
pub struct Coalescing<S> {
    inner: S,
    error: Option<io::Error>,
}

impl<S> Coalescing<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Coalescing<S> {
        Coalescing { inner, error: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let start = out.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, out) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if out.filled().len() == start {
            return Poll::Ready(Ok(())); // end of stream
        }
        while out.remaining() > 0 {
            let before = out.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, out) {
                // More was queued: keep going.
                Poll::Ready(Ok(())) if out.filled().len() > before => {}
                // End of stream (the next read reports it again) or nothing queued.
                Poll::Ready(Ok(())) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    // Deliver what was read now, the error on the next read.
                    this.error = Some(e);
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// `inner` with bytes already taken from it put back in front: reads return `prefix`
/// first, then whatever `inner` yields.
pub struct Prefixed<S> {
    inner: S,
    prefix: Vec<u8>,
    pos: usize,
}

impl<S> Prefixed<S> {
    /// Wraps `inner`, to be read as `prefix` followed by `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            inner,
            prefix,
            pos: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = out.remaining().min(this.prefix.len() - this.pos);
            out.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

/// Writes go straight to the wrapped stream: these wrappers only change how it is read.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

write_through!(AdaptiveReader);
write_through!(Coalescing);
write_through!(Prefixed);
// For the other read wrappers of `io` (`receive_window::GrantedReads`).
pub(crate) use write_through;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_prefix_is_read_before_the_stream_and_writes_pass_through() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b" world").await.expect("write");
        drop(a);
        let mut r = Prefixed::new(b"hello".to_vec(), b);
        let mut first = [0u8; 3];
        r.read_exact(&mut first).await.expect("read");
        assert_eq!(&first, b"hel");
        let mut rest = String::new();
        r.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "lo world");

        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = Prefixed::new(Vec::new(), a);
        w.write_all(b"out").await.expect("write");
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"out");
    }

    #[tokio::test]
    async fn bytes_come_through_unchanged_in_small_and_exact_reads() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.expect("write");
        });
        let mut r = AdaptiveReader::new(b);
        let mut got = Vec::new();
        // Alternate a 4-byte length read and a larger body read, as russh does.
        while got.len() < data.len() {
            let mut len = [0u8; 4];
            let take = (data.len() - got.len()).min(4);
            r.read_exact(&mut len[..take]).await.expect("len");
            got.extend_from_slice(&len[..take]);
            let body = (data.len() - got.len()).min(32 * 1024 + 13);
            let mut buf = vec![0u8; body];
            r.read_exact(&mut buf).await.expect("body");
            got.extend_from_slice(&buf);
        }
        writer.await.expect("writer");
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn grows_while_reads_fill_it_and_frees_the_buffer_when_quiet() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut r = AdaptiveReader::new(b);
        a.write_all(&vec![1u8; 512 * 1024]).await.expect("write");
        let mut small = [0u8; 4];
        let mut total = 0;
        while total < 512 * 1024 {
            total += r.read(&mut small).await.expect("read");
        }
        assert!(r.read_size() > MIN_READ, "grew: {}", r.read_size());
        // Small messages only: the read size comes back down.
        for _ in 0..20 {
            a.write_all(&[2u8; 4]).await.expect("write");
            r.read_exact(&mut small).await.expect("read");
        }
        assert_eq!(r.read_size(), MIN_READ);
        // Nothing to read: the buffer is given back.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut rb = ReadBuf::new(&mut small);
        assert!(Pin::new(&mut r).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(r.allocated(), 0);
        // End of stream reads as zero bytes.
        drop(a);
        assert_eq!(r.read(&mut small).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn coalescing_reads_return_everything_queued_and_keep_eof() {
        // A source that yields queued chunks one per read, a Pending, then end of stream.
        struct Chunks(std::collections::VecDeque<Option<Vec<u8>>>);
        impl AsyncRead for Chunks {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                out: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let queue = &mut self.get_mut().0;
                match queue.pop_front() {
                    Some(Some(mut c)) => {
                        let n = c.len().min(out.remaining());
                        out.put_slice(&c[..n]);
                        if n < c.len() {
                            queue.push_front(Some(c.split_off(n)));
                        }
                        Poll::Ready(Ok(()))
                    }
                    Some(None) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    None => Poll::Ready(Ok(())),
                }
            }
        }
        let chunks = |v: Vec<Option<Vec<u8>>>| Chunks(v.into_iter().collect());
        let mut r = Coalescing::new(chunks(vec![
            Some(vec![1; 10]),
            Some(vec![2; 10]),
            None,
            Some(vec![3; 5]),
        ]));
        let mut buf = [0u8; 64];
        // Both queued chunks in one read; the Pending after them ends it.
        assert_eq!(r.read(&mut buf).await.expect("read"), 20);
        assert_eq!(&buf[..20], &[[1u8; 10], [2u8; 10]].concat()[..]);
        assert_eq!(r.read(&mut buf).await.expect("read"), 5);
        assert_eq!(r.read(&mut buf).await.expect("end"), 0);
        assert_eq!(r.read(&mut buf).await.expect("end again"), 0);
        // A small buffer is filled exactly.
        let mut r = Coalescing::new(chunks(vec![Some(vec![7; 10])]));
        let mut small = [0u8; 4];
        assert_eq!(r.read(&mut small).await.expect("read"), 4);
    }
}
