//! What the SSH user reads: the tunnel-ready text with URL(s) and QR code, usage help.

use crate::config::Config;
use crate::ssh::hello::ClientSoftware;
use crate::tunnels::Tunnel;
use chrono::Utc;
use nearhop_wire::{CreateTunnelResponse, TunnelKind};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// The public URL of a tunnel. A `tcp` tunnel's names this edge (`tcp_host`) when the
/// operator set it: its port exists here only, and the tunnel's own name may still resolve
/// to another edge in a resolver's cache after the client reconnects elsewhere.
pub fn public_url(tunnel: &Tunnel, config: &Config) -> String {
    let host = &tunnel.hostname;
    match (tunnel.kind, tunnel.public_port) {
        (TunnelKind::Tcp, Some(port)) => {
            let host = config.tcp_host.as_deref().unwrap_or(host);
            format!("tcp://{host}:{port}")
        }
        (TunnelKind::Tls, _) => with_port("tls", host, config.public_tls_port()),
        _ => with_port("http", host, config.public_http_port()),
    }
}

/// `scheme://host`, with `:port` unless it is the scheme's default (80 for `http`, 443
/// for `https` and `tls`).
pub fn with_port(scheme: &str, host: &str, port: u16) -> String {
    let default = if scheme == "http" { 80 } else { 443 };
    if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The HTTPS URL of `host` on this edge's TLS port.
pub fn https_url(host: &str, config: &Config) -> String {
    with_port("https", host, config.public_tls_port())
}

/// The text printed once a tunnel is live; `https`: the edge has a certificate for its name.
pub fn tunnel_ready(
    tunnel: &Tunnel,
    resp: &CreateTunnelResponse,
    config: &Config,
    https: bool,
    qr: bool,
) -> String {
    let url = public_url(tunnel, config);
    let mut text = format!(
        "Your tunnel is live, served from region {}:\n\n    {url}\n",
        resp.region
    );
    let https_url = https_url(&tunnel.hostname, config);
    if tunnel.kind == TunnelKind::Http && https {
        text.push_str(&format!("    {https_url}\n"));
    }
    if tunnel.kind == TunnelKind::Http {
        text.push_str(
            "\nRequest inspector: http://localhost:4300 with -L4300:localhost:4300 in this \
             ssh command\n",
        );
    }
    if tunnel.kind == TunnelKind::Tls {
        text.push_str(&format!(
            "\nTLS passes through untouched: your local service must speak TLS itself, with a \
             certificate for {}. For HTTPS, visitors open {https_url}/\n",
            tunnel.hostname
        ));
    }
    if tunnel.kind == TunnelKind::Tcp && config.tcp_host.is_some() {
        text.push_str(&format!(
            "\nThe port is on this edge, which the URL names; the tunnel's name is {}.\n",
            tunnel.hostname
        ));
    }
    for note in notes(resp) {
        text.push_str(&format!("\n{note}\n"));
    }
    if qr {
        if let Some(code) = qr_code(&url) {
            text.push('\n');
            text.push_str(&code);
        }
    }
    text
}

/// What the user is told about a new tunnel beside its URL: why it got a random name, the
/// tunnel it replaced, when a free tunnel closes, the regions whose DNS has not confirmed it.
fn notes(resp: &CreateTunnelResponse) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(notice) = &resp.notice {
        notes.push(format!("Note: {notice}"));
    }
    if let Some(replaced) = &resp.replaced_tunnel {
        notes.push(format!(
            "(The name's previous tunnel on edge {} was closed: {}.)",
            replaced.edge_id,
            replaced.reason.as_str().replace('_', " ")
        ));
    }
    if let Some(at) = resp.expires_at {
        let minutes = (at - Utc::now()).num_minutes().max(0);
        notes.push(format!(
            "This free tunnel closes at {} UTC (in about {minutes} minutes).",
            at.format("%H:%M")
        ));
    }
    if !resp.dns.unconfirmed.is_empty() {
        notes.push(format!(
            "Note: DNS in region(s) {} has not confirmed the name yet; it may take a few seconds to resolve there.",
            resp.dns.unconfirmed.join(", ")
        ));
    }
    notes
}

/// What a client without a session channel (`ssh -N`) is told of a new tunnel: its URL, then
/// the notes a session would show beside it.
pub fn without_session(url: &str, resp: &CreateTunnelResponse) -> Vec<String> {
    std::iter::once(format!("-- nearhop tunnel live: {url}"))
        .chain(notes(resp).into_iter().map(|n| format!("-- nearhop: {n}")))
        .collect()
}

/// Most bytes of a path OpenSSH prints when it refuses a `forwarded-streamlocal` channel
/// (`%.100s`): what a client without a session channel is shown per line.
pub const PATH_LINE_BYTES: usize = 100;

/// `text` cut into lines of at most [`PATH_LINE_BYTES`] bytes, at spaces where it can be (a
/// URL stays whole when it fits a line of its own), so that none of it is lost.
pub fn path_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let sep = usize::from(!line.is_empty());
        if line.len() + sep + word.len() <= PATH_LINE_BYTES {
            if sep == 1 {
                line.push(' ');
            }
            line.push_str(word);
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        let mut rest = word;
        while rest.len() > PATH_LINE_BYTES {
            let mut cut = PATH_LINE_BYTES;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            lines.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        line.push_str(rest);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The URL as a QR code drawn with Unicode half blocks (light on dark terminals work too,
/// thanks to the quiet zone).
pub fn qr_code(url: &str) -> Option<String> {
    let code = QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// What the keywords and options are, for the help texts.
const KEYWORDS_AND_OPTIONS: &str = "Keywords go in the username (TOKEN+tcp, TOKEN+tls, \
     TOKEN+force, TOKEN+inspect, qr); options follow the host (b:user:pass k:key w:CIDR \
     a:Name:Value u:Name:Value r:Name x:https x:passpreflight x:noreverseproxy inspect).";

/// Help for a session that asked for no forward.
///
/// PuTTY cannot ask for port 0: its `-R 0:localhost:8000` (and the same in its window) is
/// dropped before anything reaches the edge, so its user sees this text although they did
/// ask. Any other port works the same here (the edge keeps the number only to match its
/// visitor channels to the forward), so PuTTY users are told to ask for port 80.
pub fn usage(software: ClientSoftware) -> String {
    match software {
        ClientSoftware::Putty => format!(
            "no tunnel was requested. PuTTY cannot ask for port 0 (it never sends -R 0:...), \
             so ask for port 80 instead, for example:\n\n    \
             plink -P 2222 -R 80:localhost:8000 TOKEN@a.tunnel.test\n\n\
             In PuTTY's window: Connection > SSH > Tunnels, Source port 80, Destination \
             localhost:8000, Remote; then Add. {KEYWORDS_AND_OPTIONS}"
        ),
        _ => format!(
            "no tunnel was requested. Ask for one with -R, for example:\n\n    \
             ssh -p 2222 -R0:localhost:8000 TOKEN@a.tunnel.test\n\n{KEYWORDS_AND_OPTIONS}"
        ),
    }
}

/// The one-line usage, after a refusal of the username.
pub fn usage_line(software: ClientSoftware) -> &'static str {
    match software {
        ClientSoftware::Putty => {
            "Usage: plink -P PORT -R 80:localhost:8000 [TOKEN+][KEYWORD+...]@HOST"
        }
        _ => "Usage: ssh -p PORT -R0:localhost:8000 [TOKEN+][KEYWORD+...]@HOST",
    }
}

/// The disconnect message of a session that asked for no forward in time.
pub fn no_forward(software: ClientSoftware) -> &'static str {
    match software {
        ClientSoftware::Putty => "No tunnel was requested (with PuTTY, use -R 80:localhost:PORT).",
        _ => "No tunnel was requested (use -R0:localhost:PORT).",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_code_is_drawn_for_a_url() {
        let code = qr_code("http://abc.free.tunnel.test:8080").unwrap();
        assert!(code.lines().count() > 10);
        assert!(code.contains('█') || code.contains('▀') || code.contains('▄'));
    }

    #[test]
    fn text_for_a_client_without_a_session_is_cut_at_spaces_into_lines_openssh_prints_whole() {
        let label = "l".repeat(63);
        let url = format!("http://{label}.a.tunnel.test:8080");
        let text = format!("-- nearhop tunnel live: {url}");
        assert!(text.len() > PATH_LINE_BYTES);
        assert_eq!(path_lines(&text), ["-- nearhop tunnel live:", url.as_str()]);
        let short = "-- nearhop tunnel live: http://blog.a.tunnel.test";
        assert_eq!(path_lines(short), [short]);
        let custom = format!("http://{}.example.com", "x".repeat(230));
        let lines = path_lines(&format!("-- nearhop tunnel live: {custom}"));
        assert!(
            lines.iter().all(|l| l.len() <= PATH_LINE_BYTES),
            "{lines:?}"
        );
        assert_eq!(lines[1..].concat(), custom, "nothing of the URL lost");
        let note = path_lines(&format!("-- nearhop: Note: {}", "word ".repeat(60)));
        assert!(
            note.len() == 4 && note.iter().all(|l| l.len() <= PATH_LINE_BYTES),
            "{note:?}"
        );
        assert!(path_lines("").is_empty());
    }

    #[test]
    fn putty_users_are_told_to_ask_for_port_80() {
        let putty = usage(ClientSoftware::Putty);
        assert!(
            putty.contains("-R 80:localhost:8000") && putty.contains("port 0"),
            "{putty}"
        );
        assert!(usage_line(ClientSoftware::Putty).contains("-R 80:"));
        assert!(no_forward(ClientSoftware::Putty).contains("-R 80:"));
        for other in [ClientSoftware::OpenSsh, ClientSoftware::Other] {
            assert!(usage(other).contains("-R0:localhost:8000"));
            assert!(!usage(other).contains("PuTTY"));
            assert!(no_forward(other).contains("-R0:"));
        }
    }
}
