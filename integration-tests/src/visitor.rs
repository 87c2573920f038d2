//! Visitors of a tunnel: a lookup through one region's DNS as a browser's resolver asks,
//! and requests through the edge the answer names (raw HTTP/1.1, reqwest clients pinned to
//! an edge, `curl` over TLS).

use crate::dns_client::{query_a, QTYPE_A, QTYPE_CNAME, RCODE_NXDOMAIN};
use crate::edge::url_host_port;
use crate::poll::PATIENCE;
use crate::Stack;
use anyhow::{ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// What a region's DNS said about a tunnel name (an `A` query, as a browser's resolver asks).
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Response code.
    pub rcode: u8,
    /// The CNAME target, lowercase with trailing dot.
    pub cname: Option<String>,
    /// The address at the end of the chain.
    pub addr: Option<Ipv4Addr>,
    /// The stack's region whose edge has that address.
    pub addr_region: Option<String>,
}

impl Lookup {
    /// Whether the answer leads a visitor to region `region`'s edge: the CNAME names
    /// `<region>.<zone>` and the chain ends at that region's edge address. A CNAME alone is
    /// not enough: without the address the visitor has nowhere to go.
    pub fn points_at(&self, region: &str, zone: &str) -> bool {
        self.cname.as_deref() == Some(&format!("{region}.{zone}."))
            && self.addr_region.as_deref() == Some(region)
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        match (&self.cname, self.addr) {
            _ if self.rcode == RCODE_NXDOMAIN => "NXDOMAIN".into(),
            (Some(c), Some(a)) => format!("CNAME {c} A {a}"),
            (Some(c), None) => format!("CNAME {c} (no address)"),
            (None, Some(a)) => format!("A {a} (no CNAME)"),
            (None, None) => format!("rcode {} and no answer", self.rcode),
        }
    }
}

/// Asks region `resolver`'s DNS for `host` A, from the region's own address (a resolver
/// "in" that region).
pub fn lookup(stack: &Stack, resolver: usize, host: &str) -> Result<Lookup> {
    let r = &stack.regions[resolver];
    let resp = query_a(r.dns_addr(), r.ip, host)?;
    let cname = resp.data_of(QTYPE_CNAME).into_iter().next();
    let addr: Option<Ipv4Addr> = resp
        .data_of(QTYPE_A)
        .into_iter()
        .next()
        .and_then(|a| a.parse().ok());
    let addr_region = addr.and_then(|a| {
        stack
            .regions
            .iter()
            .find(|r| r.ip == a)
            .map(|r| r.name.clone())
    });
    Ok(Lookup {
        rcode: resp.rcode,
        cname,
        addr,
        addr_region,
    })
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status and the body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: nearhop-e2e\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The visitor HTTP port of the edge at `addr`. In production every edge serves port 80;
/// the test stack gives each region's edge its own free port, so a visitor that follows a
/// record to another region must use that region's port, not the one in an older URL.
pub fn edge_http_port(stack: &Stack, addr: Ipv4Addr) -> Option<u16> {
    stack
        .regions
        .iter()
        .find(|r| r.ip == addr)
        .map(|r| r.ports.http)
}

/// A visitor in region `resolver`: resolves the URL's name there, then fetches `path`
/// through the address the answer gave (on the URL's port). Fails on any miss.
pub fn visit(stack: &Stack, resolver: usize, url: &str, path: &str) -> Result<String> {
    let (host, port) = url_host_port(url)?;
    let l = lookup(stack, resolver, &host)?;
    let addr = l.addr.with_context(|| {
        format!(
            "{host} via {}'s DNS: {}",
            stack.regions[resolver].name,
            l.describe()
        )
    })?;
    let port = edge_http_port(stack, addr).unwrap_or(port);
    let (status, body) = http_get(SocketAddr::from((addr, port)), &host, path)?;
    ensure!(status == 200, "GET {url}{path} via {addr}: {status} {body}");
    Ok(body)
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

/// Starts downloading `size` bytes of `url`'s tunnel (its `/blob/{size}`) from the edge
/// listening at `edge`, on a connection of its own, and reads only the answer's head (which
/// must be a 200): the caller reads the body, or does not.
pub fn start_download(edge: SocketAddr, url: &str, size: usize) -> TcpStream {
    let (host, _) = url_host_port(url).expect("the URL's host");
    let mut t = TcpStream::connect(edge).expect("connect to the edge");
    let request = format!("GET /blob/{size} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    t.write_all(request.as_bytes()).expect("send the request");
    t.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let head = read_head(&mut t);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "the download started: {head}"
    );
    t
}

/// Reads an HTTP response head from a raw stream (a visitor that speaks HTTP by hand, for
/// upgrades).
pub fn read_head(stream: &mut impl std::io::Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A blocking connection to `edge` from `source` (any loopback address), reads bounded by
/// [`PATIENCE`].
fn blocking_from(source: Ipv4Addr, edge: SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            socket.connect(edge).await
        })
        .expect("connect");
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// Opens a raw connection to `edge` from `source` (any loopback address) and asks for an
/// `Upgrade: echo` of `/socket` on `host`; returns the stream and the response head.
pub fn upgrade_from(
    source: Ipv4Addr,
    edge: SocketAddr,
    host: &str,
) -> (std::net::TcpStream, String) {
    let mut ws = blocking_from(source, edge);
    write!(
        ws,
        "GET /socket HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
    )
    .expect("request");
    let head = read_head(&mut ws);
    (ws, head)
}

/// A WebSocket client (tungstenite, RFC 6455 with its handshake checks) from `source` to
/// `ws://host/path` through the edge at `edge`; `Err` carries the refusal (its status).
pub fn websocket_from(
    source: Ipv4Addr,
    edge: SocketAddr,
    host: &str,
    path: &str,
) -> Result<tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>, String> {
    let stream = blocking_from(source, edge);
    match tokio_tungstenite::tungstenite::client(format!("ws://{host}{path}"), stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::HandshakeError::Failure(e)) => Err(e.to_string()),
        Err(e) => Err(format!("handshake interrupted: {e}")),
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

#[cfg(test)]
mod tests {
    use super::Lookup;
    use crate::dns_client::{RCODE_NOERROR, RCODE_NXDOMAIN};

    fn answer(cname: Option<&str>, addr: Option<[u8; 4]>, region: Option<&str>) -> Lookup {
        Lookup {
            rcode: RCODE_NOERROR,
            cname: cname.map(str::to_string),
            addr: addr.map(Into::into),
            addr_region: region.map(str::to_string),
        }
    }

    #[test]
    fn a_lookup_points_at_a_region_only_with_its_edge_address() {
        let full = answer(Some("ap.a.tunnel.test."), Some([127, 0, 0, 3]), Some("ap"));
        assert!(full.points_at("ap", "a.tunnel.test"));
        assert!(!full.points_at("eu", "a.tunnel.test"));
        // The CNAME alone leads nowhere.
        let cname_only = answer(Some("ap.a.tunnel.test."), None, None);
        assert!(!cname_only.points_at("ap", "a.tunnel.test"));
        // An address of another region behind the right CNAME is stale.
        let elsewhere = answer(Some("ap.a.tunnel.test."), Some([127, 0, 0, 2]), Some("eu"));
        assert!(!elsewhere.points_at("ap", "a.tunnel.test"));
        let nxdomain = Lookup {
            rcode: RCODE_NXDOMAIN,
            ..answer(None, None, None)
        };
        assert!(!nxdomain.points_at("ap", "a.tunnel.test"));
    }
}
