//! A minimal DNS client for one job: read the TXT records that prove a custom domain's
//! ownership (`_nearhop.<domain>`), from a configured resolver over UDP.

use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// Builds a query for `name` TXT with recursion desired.
fn query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut q = Vec::with_capacity(512);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("{name:?} is not a valid DNS name");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

/// Skips a possibly compressed name at `pos`; returns the position after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize> {
    loop {
        let len = *msg.get(pos).context("truncated name")? as usize;
        if len == 0 {
            return Ok(pos + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Ok(pos + 2);
        }
        pos += 1 + len;
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16> {
    let b = msg.get(pos..pos + 2).context("truncated message")?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Parses the TXT strings of the answer section (each record's strings joined).
fn parse_txt(msg: &[u8], id: u16) -> Result<Vec<String>> {
    if u16_at(msg, 0)? != id {
        bail!("answer for another query");
    }
    let rcode = msg.get(3).context("truncated header")? & 0x0F;
    if rcode == 3 {
        return Ok(Vec::new());
    }
    if rcode != 0 {
        bail!("the resolver answered with rcode {rcode}");
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let rtype = u16_at(msg, pos)?;
        let rdlen = u16_at(msg, pos + 8)? as usize;
        let rdata = msg
            .get(pos + 10..pos + 10 + rdlen)
            .context("truncated record")?;
        pos += 10 + rdlen;
        if rtype != TYPE_TXT {
            continue;
        }
        let mut text = Vec::new();
        let mut i = 0;
        while i < rdata.len() {
            let l = rdata[i] as usize;
            text.extend_from_slice(rdata.get(i + 1..i + 1 + l).context("truncated string")?);
            i += 1 + l;
        }
        out.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(out)
}

/// The TXT strings of `name`, asked of `resolver` (three tries, 2 s each).
pub fn lookup_txt(resolver: SocketAddr, name: &str) -> Result<Vec<String>> {
    let bind: SocketAddr = if resolver.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id: u16 = rand::random();
    let q = query(id, name)?;
    let mut buf = [0u8; 4096];
    let mut last = None;
    for _ in 0..3 {
        sock.send_to(&q, resolver)?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == resolver => return parse_txt(&buf[..n], id),
            Ok(_) => continue,
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "no answer from {resolver} for {name} TXT: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )
}

/// The first nameserver of `/etc/resolv.conf`, port 53.
pub fn system_resolver() -> Result<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").context("reading /etc/resolv.conf")?;
    for line in conf.lines() {
        if let Some(ip) = line.trim().strip_prefix("nameserver") {
            let ip: std::net::IpAddr = ip.trim().parse().context("nameserver address")?;
            return Ok(SocketAddr::new(ip, 53));
        }
    }
    bail!("no nameserver in /etc/resolv.conf; pass --resolver")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_the_name() {
        let q = query(7, "_nearhop.shop.example.").unwrap();
        assert_eq!(&q[..2], &[0, 7]);
        assert_eq!(&q[12..21], b"\x08_nearhop");
        assert!(query(1, "a..b").is_err());
    }

    #[test]
    fn txt_answer_parses_with_compression() {
        let mut m = query(9, "x.example").unwrap();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 1; // AN=1
        m.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 8]);
        m.extend_from_slice(&[3, b'a', b'b', b'c', 3, b'd', b'e', b'f']);
        assert_eq!(parse_txt(&m, 9).unwrap(), vec!["abcdef".to_string()]);
        assert!(parse_txt(&m, 10).is_err());
        assert!(parse_txt(&m[..m.len() - 3], 9).is_err());
    }
}
