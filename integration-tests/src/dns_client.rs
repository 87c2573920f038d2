//! A small DNS client for tests and benchmarks: one query over UDP from a chosen source
//! address, the response parsed into records; and `dig` for what it shows best.

use crate::process::run;
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `dig` and returns its stdout (`args` after `@server -p port`).
pub fn dig(server: SocketAddr, args: &[&str]) -> Result<String> {
    let mut c = Command::new("dig");
    c.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args);
    run(c)
}

/// `A`.
pub const QTYPE_A: u16 = 1;
/// `NS`.
pub const QTYPE_NS: u16 = 2;
/// `CNAME`.
pub const QTYPE_CNAME: u16 = 5;
/// `SOA`.
pub const QTYPE_SOA: u16 = 6;
/// `TXT`.
pub const QTYPE_TXT: u16 = 16;
/// `AAAA`.
pub const QTYPE_AAAA: u16 = 28;
/// NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// REFUSED.
pub const RCODE_REFUSED: u8 = 5;

/// One resource record of a response, data in presentation form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner, lowercase with trailing dot.
    pub name: String,
    /// Type code.
    pub rtype: u16,
    /// TTL.
    pub ttl: u32,
    /// A/AAAA address, CNAME/NS target, SOA fields, or hex for other types.
    pub data: String,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    /// Response code.
    pub rcode: u8,
    /// Answer section.
    pub answers: Vec<DnsRecord>,
    /// Authority section.
    pub authority: Vec<DnsRecord>,
}

impl DnsResponse {
    /// Data of the answers of type `rtype`, sorted.
    pub fn data_of(&self, rtype: u16) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }
}

/// Sends one UDP query (no recursion desired) from `source` (default 127.0.0.1) and parses
/// the response; 2 s timeout.
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    source: Option<Ipv4Addr>,
) -> Result<DnsResponse> {
    let sock = UdpSocket::bind((source.unwrap_or(Ipv4Addr::LOCALHOST), 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    query_on(&sock, server, name, qtype)
}

/// Like [`query`] on an existing socket (for tight loops).
pub fn query_on(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    qtype: u16,
) -> Result<DnsResponse> {
    let id: u16 =
        (Instant::now().elapsed().subsec_nanos() as u16) ^ (std::process::id() as u16) ^ next_id();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("bad name {name:?}");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock
            .recv_from(&mut buf)
            .context("waiting for a DNS response")?;
        let msg = &buf[..n];
        if n < 12 || msg[0..2] != id.to_be_bytes() {
            continue;
        }
        return parse_response(msg);
    }
}

fn next_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1);
    N.fetch_add(7919, Ordering::Relaxed)
}

fn parse_response(msg: &[u8]) -> Result<DnsResponse> {
    let rd16 = |o: usize| -> Result<u16> {
        Ok(u16::from_be_bytes([
            *msg.get(o).context("short")?,
            *msg.get(o + 1).context("short")?,
        ]))
    };
    let rcode = msg[3] & 0x0f;
    let qd = rd16(4)?;
    let an = rd16(6)?;
    let ns = rd16(8)?;
    let mut off = 12;
    for _ in 0..qd {
        let (_, next) = read_name(msg, off)?;
        off = next + 4;
    }
    let mut sections = [Vec::new(), Vec::new()];
    for (i, count) in [an, ns].into_iter().enumerate() {
        for _ in 0..count {
            let (name, next) = read_name(msg, off)?;
            let rtype = rd16(next)?;
            let ttl = (u32::from(rd16(next + 4)?) << 16) | u32::from(rd16(next + 6)?);
            let len = rd16(next + 8)? as usize;
            let start = next + 10;
            let rdata = msg.get(start..start + len).context("short rdata")?;
            let data = match rtype {
                QTYPE_A if len == 4 => {
                    Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string()
                }
                QTYPE_AAAA if len == 16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(rdata);
                    IpAddr::V6(Ipv6Addr::from(b)).to_string()
                }
                QTYPE_CNAME | QTYPE_NS => read_name(msg, start)?.0,
                QTYPE_SOA => {
                    let (mname, o) = read_name(msg, start)?;
                    let (rname, o) = read_name(msg, o)?;
                    let nums: Vec<String> = (0..5)
                        .map(|i| {
                            let hi = rd16(o + i * 4).unwrap_or(0) as u32;
                            let lo = rd16(o + i * 4 + 2).unwrap_or(0) as u32;
                            ((hi << 16) | lo).to_string()
                        })
                        .collect();
                    format!("{mname} {rname} {}", nums.join(" "))
                }
                _ => rdata.iter().map(|b| format!("{b:02x}")).collect(),
            };
            sections[i].push(DnsRecord {
                name,
                rtype,
                ttl,
                data,
            });
            off = start + len;
        }
    }
    let [answers, authority] = sections;
    Ok(DnsResponse {
        rcode,
        answers,
        authority,
    })
}

fn read_name(msg: &[u8], mut off: usize) -> Result<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(off).context("short name")? as usize;
        if len == 0 {
            if name.is_empty() {
                name.push('.');
            }
            return Ok((name, end.unwrap_or(off + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(off + 1).context("short pointer")? as usize;
            end.get_or_insert(off + 2);
            off = ptr;
            continue;
        }
        let label = msg.get(off + 1..off + 1 + len).context("short label")?;
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        name.push('.');
        off += 1 + len;
    }
    bail!("name compression loop")
}

/// `host` A from `source` to `dns`. A query without an answer within 2 s is sent again, up
/// to three times in all, as a stub resolver does (`options attempts:3`): on a loaded 2-core
/// machine a UDP query is now and then not answered in time. Only an answer is a hit or a
/// miss.
pub fn query_a(dns: SocketAddr, source: Ipv4Addr, host: &str) -> Result<DnsResponse> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match query(dns, host, QTYPE_A, Some(source)) {
            Ok(resp) => return Ok(resp),
            Err(e) if attempt < 3 && is_timeout(&e) => {
                eprintln!("no answer from {dns} for {host} in 2 s; asking again");
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}
