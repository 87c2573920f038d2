//! The developer's side of a tunnel: the local services a tunnel points at (HTTP, TCP echo,
//! the developer's own HTTPS server). Each stops when it is dropped.

use crate::background::AcceptLoop;
use crate::poll::eventually;
use crate::process::ChildGuard;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The byte at offset `i` of the local service's `/blob/N` answer.
pub fn blob_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// Panics unless `got` is exactly the local service's `/blob/{size}` answer.
pub fn assert_blob(got: &[u8], size: usize) {
    assert_eq!(got.len(), size, "the download's length");
    let first_bad = got.iter().enumerate().find(|(i, b)| **b != blob_byte(*i));
    assert!(first_bad.is_none(), "download differs at {first_bad:?}");
}

/// Reads the rest of a `/blob/{size}` download from `body`, `at` bytes of which were read
/// already, checking every byte; panics (naming `what`) when it breaks off, differs or
/// ends short.
pub fn finish_blob(body: &mut impl std::io::Read, mut at: usize, size: usize, what: &str) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("{what}: the download broke off after {at} of {size} bytes: {e}"),
        };
        if n == 0 {
            break;
        }
        if let Some(bad) = (0..n).find(|j| buf[*j] != blob_byte(at + j)) {
            panic!("{what}: byte {} differs", at + bad);
        }
        at += n;
    }
    assert_eq!(at, size, "{what}: the whole download arrived");
}

/// `len` bytes of a fixed pattern to upload (and compare with what comes back).
pub fn upload_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

/// A small HTTP/1.1 service on 127.0.0.1, the "developer's local server", keep-alive:
/// - `GET /blob/N`: N deterministic bytes ([`blob_byte`]);
/// - `POST /echo`: the body back (sized or chunked);
/// - `GET /hang/N`: answers only after N seconds (a slow service);
/// - `Upgrade: echo`: 101, then a raw echo for as long as the visitor stays;
/// - `Upgrade: websocket`: a WebSocket (RFC 6455, tungstenite) that answers each message
///   with `echo: ` and the message, for as long as the visitor stays;
/// - anything else: `hello from <tag> <path>`, then `tag=`, `host=`, the forwarding
///   headers, `x-added`, `authorization` and the method it got, one a line, so that a test
///   sees which client served it and how; as `text/plain` under `/page/` (a browser shows
///   it), as `application/octet-stream` elsewhere.
pub struct LocalService {
    /// Its port.
    pub port: u16,
    /// Requests answered.
    pub served: Arc<AtomicU64>,
    /// `/blob/N` answers broken off: a write failed before the end (the tunnel's client
    /// closed this side of the connection).
    pub blobs_broken: Arc<AtomicU64>,
    /// Requests received, by method and path (`"POST /hang/4"`), counted as `served` is.
    received: Arc<Mutex<HashMap<String, u64>>>,
    _server: AcceptLoop,
}

impl LocalService {
    /// Starts the service on its own thread and runtime; `tag` tells visitors which
    /// client served them.
    pub fn start(tag: &str) -> LocalService {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicU64::new(0));
        let blobs_broken = Arc::new(AtomicU64::new(0));
        let tag = Arc::<str>::from(tag);
        let received = Arc::new(Mutex::new(HashMap::new()));
        let counts = Counts {
            served: served.clone(),
            blobs_broken: blobs_broken.clone(),
            received: received.clone(),
        };
        let server = AcceptLoop::start(listener, move |stream, _| {
            let (tag, counts) = (tag.clone(), counts.clone());
            async move {
                let _ = serve(stream, &tag, &counts).await;
            }
        });
        LocalService {
            port,
            served,
            blobs_broken,
            received,
            _server: server,
        }
    }

    /// How many `method path` requests (`"POST /hang/4"`) came, whole, so far.
    pub fn received(&self, method_path: &str) -> u64 {
        let received = self.received.lock().unwrap_or_else(|e| e.into_inner());
        received.get(method_path).copied().unwrap_or(0)
    }
}

/// Completes a WebSocket handshake whose request was read from `reader`, then echoes each
/// text or binary message (text prefixed with `echo: `) until the visitor closes.
async fn websocket_echo(reader: BufReader<TcpStream>, key: &str) -> std::io::Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let mut stream = reader.into_inner();
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .as_bytes(),
        )
        .await?;
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    while let Some(msg) = ws.next().await {
        let answer = match msg.map_err(std::io::Error::other)? {
            Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        ws.send(answer).await.map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// A chunked request body, decoded (trailers read and dropped).
async fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("chunk size"))?;
        if size == 0 {
            break;
        }
        let at = body.len();
        body.resize(at + size, 0);
        reader.read_exact(&mut body[at..]).await?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).await?;
    }
    loop {
        let mut trailer = String::new();
        if reader.read_line(&mut trailer).await? == 0 || trailer.trim_end().is_empty() {
            return Ok(body);
        }
    }
}

/// What [`LocalService`] counts.
#[derive(Clone)]
struct Counts {
    served: Arc<AtomicU64>,
    blobs_broken: Arc<AtomicU64>,
    received: Arc<Mutex<HashMap<String, u64>>>,
}

async fn serve(stream: TcpStream, tag: &str, counts: &Counts) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let body = if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
            read_chunked(&mut reader).await?
        } else {
            let len: usize = header("content-length").parse().unwrap_or(0);
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).await?;
            body
        };
        counts.served.fetch_add(1, Ordering::Relaxed);
        *counts
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(format!("{method} {path}"))
            .or_default() += 1;
        if header("upgrade") == "echo" {
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
                .await?;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                reader.get_mut().write_all(&buf[..n]).await?;
            }
        }
        if header("upgrade").eq_ignore_ascii_case("websocket") {
            return websocket_echo(reader, &header("sec-websocket-key")).await;
        }
        if let Some(secs) = path.strip_prefix("/hang/") {
            // A slow service: no answer for that long.
            let secs: u64 = secs.parse().unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        }
        if let Some(n) = path.strip_prefix("/blob/") {
            // Made as it is sent, 64 KiB at a time, as a file server streams a file: a blob
            // may be larger than the test's memory, and a visitor that leaves one half way
            // leaves the rest being written until the client closes this connection.
            let n: usize = n.parse().unwrap_or(0);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\ncontent-type: application/octet-stream\r\n\r\n"
            );
            let w = reader.get_mut();
            w.write_all(head.as_bytes()).await?;
            let mut chunk = Vec::with_capacity(64 * 1024);
            let mut at = 0;
            while at < n {
                let end = n.min(at + 64 * 1024);
                chunk.clear();
                chunk.extend((at..end).map(blob_byte));
                if let Err(e) = w.write_all(&chunk).await {
                    counts.blobs_broken.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                at = end;
            }
            if header("connection").eq_ignore_ascii_case("close") {
                return Ok(());
            }
            continue;
        }
        let answer: Vec<u8> = if method == "POST" && path == "/echo" {
            body
        } else {
            format!(
                "hello from {tag} {path}\ntag={tag}\nhost={}\nxff={}\nxfp={}\nxfh={}\nx-added={}\nauthorization={}\nmethod={method}\n",
                header("host"),
                header("x-forwarded-for"),
                header("x-forwarded-proto"),
                header("x-forwarded-host"),
                header("x-added"),
                header("authorization"),
            )
            .into_bytes()
        };
        // Text a browser shows under /page/; everything else is bytes to it.
        let kind = if path.starts_with("/page/") {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: {kind}\r\n\r\n",
            answer.len()
        );
        let w = reader.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(&answer).await?;
        if header("connection").eq_ignore_ascii_case("close") {
            return Ok(());
        }
    }
}

/// A TCP echo service on 127.0.0.1 (for `tcp` tunnels); returns its port. It lives as long
/// as the test process.
pub fn tcp_echo() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = stream;
                let mut w = match r.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

/// A local TLS service, the developer's own HTTPS server: `openssl s_server -www` with a
/// self-signed certificate made in `dir` for the test (never kept) by the stack's helper.
pub struct LocalTlsService {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _server: ChildGuard,
}

impl LocalTlsService {
    /// Makes a key and certificate in `dir` and starts the server; waits until it listens.
    pub fn start(dir: &Path) -> LocalTlsService {
        let (cert, key) = crate::edge::dev_zone_certificate(dir).expect("certificate");
        let port = crate::ports::free_port(Ipv4Addr::LOCALHOST);
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        let server = ChildGuard::spawn(
            "openssl s_server",
            cmd,
            &dir.join("s_server.log"),
            libc::SIGTERM,
        )
        .expect("s_server starts");
        eventually("s_server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port))?;
            Ok(())
        });
        LocalTlsService {
            port,
            _server: server,
        }
    }
}
