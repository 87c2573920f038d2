//! The client's hello, read before russh takes the connection: its identification string
//! and, unless that settles it, its first KEXINIT. From them the edge chooses the ciphers it
//! offers (docs/edge.md, "Cipher choice").
//!
//! SSH lets the client's order decide among the ciphers both sides list, and stock OpenSSH
//! lists ChaCha20 and AES-CTR before AES-GCM: offering those to everyone would move OpenSSH
//! off AES-GCM. So a client gets the operator's `ssh_ciphers` when it can use one of them,
//! and the wider `ssh_fallback_ciphers` only when it cannot (Dropbear without AES-GCM).
//!
//! Every client sends its identification at once, and russh waited for it before sending
//! its KEXINIT anyway, so reading it costs nothing. A client's KEXINIT, though, follows the
//! edge's identification (OpenSSH, PuTTY and Paramiko wait for it), so waiting for it costs
//! one round trip. OpenSSH is therefore taken at its word: its identification stands for a
//! list with AES-GCM in it, and its setup is not slowed down. Other clients are asked by
//! their list, and wait that round trip.
//!
//! Long with its tests (about 240 lines): every client's identification and KEXINIT shape is
//! tested next to the reader.

use russh::cipher::Name;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The edge's identification string.
pub const SERVER_ID: &str = "SSH-2.0-nearhop";

/// [`SERVER_ID`] as sent, with its line end; russh writes exactly this (`SshId::Standard`).
const SERVER_ID_LINE: &[u8] = b"SSH-2.0-nearhop\r\n";

/// Longest identification line (RFC 4253, 4.2: 255 characters with CR LF).
const MAX_ID_LINE: usize = 255;

/// Largest first packet read ahead (RFC 4253, 6.1: every implementation takes 35000 bytes).
/// KEXINITs are 1–2 KB; a longer packet is left to russh.
const MAX_FIRST_PACKET: usize = 35_000;

/// `SSH_MSG_KEXINIT`.
const KEXINIT: u8 = 20;

/// How long a client other than OpenSSH has, after the edge's identification, to send its
/// KEXINIT. Clients send it at once (RFC 4253, 7.1); one that waits for the edge's gets the
/// wider offer when this runs out, so it is never refused for being slow, only a little late.
pub const KEXINIT_WAIT: Duration = Duration::from_secs(3);

/// The client program, as its identification string names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSoftware {
    /// OpenSSH (`SSH-2.0-OpenSSH_9.2p1 ...`, `SSH-2.0-OpenSSH_for_Windows_9.5`).
    OpenSsh,
    /// PuTTY and its `plink` (`SSH-2.0-PuTTY_Release_0.78`), which cannot ask for port 0.
    Putty,
    /// Dropbear's `dbclient` (`SSH-2.0-dropbear_2022.83`).
    Dropbear,
    /// Anything else (Paramiko, AsyncSSH, libssh, Go's x/crypto/ssh, ...).
    Other,
}

impl ClientSoftware {
    /// The program named by an identification line (`SSH-protoversion-softwareversion
    /// comments`).
    pub fn from_id(id: &str) -> ClientSoftware {
        let software = id
            .splitn(3, '-')
            .nth(2)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or("");
        if software.starts_with("OpenSSH") {
            ClientSoftware::OpenSsh
        } else if software.contains("PuTTY") {
            ClientSoftware::Putty
        } else if software.starts_with("dropbear") {
            ClientSoftware::Dropbear
        } else {
            ClientSoftware::Other
        }
    }

    /// Whether the program sends every `-R` before it asks for its session's shell or
    /// command, so that a session asking for one without a forward has asked for none (the
    /// command-line clients). A library leaves the order to its caller, who may open the
    /// session first (AsyncSSH's `create_process`, then `forward_remote_port`).
    pub fn forwards_come_first(self) -> bool {
        !matches!(self, ClientSoftware::Other)
    }
}

/// The ciphers a client's KEXINIT lists, each direction in the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCiphers {
    /// `encryption_algorithms_client_to_server`.
    pub to_server: Vec<String>,
    /// `encryption_algorithms_server_to_client`.
    pub to_client: Vec<String>,
}

/// What the edge learnt from the start of a client's conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The identification line without its line end; empty when none came.
    pub id: String,
    /// The program the identification names.
    pub software: ClientSoftware,
    /// The ciphers of the client's KEXINIT, when it was read.
    pub ciphers: Option<ClientCiphers>,
}

/// Which ciphers a client is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The operator's `ssh_ciphers`: the client can use one of them.
    Usual,
    /// `ssh_ciphers`, then `ssh_fallback_ciphers`: the client lists none of `ssh_ciphers`,
    /// or its list was not seen.
    Widened,
}

impl Offer {
    /// The label in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Offer::Usual => "usual",
            Offer::Widened => "widened",
        }
    }
}

impl ClientHello {
    /// The offer for this client, given the operator's `ssh_ciphers` (`usual`).
    pub fn offer(&self, usual: &[Name]) -> Offer {
        let shares = |names: &[String]| names.iter().any(|n| usual.iter().any(|u| u.as_ref() == n));
        match (&self.ciphers, self.software) {
            (Some(c), _) if shares(&c.to_server) && shares(&c.to_client) => Offer::Usual,
            (Some(_), _) => Offer::Widened,
            (None, ClientSoftware::OpenSsh) => Offer::Usual,
            (None, _) => Offer::Widened,
        }
    }
}

/// The ciphers offered for `offer`: `usual` alone, or `usual` followed by those of
/// `fallback` it lacks. The order matters little: the client's decides.
pub fn offered_ciphers(offer: Offer, usual: &[Name], fallback: &[Name]) -> Vec<Name> {
    let mut ciphers = usual.to_vec();
    if offer == Offer::Widened {
        for c in fallback {
            if !ciphers.contains(c) {
                ciphers.push(*c);
            }
        }
    }
    ciphers
}

/// Sends the edge's identification, then reads the client's and, unless it names OpenSSH,
/// the client's KEXINIT (for at most `kexinit_wait`). `read` holds bytes already taken from
/// `stream` (behind a PROXY header) and gets every byte read here: russh reads them again.
///
/// Anything unexpected (no identification, a packet too big, the end of the stream) ends
/// the reading with what was learnt; russh then meets the same bytes and says what is wrong.
pub async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
    kexinit_wait: Duration,
) -> io::Result<ClientHello> {
    stream.write_all(SERVER_ID_LINE).await?;
    let mut hello = ClientHello {
        id: String::new(),
        software: ClientSoftware::Other,
        ciphers: None,
    };
    let Some(line_end) = read_id_line(stream, read).await? else {
        return Ok(hello);
    };
    hello.id = String::from_utf8_lossy(&read[..line_end])
        .trim_end_matches('\r')
        .to_string();
    hello.software = ClientSoftware::from_id(&hello.id);
    // No SSH-2 client: no KEXINIT to wait for, it is told at once (`not_ssh2`).
    if not_ssh2(&hello.id, read).is_some() {
        return Ok(hello);
    }
    // OpenSSH's list too: it costs no round trip. The client sends its KEXINIT as soon as it
    // has the edge's identification, and holds its next packet (Nagle, until the client
    // turns TCP_NODELAY on after login) until that KEXINIT is acknowledged. Answered at
    // once, russh's KEXINIT leaves the client's unacknowledged and the delayed ACK cost
    // 40 ms in some setups; sent after the client's, it carries the acknowledgement.
    let start = line_end + 1;
    if let Ok(packet) = tokio::time::timeout(kexinit_wait, read_packet(stream, read, start)).await {
        hello.ciphers = packet?.and_then(|p| kexinit_ciphers(&read[p]));
    }
    Ok(hello)
}

/// What to tell a client before closing, when its first bytes (`read`, its identification
/// `id` if there was one) show it cannot speak SSH-2 with the edge: `None` for an SSH-2
/// client (`SSH-2.0-`, or `SSH-1.99-`, which speaks both), and for a connection that sent
/// nothing or closed.
pub fn not_ssh2(id: &str, read: &[u8]) -> Option<&'static str> {
    if id.starts_with("SSH-2.0-") || id.starts_with("SSH-1.99-") {
        return None;
    }
    if id.starts_with("SSH-") {
        return Some("Protocol major versions differ: this server speaks SSH-2.0 only.\r\n");
    }
    (!read.is_empty()).then_some(
        "Invalid SSH identification string: this is an SSH server (nearhop), expecting \
         SSH-2.0-... first.\r\n",
    )
}

/// Reads until `read` holds the identification line; returns the index of its `\n`.
async fn read_id_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = read.iter().position(|b| *b == b'\n') {
            return Ok(read.starts_with(b"SSH-").then_some(end));
        }
        if read.len() >= MAX_ID_LINE || read_more(stream, read).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads until `read` holds the binary packet starting at `start`; returns where its
/// payload lies in `read`.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    read: &mut Vec<u8>,
    start: usize,
) -> io::Result<Option<std::ops::Range<usize>>> {
    loop {
        if let Some(header) = read.get(start..start + 5) {
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let padding = usize::from(header[4]);
            if !(5..=MAX_FIRST_PACKET).contains(&length) || padding >= length {
                return Ok(None);
            }
            // packet_length counts the padding-length byte, the payload and the padding.
            if read.len() >= start + 4 + length {
                return Ok(Some(start + 5..start + 4 + length - padding));
            }
        }
        if read_more(stream, read).await? == 0 {
            return Ok(None);
        }
    }
}

/// Appends what `stream` has to `read`; 0 at the end of the stream.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, read: &mut Vec<u8>) -> io::Result<usize> {
    read.reserve(4096);
    stream.read_buf(read).await
}

/// The cipher lists of a KEXINIT payload (RFC 4253, 7.1), if `payload` is one.
pub fn kexinit_ciphers(payload: &[u8]) -> Option<ClientCiphers> {
    let mut rest = payload.strip_prefix(&[KEXINIT])?.get(16..)?; // the cookie
    let mut lists = Vec::with_capacity(4);
    // kex, host key, then the ciphers of each direction.
    for _ in 0..4 {
        let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let names = rest.get(4..4usize.checked_add(length)?)?;
        lists.push(std::str::from_utf8(names).ok()?);
        rest = &rest[4 + length..];
    }
    let names = |list: &str| {
        list.split(',')
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect()
    };
    Some(ClientCiphers {
        to_server: names(lists[2]),
        to_client: names(lists[3]),
    })
}

/// The stream russh gets after [`greet`]: reads pass through (put the bytes `greet` read
/// in front with `Prefixed`), and russh's own identification, which `greet` sent already,
/// is dropped from the start of its writes.
pub struct AlreadyIdentified<S> {
    inner: S,
    unsent: &'static [u8],
}

impl<S> AlreadyIdentified<S> {
    /// Wraps the stream `greet` spoke on; russh must be configured with [`SERVER_ID`].
    pub fn new(inner: S) -> AlreadyIdentified<S> {
        AlreadyIdentified {
            inner,
            unsent: SERVER_ID_LINE,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AlreadyIdentified<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AlreadyIdentified<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unsent.is_empty() || data.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        let n = this.unsent.len().min(data.len());
        if data[..n] != this.unsent[..n] {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "russh began with something other than the identification already sent",
            )));
        }
        this.unsent = &this.unsent[n..];
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.unsent.is_empty() {
            return Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_that_speak_ssh2_are_let_on_and_the_others_are_told_why() {
        assert_eq!(
            not_ssh2("SSH-2.0-OpenSSH_9.2p1", b"SSH-2.0-OpenSSH_9.2p1\r\n"),
            None
        );
        assert_eq!(
            not_ssh2("SSH-1.99-OpenSSH_3.9", b"SSH-1.99-OpenSSH_3.9\r\n"),
            None
        );
        assert_eq!(not_ssh2("", b""), None, "nothing sent: nothing to tell");
        let old = not_ssh2("SSH-1.5-OpenSSH_1.2.3", b"SSH-1.5-OpenSSH_1.2.3\n");
        assert!(old.is_some_and(|s| s.contains("SSH-2.0 only")), "{old:?}");
        let http = not_ssh2("", b"GET / HTTP/1.1\r\n");
        assert!(
            http.is_some_and(|s| s.starts_with("Invalid SSH identification string")),
            "{http:?}"
        );
    }
    use russh::cipher::{AES_128_CTR, AES_128_GCM, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};

    const USUAL: [Name; 2] = [AES_128_GCM, AES_256_GCM];

    /// A KEXINIT packet (length, padding length, payload, padding) listing `ciphers` both
    /// ways.
    fn kexinit_packet(ciphers: &str) -> Vec<u8> {
        let mut payload = vec![KEXINIT];
        payload.extend_from_slice(&[7; 16]);
        let lists = [
            "curve25519-sha256",
            "ssh-ed25519",
            ciphers,
            ciphers,
            "hmac-sha2-256",
            "hmac-sha2-256",
            "none",
            "none",
            "",
            "",
        ];
        for list in lists {
            payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
            payload.extend_from_slice(list.as_bytes());
        }
        payload.extend_from_slice(&[0, 0, 0, 0, 0]);
        let padding = 8 - (payload.len() + 5) % 8 + 4;
        let mut packet = ((payload.len() + padding + 1) as u32)
            .to_be_bytes()
            .to_vec();
        packet.push(padding as u8);
        packet.extend_from_slice(&payload);
        packet.extend(std::iter::repeat_n(0, padding));
        packet
    }

    /// Runs [`greet`] against a client that sends `sent` and nothing more; returns what it
    /// learnt, the bytes it read and what the client received.
    async fn greet_client(sent: &[u8], wait: Duration) -> (ClientHello, Vec<u8>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(sent).await.expect("client writes");
        let mut read = Vec::new();
        let hello = greet(&mut server, &mut read, wait).await.expect("greet");
        drop(server);
        let mut received = Vec::new();
        client
            .read_to_end(&mut received)
            .await
            .expect("client reads");
        (hello, read, received)
    }

    #[test]
    fn identification_strings_name_the_program() {
        let cases = [
            (
                "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10",
                ClientSoftware::OpenSsh,
            ),
            ("SSH-2.0-OpenSSH_for_Windows_9.5", ClientSoftware::OpenSsh),
            ("SSH-1.99-OpenSSH_3.9", ClientSoftware::OpenSsh),
            ("SSH-2.0-PuTTY_Release_0.78", ClientSoftware::Putty),
            ("SSH-2.0-dropbear_2022.83", ClientSoftware::Dropbear),
            ("SSH-2.0-PuTTY_KiTTY", ClientSoftware::Putty),
            ("SSH-2.0-paramiko_5.1.0", ClientSoftware::Other),
            ("SSH-2.0-AsyncSSH_2.24.1", ClientSoftware::Other),
            // A comment is not the program.
            ("SSH-2.0-Go OpenSSH-compatible", ClientSoftware::Other),
            ("", ClientSoftware::Other),
        ];
        for (id, software) in cases {
            assert_eq!(ClientSoftware::from_id(id), software, "{id}");
        }
    }

    #[test]
    fn a_kexinit_gives_its_cipher_lists_and_anything_else_gives_none() {
        let packet = kexinit_packet("chacha20-poly1305@openssh.com,aes128-ctr");
        let padding = usize::from(packet[4]);
        let payload = &packet[5..packet.len() - padding];
        let ciphers = kexinit_ciphers(payload).expect("a KEXINIT");
        assert_eq!(
            ciphers.to_server,
            ["chacha20-poly1305@openssh.com", "aes128-ctr"]
        );
        assert_eq!(ciphers.to_client, ciphers.to_server);
        // Cut anywhere inside the lists, or not a KEXINIT at all.
        for cut in [0, 1, 17, 30, 60] {
            assert_eq!(kexinit_ciphers(&payload[..cut]), None, "cut at {cut}");
        }
        let mut other = payload.to_vec();
        other[0] = 21;
        assert_eq!(kexinit_ciphers(&other), None);
        // A list length far past the end.
        let mut huge = payload.to_vec();
        huge[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(kexinit_ciphers(&huge), None);
    }

    #[test]
    fn clients_that_can_use_the_usual_ciphers_get_only_them() {
        let hello = |software, ciphers: Option<&[&str]>| ClientHello {
            id: String::new(),
            software,
            ciphers: ciphers.map(|c| ClientCiphers {
                to_server: c.iter().map(|s| s.to_string()).collect(),
                to_client: c.iter().map(|s| s.to_string()).collect(),
            }),
        };
        let openssh = [
            "chacha20-poly1305@openssh.com",
            "aes128-ctr",
            "aes128-gcm@openssh.com",
        ];
        let putty = [
            "aes256-ctr",
            "aes256-cbc",
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
        ];
        let dropbear = ["chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr"];
        let other = ClientSoftware::Other;
        assert_eq!(hello(other, Some(&openssh)).offer(&USUAL), Offer::Usual);
        assert_eq!(
            hello(ClientSoftware::Putty, Some(&putty)).offer(&USUAL),
            Offer::Usual
        );
        assert_eq!(hello(other, Some(&dropbear)).offer(&USUAL), Offer::Widened);
        // OpenSSH's list is not waited for; its identification stands for it.
        assert_eq!(
            hello(ClientSoftware::OpenSsh, None).offer(&USUAL),
            Offer::Usual
        );
        // A list seen wins over the identification.
        assert_eq!(
            hello(ClientSoftware::OpenSsh, Some(&dropbear)).offer(&USUAL),
            Offer::Widened
        );
        // A client whose list never came is not turned away.
        assert_eq!(hello(other, None).offer(&USUAL), Offer::Widened);
        // Both directions must share a cipher.
        let one_way = ClientHello {
            ciphers: Some(ClientCiphers {
                to_server: vec!["aes128-gcm@openssh.com".into()],
                to_client: vec!["aes128-ctr".into()],
            }),
            ..hello(other, None)
        };
        assert_eq!(one_way.offer(&USUAL), Offer::Widened);
    }

    #[test]
    fn the_widened_offer_adds_the_fallback_after_the_usual_ciphers() {
        let fallback = [AES_128_GCM, CHACHA20_POLY1305, AES_256_CTR, AES_128_CTR];
        assert_eq!(offered_ciphers(Offer::Usual, &USUAL, &fallback), USUAL);
        assert_eq!(
            offered_ciphers(Offer::Widened, &USUAL, &fallback),
            [
                AES_128_GCM,
                AES_256_GCM,
                CHACHA20_POLY1305,
                AES_256_CTR,
                AES_128_CTR
            ]
        );
        assert_eq!(offered_ciphers(Offer::Widened, &USUAL, &[]), USUAL);
    }

    #[tokio::test]
    async fn every_client_is_taken_at_its_kexinit() {
        let mut sent = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n".to_vec();
        sent.extend(kexinit_packet(
            "chacha20-poly1305@openssh.com,aes128-ctr,aes128-gcm@openssh.com",
        ));
        let (hello, read, received) = greet_client(&sent, KEXINIT_WAIT).await;
        assert_eq!(received, SERVER_ID_LINE);
        assert_eq!(hello.id, "SSH-2.0-OpenSSH_9.2p1 Debian");
        assert_eq!(hello.software, ClientSoftware::OpenSsh);
        assert_eq!(hello.offer(&USUAL), Offer::Usual, "it lists AES-GCM");
        assert_eq!(read, sent, "every byte read is kept for russh");

        // An OpenSSH configured without AES-GCM gets the fallback too.
        let mut sent = b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n".to_vec();
        sent.extend(kexinit_packet("chacha20-poly1305@openssh.com"));
        let (hello, _, _) = greet_client(&sent, KEXINIT_WAIT).await;
        assert_eq!(hello.offer(&USUAL), Offer::Widened);

        let mut sent = b"SSH-2.0-dropbear_2022.83\r\n".to_vec();
        sent.extend(kexinit_packet("chacha20-poly1305@openssh.com,aes128-ctr"));
        // Dropbear sends a guessed key exchange packet right behind its KEXINIT.
        sent.extend_from_slice(&[0, 0, 0, 12, 4, 30, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0]);
        let (hello, read, _) = greet_client(&sent, KEXINIT_WAIT).await;
        assert_eq!(hello.software, ClientSoftware::Dropbear);
        let ciphers = hello.ciphers.clone().expect("its KEXINIT was read");
        assert_eq!(ciphers.to_client[0], "chacha20-poly1305@openssh.com");
        assert_eq!(hello.offer(&USUAL), Offer::Widened);
        assert_eq!(read, sent, "every byte read is kept for russh");
    }

    #[tokio::test]
    async fn a_client_without_kexinit_or_identification_still_gets_an_answer() {
        // PuTTY's identification, then silence for good: the wait runs out, however long.
        let (hello, _, _) = greet_client(b"SSH-2.0-PuTTY_Release_0.78\r\n", Duration::ZERO).await;
        assert_eq!(
            (hello.software, hello.ciphers.clone()),
            (ClientSoftware::Putty, None)
        );
        assert_eq!(hello.offer(&USUAL), Offer::Widened);
        // Not SSH at all.
        let (hello, read, _) = greet_client(b"GET / HTTP/1.1\r\n\r\n", KEXINIT_WAIT).await;
        assert_eq!(hello.id, "");
        assert_eq!(read, b"GET / HTTP/1.1\r\n\r\n");
        // A first packet longer than any KEXINIT is left to russh.
        let mut sent = b"SSH-2.0-x\r\n".to_vec();
        sent.extend_from_slice(&[0, 1, 0, 0, 4, 20]);
        let (hello, _, _) = greet_client(&sent, KEXINIT_WAIT).await;
        assert_eq!(hello.ciphers, None);
    }

    #[tokio::test]
    async fn russh_identification_is_not_sent_twice() {
        let (client, server) = tokio::io::duplex(1024);
        let mut w = AlreadyIdentified::new(server);
        w.write_all(SERVER_ID_LINE)
            .await
            .expect("russh's identification");
        w.write_all(b"packet").await.expect("then packets");
        drop(w);
        let mut received = Vec::new();
        let mut client = client;
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"packet");
        // Anything else first is an error, not silently lost bytes.
        let (_client, server) = tokio::io::duplex(1024);
        let mut w = AlreadyIdentified::new(server);
        assert!(w.write_all(b"SSH-2.0-other\r\n").await.is_err());
        assert_eq!(format!("{SERVER_ID}\r\n").as_bytes(), SERVER_ID_LINE);
    }
}
