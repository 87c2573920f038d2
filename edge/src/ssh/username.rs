//! The SSH username: `[TOKEN+][KEYWORD+...]`, e.g. `tok123+tcp+force`, `qr`, `http`.

use nearhop_wire::TunnelKind;
use thiserror::Error;

/// Longest username accepted; tokens are far shorter, anything longer is noise or an attack.
pub const MAX_USERNAME_LEN: usize = 256;

/// What the username asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRequest {
    /// The account token; `None` asks for an anonymous free tunnel.
    pub token: Option<String>,
    /// What the tunnels carry.
    pub kind: TunnelKind,
    /// Close the account's tunnel that holds the name now and take over.
    pub force: bool,
    /// Also print the URL as a QR code.
    pub qr: bool,
    /// Record requests for the inspector from the first one.
    pub inspect: bool,
}

/// Why a username was refused; the text is shown to the SSH user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsernameError {
    /// Longer than [`MAX_USERNAME_LEN`].
    #[error("the username is {0} characters long; a token and keywords need far fewer")]
    TooLong(usize),
    /// `a++b`, a leading or trailing `+`.
    #[error("the username has an empty part between '+' signs")]
    EmptyPart,
    /// No username at all (`ssh -l ""`, a library's "none" login).
    #[error(
        "the username is empty; log in as TOKEN@host, or as http@host for an anonymous free tunnel"
    )]
    Empty,
    /// A second word that is not a keyword.
    #[error("{0:?} is not a keyword; keywords are http, tcp, tls, force, qr, inspect (the token, if any, comes first)")]
    UnknownKeyword(String),
    /// A later word that looks like a token: never echoed (nor logged), since it may be one.
    #[error("the token must come first, before the keywords (TOKEN+force, not force+TOKEN)")]
    TokenNotFirst,
    /// Two tunnel kinds, e.g. `http+tcp`.
    #[error("choose one of http, tcp or tls, not several")]
    ConflictingKinds,
    /// A token with characters no token has.
    #[error("the token holds characters that no nearhop token has")]
    BadToken,
}

/// Parses `[TOKEN+][KEYWORD+...]`. Keywords are case-insensitive; the first word that is not
/// a keyword is the token, and it must come first.
pub fn parse_username(user: &str) -> Result<UserRequest, UsernameError> {
    if user.len() > MAX_USERNAME_LEN {
        return Err(UsernameError::TooLong(user.len()));
    }
    if user.is_empty() {
        return Err(UsernameError::Empty);
    }
    let mut request = UserRequest::default();
    let mut kind: Option<TunnelKind> = None;
    for (i, word) in user.split('+').enumerate() {
        if word.is_empty() {
            return Err(UsernameError::EmptyPart);
        }
        let set_kind = |k: TunnelKind, kind: &mut Option<TunnelKind>| match kind {
            Some(old) if *old != k => Err(UsernameError::ConflictingKinds),
            _ => {
                *kind = Some(k);
                Ok(())
            }
        };
        match word.to_ascii_lowercase().as_str() {
            "http" => set_kind(TunnelKind::Http, &mut kind)?,
            "tcp" => set_kind(TunnelKind::Tcp, &mut kind)?,
            "tls" => set_kind(TunnelKind::Tls, &mut kind)?,
            "force" => request.force = true,
            "qr" => request.qr = true,
            "inspect" => request.inspect = true,
            // Pinggy's no-op keyword for clients that insist on a username.
            "auth" => {}
            _ if i == 0 => {
                if !word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    return Err(UsernameError::BadToken);
                }
                request.token = Some(word.to_string());
            }
            _ if looks_like_token(word) => return Err(UsernameError::TokenNotFirst),
            _ => return Err(UsernameError::UnknownKeyword(truncate(word, 40))),
        }
    }
    request.kind = kind.unwrap_or_default();
    Ok(request)
}

/// Whether a word could be an account token (control issues `nh_` and 32 characters), or
/// any long secret-like word: such a word is never repeated back or logged.
fn looks_like_token(word: &str) -> bool {
    let token_chars = word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    word.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("nh_"))
        || (token_chars && word.len() >= 16)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_after_a_keyword_is_refused_without_repeating_it() {
        let secret = "nh_0123456789abcdefghijklmnopqrstuv";
        for user in [
            format!("force+{secret}"),
            "qr+aVeryLongSecretLikeWord123".into(),
        ] {
            let err = parse_username(&user).unwrap_err();
            assert_eq!(err, UsernameError::TokenNotFirst);
            assert!(!err.to_string().contains("nh_0123"), "{err}");
            assert!(!err.to_string().contains("LongSecret"), "{err}");
        }
        // A short typo is still named, to help.
        assert_eq!(
            parse_username("tok+forse").unwrap_err(),
            UsernameError::UnknownKeyword("forse".into())
        );
    }

    #[test]
    fn token_and_keywords_are_split() {
        let r = parse_username("Tok_123+TCP+force+qr").unwrap();
        assert_eq!(r.token.as_deref(), Some("Tok_123"));
        assert_eq!(r.kind, TunnelKind::Tcp);
        assert!(r.force && r.qr && !r.inspect);
        assert!(parse_username("tok+inspect").unwrap().inspect);
    }

    #[test]
    fn keyword_only_username_is_anonymous() {
        let r = parse_username("qr").unwrap();
        assert_eq!(r.token, None);
        assert_eq!(r.kind, TunnelKind::Http);
        assert!(r.qr);
    }

    #[test]
    fn plain_token_is_an_http_tunnel() {
        let r = parse_username("abc").unwrap();
        assert_eq!(r.token.as_deref(), Some("abc"));
        assert_eq!(r.kind, TunnelKind::Http);
    }

    #[test]
    fn absurd_usernames_are_refused_with_reasons() {
        assert_eq!(
            parse_username(&"a".repeat(10_000)),
            Err(UsernameError::TooLong(10_000))
        );
        assert_eq!(parse_username("a++b"), Err(UsernameError::EmptyPart));
        assert_eq!(parse_username("+"), Err(UsernameError::EmptyPart));
        assert_eq!(parse_username(""), Err(UsernameError::Empty));
        assert_eq!(
            parse_username("tok+bogus"),
            Err(UsernameError::UnknownKeyword("bogus".into()))
        );
        assert_eq!(
            parse_username("http+tcp"),
            Err(UsernameError::ConflictingKinds)
        );
        assert_eq!(parse_username("to'k"), Err(UsernameError::BadToken));
        assert_eq!(parse_username("tok\u{0}"), Err(UsernameError::BadToken));
    }
}
