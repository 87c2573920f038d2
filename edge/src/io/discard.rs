//! Reading and dropping what a peer still sends: the rest of a finished channel, what a
//! refused client sends after the edge's last word. Such waits are many at once under a
//! flood (one per connection the edge has finished with), so a waiting one holds no read
//! buffer: the first read takes a few bytes into an empty `Vec`, and a buffer of
//! [`READ_SIZE`] is made only once data flows.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The read buffer once data flows.
pub const READ_SIZE: usize = 16 * 1024;

/// How a discard ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Discarded {
    /// The stream ended (EOF, or an error).
    End,
    /// More than the limit came.
    Limit,
}

/// Reads and drops from `stream` until it ends or more than `limit` bytes came, telling
/// `each` the size of every read.
pub async fn discard<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: u64,
    mut each: impl FnMut(usize),
) -> Discarded {
    let mut buf = Vec::new();
    let mut read = 0u64;
    loop {
        buf.clear();
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Discarded::End,
            Ok(n) => {
                each(n);
                read += n as u64;
                if read > limit {
                    return Discarded::Limit;
                }
                if buf.capacity() < READ_SIZE {
                    buf = Vec::with_capacity(READ_SIZE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_to_the_end_or_past_the_limit_and_counts_every_byte() {
        let (mut reader, mut writer) = tokio::io::duplex(1 << 20);
        writer.write_all(&[7u8; 100_000]).await.unwrap();
        drop(writer);
        let mut counted = 0;
        let ended = discard(&mut reader, u64::MAX, |n| counted += n).await;
        assert_eq!((ended, counted), (Discarded::End, 100_000));

        let (mut reader, mut writer) = tokio::io::duplex(1 << 20);
        writer.write_all(&[7u8; 100_000]).await.unwrap();
        let mut counted = 0;
        let ended = discard(&mut reader, 50_000, |n| counted += n).await;
        assert_eq!(ended, Discarded::Limit);
        assert!(
            (50_001..=50_000 + READ_SIZE).contains(&counted),
            "stops at the first read past the limit: {counted}"
        );
    }

    #[test]
    fn a_waiting_discard_holds_no_buffer() {
        let (mut reader, _writer) = tokio::io::duplex(64);
        let waiting = discard(&mut reader, 0, |_| {});
        assert!(
            std::mem::size_of_val(&waiting) < 512,
            "{} bytes",
            std::mem::size_of_val(&waiting)
        );
    }
}
