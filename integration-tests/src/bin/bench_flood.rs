//! Flood benchmark: one edge with control and Postgres, one HTTP tunnel from the stock
//! OpenSSH client, and rounds of three visitor floods at once against that tunnel (HTTP/2
//! streams reset right after their HEADERS, HTTP/2 streams of a 2 MB answer reset after
//! 50 ms, HTTP/1.1 requests whose connections are reset at once). After each round and a
//! settling wait: the edge's resident memory, descriptors, `malloc_trim` runs, which side
//! closed its channels first, and a plain GET that shows the tunnel still serves; at the
//! end, the same once the client's session has ended.
//!
//! Build release binaries first, then run (see docs/benchmarks.md, section "Memory after
//! visitor floods"):
//!     cargo build --release --workspace --bins
//!     NEARHOP_PROFILE=release ./target/release/bench_flood
//!     NEARHOP_PROFILE=release ./target/release/bench_flood --edge-toml 'malloc_trim_interval_seconds = 0'
//!
//! The floods are visitors written here (`h2` over rustls, plain tokio sockets), the
//! tunnel's local service too (`Origin`), all in this process.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use h2::client::SendRequest;
use h2::{Ping, Reason};
use nearhop_stack::background::AcceptLoop;
use nearhop_stack::edge::{dev_zone_certificate, url_host_port, EdgeProcess, EdgeSpec};
use nearhop_stack::edge::{SshArgs, SshClient};
use nearhop_stack::metrics::{metric, metric_sum};
use nearhop_stack::poll::try_eventually;
use nearhop_stack::process::rss_kib;
use nearhop_stack::visitor::http_get;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
struct Args {
    /// Rounds of the three floods.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each round floods.
    #[arg(long, default_value_t = 60)]
    flood_seconds: u64,
    /// Seconds between a round's end (and the client's exit) and the sample after it.
    #[arg(long, default_value_t = 90)]
    settle_seconds: u64,
    /// Extra lines for the edge's TOML configuration, e.g.
    /// `malloc_trim_interval_seconds = 0`.
    #[arg(long, default_value = "")]
    edge_toml: String,
    /// Which floods run (all three by default), e.g. `--floods downloads,http1`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "resets,downloads,http1"
    )]
    floods: Vec<Kind>,
}

/// The three floods.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// HTTP/2 streams reset right after their HEADERS.
    Resets,
    /// HTTP/2 streams of the large answer reset after `DOWNLOAD_HOLD`.
    Downloads,
    /// HTTP/1.1 requests whose connections are reset at once.
    Http1,
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Kind::Resets => format!(
                "HTTP/2 streams reset after their HEADERS ({RESET_CONNECTIONS} connections, a ping \
                 every {RESETS_PER_PING} streams, a new connection when the edge ends one)"
            ),
            Kind::Downloads => format!(
                "HTTP/2 streams of a {BIG}-byte answer reset after {} ms ({DOWNLOAD_CONNECTIONS} \
                 connections × {DOWNLOAD_STREAMS} streams)",
                DOWNLOAD_HOLD.as_millis()
            ),
            Kind::Http1 => format!(
                "HTTP/1.1 requests whose connections are reset at once ({HTTP1_WORKERS} at a time)"
            ),
        }
    }
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The large answer's path and size at the origin.
const BIG_PATH: &str = "/big";
const BIG: usize = 2_000_000;
// The floods' shapes. What the edge is made to hold depends on them as much as on the
// rates: the earlier probe (docs/benchmarks.md) sent ~1M reset streams a round with ~900 on
// each connection, ~22k reset downloads and 40-60k reset HTTP/1.1 requests a minute, and
// these were chosen to land near that on the two-core machine (the section says how near).
/// Connections of the reset flood, one after another each.
const RESET_CONNECTIONS: u8 = 2;
/// Streams the reset flood sends between pings: the ping's answer says the edge has read
/// them, so the flood runs as fast as the edge reads instead of queueing frames here.
/// Twenty is the edge's bound on resets it has not yet accepted (`MAX_PENDING_RESETS`):
/// with batches of 100 it ends nearly every connection within its first (~100 streams);
/// with 10 it never ends one; with 20 it ends one every ~1,000 streams.
const RESETS_PER_PING: u64 = 20;
/// Connections of the download flood, and streams in flight on each: at most 400 streams
/// a second at 50 ms each.
const DOWNLOAD_CONNECTIONS: u8 = 2;
const DOWNLOAD_STREAMS: usize = 10;
/// How long a download stream reads before it is reset.
const DOWNLOAD_HOLD: Duration = Duration::from_millis(50);
/// HTTP/1.1 connections in flight at once. Many, because a dropped SYN costs its worker a
/// second, and the kernel drops some: reset connections waiting to be accepted overflow the
/// edge's listen queue (backlog 128) now and then.
const HTTP1_WORKERS: u8 = 64;
/// Bound on one connection's setup (TCP, TLS, HTTP/2 preface).
const SETUP_LIMIT: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args = Args::parse();
    let began = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("nearhop-bench-flood-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    eprintln!("bench dir: {}", dir.display());

    let origin = Origin::start()?;
    let stack = Stack::start(StackOptions::default())?;
    let credential = stack.control.issue_edge_credential("us-1")?;
    let mut spec = EdgeSpec::for_tests("us", LOCAL, &stack.control.url, &credential);
    let (cert, key) = dev_zone_certificate(&dir.join("tls"))?;
    spec.extra_toml = format!(
        "tls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n{}\n",
        cert.display(),
        key.display(),
        args.edge_toml
    );
    let edge = EdgeProcess::start(&dir.join("edge"), spec)?;
    let edge_pid = edge.pid().context("edge pid")?;

    let token = stack.control.create_account(Plan::Pro)?.token;
    let mut ssh = SshClient::start(
        &dir.join("ssh"),
        "flooded",
        edge.ssh_addr(),
        &SshArgs {
            user: Some(token),
            // 127.0.0.1, not localhost: the client would try ::1 first for every channel.
            forwards: vec![format!("0:127.0.0.1:{}", origin.port)],
            ..SshArgs::default()
        },
    )?;
    let url = ssh.wait_for_url(Duration::from_secs(30))?;
    let (host, _) = url_host_port(&url)?;
    let target = Arc::new(Target {
        host,
        http: edge.http_addr(),
        tls: SocketAddr::from((edge.spec.ip, edge.spec.tls)),
        tls_config: tls_config()?,
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    try_eventually(Duration::from_secs(30), || {
        let (status, _) = http_get(target.http, &target.host, "/")?;
        anyhow::ensure!(status == 200, "HTTP/1.1 GET / answered {status}");
        let status = rt.block_on(h2_get(&target, "/"))?;
        anyhow::ensure!(status == 200, "HTTP/2 GET / answered {status}");
        Ok(())
    })
    .context("the tunnel does not serve over HTTP/1.1 and HTTP/2")?;

    println!(
        "# Visitor floods against one tunnel (stock OpenSSH client) on one edge (release builds unless NEARHOP_PROFILE says otherwise)\n"
    );
    let floods: Vec<String> = args.floods.iter().map(|k| k.describe()).collect();
    println!(
        "{} rounds of {} s of floods at once: {}. Samples {} s after each round. Edge TOML added: {:?}\n",
        args.rounds,
        args.flood_seconds,
        floods.join("; "),
        args.settle_seconds,
        args.edge_toml
    );
    let start = EdgeSample::of(&edge)?;
    println!(
        "before: edge RSS {:.1} MB, {} fds\n",
        mb(start.rss_bytes),
        start.fds
    );
    println!(
        "| round | reset streams (conns) | 2 MB streams reset (conns; answered 200, completed, other status) | HTTP/1.1 resets (failed) | edge RSS MB: peak / flood end / +{} s | fds +{} s | channels closed first by client / edge (of which cut) | trims (avg ms) | GET / after |",
        args.settle_seconds, args.settle_seconds
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let settle = Duration::from_secs(args.settle_seconds);
    let mut last = start;
    let mut failures = Vec::new();
    for round in 1..=args.rounds {
        let report = flood(
            &target,
            &args.floods,
            Duration::from_secs(args.flood_seconds),
            edge_pid,
        )?;
        let at_end = EdgeSample::of(&edge)?;
        std::thread::sleep(settle);
        let after = EdgeSample::of(&edge)?;
        let probe = Probe::of(&target);
        let (r, d, h) = (&report.resets, &report.downloads, &report.http1);
        println!(
            "| {round} | {} ({}) | {} ({}; {}, {}, {}) | {} ({}) | {:.0} / {:.0} / {:.0} | {} | {} / {} ({}) | {} | {} |",
            r.streams,
            r.connections,
            d.streams,
            d.connections,
            d.answered,
            d.completed,
            d.refused,
            h.streams,
            h.failed,
            report.peak_rss_kib as f64 * 1024.0 / 1e6,
            mb(at_end.rss_bytes),
            mb(after.rss_bytes),
            after.fds,
            after.closed_by_client.saturating_sub(last.closed_by_client),
            after.closed_by_edge.saturating_sub(last.closed_by_edge),
            since(last.cut, after.cut),
            trims(&last, &after),
            probe.describe(),
        );
        if !probe.served() {
            failures.push(format!("round {round}: {}", probe.describe()));
        }
        last = after;
        if !ssh.is_running() {
            failures.push(format!("the OpenSSH client exited in round {round}"));
            break;
        }
    }

    ssh.stop();
    std::thread::sleep(settle);
    let end = EdgeSample::of(&edge)?;
    println!(
        "\nafter the client's session ended (+{} s): edge RSS {:.1} MB, {} fds, {} tunnels; trims since the last round {}",
        args.settle_seconds,
        mb(end.rss_bytes),
        end.fds,
        end.tunnels,
        trims(&last, &end)
    );
    println!(
        "whole run: channels closed first by client {} / by edge {} (cut: {}; unwanted answer bytes read and dropped: {}); {} trims taking {:.1} s in all; refused by the edge: {} at the client's channel cap, {} at another share, {} at the connection limit, {} open timeouts; {:.1} min",
        end.closed_by_client.saturating_sub(start.closed_by_client),
        end.closed_by_edge.saturating_sub(start.closed_by_edge),
        since(start.cut, end.cut),
        since(start.unwanted_bytes, end.unwanted_bytes),
        end.trims.saturating_sub(start.trims),
        end.trim_seconds - start.trim_seconds,
        end.client_full.saturating_sub(start.client_full),
        end.other_shares.saturating_sub(start.other_shares),
        end.limit_refused.saturating_sub(start.limit_refused),
        end.open_timeouts.saturating_sub(start.open_timeouts),
        began.elapsed().as_secs_f64() / 60.0
    );
    if !failures.is_empty() {
        bail!(
            "the tunnel stopped serving: {}\nthe OpenSSH client printed:\n{}\nthe edge's last lines:\n{}",
            failures.join("; "),
            tail_of(&ssh.output(), 20),
            edge.log_tail(20)
        );
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A counter's growth between two samples, `–` where the edge does not export it.
fn since(from: Option<u64>, to: Option<u64>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "–".into(),
    }
}

/// `N (avg X ms)`: the trims between two samples.
fn trims(from: &EdgeSample, to: &EdgeSample) -> String {
    let runs = to.trims.saturating_sub(from.trims);
    if runs == 0 {
        return "0".into();
    }
    let ms = (to.trim_seconds - from.trim_seconds) * 1000.0 / runs as f64;
    format!("{runs} ({ms:.1})")
}

const SHARE_REFUSED: &str = "nearhop_edge_visitor_share_refused_total";

/// What the edge's `/metrics` said at one moment.
#[derive(Clone, Copy)]
struct EdgeSample {
    rss_bytes: u64,
    fds: u64,
    trims: u64,
    trim_seconds: f64,
    closed_by_client: u64,
    closed_by_edge: u64,
    /// Of those, channels cut while their client still sent an answer (builds that count it).
    cut: Option<u64>,
    /// What clients sent on finished channels (builds that count it).
    unwanted_bytes: Option<u64>,
    /// Visitors refused because the client held `max_channels_per_client` channels.
    client_full: u64,
    /// Visitors refused at their address's or the tunnel's share.
    other_shares: u64,
    limit_refused: u64,
    open_timeouts: u64,
    tunnels: u64,
}

impl EdgeSample {
    fn of(edge: &EdgeProcess) -> Result<EdgeSample> {
        let text = edge.metrics().context("reading the edge's metrics")?;
        let needed = |name: &str| {
            metric(&text, name, &[]).with_context(|| format!("no {name} in the edge's metrics"))
        };
        // Counters with labels appear once counted: absent is 0.
        let count = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels) as u64;
        Ok(EdgeSample {
            rss_bytes: needed("process_resident_memory_bytes")? as u64,
            fds: needed("process_open_fds")? as u64,
            trims: needed("nearhop_edge_malloc_trims_total")? as u64,
            trim_seconds: needed("nearhop_edge_malloc_trim_seconds_total")?,
            closed_by_client: count("nearhop_edge_channels_closed_total", &[("first", "client")]),
            closed_by_edge: count("nearhop_edge_channels_closed_total", &[("first", "edge")]),
            cut: metric(&text, "nearhop_edge_channels_cut_total", &[]).map(|v| v as u64),
            unwanted_bytes: metric(&text, "nearhop_edge_channel_unwanted_bytes_total", &[])
                .map(|v| v as u64),
            client_full: count(SHARE_REFUSED, &[("share", "client_channels")]),
            other_shares: count(SHARE_REFUSED, &[])
                .saturating_sub(count(SHARE_REFUSED, &[("share", "client_channels")])),
            limit_refused: count("nearhop_edge_visitor_connections_refused_total", &[]),
            open_timeouts: count("nearhop_edge_visitor_open_timeouts_total", &[]),
            tunnels: count("nearhop_edge_tunnels_active", &[]),
        })
    }
}

/// A plain HTTP/1.1 GET of the tunnel through the edge: its status, or why there was none.
struct Probe {
    answer: Result<u16, String>,
    ms: f64,
}

impl Probe {
    fn of(target: &Target) -> Probe {
        let t = Instant::now();
        let answer = http_get(target.http, &target.host, "/")
            .map(|(status, _)| status)
            .map_err(|e| format!("{e:#}"));
        Probe {
            answer,
            ms: t.elapsed().as_secs_f64() * 1000.0,
        }
    }

    fn served(&self) -> bool {
        matches!(self.answer, Ok(200))
    }

    fn describe(&self) -> String {
        match &self.answer {
            Ok(status) => format!("{status} ({:.0} ms)", self.ms),
            Err(e) => format!("no answer ({:.0} ms): {e}", self.ms),
        }
    }
}

/// The tunnel's local service: `GET /big` answers `BIG` bytes made once, anything else a
/// line of text; kept alive. Not the stack's `LocalService`, whose `/blob/N` computes each
/// byte it sends (a pattern the tests check): CPU that hundreds of 2 MB answers a second
/// would take from the edge on a two-core machine, where a fixed body costs only the copy.
struct Origin {
    port: u16,
    _server: AcceptLoop,
}

impl Origin {
    fn start() -> Result<Origin> {
        let listener = std::net::TcpListener::bind((LOCAL, 0)).context("binding the origin")?;
        let port = listener.local_addr()?.port();
        let big: Arc<[u8]> = vec![b'x'; BIG].into();
        let server = AcceptLoop::start(listener, move |stream, _| {
            let big = big.clone();
            async move {
                let _ = serve_origin(stream, &big).await;
            }
        });
        Ok(Origin {
            port,
            _server: server,
        })
    }
}

async fn serve_origin(stream: TcpStream, big: &[u8]) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let big_asked = line.split_whitespace().nth(1) == Some(BIG_PATH);
        // Only GETs come: the head ends the request.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            if header.trim_end().is_empty() {
                break;
            }
        }
        let body: &[u8] = if big_asked {
            big
        } else {
            b"hello from the flood origin\n"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
            body.len()
        );
        let w = reader.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
    }
}

/// Where the floods go: the tunnel's name, and the edge's HTTP and TLS listeners.
struct Target {
    host: String,
    http: SocketAddr,
    tls: SocketAddr,
    tls_config: Arc<rustls::ClientConfig>,
}

/// TLS offering only `h2` (the edge serves HTTP/2 over TLS only, ALPN `h2`). The server's
/// certificate is not checked: the stack's dev certificate is its own CA (`CA:TRUE`), which
/// webpki refuses as a server's certificate, and what is measured here is the edge.
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, checking only the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP connection to `to` from the loopback address `from`: each flood worker has its
/// own, so that no flood fills another's share of the edge's connections per address.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type H2Connection = h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

/// An HTTP/2 connection to the edge's TLS port from `from`. Windows as large as a
/// browser's, so that a download moves in the 50 ms it is given.
async fn h2_connect(target: &Target, from: Ipv4Addr) -> Result<(SendRequest<Bytes>, H2Connection)> {
    let tcp = connect_from(from, target.tls).await?;
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
    let tls = TlsConnector::from(target.tls_config.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the edge did not agree on h2"
    );
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tls)
        .await
        .context("HTTP/2 handshake")?;
    Ok((send, conn))
}

fn request(host: &str, path: &str) -> Result<http::Request<()>> {
    Ok(http::Request::get(format!("https://{host}{path}")).body(())?)
}

/// One HTTP/2 GET, read to its end: its status.
async fn h2_get(target: &Target, path: &str) -> Result<u16> {
    let (send, conn) = tokio::time::timeout(SETUP_LIMIT, h2_connect(target, LOCAL))
        .await
        .context("HTTP/2 connection setup timed out")??;
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await?;
    let (response, _) = send.send_request(request(&target.host, path)?, true)?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .context("no HTTP/2 answer in 10 s")??;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    conn.abort();
    Ok(status)
}

/// What one flood sent and saw.
#[derive(Default)]
struct Tally {
    /// Streams or requests sent.
    streams: AtomicU64,
    connections: AtomicU64,
    /// Connections that could not be set up, or requests that could not be written.
    failed: AtomicU64,
    /// Download streams whose answer started with 200 before the reset.
    answered: AtomicU64,
    /// Download streams whose whole answer came before the reset.
    completed: AtomicU64,
    /// Download streams answered with another status (the edge's refusals).
    refused: AtomicU64,
}

/// A [`Tally`] read at the flood's end.
struct Counts {
    streams: u64,
    connections: u64,
    failed: u64,
    answered: u64,
    completed: u64,
    refused: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Tally {
    fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            streams: get(&self.streams),
            connections: get(&self.connections),
            failed: get(&self.failed),
            answered: get(&self.answered),
            completed: get(&self.completed),
            refused: get(&self.refused),
        }
    }
}

/// What a round of floods sent, and the edge's highest resident memory meanwhile.
struct FloodReport {
    resets: Counts,
    downloads: Counts,
    http1: Counts,
    peak_rss_kib: u64,
}

/// The three floods at once for `length`, each on a thread and runtime of its own (as
/// three processes would be: the CPU-bound reset flood cannot starve the others of this
/// process's turns); each worker sends from a loopback address of its own,
/// `127.1.<flood>.<worker>`.
fn flood(
    target: &Arc<Target>,
    kinds: &[Kind],
    length: Duration,
    edge_pid: u32,
) -> Result<FloodReport> {
    let until = Instant::now() + length;
    let workers = |kind: Kind, n: u8| if kinds.contains(&kind) { n } else { 0 };
    let floods = [
        start_flood(
            1,
            workers(Kind::Resets, RESET_CONNECTIONS),
            target,
            until,
            reset_streams,
        ),
        start_flood(
            2,
            workers(Kind::Downloads, DOWNLOAD_CONNECTIONS),
            target,
            until,
            reset_downloads,
        ),
        start_flood(
            3,
            workers(Kind::Http1, HTTP1_WORKERS),
            target,
            until,
            reset_http1,
        ),
    ];
    let mut peak = 0;
    while floods.iter().any(|f| !f.is_finished()) {
        if let Ok(kib) = rss_kib(edge_pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let [resets, downloads, http1] = floods.map(|f| match f.join() {
        Ok(counts) => counts,
        Err(_) => Err(anyhow::anyhow!("a flood's thread panicked")),
    });
    Ok(FloodReport {
        resets: resets?,
        downloads: downloads?,
        http1: http1?,
        peak_rss_kib: peak,
    })
}

/// Runs `workers` copies of `work` until `until` on a thread of their own; what still
/// runs `SETUP_LIMIT` after it is cut off.
fn start_flood<F, Fut>(
    net: u8,
    workers: u8,
    target: &Arc<Target>,
    until: Instant,
    work: F,
) -> std::thread::JoinHandle<Result<Counts>>
where
    F: Fn(Arc<Target>, Ipv4Addr, tokio::time::Instant, Arc<Tally>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let target = target.clone();
    std::thread::spawn(move || {
        let tally = Arc::new(Tally::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a flood's runtime")?;
        rt.block_on(async {
            let until = tokio::time::Instant::from_std(until);
            let mut running = tokio::task::JoinSet::new();
            for w in 1..=workers {
                let from = Ipv4Addr::new(127, 1, net, w);
                running.spawn(work(target.clone(), from, until, tally.clone()));
            }
            let all = async { while running.join_next().await.is_some() {} };
            let _ = tokio::time::timeout_at(until + SETUP_LIMIT, all).await;
            running.abort_all();
            while running.join_next().await.is_some() {}
        });
        Ok(tally.counts())
    })
}

/// HTTP/2 streams reset (CANCEL) right after their HEADERS, as fast as the edge reads them,
/// on one connection after another: the edge ends a connection that resets too many
/// streams before it accepted them ("rapid reset").
async fn reset_streams(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    while tokio::time::Instant::now() < until {
        let Ok(Ok((mut send, mut conn))) =
            tokio::time::timeout(SETUP_LIMIT, h2_connect(&target, from)).await
        else {
            bump(&tally.failed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        bump(&tally.connections);
        let Some(mut pings) = conn.ping_pong() else {
            continue;
        };
        let conn = tokio::spawn(conn);
        let mut unanswered = 0;
        while tokio::time::Instant::now() < until {
            if std::future::poll_fn(|cx| send.poll_ready(cx))
                .await
                .is_err()
            {
                break;
            }
            let Ok(req) = request(&target.host, "/") else {
                break;
            };
            let Ok((_, mut stream)) = send.send_request(req, true) else {
                break;
            };
            stream.send_reset(Reason::CANCEL);
            bump(&tally.streams);
            unanswered += 1;
            if unanswered == RESETS_PER_PING {
                unanswered = 0;
                if pings.ping(Ping::opaque()).await.is_err() {
                    break;
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
        conn.abort();
    }
}

/// HTTP/2 streams for the large answer, `DOWNLOAD_STREAMS` at a time on one connection,
/// each read for `DOWNLOAD_HOLD` and then reset (CANCEL); a new connection when one ends.
async fn reset_downloads(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    while tokio::time::Instant::now() < until {
        let Ok(Ok((send, conn))) =
            tokio::time::timeout(SETUP_LIMIT, h2_connect(&target, from)).await
        else {
            bump(&tally.failed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        bump(&tally.connections);
        let conn = tokio::spawn(conn);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..DOWNLOAD_STREAMS {
            let (send, target, tally) = (send.clone(), target.clone(), tally.clone());
            streams.spawn(async move { download_and_reset(send, &target, until, &tally).await });
        }
        while streams.join_next().await.is_some() {}
        conn.abort();
    }
}

/// One stream slot of [`reset_downloads`]: returns when the connection fails.
async fn download_and_reset(
    mut send: SendRequest<Bytes>,
    target: &Target,
    until: tokio::time::Instant,
    tally: &Tally,
) {
    while tokio::time::Instant::now() < until {
        if std::future::poll_fn(|cx| send.poll_ready(cx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(req) = request(&target.host, BIG_PATH) else {
            return;
        };
        let Ok((response, mut stream)) = send.send_request(req, true) else {
            return;
        };
        bump(&tally.streams);
        let read = async {
            let response = response.await?;
            if response.status() != 200 {
                bump(&tally.refused);
                return Ok(());
            }
            bump(&tally.answered);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                body.flow_control().release_capacity(chunk.len())?;
            }
            bump(&tally.completed);
            Ok::<_, h2::Error>(())
        };
        let _ = tokio::time::timeout(DOWNLOAD_HOLD, read).await;
        stream.send_reset(Reason::CANCEL);
    }
}

/// HTTP/1.1 requests on connections reset (SO_LINGER 0, then close) as soon as the
/// request is written, one connection after another.
async fn reset_http1(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench_flood\r\n\r\n",
        target.host
    );
    while tokio::time::Instant::now() < until {
        let sent = async {
            let mut stream = connect_from(from, target.http).await?;
            stream.write_all(req.as_bytes()).await?;
            stream.set_zero_linger()?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(SETUP_LIMIT, sent).await {
            Ok(Ok(())) => bump(&tally.streams),
            _ => {
                bump(&tally.failed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
