//! Carrying bytes both ways between two streams until either ends, or until neither has
//! moved a byte for a while.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a carried connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// One side closed (or failed) and the other was told.
    Ended,
    /// No byte moved either way for the idle limit.
    Idle,
}

/// Copies both ways like `tokio::io::copy_bidirectional`; with `idle`, gives up once no
/// byte moved either way for that long.
pub async fn carry_until_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<Duration>,
) -> io::Result<Carried>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        tokio::io::copy_bidirectional(a, b).await?;
        return Ok(Carried::Ended);
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Stamped::new(a, start, last.clone());
    let mut b = Stamped::new(b, start, last.clone());
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let since_start = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since_start + idle;
        tokio::select! {
            r = &mut copy => return r.map(|_| Carried::Ended),
            _ = tokio::time::sleep_until(deadline) => {
                // Bytes may have moved while this slept: only a full quiet spell ends it.
                let moved = Duration::from_millis(last.load(Ordering::Relaxed));
                if moved == since_start {
                    return Ok(Carried::Idle);
                }
            }
        }
    }
}

/// A stream that notes when it last moved a byte, as milliseconds since `start`.
struct Stamped<'a, S> {
    inner: &'a mut S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<'a, S> Stamped<'a, S> {
    fn new(inner: &'a mut S, start: Instant, last: Arc<AtomicU64>) -> Self {
        Stamped { inner, start, last }
    }

    fn stamp(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.stamp();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_let_go_and_a_busy_one_is_not() {
        let (mut visitor, mut a) = tokio::io::duplex(1024);
        let (mut b, mut service) = tokio::io::duplex(1024);
        let carrying = tokio::spawn(async move {
            carry_until_idle(&mut a, &mut b, Some(Duration::from_secs(10))).await
        });
        // Traffic every 6 s keeps it open past the 10 s limit.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            visitor.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            service.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        }
        assert!(!carrying.is_finished(), "busy for 30 s, still carried");
        // Then 10 quiet seconds end it.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let ended = carrying.await.unwrap().unwrap();
        assert_eq!(ended, Carried::Idle);
    }

    #[tokio::test]
    async fn without_a_limit_it_ends_when_both_sides_close() {
        let (visitor, mut a) = tokio::io::duplex(1024);
        let (mut b, service) = tokio::io::duplex(1024);
        drop(visitor);
        drop(service);
        let ended = carry_until_idle(&mut a, &mut b, None).await.unwrap();
        assert_eq!(ended, Carried::Ended);
    }
}
