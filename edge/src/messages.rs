//! What the SSH user reads: the tunnel-ready text with URL(s) and QR code, usage help.

use crate::tunnels::Tunnel;
use chrono::Utc;
use nearhop_wire::{CreateTunnelResponse, TunnelKind};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// The public URL of a tunnel.
pub fn public_url(tunnel: &Tunnel, http_port: u16) -> String {
    match (tunnel.kind, tunnel.public_port) {
        (TunnelKind::Tcp, Some(port)) => format!("tcp://{}:{port}", tunnel.hostname),
        _ if http_port == 80 => format!("http://{}", tunnel.hostname),
        _ => format!("http://{}:{http_port}", tunnel.hostname),
    }
}

/// The text printed once a tunnel is live.
pub fn tunnel_ready(
    tunnel: &Tunnel,
    resp: &CreateTunnelResponse,
    http_port: u16,
    qr: bool,
) -> String {
    let url = public_url(tunnel, http_port);
    let mut text = format!(
        "Your tunnel is live, served from region {}:\n\n    {url}\n",
        resp.region
    );
    if let Some(replaced) = &resp.replaced_tunnel {
        text.push_str(&format!(
            "\n(The name's previous tunnel on edge {} was closed: {}.)\n",
            replaced.edge_id,
            replaced.reason.replace('_', " ")
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

/// Help for a session that asked for no forward.
pub fn usage() -> String {
    "nearhop: no tunnel was requested. Ask for one with -R, for example:\n\n    \
     ssh -p 2222 -R0:localhost:8000 TOKEN@a.tunnel.test\n\n\
     Keywords go in the username (TOKEN+tcp, TOKEN+force, qr, tcp); options follow the host \
     (b:user:pass k:key w:CIDR a:Name:Value u:Name:Value r:Name x:https)."
        .to_string()
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
}
