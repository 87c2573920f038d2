//! A bound on how long a visitor may leave the edge's writes to it waiting.
//!
//! A visitor that stops reading fills its socket's buffers, and the edge's write to it waits.
//! Behind that write, the edge stops reading the tunnel channel that carries the answer. Its
//! window is granted as it is read (`io::receive_window`), so the client stops sending on it
//! and the tunnel's other visitors go on; but the channel, the client's connection to its
//! local service and up to the channel's window at the edge stay for as long as the visitor
//! does (and a client sending tiny packets can still fill the channel's queue, which stops
//! russh reading the whole session: docs/edge.md, "Known limits"). [`WriteStall`] fails a
//! write that made no progress for its limit (`visitor_write_stall_seconds`, like nginx's
//! `send_timeout`), which closes the visitor's connection and lets the channel go. A slow
//! reader is not stalled: any byte taken starts the count again.

use prometheus::IntCounter;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A visitor's stream whose writes fail after waiting `limit` without progress.
pub struct WriteStall<S> {
    inner: S,
    limit: Option<Duration>,
    /// Armed while a write waits; reset (not reallocated) for each wait.
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// `nearhop_edge_visitor_write_stalls_total`.
    stalls: IntCounter,
}

impl<S> WriteStall<S> {
    /// Wraps `inner`; `limit` `None`: writes may wait for ever. A stall is counted in
    /// `stalls`.
    pub fn new(inner: S, limit: Option<Duration>, stalls: IntCounter) -> WriteStall<S> {
        WriteStall {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
            stalls,
        }
    }

    /// After the inner write answered `poll`: progress disarms the timer; a wait arms it
    /// (once) and fails when it has run out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit else {
            return poll;
        };
        if poll.is_ready() {
            self.armed = false;
            return poll;
        }
        if !self.armed {
            self.timer.as_mut().reset(Instant::now() + limit);
            self.armed = true;
        }
        ready!(self.timer.as_mut().poll(cx));
        self.armed = false;
        self.stalls.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the visitor took nothing for {} s; its connection is closed",
                limit.as_secs()
            ),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_starts_the_count_again() {
        // A pipe with 1 KiB of room: the reader side decides when writes may go on.
        let (near, mut far) = tokio::io::duplex(1024);
        let stalls = IntCounter::new("stalls", "test").unwrap();
        let mut guarded = WriteStall::new(near, Some(Duration::from_secs(20)), stalls.clone());
        guarded.write_all(&[1u8; 1024]).await.unwrap();
        // Full: a write waits. 19 s later the reader takes some; the write goes on.
        let reader = async {
            tokio::time::sleep(Duration::from_secs(19)).await;
            let mut got = [0u8; 512];
            far.read_exact(&mut got).await.unwrap();
            far
        };
        let (written, mut far) = tokio::join!(guarded.write_all(&[2u8; 512]), reader);
        written.unwrap();
        // Full again, and nobody reads: the write fails after the limit, saying why.
        let started = Instant::now();
        let e = guarded.write_all(&[3u8; 512]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("took nothing for 20 s"), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        assert_eq!(stalls.get(), 1);
        let mut rest = Vec::new();
        drop(guarded);
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 1024, "what was written before arrived");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_a_write_waits_as_long_as_it_takes() {
        let (near, mut far) = tokio::io::duplex(16);
        let stalls = IntCounter::new("stalls", "test").unwrap();
        let mut guarded = WriteStall::new(near, None, stalls.clone());
        let reader = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let mut got = [0u8; 32];
            far.read_exact(&mut got).await.unwrap();
        };
        let (written, ()) = tokio::join!(guarded.write_all(&[0u8; 32]), reader);
        written.unwrap();
        assert_eq!(stalls.get(), 0);
    }
}
