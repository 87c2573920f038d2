//! A hostile SSH peer that starts key exchange and stops: it sends its identification and
//! a well-formed KEXINIT, then nothing, so the server waits inside key exchange. A server
//! that bounds only the wait for the identification, or only authentication once keys
//! are set, would keep such a connection (and its file descriptor) for ever.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

/// An SSH name-list: a u32 length, then the names joined by commas.
fn name_list(names: &str) -> Vec<u8> {
    let mut out = (names.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(names.as_bytes());
    out
}

/// A KEXINIT (RFC 4253, 7.1) offering what the edge accepts, as one unencrypted packet.
pub fn kexinit_packet() -> Vec<u8> {
    let ciphers =
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr";
    let mut payload = vec![20u8];
    payload.extend_from_slice(&[7u8; 16]);
    for list in [
        "curve25519-sha256,curve25519-sha256@libssh.org",
        "ssh-ed25519",
        ciphers,
        ciphers,
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        payload.extend(name_list(list));
    }
    payload.push(0); // first_kex_packet_follows
    payload.extend_from_slice(&0u32.to_be_bytes());
    // Padding: at least 4 bytes, the whole packet a multiple of 8.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = ((1 + payload.len() + padding) as u32)
        .to_be_bytes()
        .to_vec();
    packet.push(padding as u8);
    packet.extend(payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    packet
}

/// Connects to `server`, sends an identification and a KEXINIT, and returns the stream
/// without sending anything more.
pub fn stall_in_key_exchange(server: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(server)?;
    s.write_all(b"SSH-2.0-stalling_1.0\r\n")?;
    s.write_all(&kexinit_packet())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kexinit_is_a_well_formed_packet() {
        let p = kexinit_packet();
        let length = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        assert_eq!(length + 4, p.len());
        assert_eq!(p.len() % 8, 0);
        assert!(p[4] >= 4, "padding");
        assert_eq!(p[5], 20, "SSH_MSG_KEXINIT");
    }
}
