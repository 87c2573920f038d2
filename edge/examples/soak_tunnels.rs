//! Load client for the soak benchmark (`bench_soak`): keeps N tunnels open through one edge
//! with visitors sending requests to them and a steady churn of reconnects, and reports what
//! failed.
//!
//! Each tunnel is one SSH session (russh client) that does what a stock `ssh -R` with a
//! session does: a named `tcpip-forward`, a session channel with a shell request, and the
//! tunnel counts as live once the edge has printed its URL there. Visitor
//! channels are spliced to the local service, as the OpenSSH client splices them.
//!
//! Visitors keep HTTP/1.1 connections to the edge's HTTP listener and send `GET /` for a
//! random live tunnel (by `Host`), a new connection every 100 requests. A request counts as
//! failed unless it gets a 200 whose body says the local service answered it for that `Host`. A tunnel that is
//! being reconnected is not live: the churn waits for its in-flight requests, closes the
//! session, opens a new one for the same name and makes the tunnel live again when its
//! URL is printed.
//!
//! Prints JSON lines on stdout: `{"phase":"up",...}` when every tunnel is up, a
//! `{"phase":"tick",...}` every `--report-seconds`, and `{"phase":"done",...}` at the end.

mod common;

use anyhow::{bail, Context, Result};
use clap::Parser;
use russh::client::{self, Handle, Handler, Msg, Session};
use russh::{Channel, ChannelMsg, Disconnect};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{RwLock, Semaphore};

#[derive(Parser, Clone)]
struct Args {
    /// The edge's SSH address.
    #[arg(long)]
    ssh: SocketAddr,
    /// The edge's HTTP visitor address.
    #[arg(long)]
    http: SocketAddr,
    /// Port of the local service on 127.0.0.1 that visitor channels are spliced to.
    #[arg(long)]
    target_port: u16,
    /// Tunnels to keep open.
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// Account tokens, comma separated; tunnel i uses token i / per_token.
    #[arg(long)]
    tokens: String,
    /// Tunnels (names) per token.
    #[arg(long, default_value_t = 10)]
    per_token: usize,
    /// Sessions set up at once while the tunnels come up.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of visitor load and churn once every tunnel is up.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Concurrent visitor connections.
    #[arg(long, default_value_t = 8)]
    visitors: usize,
    /// Visitor requests per second, all visitors together.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Reconnects started per second.
    #[arg(long, default_value_t = 1.0)]
    churn_per_second: f64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 30)]
    report_seconds: u64,
}

/// What the client does with channels the edge opens: visitors are spliced to the local
/// service; the server's key is trusted (a benchmark on loopback).
#[derive(Clone)]
struct Splicer {
    target_port: u16,
}

impl Handler for Splicer {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let port = self.target_port;
        tokio::spawn(async move {
            let Ok(mut local) = TcpStream::connect(("127.0.0.1", port)).await else {
                let _ = channel.eof().await;
                return;
            };
            let _ = local.set_nodelay(true);
            let mut stream = channel.into_stream();
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut local).await;
        });
        Ok(())
    }
}

/// One tunnel: its live session and the host visitors use, `None` while it reconnects.
struct Slot {
    host: Option<String>,
    session: Option<Handle<Splicer>>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    reconnect_attempts_failed: AtomicU64,
    reconnects_given_up: AtomicU64,
}

impl Counters {
    fn json(&self, phase: &str, since: Instant) -> String {
        format!(
            "{{\"phase\":\"{phase}\",\"seconds\":{:.0},\"requests\":{},\"failed\":{},\"reconnects\":{},\"reconnect_attempts_failed\":{},\"reconnects_given_up\":{}}}",
            since.elapsed().as_secs_f64(),
            self.requests.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
            self.reconnect_attempts_failed.load(Ordering::Relaxed),
            self.reconnects_given_up.load(Ordering::Relaxed),
        )
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tokens: Vec<String> = args.tokens.split(',').map(str::to_string).collect();
    if tokens.len() * args.per_token.max(1) < args.tunnels {
        bail!(
            "{} tokens with {} names each cannot hold {} tunnels",
            tokens.len(),
            args.per_token,
            args.tunnels
        );
    }
    common::runtime()?.block_on(run(args, tokens))
}

async fn run(args: Args, tokens: Vec<String>) -> Result<()> {
    let config = common::client_config();
    let splicer = Splicer {
        target_port: args.target_port,
    };
    let token_of = |i: usize| tokens[i / args.per_token.max(1)].clone();

    // Every tunnel up, `concurrency` at a time.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut setups = Vec::new();
    for i in 0..args.tunnels {
        let (config, splicer, gate, token, ssh) = (
            config.clone(),
            splicer.clone(),
            gate.clone(),
            token_of(i),
            args.ssh,
        );
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            open_tunnel(config, splicer, ssh, &token, i).await
        }));
    }
    let mut slots = Vec::new();
    for (i, setup) in setups.into_iter().enumerate() {
        let (session, host) = setup
            .await?
            .with_context(|| format!("tunnel soak{i} did not come up"))?;
        slots.push(RwLock::new(Slot {
            host: Some(host),
            session: Some(session),
        }));
    }
    let slots = Arc::new(slots);
    println!(
        "{{\"phase\":\"up\",\"tunnels\":{},\"seconds\":{:.1}}}",
        slots.len(),
        started.elapsed().as_secs_f64()
    );

    let counters = Arc::new(Counters::default());
    let soak_start = Instant::now();
    let until = soak_start + Duration::from_secs(args.seconds);

    // Visitors: each paced to its share of the rate.
    let mut tasks = Vec::new();
    let per_visitor =
        Duration::from_secs_f64(args.visitors.max(1) as f64 / args.rate.max(1) as f64);
    for v in 0..args.visitors.max(1) {
        let (slots, counters, http) = (slots.clone(), counters.clone(), args.http);
        tasks.push(tokio::spawn(async move {
            visit(v, slots, counters, http, per_visitor, until).await
        }));
    }

    // Churn: a reconnect of a random tunnel every 1/churn seconds.
    let churn = {
        let (slots, counters, config, splicer) = (
            slots.clone(),
            counters.clone(),
            config.clone(),
            splicer.clone(),
        );
        let tokens: Vec<String> = (0..args.tunnels).map(token_of).collect();
        let (every, ssh) = (
            Duration::from_secs_f64(1.0 / args.churn_per_second.max(0.001)),
            args.ssh,
        );
        tokio::spawn(async move {
            let mut reconnects = Vec::new();
            let mut next = Instant::now() + every;
            while next < until {
                tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
                next += every;
                let i = rand::Rng::gen_range(&mut rand::thread_rng(), 0..slots.len());
                let (slots, counters, config, splicer, token) = (
                    slots.clone(),
                    counters.clone(),
                    config.clone(),
                    splicer.clone(),
                    tokens[i].clone(),
                );
                reconnects.push(tokio::spawn(async move {
                    reconnect(&slots[i], i, &token, config, splicer, ssh, &counters).await
                }));
            }
            for r in reconnects {
                let _ = r.await;
            }
        })
    };

    let reporter = {
        let counters = counters.clone();
        let every = Duration::from_secs(args.report_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                println!("{}", counters.json("tick", soak_start));
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    churn.await?;
    reporter.abort();
    println!("{}", counters.json("done", soak_start));

    for slot in slots.iter() {
        if let Some(session) = slot.write().await.session.take() {
            let _ = session
                .disconnect(Disconnect::ByApplication, "soak over", "en")
                .await;
        }
    }
    Ok(())
}

/// Opens tunnel `i` as a stock `ssh -R name:0:...` with a session would, and returns the
/// session and the tunnel's host once the edge has printed its URL.
async fn open_tunnel(
    config: Arc<client::Config>,
    splicer: Splicer,
    ssh: SocketAddr,
    token: &str,
    i: usize,
) -> Result<(Handle<Splicer>, String)> {
    let mut session = client::connect(config, ssh, splicer).await?;
    let auth = session.authenticate_none(token).await?;
    if !auth.success() {
        bail!("authentication refused");
    }
    session.tcpip_forward(format!("soak{i}"), 0).await?;
    let mut channel = session.channel_open_session().await?;
    channel.request_shell(true).await?;
    let mut text = String::new();
    let url = loop {
        match tokio::time::timeout(Duration::from_secs(30), channel.wait()).await {
            Ok(Some(ChannelMsg::Data { data })) => {
                text.push_str(&String::from_utf8_lossy(&data));
                if let Some(url) = live_url(&text) {
                    break url;
                }
            }
            Ok(Some(ChannelMsg::ExtendedData { data, .. })) => {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("session channel closed before the URL; the edge said: {text:?}"),
            Err(_) => bail!("no URL within 30 s; the edge said: {text:?}"),
        }
    };
    // Keep reading the session channel so the edge's later lines never back up.
    tokio::spawn(async move { while channel.wait().await.is_some() {} });
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .context("URL without a host")?
        .to_string();
    Ok((session, host))
}

/// The tunnel's URL, once the edge's "live" text has printed it on a line of its own.
fn live_url(text: &str) -> Option<String> {
    let complete = &text[..text.rfind('\n')?];
    complete
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http://") || l.starts_with("https://"))
        .map(str::to_string)
}

/// Closes tunnel `i`'s session once no visitor is using it, and opens it again.
async fn reconnect(
    slot: &RwLock<Slot>,
    i: usize,
    token: &str,
    config: Arc<client::Config>,
    splicer: Splicer,
    ssh: SocketAddr,
    counters: &Counters,
) {
    let mut slot = slot.write().await;
    slot.host = None;
    if let Some(old) = slot.session.take() {
        let _ = old
            .disconnect(Disconnect::ByApplication, "reconnecting", "en")
            .await;
    }
    for attempt in 1..=10 {
        match open_tunnel(config.clone(), splicer.clone(), ssh, token, i).await {
            Ok((session, host)) => {
                slot.session = Some(session);
                slot.host = Some(host);
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                counters
                    .reconnect_attempts_failed
                    .fetch_add(1, Ordering::Relaxed);
                eprintln!("reconnect of soak{i}, attempt {attempt}: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    counters.reconnects_given_up.fetch_add(1, Ordering::Relaxed);
}

/// One visitor: requests to random live tunnels over a kept-alive connection, paced.
async fn visit(
    v: usize,
    slots: Arc<Vec<RwLock<Slot>>>,
    counters: Arc<Counters>,
    http: SocketAddr,
    pace: Duration,
    until: Instant,
) {
    let mut conn: Option<(TcpStream, u32)> = None;
    let mut tick = tokio::time::interval(pace);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let i = rand::Rng::gen_range(&mut rand::thread_rng(), 0..slots.len());
        // A tunnel being reconnected is not live: skip it.
        let Ok(slot) = slots[i].try_read() else {
            continue;
        };
        let Some(host) = slot.host.clone() else {
            continue;
        };
        if conn.as_ref().is_none_or(|(_, used)| *used >= 100) {
            match TcpStream::connect(http).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some((s, 0));
                }
                Err(e) => {
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("visitor {v}: cannot connect to the edge: {e}");
                    continue;
                }
            }
        }
        let Some((stream, used)) = conn.as_mut() else {
            continue;
        };
        *used += 1;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(Duration::from_secs(30), get(stream, &host)).await;
        drop(slot);
        let failure = match outcome {
            Ok(Ok((200, body)))
                if body.starts_with("hello from") && body.contains(&format!("\nhost={host}\n")) =>
            {
                None
            }
            Ok(Ok((status, body))) => Some(format!(
                "{status} {:?}",
                body.chars().take(120).collect::<String>()
            )),
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("no answer within 30 s".into()),
        };
        if let Some(why) = failure {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("visitor {v}: GET / for {host} failed: {why}");
            conn = None;
        }
    }
}

/// Sends `GET /` with `Host: host` and reads the answer (status and body).
async fn get(stream: &mut TcpStream, host: &str) -> Result<(u16, String)> {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: soak\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the edge closed the connection before answering");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("answer without a status")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .context("answer without Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the edge closed the connection inside the body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    Ok((status, body))
}
