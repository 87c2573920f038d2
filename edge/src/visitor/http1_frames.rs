//! Where one HTTP/1.1 message ends and the next begins, found without parsing more than
//! heads: the relaying edge passes a visitor's requests to the holder edge as bytes, and
//! the holder's answers back (`visitor::relay_stream`), and needs only each request's host
//! and where each request and each answer ends.
//!
//! The rules are hyper's (RFC 9112 §6.3). A request they leave in doubt is not framed here
//! at all: one with both `Transfer-Encoding` and `Content-Length`, a coding other than
//! `chunked` alone, differing lengths, an upgrade or `CONNECT` is left to hyper, which
//! answers it on the relaying edge as it answers any visitor. An answer that is not framed
//! (one that ends when the connection closes, a `101`, bytes that are not HTTP) makes the
//! rest of the connection raw.

/// Most headers in a head framed here (hyper's own limit is lower, so a head with more is
/// refused by hyper wherever it goes).
const MAX_HEADERS: usize = 128;

/// Longest line of a chunked body (a size line with extensions, or a trailer).
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// Longest trailer section of a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete request head that can be passed on as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, blank line included.
    pub len: usize,
    /// The host it is for, as the visitor listener routes it.
    pub host: String,
    /// How its body ends.
    pub body: BodyFraming,
    /// Whether it is a `HEAD` request (its answer has no body, whatever its head says).
    pub is_head: bool,
    /// Whether the visitor ends the connection after it (`Connection: close`, or HTTP/1.0
    /// without `keep-alive`).
    pub close: bool,
    /// Whether it may be sent twice: an idempotent method without a body
    /// ([`safe_to_send_twice`]).
    pub replayable: bool,
}

/// Whether a request with this method (and no body) may be sent again when its holder
/// handed it back or went before answering: an idempotent method (RFC 9110 §9.2.2), the
/// same rule as the HTTP proxy's (`visitor::http`, `Replay`), so that the relaying edge's
/// two paths agree with what the holder hands back.
fn safe_to_send_twice(method: &str) -> bool {
    hyper::Method::from_bytes(method.as_bytes()).is_ok_and(|m| m.is_idempotent())
}

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadScan {
    /// A complete head that can be passed on as bytes.
    Plain(RequestHead),
    /// Not yet a complete head.
    Partial,
    /// A head for hyper: malformed, without a host, an upgrade, `CONNECT`, or framed in a
    /// way this module leaves to hyper.
    ForHyper,
}

/// Reads the request head at the start of `buf`.
pub fn scan_head(buf: &[u8]) -> HeadScan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return HeadScan::Partial,
        Err(_) => return HeadScan::ForHyper,
    };
    if req.method == Some("CONNECT") {
        return HeadScan::ForHyper;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut host_header = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            return HeadScan::ForHyper;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, alone and once: anything else is hyper's to refuse.
            if chunked || !trimmed(h.value).eq_ignore_ascii_case(b"chunked") {
                return HeadScan::ForHyper;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            // hyper's server takes no list of lengths in a request (its client does in an
            // answer): a list is hyper's to refuse.
            if h.value.contains(&b',') || !fold_length(&mut length, h.value) {
                return HeadScan::ForHyper;
            }
        } else if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return HeadScan::ForHyper;
            }
            host_header = Some(h.value);
        }
    }
    let body = match (chunked, length) {
        (true, Some(_)) => return HeadScan::ForHyper,
        // HTTP/1.0 has no chunked coding.
        (true, None) if req.version == Some(0) => return HeadScan::ForHyper,
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::Empty,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let target: Option<hyper::Uri> = req.path.and_then(|p| p.parse().ok());
    let host = crate::visitor::first_request::host_from(
        host_header.into_iter(),
        target
            .as_ref()
            .and_then(|u| u.authority())
            .map(|a| a.as_str()),
    )
    .ok();
    match host {
        Some(host) => HeadScan::Plain(RequestHead {
            len,
            host,
            body,
            is_head: req.method == Some("HEAD"),
            close: closes(req.headers, req.version),
            replayable: body == BodyFraming::Empty && req.method.is_some_and(safe_to_send_twice),
        }),
        None => HeadScan::ForHyper,
    }
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerBody {
    /// No body (`HEAD`, `1xx`, `204`, `304`, or a length of 0).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// What the start of a buffer of answers holds.
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerScan {
    /// A complete answer head.
    Head {
        /// Bytes of the head, blank line included.
        len: usize,
        /// Its status code.
        status: u16,
        /// How its body ends.
        body: AnswerBody,
        /// Whether the connection ends after it (`Connection: close`, or HTTP/1.0 without
        /// `keep-alive`).
        close: bool,
    },
    /// Not yet a complete head.
    Partial,
    /// Not an answer that can be framed: malformed, or differing lengths.
    Unframed,
}

/// Reads the answer head at the start of `buf`, the answer to a `HEAD` request when
/// `to_head`.
pub fn scan_answer(buf: &[u8], to_head: bool) -> AnswerScan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return AnswerScan::Partial,
        Err(_) => return AnswerScan::Unframed,
    };
    let Some(status) = resp.code else {
        return AnswerScan::Unframed;
    };
    let close = closes(resp.headers, resp.version);
    if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return AnswerScan::Head {
            len,
            status,
            body: AnswerBody::Empty,
            close,
        };
    }
    let mut length: Option<u64> = None;
    let mut last_coding: Option<&[u8]> = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let coding = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            last_coding = Some(trimmed(coding));
        } else if h.name.eq_ignore_ascii_case("content-length")
            && !fold_length(&mut length, h.value)
        {
            return AnswerScan::Unframed;
        }
    }
    let body = match (last_coding, length) {
        (Some(c), _) if c.eq_ignore_ascii_case(b"chunked") => AnswerBody::Chunked,
        (Some(_), _) | (None, None) => AnswerBody::UntilClose,
        (None, Some(0)) => AnswerBody::Empty,
        (None, Some(n)) => AnswerBody::Length(n),
    };
    AnswerScan::Head {
        len,
        status,
        body,
        close,
    }
}

/// Whether a message with these headers, of HTTP/1.`version`, ends its connection:
/// `Connection: close`, or HTTP/1.0 without `keep-alive`.
fn closes(headers: &[httparse::Header<'_>], version: Option<u8>) -> bool {
    let mut close = None;
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(trimmed) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = Some(true);
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close.get_or_insert(false);
                }
            }
        }
    }
    close.unwrap_or(version == Some(0))
}

fn trimmed(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// A `Content-Length` header's value folded into `length`, the value of those before it:
/// `false` when it is not a length or differs from one before it. A list of equal values
/// (`5, 5`, as a proxy that joined duplicate headers sends) counts as one, as hyper's
/// client takes it in an answer.
fn fold_length(length: &mut Option<u64>, value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .all(|item| match (decimal(trimmed(item)), *length) {
            (None, _) => false,
            (Some(n), Some(l)) => n == l,
            (Some(n), None) => {
                *length = Some(n);
                true
            }
        })
}

/// A `Content-Length` value: digits only, at most 19 of them (no sign, no overflow).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A chunked body that does not follow the coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

/// Follows a chunked body as its bytes pass, to find where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedEnd {
    state: Chunk,
    /// Bytes of the current size line or trailer line, and of all trailers.
    line: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk's size (`digits` so far, `size` their value).
    Size {
        digits: u8,
        size: u64,
    },
    /// After the size: spaces, or an extension, until CR.
    SizeRest {
        size: u64,
    },
    /// CR seen at the end of a size line.
    SizeLf {
        size: u64,
    },
    /// Data bytes still to pass.
    Data(u64),
    /// CR after a chunk's data, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer line, until CR.
    Trailer,
    TrailerLf,
    /// The CR of the final blank line was seen.
    EndLf,
    /// The body has ended.
    Done,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: Chunk::Size { digits: 0, size: 0 },
            line: 0,
            trailers: 0,
        }
    }
}

impl ChunkedEnd {
    /// Takes in `data`, the body's next bytes: `Ok(Some(n))` when the body ends after the
    /// first `n` of them, `Ok(None)` when all of them belong to it.
    pub fn advance(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Data(left) = self.state {
                let take = left.min((data.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take)
                };
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == Chunk::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn step(&mut self, b: u8) -> Result<Chunk, BadChunk> {
        let in_line = matches!(
            self.state,
            Chunk::Size { .. } | Chunk::SizeRest { .. } | Chunk::Trailer
        );
        if in_line {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(BadChunk);
            }
        }
        if matches!(self.state, Chunk::TrailerStart | Chunk::Trailer) {
            self.trailers += 1;
            if self.trailers > MAX_TRAILERS {
                return Err(BadChunk);
            }
        }
        Ok(match (self.state, b) {
            (Chunk::Size { digits, size }, _) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).ok_or(BadChunk)?);
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(BadChunk)?;
                Chunk::Size {
                    digits: digits.saturating_add(1),
                    size,
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(BadChunk),
            (Chunk::Size { size, .. } | Chunk::SizeRest { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Size { size, .. }, b' ' | b'\t' | b';') => Chunk::SizeRest { size },
            (Chunk::SizeRest { .. }, b'\n') => return Err(BadChunk),
            (Chunk::SizeRest { size }, _) => Chunk::SizeRest { size },
            (Chunk::SizeLf { size }, b'\n') => {
                self.line = 0;
                if size == 0 {
                    Chunk::TrailerStart
                } else {
                    Chunk::Data(size)
                }
            }
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { digits: 0, size: 0 },
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            // Only CRLF ends a trailer line or the body: hyper takes a bare LF as part of a
            // trailer, so a body framed otherwise here would end elsewhere there.
            (Chunk::TrailerStart | Chunk::Trailer, b'\n') => return Err(BadChunk),
            (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => {
                self.line = 0;
                Chunk::TrailerStart
            }
            (Chunk::EndLf, b'\n') => Chunk::Done,
            _ => return Err(BadChunk),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(head: &str) -> RequestHead {
        match scan_head(head.as_bytes()) {
            HeadScan::Plain(h) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn heads_give_their_length_host_and_body_framing() {
        let h = plain("GET /a HTTP/1.1\r\nHost: Blog.Example:8080\r\n\r\nGET /b");
        assert_eq!(h.host, "blog.example");
        assert_eq!(
            h.len,
            "GET /a HTTP/1.1\r\nHost: Blog.Example:8080\r\n\r\n".len()
        );
        assert_eq!(h.body, BodyFraming::Empty);
        assert!(!h.close);
        assert!(h.replayable);
        assert!(plain("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").close);
        assert!(plain("GET / HTTP/1.0\r\nHost: x\r\n\r\n").close);
        let h = plain("POST / HTTP/1.1\r\nhost: x.example\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Length(12));
        assert!(!h.replayable, "a POST is not sent twice");
        assert!(!plain("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n").replayable);
        assert!(plain("DELETE /a HTTP/1.1\r\nHost: x\r\n\r\n").replayable);
        assert!(!plain("PATCH /a HTTP/1.1\r\nHost: x\r\n\r\n").replayable);
        let h = plain(
            "POST / HTTP/1.1\r\nHost: x.example\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = plain("POST / HTTP/1.1\r\nHost: x.example\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
        let h = plain("GET http://b.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n");
        assert_eq!(h.host, "b.example");
        assert_eq!(
            scan_head(b"GET / HTTP/1.1\r\nHost: x.example\r\n"),
            HeadScan::Partial
        );
    }

    #[test]
    fn doubtful_framing_upgrades_and_connect_are_left_to_hyper() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3,\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "\x16\x03\x01 not http\r\n\r\n",
        ] {
            assert_eq!(scan_head(head.as_bytes()), HeadScan::ForHyper, "{head:?}");
        }
    }

    /// Feeds `body` in pieces of `step` bytes; returns where the body ended.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, BadChunk> {
        let mut c = ChunkedEnd::default();
        let mut at = 0;
        for piece in body.chunks(step) {
            if let Some(n) = c.advance(piece)? {
                return Ok(Some(at + n));
            }
            at += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_in_any_pieces() {
        let body =
            b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        let trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\nrest";
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(end_of(body, step), Ok(Some(end)), "pieces of {step}");
            assert_eq!(end_of(trailers, step), Ok(Some(trailers.len() - 4)));
        }
        assert_eq!(end_of(b"5\r\nhel", 2), Ok(None));
        assert_eq!(end_of(b"0\r\n", 1), Ok(None));
    }

    #[test]
    fn answers_are_framed_by_status_method_and_headers() {
        let head = |s: &str, to_head: bool| match scan_answer(s.as_bytes(), to_head) {
            AnswerScan::Head {
                body, status, len, ..
            } => {
                assert_eq!(len, s.find("\r\n\r\n").unwrap() + 4, "{s:?}");
                (status, body)
            }
            other => panic!("{s:?}: {other:?}"),
        };
        let sized = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world!";
        assert_eq!(head(sized, false), (200, AnswerBody::Length(12)));
        assert_eq!(head(sized, true), (200, AnswerBody::Empty), "HEAD: no body");
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(chunked, false), (200, AnswerBody::Chunked));
        let gzip = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(head(gzip, false), (200, AnswerBody::UntilClose));
        let bare = "HTTP/1.0 200 OK\r\nServer: x\r\n\r\n";
        assert_eq!(head(bare, false), (200, AnswerBody::UntilClose));
        for status in [
            "100 Continue",
            "103 Early Hints",
            "204 No Content",
            "304 Not Modified",
        ] {
            let s = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(head(&s, false).1, AnswerBody::Empty, "{status}");
        }
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (200, AnswerBody::Empty)
        );
        assert_eq!(
            scan_answer(b"HTTP/1.1 200 OK\r\nConte", false),
            AnswerScan::Partial
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n", false),
            (200, AnswerBody::Length(2))
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(
                scan_answer(bad.as_bytes(), false),
                AnswerScan::Unframed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn answers_say_whether_the_connection_ends_after_them() {
        let close = |s: &str| match scan_answer(s.as_bytes(), false) {
            AnswerScan::Head { close, .. } => close,
            other => panic!("{s:?}: {other:?}"),
        };
        let sized = "Content-Length: 0\r\n\r\n";
        assert!(!close(&format!("HTTP/1.1 200 OK\r\n{sized}")));
        assert!(close(&format!(
            "HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\n{sized}"
        )));
        assert!(close(&format!("HTTP/1.0 200 OK\r\n{sized}")));
        assert!(!close(&format!(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n{sized}"
        )));
        assert!(close(
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn chunk_sizes_may_have_leading_zeros() {
        let zeros = b"00000000000000000005\r\nhello\r\n0\r\n\r\n";
        assert_eq!(end_of(zeros, 3), Ok(Some(zeros.len())));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for body in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
            // Trailer lines and the final blank line end with CRLF only.
            b"0\r\nbad trailer\n",
            b"0\r\nX-A: 1\nX-B: 2\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(end_of(body, 1), Err(BadChunk), "{body:?}");
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(end_of(long.as_bytes(), 4096), Err(BadChunk));
    }
}
