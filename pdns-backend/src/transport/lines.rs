//! The line protocol of the stream connectors (unix socket and pipe): one JSON request per
//! line, one reply line each, strictly in turn.

use crate::protocol::{Backend, Reply};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// One newline-terminated request read from a stream connector.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A request document (without its newline).
    Doc(Vec<u8>),
    /// A line longer than the limit was read and thrown away; its length.
    TooLong(usize),
    /// The peer closed its side.
    Eof,
}

/// Reads the next non-blank line, keeping at most `max` bytes; a longer line is consumed up
/// to its newline and reported as [`Line::TooLong`], so the stream stays in step.
pub async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut discarded = 0usize;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            if discarded > 0 {
                return Ok(Line::TooLong(discarded));
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(Line::Eof);
            }
            return Ok(Line::Doc(buf));
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if discarded > 0 || buf.len() + chunk.len() > max {
            discarded += buf.len() + chunk.len();
            buf.clear();
        } else {
            buf.extend_from_slice(chunk);
        }
        let used = found.unwrap_or(available.len());
        r.consume(used);
        if found.is_some() {
            if discarded > 0 {
                return Ok(Line::TooLong(discarded));
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
                continue;
            }
            return Ok(Line::Doc(buf));
        }
    }
}

/// Answers request lines until the peer closes its side: the loop of the unix and pipe
/// connectors, `transport` naming which in logs and metrics.
pub async fn serve_stream<R, W>(
    transport: &str,
    rd: &mut R,
    wr: &mut W,
    backend: &Backend,
    max_request: usize,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let reply = match read_request(rd, max_request).await? {
            Line::Doc(doc) => backend.handle_document(transport, &doc),
            Line::TooLong(n) => {
                backend
                    .metrics()
                    .bad_requests
                    .with_label_values(&[transport])
                    .inc();
                tracing::warn!(
                    transport,
                    bytes = n,
                    limit = max_request,
                    "refused an over-long request line"
                );
                Reply::Failure(format!(
                    "request of {n} bytes exceeds the limit of {max_request}"
                ))
            }
            Line::Eof => return Ok(()),
        };
        let mut text = reply.to_json();
        text.push('\n');
        wr.write_all(text.as_bytes()).await?;
        wr.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_blank_lines_skipped_and_long_lines_dropped_in_step() {
        let input = b"{\"a\":1}\n\n\nxxxxxxxxxxxxxxxxxxxxxxxx\n{\"b\":2}".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &input[..]);
        assert_eq!(
            read_request(&mut r, 10).await.ok(),
            Some(Line::Doc(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(read_request(&mut r, 10).await.ok(), Some(Line::TooLong(24)));
        assert_eq!(
            read_request(&mut r, 10).await.ok(),
            Some(Line::Doc(b"{\"b\":2}".to_vec()))
        );
        assert_eq!(read_request(&mut r, 10).await.ok(), Some(Line::Eof));
    }
}
