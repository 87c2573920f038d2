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
    if let Some(notice) = &resp.notice {
        text.push_str(&format!("\nNote: {notice}\n"));
    }
    if let Some(replaced) = &resp.replaced_tunnel {
        text.push_str(&format!(
            "\n(The name's previous tunnel on edge {} was closed: {}.)\n",
            replaced.edge_id,
            replaced.reason.as_str().replace('_', " ")
        ));
    }
    if let Some(at) = resp.expires_at {
        let minutes = (at - Utc::now()).num_minutes().max(0);
        text.push_str(&format!(
            "\nThis free tunnel closes at {} UTC (in about {minutes} minutes).\n",
            at.format("%H:%M")
        ));
    }
    if !resp.dns.unconfirmed.is_empty() {
        text.push_str(&format!(
            "\nNote: DNS in region(s) {} has not confirmed the name yet; it may take a few seconds to resolve there.\n",
            resp.dns.unconfirmed.join(", ")
        ));
    }
    if qr {
        if let Some(code) = qr_code(&url) {
            text.push('\n');
            text.push_str(&code);
        }
    }
    text
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
