//! Just enough of TLS to route a connection: the handshake message carried by the first
//! records of a connection, and the server name (SNI) in its ClientHello.
//!
//! This reads only framing and the `server_name` extension, and checks nothing else: a TLS
//! passthrough must route every ClientHello the creator's own server might accept, old and
//! odd ones included (rustls's own server checks refuse, for one, TLS 1.2 hellos without a
//! `signature_algorithms` extension, which old clients omit).

/// TLS record type of handshake records.
const HANDSHAKE: u8 = 0x16;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;
/// Extension carrying the server name.
const SERVER_NAME: u16 = 0x0000;

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not complete yet: read more.
    Incomplete,
    /// A complete ClientHello and the host name it asks for, if any.
    Complete(Option<String>),
    /// Not a ClientHello, or one whose structure is broken (the reason).
    Invalid(&'static str),
}

/// Parses the start of a TLS connection.
pub fn parse(bytes: &[u8]) -> Parsed {
    // Gather the handshake bytes of the leading handshake records.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != HANDSHAKE {
            return Parsed::Invalid("a record before the ClientHello is not a handshake record");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 {
            return Parsed::Invalid("an empty handshake record");
        }
        if rest.len() < 5 + len {
            handshake.extend_from_slice(&rest[5..]);
            break;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if message_len(&handshake).is_some_and(|len| handshake.len() >= 4 + len) {
            break;
        }
    }
    let Some(len) = message_len(&handshake) else {
        return Parsed::Incomplete;
    };
    if handshake[0] != CLIENT_HELLO {
        return Parsed::Invalid("the first handshake message is not a ClientHello");
    }
    if handshake.len() < 4 + len {
        return Parsed::Incomplete;
    }
    match server_name(&handshake[4..4 + len]) {
        Ok(name) => Parsed::Complete(name),
        Err(why) => Parsed::Invalid(why),
    }
}

/// The body length the first handshake message announces, once its 4-byte header is there.
fn message_len(handshake: &[u8]) -> Option<usize> {
    let header = handshake.get(..4)?;
    Some(u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize)
}

/// A cursor over a ClientHello body that fails instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("the ClientHello is shorter than its own lengths say");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8_prefixed(&mut self) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.take(1)?[0]);
        self.take(n)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u16_prefixed(&mut self) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// The host name in a ClientHello body (after the 4-byte message header), lowercase and
/// without a trailing dot; `None` when the hello names none.
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy version, random
    r.u8_prefixed()?; // session id
    r.u16_prefixed()?; // cipher suites
    r.u8_prefixed()?; // compression methods
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let mut extensions = Reader(r.u16_prefixed()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.u16_prefixed()?);
        if kind != SERVER_NAME {
            continue;
        }
        let mut list = Reader(data.u16_prefixed()?);
        while !list.0.is_empty() {
            let name_type = list.take(1)?[0];
            let name = list.u16_prefixed()?;
            if name_type != 0 {
                continue; // not a host name
            }
            let name = std::str::from_utf8(name).map_err(|_| "the server name is not text")?;
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err("the server name is not a host name");
            }
            return Ok(Some(name));
        }
        return Ok(None);
    }
    Ok(None)
}

/// A ClientHello record (TLS 1.2 framing, TLS 1.3 suites offered too), with an SNI extension
/// when `name` is given, for tests.
#[cfg(test)]
pub(crate) fn sample(name: Option<&str>) -> Vec<u8> {
    sample_with(name, true)
}

#[cfg(test)]
fn sample_with(name: Option<&str>, signature_algorithms: bool) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = name {
        let n = name.as_bytes();
        let list_len = 3 + n.len();
        ext.extend_from_slice(&[0x00, 0x00]);
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0x00);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    if signature_algorithms {
        // ed25519, ecdsa_secp256r1_sha256.
        ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x08, 0x07, 0x04, 0x03]);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![HANDSHAKE, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_clients_without_signature_algorithms_are_routed() {
        let hello = sample_with(Some("Old.Device.Example."), false);
        assert_eq!(
            parse(&hello),
            Parsed::Complete(Some("old.device.example".into()))
        );
    }

    #[test]
    fn a_hello_split_over_two_records_is_put_together() {
        let one = sample(Some("x.example"));
        let hs = &one[5..];
        let (a, b) = hs.split_at(10);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[HANDSHAKE, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(parse(&two), Parsed::Complete(Some("x.example".into())));
    }

    #[test]
    fn every_prefix_of_a_hello_is_incomplete_never_wrong() {
        let hello = sample(Some("x.example"));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn broken_hellos_are_invalid_without_panics() {
        let mut bad_name = sample(Some("x.example"));
        let at = bad_name.len() - 12; // inside the name
        bad_name[at] = b'/';
        assert!(matches!(parse(&bad_name), Parsed::Invalid(_)));
        let mut alert = sample(Some("x.example"));
        alert[0] = 0x15;
        assert!(matches!(parse(&alert), Parsed::Invalid(_)));
        // Random bodies behind a plausible header never panic.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut junk = vec![
                HANDSHAKE,
                0x03,
                0x01,
                0x00,
                0x40,
                CLIENT_HELLO,
                0x00,
                0x00,
                0x3c,
            ];
            for _ in 0..60 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                junk.push(state as u8);
            }
            let _ = parse(&junk);
        }
    }
}
