//! Shared pieces of the edge tests: the stack with an edge, a local service for tunnels to
//! reach, and visitors that resolve tunnel names to the edge.
#![allow(dead_code)]

use anyhow::Result;
use nearhop_stack::edge::{url_host_port, EdgeProcess, EdgeSpec, SshArgs, SshClient};
use nearhop_stack::{Stack, StackOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something that normally takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A stack (Postgres + control, no DNS) and one edge in `us` on 127.0.0.1.
pub struct EdgeStack {
    /// The edge (dropped before the stack).
    pub edge: EdgeProcess,
    /// Postgres and control.
    pub stack: Stack,
}

impl EdgeStack {
    /// Starts the stack; `extra_toml` is appended to the edge's config.
    pub fn start(extra_toml: &str) -> EdgeStack {
        let stack = Stack::start(StackOptions {
            regions: vec![
                ("us".into(), Ipv4Addr::new(127, 0, 0, 1)),
                ("eu".into(), Ipv4Addr::new(127, 0, 0, 2)),
            ],
            lag_wait_ms: 3000,
            ..StackOptions::default()
        })
        .expect("stack starts");
        let edge = start_edge(&stack, "us", Ipv4Addr::new(127, 0, 0, 1), extra_toml);
        EdgeStack { edge, stack }
    }

    /// Runs `ssh` against the edge.
    pub fn ssh(&self, name: &str, args: &SshArgs) -> SshClient {
        SshClient::start(
            &self.stack.dir.join("ssh"),
            name,
            self.edge.ssh_addr(),
            args,
        )
        .expect("ssh starts")
    }

    /// A pro account's token.
    pub fn pro_token(&self) -> String {
        self.stack
            .control
            .create_account(nearhop_wire::Plan::Pro)
            .expect("account")
            .token
    }
}

/// Starts an edge of `region` against the stack's control.
pub fn start_edge(stack: &Stack, region: &str, ip: Ipv4Addr, extra_toml: &str) -> EdgeProcess {
    let mut spec = EdgeSpec::for_tests(region, ip, &stack.control.url, &stack.control.edge_secret);
    spec.extra_toml = format!("alive_probe_ms = 1000\n{extra_toml}");
    EdgeProcess::start(&stack.dir.join(format!("edge-{region}")), spec).expect("edge starts")
}

/// `ssh` arguments for an HTTP tunnel to local `port`.
pub fn http_tunnel(user: Option<&str>, port: u16) -> SshArgs {
    SshArgs {
        user: user.map(str::to_string),
        forwards: vec![format!("0:localhost:{port}")],
        ..SshArgs::default()
    }
}

/// A blocking HTTP client that sends requests for the URL's host to `edge`.
pub fn visitor(url: &str, edge: SocketAddr) -> reqwest::blocking::Client {
    let (host, _) = url_host_port(url).expect("url");
    reqwest::blocking::Client::builder()
        .resolve(&host, edge)
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// An async HTTP client that sends requests for the URL's host to `edge`.
pub fn async_visitor(url: &str, edge: SocketAddr) -> reqwest::Client {
    let (host, _) = url_host_port(url).expect("url");
    reqwest::Client::builder()
        .resolve(&host, edge)
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// The byte at offset `i` of the local service's `/blob/N` answer.
pub fn blob_byte(i: usize) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// A small HTTP/1.1 service on 127.0.0.1, the "developer's local server":
/// `GET /hello` (echoes X-Forwarded-* and Host back in the body), `GET /blob/N` (N
/// deterministic bytes), `POST /echo` (the body back), `Upgrade: echo` (101, then a raw echo
/// for as long as the visitor stays), keep-alive.
pub struct LocalService {
    /// Its port.
    pub port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl LocalService {
    /// Starts the service on its own thread and runtime.
    pub fn start() -> LocalService {
        LocalService::start_tagged("local")
    }

    /// Starts a service whose `/hello` answer says `tag=<tag>`.
    pub fn start_tagged(tag: &'static str) -> LocalService {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _ = serve(stream, tag).await;
                    });
                }
            });
        });
        LocalService {
            port,
            _thread: thread,
        }
    }
}

async fn serve(stream: TcpStream, tag: &str) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
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
        let len: usize = header("content-length").parse().unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
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
        let answer: Vec<u8> = if method == "POST" && path == "/echo" {
            body
        } else if let Some(n) = path.strip_prefix("/blob/") {
            let n: usize = n.parse().unwrap_or(0);
            (0..n).map(blob_byte).collect()
        } else {
            format!(
                "hello from local\ntag={tag}\nhost={}\nxff={}\nxfp={}\nxfh={}\nx-added={}\n",
                header("host"),
                header("x-forwarded-for"),
                header("x-forwarded-proto"),
                header("x-forwarded-host"),
                header("x-added"),
            )
            .into_bytes()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
            answer.len()
        );
        let w = reader.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(&answer).await?;
    }
}

/// A TCP echo service on 127.0.0.1 (for `tcp` tunnels).
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

/// Retries `f` until it succeeds or `PATIENCE` runs out.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A local TLS service, the developer's own HTTPS server: `openssl s_server -www` with a
/// self-signed certificate made in `dir` for the test (never kept) by the stack's helper.
pub struct LocalTlsService {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _server: nearhop_stack::process::ChildGuard,
}

impl LocalTlsService {
    /// Makes a key and certificate in `dir` and starts the server; waits until it listens.
    pub fn start(dir: &std::path::Path) -> LocalTlsService {
        let (cert, key) = nearhop_stack::edge::dev_zone_certificate(dir).expect("certificate");
        let port = nearhop_stack::ports::free_port(Ipv4Addr::LOCALHOST);
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        let server = nearhop_stack::process::ChildGuard::spawn(
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

/// What `curl` did.
pub struct Curl {
    /// Exit code (0: the transfer worked).
    pub code: i32,
    /// HTTP status, empty when none came back.
    pub status: String,
    /// The response body.
    pub body: String,
    /// What curl printed on stderr.
    pub stderr: String,
}

/// `curl` over TLS to `https://name:port{path}`, resolved to `ip` (so the SNI is `name`);
/// the certificate is checked against `ca`, or not at all without one.
pub fn curl_tls(
    name: &str,
    ip: Ipv4Addr,
    port: u16,
    path: &str,
    ca: Option<&std::path::Path>,
) -> Curl {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "--resolve",
    ])
    .arg(format!("{name}:{port}:{ip}"));
    match ca {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    let out = cmd
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: status.trim_start_matches("000").to_string(),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
