//! Rules for what an edge announces to the mesh (its mesh address, SSH host key, admin key),
//! checked by control at registration and by edges when they read the peer list.

use base64::Engine;

/// Longest host key line accepted (an RSA-16384 key is about 2.8 kB).
pub const MAX_HOST_KEY_LEN: usize = 8192;

/// Key types an OpenSSH public key line may start with.
const HOST_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
];

/// Checks an SSH public key in OpenSSH one-line format (`ssh-ed25519 AAAA… [comment]`):
/// a known key type, then base64 whose SSH wire blob names the same type.
pub fn check_host_key(line: &str) -> Result<(), String> {
    if line.len() > MAX_HOST_KEY_LEN {
        return Err(format!(
            "the host key is longer than {MAX_HOST_KEY_LEN} bytes"
        ));
    }
    if line.chars().any(|c| c.is_control()) {
        return Err("the host key must be one line without control characters".into());
    }
    let mut words = line.split_ascii_whitespace();
    let kind = words.next().unwrap_or_default();
    if !HOST_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "the host key must start with one of {}, as in the .pub file",
            HOST_KEY_TYPES.join(", ")
        ));
    }
    let blob = words
        .next()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .ok_or("the host key's second word must be the base64 key blob")?;
    // The blob is SSH wire format: a u32 length, then the key type again, then the key.
    let named = blob
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) || blob.len() <= 4 + kind.len() {
        return Err(format!(
            "the host key's blob does not hold a {kind} key; copy the whole .pub line"
        ));
    }
    Ok(())
}

/// Checks a mesh address: `host:port` or `[v6]:port`, port 1-65535, at most 255 bytes.
pub fn check_mesh_addr(addr: &str) -> Result<(), String> {
    let bad = || format!("mesh_addr {addr:?} must be host:port (or [ipv6]:port)");
    if addr.len() > 255 || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Checks an edge's admin key: 32-256 printable ASCII characters without spaces, so that it
/// carries at least 128 bits when made at random.
pub fn check_admin_key(key: &str) -> Result<(), String> {
    if (32..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("admin_key must be 32-256 printable ASCII characters without spaces".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmVmXMX/Lin3AckbWCF78kLBdOckFCqIduokQX2/jjW edge@us-1";

    #[test]
    fn openssh_host_keys_are_accepted() {
        check_host_key(ED25519).unwrap();
        check_host_key(ED25519.rsplit_once(' ').unwrap().0).unwrap();
    }

    #[test]
    fn malformed_host_keys_are_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-dss AAAAB3NzaC1kc3M=",
            "ssh-ed25519 not-base64!",
            // a valid ed25519 blob announced as RSA
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOmVmXMX/Lin3AckbWCF78kLBdOckFCqIduokQX2/jjW",
            // only the type inside the blob, no key
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmVmXMX/Lin3AckbWCF78kLBdOckFCqIduokQX2/jjW\nx",
        ] {
            assert!(check_host_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_host_key(&format!("{ED25519}{}", " x".repeat(5000))).is_err());
    }

    #[test]
    fn mesh_addresses_are_host_and_port() {
        for ok in ["127.0.0.2:7443", "edge-1.us.example:443", "[::1]:7443"] {
            check_mesh_addr(ok).unwrap();
        }
        for bad in [
            "",
            "127.0.0.2",
            "127.0.0.2:0",
            "host:99999",
            "a b:1",
            ":80",
            "[zz]:1",
            "::1:80",
        ] {
            assert!(check_mesh_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn admin_keys_are_long_and_printable() {
        check_admin_key(&"k".repeat(32)).unwrap();
        assert!(check_admin_key("short").is_err());
        assert!(check_admin_key(&format!("{} x", "k".repeat(40))).is_err());
    }
}
