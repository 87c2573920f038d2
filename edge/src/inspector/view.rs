//! What the page and the JSON API show of an exchange: the summary row, the detail with
//! headers (credentials and cookies masked unless revealed) and bodies (text, JSON
//! pretty-printed, images, other bytes as hex).

use crate::inspector::capture::{Exchange, HeaderPairs, KeptBody};
use base64::Engine;
use serde_json::{json, Value};
use std::time::UNIX_EPOCH;

/// What a masked value shows instead of the secret.
pub const MASK: &str = "••••••";

/// Most body bytes shown as hex (the whole body is still in `base64`).
const HEX_SHOWN: usize = 64 * 1024;

/// Headers that carry credentials (`b:` and other passwords, keys) or session cookies.
fn is_secret(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .iter()
    .any(|s| s.eq_ignore_ascii_case(name))
}

/// The value shown for header `name`: secrets keep their shape (the auth scheme, the
/// cookie names) but not their content.
pub fn mask(name: &str, value: &str) -> String {
    if !is_secret(name) {
        return value.to_string();
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with("authorization") {
        return match value.split_once(' ') {
            Some((scheme, _)) => format!("{scheme} {MASK}"),
            None => MASK.to_string(),
        };
    }
    // A pair without `=` is a cookie with no name (browsers send it as its bare value): a
    // value too.
    let mask_pair = |pair: &str| match pair.split_once('=') {
        Some((k, _)) => format!("{}={MASK}", k.trim()),
        None if pair.trim().is_empty() => String::new(),
        None => MASK.to_string(),
    };
    if lower == "cookie" {
        return value
            .split(';')
            .map(mask_pair)
            .collect::<Vec<_>>()
            .join("; ");
    }
    // Set-Cookie: the first pair is the cookie; the attributes after it are no secret.
    let mut parts = value.splitn(2, ';');
    let first = mask_pair(parts.next().unwrap_or(""));
    match parts.next() {
        Some(attrs) => format!("{first};{attrs}"),
        None => first,
    }
}

/// Headers as `[name, value]` pairs, masked unless `reveal`.
pub fn headers(pairs: &HeaderPairs, reveal: bool) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(n, v)| {
                let v = String::from_utf8_lossy(v);
                let shown = if reveal { v.into_owned() } else { mask(n, &v) };
                json!([n, shown])
            })
            .collect(),
    )
}

/// How a body is best shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No bytes.
    Empty,
    /// JSON, shown pretty-printed.
    Json,
    /// Text (UTF-8 without control characters other than whitespace).
    Text,
    /// An image the browser can draw.
    Image,
    /// Anything else: hex.
    Binary,
}

impl BodyKind {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Empty => "empty",
            BodyKind::Json => "json",
            BodyKind::Text => "text",
            BodyKind::Image => "image",
            BodyKind::Binary => "binary",
        }
    }
}

/// The kind of `bytes` with content type `content_type`; a body that was `cut` may end
/// inside a character, and is no complete JSON document.
pub fn classify(content_type: &str, bytes: &[u8], cut: bool) -> BodyKind {
    if bytes.is_empty() {
        return BodyKind::Empty;
    }
    let ct = content_type.to_ascii_lowercase();
    if ct.starts_with("image/") && !ct.starts_with("image/svg") {
        return BodyKind::Image;
    }
    let Some(text) = as_text(bytes, cut) else {
        return BodyKind::Binary;
    };
    let looks_json =
        ct.contains("json") || matches!(text.trim_start().chars().next(), Some('{' | '['));
    if looks_json && !cut && serde_json::from_str::<Value>(text).is_ok() {
        return BodyKind::Json;
    }
    BodyKind::Text
}

/// `bytes` as text, if they are: UTF-8 (a cut body may end inside a character) without
/// control characters other than tab, newline, carriage return and form feed.
fn as_text(bytes: &[u8], cut: bool) -> Option<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        // A character cut at the end of a cut body is still text.
        Err(e) if cut && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let printable = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\u{c}'));
    printable.then_some(text)
}

/// A classic hex dump: offset, sixteen bytes in hex, the same as ASCII.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 + 16);
    for (row, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}  ", row * 16));
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
            if i == 7 {
                out.push(' ');
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

pub(crate) fn header_value<'a>(pairs: &'a HeaderPairs, name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| &v[..])
}

/// A body for the API: sizes, whether it was cut, its kind and the bytes in the form that
/// kind is shown in, plus `base64` (always: the exact bytes kept).
pub fn body(kept: &KeptBody, pairs: &HeaderPairs) -> Value {
    let ct = header_value(pairs, "content-type")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let bytes = &kept.bytes[..];
    let kind = classify(&ct, bytes, kept.cut);
    let mut v = json!({
        "size": kept.size,
        "kept": bytes.len(),
        "cut": kept.cut,
        "complete": kept.complete,
        "kind": kind.as_str(),
        "content_type": ct,
        "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    match kind {
        BodyKind::Json => {
            // Indented as it came: keys in their order, repeated keys, numbers as written.
            let pretty = serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                .ok()
                .and_then(|_| std::str::from_utf8(bytes).ok())
                .map(indent_json);
            v["text"] = json!(pretty);
        }
        BodyKind::Text => v["text"] = json!(as_text(bytes, kept.cut)),
        BodyKind::Binary => {
            v["hex"] = json!(hex_dump(&bytes[..bytes.len().min(HEX_SHOWN)]));
            v["hex_cut"] = json!(bytes.len() > HEX_SHOWN);
        }
        BodyKind::Empty | BodyKind::Image => {}
    }
    v
}

/// `json` (valid JSON) laid out as serde_json's pretty printer does, two spaces a level,
/// without parsing it into values: every token stays as the visitor sent it, so the order
/// of keys, a key given twice and a number past f64's precision show as they are.
fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty container stays on one line.
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if let Some(&close) = chars.peek().filter(|n| matches!(n, '}' | ']')) {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since the epoch.
fn epoch_ms(e: &Exchange) -> u64 {
    e.at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The row of the live list.
pub fn summary(e: &Exchange) -> Value {
    json!({
        "id": e.id,
        "tunnel": &*e.tunnel,
        "time_ms": epoch_ms(e),
        "time": chrono::DateTime::<chrono::Utc>::from(e.at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "method": e.method,
        "path": e.path,
        "status": e.status,
        "state": e.state.as_str(),
        "duration_ms": e.total_ms.or(e.head_ms).map(|ms| (ms * 10.0).round() / 10.0),
        "request_size": e.request_body.size,
        "response_size": e.response_body.size,
        "visitor": e.visitor.to_string(),
        "replay_of": e.replay_of,
    })
}

/// The detail view: the summary with both heads and bodies.
pub fn detail(e: &Exchange, reveal: bool) -> Value {
    let mut v = summary(e);
    v["http_version"] = json!(e.version_text);
    v["head_ms"] = json!(e.head_ms);
    v["request"] = json!({
        "headers": headers(&e.request_headers, reveal),
        "body": body(&e.request_body, &e.request_headers),
    });
    v["response"] = json!({
        "headers": headers(&e.response_headers, reveal),
        "body": body(&e.response_body, &e.response_headers),
    });
    v["revealed"] = json!(reveal);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn credentials_and_cookies_are_masked_keeping_their_shape() {
        assert_eq!(
            mask("Authorization", "Basic YWxpY2U6czNjcmV0"),
            format!("Basic {MASK}")
        );
        assert_eq!(mask("proxy-authorization", "token"), MASK);
        assert_eq!(
            mask("cookie", "sid=abc; theme=dark"),
            format!("sid={MASK}; theme={MASK}")
        );
        assert_eq!(
            mask("Set-Cookie", "sid=abc; Path=/; HttpOnly"),
            format!("sid={MASK}; Path=/; HttpOnly")
        );
        // Cookies with no name are their bare value.
        assert_eq!(
            mask("cookie", "SESSIONSECRET123; a=1; "),
            format!("{MASK}; a={MASK}; ")
        );
        assert_eq!(
            mask("set-cookie", "NAMELESSSECRET456; Path=/"),
            format!("{MASK}; Path=/")
        );
        assert_eq!(mask("content-type", "text/plain"), "text/plain");
        let pairs: HeaderPairs = vec![("authorization".into(), Bytes::from("Basic c2VjcmV0"))];
        assert_eq!(headers(&pairs, false)[0][1], format!("Basic {MASK}"));
        assert_eq!(headers(&pairs, true)[0][1], "Basic c2VjcmV0");
    }

    #[test]
    fn bodies_are_classified_for_showing() {
        assert_eq!(classify("", b"", false), BodyKind::Empty);
        assert_eq!(
            classify("application/json", br#"{"a":1}"#, false),
            BodyKind::Json
        );
        assert_eq!(classify("text/plain", br#"[1, 2]"#, false), BodyKind::Json);
        assert_eq!(
            classify("application/json", br#"{"a":"#, true),
            BodyKind::Text,
            "a cut document is no JSON"
        );
        assert_eq!(classify("text/html", b"<p>hi</p>\n", false), BodyKind::Text);
        assert_eq!(classify("image/png", b"\x89PNG", false), BodyKind::Image);
        assert_eq!(classify("image/svg+xml", b"<svg/>", false), BodyKind::Text);
        assert_eq!(
            classify("application/octet-stream", &[0, 1, 2, 255], false),
            BodyKind::Binary
        );
        // "é" cut in half at the end of a cut body is still text; in a whole body it is not.
        assert_eq!(classify("", b"caf\xc3", true), BodyKind::Text);
        assert_eq!(classify("", b"caf\xc3", false), BodyKind::Binary);
    }

    #[test]
    fn hex_dump_shows_offsets_bytes_and_ascii() {
        let dump = hex_dump(b"ABCDEFGHIJKLMNOPQ\x00");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("00000000  41 42 43"), "{dump}");
        assert!(lines[0].ends_with("ABCDEFGHIJKLMNOP"), "{dump}");
        assert!(lines[1].starts_with("00000010  51 00"), "{dump}");
        assert!(lines[1].ends_with("Q."), "{dump}");
    }

    #[test]
    fn a_json_body_is_pretty_printed_and_binary_keeps_its_bytes() {
        let pairs: HeaderPairs = vec![("content-type".into(), Bytes::from("application/json"))];
        let kept = KeptBody {
            bytes: Bytes::from_static(br#"{"a":[1,2]}"#),
            size: 11,
            cut: false,
            complete: true,
        };
        let v = body(&kept, &pairs);
        assert_eq!(v["kind"], "json");
        assert!(v["text"].as_str().unwrap().contains("\n  \"a\": ["), "{v}");
        // Laid out as serde_json does, from the visitor's own tokens.
        let sent = r#" {"zeta":1, "alpha" : [2, {}, [ ]], "amount":12345678901234567890123,
            "price":1.10, "dup":"first", "dup":"se\"c,o:n{d", "e":{"x":null}}"#;
        assert_eq!(
            indent_json(sent),
            "{\n  \"zeta\": 1,\n  \"alpha\": [\n    2,\n    {},\n    []\n  ],\n  \
             \"amount\": 12345678901234567890123,\n  \"price\": 1.10,\n  \"dup\": \"first\",\n  \
             \"dup\": \"se\\\"c,o:n{d\",\n  \"e\": {\n    \"x\": null\n  }\n}"
        );
        let plain: Value = serde_json::from_str(r#"{"a":[1,{"b":"c"}],"d":{}}"#).unwrap();
        assert_eq!(
            indent_json(&plain.to_string()),
            serde_json::to_string_pretty(&plain).unwrap()
        );
        let raw = vec![0u8, 159, 146, 150, 255];
        let kept = KeptBody {
            bytes: Bytes::from(raw.clone()),
            size: 5,
            cut: false,
            complete: true,
        };
        let v = body(&kept, &Vec::new());
        assert_eq!(v["kind"], "binary");
        let back = base64::engine::general_purpose::STANDARD
            .decode(v["base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, raw);
    }
}
