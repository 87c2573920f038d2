//! What edges say to each other over the mesh: which listener a relayed visitor came in on,
//! and the holdings feed (the tunnel names an edge holds, as a snapshot then changes).
//!
//! The mesh rides on SSH between edges. A relayed visitor is one `direct-tcpip` channel whose
//! "host to connect" names the listener (`nearhop-relay/http`, `…/https`, `…/tls`) and whose
//! originator is the visitor's own address, so the holder applies the tunnel's rules (`w:`,
//! `X-Forwarded-For`) to the real visitor. The feed is a session channel running the command
//! [`HOLDINGS_COMMAND_V4`] (or [`HOLDINGS_COMMAND_V3`], [`HOLDINGS_COMMAND_V2`],
//! [`HOLDINGS_COMMAND`]); the holder writes one line per change, each name with control's
//! proof from `v3` on, the reader answers markers, and from `v2` on both write grants of
//! credit to relay channels (`=ID N`, see `mesh::credits`), which the relaying edge numbers in
//! the channel's "port to connect". On `v4` those channels open with 32 KiB of credit each
//! way instead of 1 MiB, and either side may ask an idle channel's credit back (`~ID`,
//! answered `^ID N`: [`Credit`]).

use nearhop_wire::TunnelKind;
use std::fmt;

/// The command a peer runs on a session channel to receive the holdings feed.
pub const HOLDINGS_COMMAND: &str = "nearhop-holdings v1";

/// The same feed from a peer that also grants credit for its relay channels (`=ID N` lines
/// among its answers, see `mesh::credits`), and numbers each relay channel with its
/// `direct-tcpip` "port to connect". An edge that does not know it refuses the command,
/// and the peer asks for [`HOLDINGS_COMMAND`] instead (a fleet mid-upgrade).
pub const HOLDINGS_COMMAND_V2: &str = "nearhop-holdings v2";

/// The `v2` feed whose `+` lines also carry control's proof that the announcing edge holds
/// the name (`+NAME KIND TUNNEL_ID PROOF`, see `nearhop_wire::holder_proof`). An edge that
/// does not know it refuses it, and the peer asks for [`HOLDINGS_COMMAND_V2`].
pub const HOLDINGS_COMMAND_V3: &str = "nearhop-holdings v3";

/// The `v3` feed whose relay channels open with 32 KiB of credit each way
/// (`mesh::credits::OPENING_CREDIT`) instead of 1 MiB, so that what a relay channel may make
/// an edge hold past that comes out of its `relay_window_budget_bytes`: the relaying edge
/// grants the holder the rest of a 1 MiB window at once, as far as its budget has room. An
/// edge that does not know it refuses it, and the peer asks for [`HOLDINGS_COMMAND_V3`].
pub const HOLDINGS_COMMAND_V4: &str = "nearhop-holdings v4";

/// Prefix of the `direct-tcpip` "host to connect" of a relayed visitor connection.
const RELAY_PREFIX: &str = "nearhop-relay/";

/// Longest line of the holdings feed: a DNS name is at most 253 characters, a tunnel id at
/// most 20 and a proof 86.
pub const MAX_LINE: usize = 400;

/// The visitor listener a relayed connection arrived on, at the relaying edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayListener {
    /// Plain HTTP: the channel carries the visitor's HTTP/1.1 bytes.
    Http,
    /// HTTPS terminated by the relaying edge: the channel carries the decrypted HTTP/1.1.
    Https,
    /// TLS passthrough: the channel carries the visitor's TLS bytes, ClientHello first.
    Tls,
}

impl RelayListener {
    /// The channel's "host to connect" for this listener.
    pub fn channel_target(self) -> String {
        format!("{RELAY_PREFIX}{}", self.as_str())
    }

    /// Reads a channel's "host to connect"; `None` when it is not a relay channel.
    pub fn from_channel_target(target: &str) -> Option<RelayListener> {
        match target.strip_prefix(RELAY_PREFIX)? {
            "http" => Some(RelayListener::Http),
            "https" => Some(RelayListener::Https),
            "tls" => Some(RelayListener::Tls),
            _ => None,
        }
    }

    /// The listener's name, as in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayListener::Http => "http",
            RelayListener::Https => "https",
            RelayListener::Tls => "tls",
        }
    }
}

/// The reader's answer to a [`HoldingChange::Sync`] marker: `!N`.
pub fn ack_line(marker: u64) -> String {
    format!("!{marker}\n")
}

/// What one side of a link says to the other about a relay channel's credit, among the
/// feed's lines (the holder) or its answers (the relaying edge); see `mesh::credits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// `=ID N`: the other side may send `N` more bytes on channel `ID`.
    Grant(u32, u32),
    /// `~ID` (`v4`): channel `ID` has been idle here; give back the credit you hold for it
    /// past 32 KiB.
    Ask(u32),
    /// `^ID N` (`v4`): `N` bytes of the credit for channel `ID` are given back, the answer
    /// to `~ID`.
    Returned(u32, u32),
}

impl Credit {
    /// The line that says it.
    pub fn line(self) -> String {
        match self {
            Credit::Grant(id, bytes) => format!("={id} {bytes}\n"),
            Credit::Ask(id) => format!("~{id}\n"),
            Credit::Returned(id, bytes) => format!("^{id} {bytes}\n"),
        }
    }

    /// Reads a credit line; `None` for anything else.
    fn parse(line: &str) -> Option<Credit> {
        let number = |word: &str| word.parse::<u32>().ok();
        let pair = |rest: &str| {
            let (id, bytes) = rest.split_once(' ')?;
            Some((number(id)?, number(bytes)?))
        };
        let (sign, rest) = line.split_at_checked(1)?;
        match sign {
            "=" => pair(rest).map(|(id, bytes)| Credit::Grant(id, bytes)),
            "^" => pair(rest).map(|(id, bytes)| Credit::Returned(id, bytes)),
            "~" => number(rest).map(Credit::Ask),
            _ => None,
        }
    }
}

/// What a feed's reader says back to the holder, and the holder's credit lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It applied every line up to this marker (`!N`).
    Ack(u64),
    /// About a relay channel's credit.
    Credit(Credit),
}

/// Reads a reader's answer line (or a credit line of the holder's); `None` for anything
/// else.
pub fn parse_answer(line: &str) -> Option<Answer> {
    if let Some(marker) = line.strip_prefix('!') {
        return marker.parse().ok().map(Answer::Ack);
    }
    Credit::parse(line).map(Answer::Credit)
}

/// Takes every whole line off the front of `answers` (a peer's answers, as they arrive) and
/// returns them in order; a partial last line stays. Lines that are not answers are
/// skipped.
pub fn take_answers(answers: &mut String) -> Vec<Answer> {
    let mut taken = Vec::new();
    let mut used = 0;
    while let Some(end) = answers[used..].find('\n') {
        taken.extend(parse_answer(&answers[used..used + end]));
        used += end + 1;
    }
    answers.drain(..used);
    taken
}

/// Control's proof that the announcing edge holds a name as one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// Control's id of the tunnel: of two proven claims for a name, the higher wins.
    pub tunnel_id: i64,
    /// Control's signature (`nearhop_wire::holder_proof`).
    pub signature: String,
}

#[cfg(test)]
impl Proof {
    /// `signer`'s proof that `peer` holds `name` as HTTP tunnel `tunnel_id` (tests).
    pub fn by(
        signer: &nearhop_wire::holder_proof::HolderSigner,
        peer: &str,
        name: &str,
        tunnel_id: i64,
    ) -> Proof {
        Proof {
            tunnel_id,
            signature: signer.prove(name, peer, tunnel_id, TunnelKind::Http),
        }
    }
}

#[cfg(test)]
impl HoldingChange {
    /// `peer`'s claim to `name` as HTTP tunnel `tunnel_id`, proven by `signer` (tests).
    pub fn proven(
        signer: &nearhop_wire::holder_proof::HolderSigner,
        peer: &str,
        name: &str,
        tunnel_id: i64,
    ) -> HoldingChange {
        let proof = Proof::by(signer, peer, name, tunnel_id);
        HoldingChange::Added(name.to_string(), TunnelKind::Http, Some(proof))
    }
}

/// One line of the holdings feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldingChange {
    /// The edge now holds a tunnel with this name, of this kind (a relaying edge's TLS
    /// listener passes a `tls` tunnel's bytes through and terminates the others), with
    /// control's proof from a `v3` feed on (`None` on older feeds, or for a tunnel set up by a
    /// control that does not sign).
    Added(String, TunnelKind, Option<Proof>),
    /// The edge no longer holds it.
    Removed(String),
    /// Forget everything this edge said before: a full snapshot follows (a slow reader fell
    /// behind), or nothing more (the edge started to stop).
    Reset,
    /// A marker: the reader answers `!N` on the same channel once it has applied every line
    /// before it (see `mesh::acks`).
    Sync(u64),
}

impl HoldingChange {
    /// Parses one line (without its newline); `None` for a line that is not in the protocol.
    pub fn parse(line: &str) -> Option<HoldingChange> {
        if line.len() > MAX_LINE {
            return None;
        }
        if line == "!reset" {
            return Some(HoldingChange::Reset);
        }
        if let Some(marker) = line.strip_prefix('?') {
            return marker.parse().ok().map(HoldingChange::Sync);
        }
        let (sign, rest) = line.split_at_checked(1)?;
        let (name, kind, proof) = match (sign, rest.split_once(' ')) {
            ("+", Some((name, claim))) => {
                let mut words = claim.split(' ');
                let kind = kind_from(words.next()?)?;
                let proof = match (words.next(), words.next(), words.next()) {
                    (None, _, _) => None,
                    (Some(id), Some(signature), None) => Some(Proof {
                        tunnel_id: id.parse().ok().filter(|id: &i64| *id > 0)?,
                        signature: proof_word(signature)?,
                    }),
                    _ => return None,
                };
                (name, Some(kind), proof)
            }
            ("-", None) => (rest, None, None),
            _ => return None,
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return None;
        }
        Some(match kind {
            Some(kind) => HoldingChange::Added(name.to_string(), kind, proof),
            None => HoldingChange::Removed(name.to_string()),
        })
    }
}

/// A proof as it may appear in a line: base64url characters of a proof's length (whether it
/// checks out is for the reader to find, with control's key).
fn proof_word(word: &str) -> Option<String> {
    let fits = word.len() == nearhop_wire::holder_proof::PROOF_LEN
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    fits.then(|| word.to_string())
}

fn kind_from(word: &str) -> Option<TunnelKind> {
    match word {
        "http" => Some(TunnelKind::Http),
        "tls" => Some(TunnelKind::Tls),
        "tcp" => Some(TunnelKind::Tcp),
        _ => None,
    }
}

fn kind_word(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::Http => "http",
        TunnelKind::Tls => "tls",
        TunnelKind::Tcp => "tcp",
    }
}

impl HoldingChange {
    /// The line for a feed of this version: with proofs from `v3` on, without on older ones
    /// (their readers refuse a `+` line with more than a kind).
    pub fn line(&self, with_proofs: bool) -> String {
        match self {
            HoldingChange::Added(n, kind, Some(_)) if !with_proofs => {
                HoldingChange::Added(n.clone(), *kind, None).to_string()
            }
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for HoldingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldingChange::Added(n, kind, None) => writeln!(f, "+{n} {}", kind_word(*kind)),
            HoldingChange::Added(n, kind, Some(p)) => writeln!(
                f,
                "+{n} {} {} {}",
                kind_word(*kind),
                p.tunnel_id,
                p.signature
            ),
            HoldingChange::Removed(n) => writeln!(f, "-{n}"),
            HoldingChange::Reset => writeln!(f, "!reset"),
            HoldingChange::Sync(marker) => writeln!(f, "?{marker}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_answer_lines_are_taken_and_a_partial_one_stays() {
        let mut answers =
            "!1\n=7 65536\n!2\nnoise\n=x 1\n=8 -1\n+7 65536\n~9\n^9 5\n!3".to_string();
        assert_eq!(
            take_answers(&mut answers),
            vec![
                Answer::Ack(1),
                Answer::Credit(Credit::Grant(7, 65536)),
                Answer::Ack(2),
                Answer::Credit(Credit::Ask(9)),
                Answer::Credit(Credit::Returned(9, 5)),
            ]
        );
        assert_eq!(answers, "!3");
        answers.push('\n');
        assert_eq!(take_answers(&mut answers), vec![Answer::Ack(3)]);
        assert!(answers.is_empty());
        assert_eq!(
            parse_answer(Credit::Grant(4_000_000_000, 1).line().trim_end()),
            Some(Answer::Credit(Credit::Grant(4_000_000_000, 1)))
        );
        // A packet of empty lines costs one pass, not a copy of the rest per line.
        let mut blank = "\n".repeat(32 * 1024);
        assert!(take_answers(&mut blank).is_empty());
        assert!(blank.is_empty());
    }

    use super::*;

    #[test]
    fn relay_targets_round_trip_and_other_targets_are_not_relays() {
        for l in [
            RelayListener::Http,
            RelayListener::Https,
            RelayListener::Tls,
        ] {
            assert_eq!(
                RelayListener::from_channel_target(&l.channel_target()),
                Some(l)
            );
        }
        assert_eq!(RelayListener::from_channel_target("localhost"), None);
        assert_eq!(
            RelayListener::from_channel_target("nearhop-relay/tcp"),
            None
        );
    }

    #[test]
    fn holdings_lines_round_trip() {
        let proof = Proof {
            tunnel_id: 42,
            signature: "A-_z".repeat(21) + "09",
        };
        let longest = format!("{}.{}", "a".repeat(63), "b".repeat(63)).repeat(2) + "c";
        for c in [
            HoldingChange::Added("blog.a.tunnel.test".into(), TunnelKind::Http, None),
            HoldingChange::Added("db.a.tunnel.test".into(), TunnelKind::Tls, None),
            HoldingChange::Added(
                "x.a.tunnel.test".into(),
                TunnelKind::Tcp,
                Some(proof.clone()),
            ),
            HoldingChange::Added(
                longest,
                TunnelKind::Http,
                Some(Proof {
                    tunnel_id: i64::MAX,
                    ..proof.clone()
                }),
            ),
            HoldingChange::Removed("k3x9.free.tunnel.test".into()),
            HoldingChange::Reset,
            HoldingChange::Sync(42),
        ] {
            let line = c.to_string();
            assert!(line.ends_with('\n'));
            assert_eq!(HoldingChange::parse(line.trim_end()), Some(c));
        }
        // Older feeds get the line without its proof.
        let proven = HoldingChange::Added("x.a.test".into(), TunnelKind::Http, Some(proof));
        assert_eq!(proven.line(false), "+x.a.test http\n");
        assert_eq!(proven.line(true), proven.to_string());
    }

    #[test]
    fn answers_round_trip_and_nothing_else_is_an_answer() {
        assert_eq!(parse_answer(ack_line(7).trim_end()), Some(Answer::Ack(7)));
        for credit in [
            Credit::Grant(3, 65536),
            Credit::Ask(4_000_000_000),
            Credit::Returned(5, 0),
        ] {
            assert_eq!(
                parse_answer(credit.line().trim_end()),
                Some(Answer::Credit(credit))
            );
        }
        for bad in [
            "!reset",
            "!",
            "7",
            "!-1",
            "?7",
            "=",
            "=1",
            "=1 ",
            "= 1",
            "=1 2 3",
            "=1 4294967296",
            "=-1 5",
            "+1 5",
            "~",
            "~1 2",
            "~-1",
            "^1",
            "^1 2 3",
            "^ 1",
        ] {
            assert_eq!(parse_answer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hostile_holdings_lines_are_refused() {
        for bad in [
            "",
            "+",
            "*blog",
            "+Blog.test http",
            "+a b",
            "+a\u{0}b http",
            "?x",
            "+é.test http",
            "+blog.test",
            "-blog.test http",
            "+blog.test ftp",
        ] {
            assert_eq!(HoldingChange::parse(bad), None, "{bad:?}");
        }
        // Proofs: an id and a signature of the right shape, nothing more.
        let a = |n: usize| "A".repeat(n);
        for bad in [
            format!("+blog.test http 42 {}", a(85)),
            format!("+blog.test http 42 {}", a(87)),
            format!("+blog.test http 42 {}=", a(85)),
            format!("+blog.test http 42 {}+", a(85)),
            format!("+blog.test http 0 {}", a(86)),
            format!("+blog.test http -4 {}", a(86)),
            format!("+blog.test http x {}", a(86)),
            format!("+blog.test http 42 {} more", a(86)),
            format!("+blog.test http  42 {}", a(86)),
            format!("+blog.test http 42 {} ", a(86)),
            "+blog.test http 42".to_string(),
        ] {
            assert_eq!(HoldingChange::parse(&bad), None, "{bad:?}");
        }
        let long = format!("+{} http", "a".repeat(MAX_LINE));
        assert_eq!(HoldingChange::parse(&long), None);
    }
}
