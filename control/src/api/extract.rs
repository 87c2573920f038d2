//! Extractors for the handlers' shared prologue: who the caller is (an edge, by its own
//! credential; the operator, by the admin secret), then the JSON body; and the refusals of a
//! path whose number is none and of a query parameter whose value is not one it takes.

use crate::config::Config;
use crate::edge_auth::{authenticate_edge, EdgeIdentity};
use crate::error::{ControlError, ControlResult};
use crate::state::AppState;
use actix_web::dev::Payload;
use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE};
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::{ready, LocalBoxFuture, Ready};
use futures::StreamExt;
use nearhop_wire::ErrorCode;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// Whose secret a route is behind.
pub trait Realm: 'static {
    /// The secret's name in the refusal ("edge", "admin").
    const NAME: &'static str;
    /// The secret.
    fn secret(cfg: &Config) -> &str;
}

/// Routes for the operator, behind the admin secret.
pub struct AdminRealm;

impl Realm for AdminRealm {
    const NAME: &'static str = "admin";
    fn secret(cfg: &Config) -> &str {
        &cfg.admin_secret
    }
}

/// Proof that the request carried realm `R`'s secret as `Authorization: Bearer <secret>`.
/// Put it after the path and query arguments: extractors report errors in argument order,
/// and a malformed path was always reported before a missing secret.
pub struct Authorized<R: Realm>(PhantomData<R>);

/// A JSON body of a request that carried realm `R`'s secret. The secret is checked before
/// the body is read, so that an unauthorized caller learns nothing about the body's shape.
pub struct AuthorizedJson<R: Realm, T>(pub T, PhantomData<R>);

/// An edge's request without a body: the edge it is, proven by its credential
/// ([`authenticate_edge`]). Handlers still check that it acts only as itself.
pub struct EdgeCall(pub EdgeIdentity);

/// An edge's request with a JSON body; the credential is checked before the body is read.
pub struct EdgeJson<T> {
    /// Who the edge is.
    pub edge: EdgeIdentity,
    /// The body.
    pub body: T,
}

impl FromRequest for EdgeCall {
    type Error = ControlError;
    type Future = LocalBoxFuture<'static, ControlResult<Self>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let st = state(&req)?.clone();
            Ok(EdgeCall(authenticate_edge(&st, &req).await?))
        })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for EdgeJson<T> {
    type Error = ControlError;
    type Future = LocalBoxFuture<'static, ControlResult<Self>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let st = state(&req)?.clone();
            let edge = authenticate_edge(&st, &req).await?;
            let body = read_json(&req, payload, st.cfg.max_body_bytes).await?;
            Ok(EdgeJson { edge, body })
        })
    }
}
/// The operator's request without a body.
pub type AdminCall = Authorized<AdminRealm>;
/// The operator's request with a JSON body.
pub type AdminJson<T> = AuthorizedJson<AdminRealm, T>;

impl<R: Realm, T> AuthorizedJson<R, T> {
    /// The body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

fn state(req: &HttpRequest) -> ControlResult<&web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ControlError::Internal("the app has no state".into()))
}

fn check_bearer<R: Realm>(req: &HttpRequest) -> ControlResult<()> {
    let st = state(req)?;
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if nearhop_wire::bearer_matches(header, R::secret(&st.cfg)) {
        Ok(())
    } else {
        Err(ControlError::refused(
            ErrorCode::Unauthorized,
            format!(
                "missing or wrong {} secret (Authorization: Bearer ...)",
                R::NAME
            ),
        ))
    }
}

impl<R: Realm> FromRequest for Authorized<R> {
    type Error = ControlError;
    type Future = Ready<ControlResult<Self>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check_bearer::<R>(req).map(|()| Authorized(PhantomData)))
    }
}

impl<R: Realm, T: DeserializeOwned + 'static> FromRequest for AuthorizedJson<R, T> {
    type Error = ControlError;
    type Future = LocalBoxFuture<'static, ControlResult<Self>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = match check_bearer::<R>(req).and_then(|()| state(req)) {
            Ok(st) => st.cfg.max_body_bytes,
            Err(e) => return Box::pin(ready(Err(e))),
        };
        let (req, payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let body = read_json(&req, payload, limit).await?;
            Ok(AuthorizedJson(body, PhantomData))
        })
    }
}

/// Reads a JSON body of at most `limit` bytes.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> ControlResult<T> {
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ControlError::refused(
            ErrorCode::BadRequest,
            "send the body as JSON with Content-Type: application/json",
        ));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ControlError::refused_because(
                ErrorCode::BadRequest,
                format!("reading the body: {e}"),
                e,
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ControlError::refused(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let parsed = serde_json::from_slice(&body).map_err(|e| {
        ControlError::refused_because(ErrorCode::BadRequest, body_refusal(&body, &e), e)
    })?;
    if has_nul_escape(&body) {
        return Err(ControlError::refused(ErrorCode::BadRequest, NUL_REFUSAL));
    }
    Ok(parsed)
}

/// What a body the route's type could not read is told. serde_json's own wording names
/// internal types for a body that is not an object (`expected struct CreateAccountRequest
/// with 2 elements`), and says only `expected value` for a field holding a value of a
/// kind it never takes (`{"plan":5}`), so those get a sentence of their own.
fn body_refusal(body: &[u8], e: &serde_json::Error) -> String {
    if !body.trim_ascii_start().starts_with(b"{") {
        return "the request body must be a JSON object ({\"field\": value, ...}); \
                docs/control.md lists each route's fields"
            .to_string();
    }
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => format!(
            "the request body is not valid JSON, or one of its fields holds a kind of value \
             it never takes (a number where a word is expected): {e}"
        ),
        _ => format!("the request body is not valid: {e}"),
    }
}

/// The numbers a route takes in its path, by the name the route gives each (`{account_id}`):
/// what the caller calls it (with its article), and where they find one. A route's numeric parameter is named
/// one of these, so that a refusal can say which part of the path was wrong.
const NUMERIC_PATH_PARAMETERS: &[(&str, &str, &str)] = &[
    (
        "account_id",
        "an account id",
        "`account create` prints it (`account_id`)",
    ),
    (
        "token_id",
        "a token id",
        "`token list --account ID` lists an account's tokens with theirs",
    ),
    (
        "tunnel_id",
        "a tunnel id",
        "the tunnel setup's answer carries it (`tunnel_id`)",
    ),
];

/// The longest part of a path quoted back in a refusal.
const QUOTED_PATH_PART: usize = 40;

/// The refusal of a path parameter that is not what the route takes, in our words (actix's
/// and serde's stay in the log, as the source): which parameter, what it must be, where to
/// find a good one.
pub(crate) fn path_refusal(err: PathError, req: &HttpRequest) -> ControlError {
    let message = req
        .match_info()
        .iter()
        .find_map(|(name, value)| not_a_number(name, value))
        .unwrap_or_else(|| {
            format!(
                "the path {} could not be read; docs/control.md shows each route's path and \
                 what goes in its parts",
                quoted(req.path())
            )
        });
    ControlError::refused_because(ErrorCode::BadRequest, message, err)
}

/// The sentence for a numeric path parameter `name` whose `value` is no `i64`; `None` when
/// the parameter is no number or the value is a good one.
fn not_a_number(name: &str, value: &str) -> Option<String> {
    let (_, what, where_from) = NUMERIC_PATH_PARAMETERS.iter().find(|(n, ..)| *n == name)?;
    if value.parse::<i64>().is_ok() {
        return None;
    }
    let digits = value.strip_prefix('-').unwrap_or(value);
    let wrong = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        format!("is too large to be {what} (the largest is {})", i64::MAX)
    } else {
        format!("is not {what}: {what} is a whole number, such as 42")
    };
    Some(format!(
        "{} in the path {wrong}; {where_from}",
        quoted(value)
    ))
}

/// A query parameter a route takes: its name (the field of the route's query struct), what
/// a good value is, and the check of one. Every field of a query struct is listed here, so
/// that a refusal can say which parameter was wrong and what it must be.
struct QueryParameter {
    name: &'static str,
    must_be: &'static str,
    fits: fn(&str) -> bool,
}

/// Every query parameter of the API (`api/admin.rs`: `VerifiedQuery`).
const QUERY_PARAMETERS: &[QueryParameter] = &[QueryParameter {
    name: "verified",
    must_be: "true or false (left out, it is false)",
    fits: |value| value.parse::<bool>().is_ok(),
}];

/// The refusal of a query the route cannot read, in our words (serde's stay in the log, as
/// the source): which parameter, what it must be.
pub(crate) fn query_refusal(err: QueryPayloadError, req: &HttpRequest) -> ControlError {
    let message = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|pairs| not_a_value(&pairs))
        .unwrap_or_else(|| {
            format!(
                "the query {} could not be read; docs/control.md shows the query parameters \
                 each route takes",
                quoted(req.query_string())
            )
        });
    ControlError::refused_because(ErrorCode::BadRequest, message, err)
}

/// The sentence for the first query parameter the API does not know, or the first known one
/// that is given twice or whose value it does not take; `None` when every one is good.
fn not_a_value(pairs: &[(String, String)]) -> Option<String> {
    let known = |name: &str| QUERY_PARAMETERS.iter().any(|p| p.name == name);
    if let Some((name, _)) = pairs.iter().find(|(n, _)| !known(n)) {
        let names: Vec<&str> = QUERY_PARAMETERS.iter().map(|p| p.name).collect();
        return Some(format!(
            "{} is not a query parameter this route takes (it takes: {}); docs/control.md \
             lists each route's",
            quoted(name),
            names.join(", ")
        ));
    }
    QUERY_PARAMETERS.iter().find_map(|p| {
        let mut values = pairs.iter().filter(|(n, _)| n == p.name).map(|(_, v)| v);
        let value = values.next()?;
        if values.next().is_some() {
            return Some(format!(
                "the query gives {} more than once; give it once: it must be {}",
                p.name, p.must_be
            ));
        }
        (!(p.fits)(value)).then(|| {
            format!(
                "the query parameter {} is {}: it must be {}",
                p.name,
                quoted(value),
                p.must_be
            )
        })
    })
}

/// `text` in quotes, cut to [`QUOTED_PATH_PART`] characters, control characters escaped.
fn quoted(text: &str) -> String {
    let mut cut: String = text.chars().take(QUOTED_PATH_PART).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// The refusal of a body whose text holds NUL, which PostgreSQL cannot store in text.
pub(crate) const NUL_REFUSAL: &str =
    "text fields may not contain the NUL character (\\u0000); remove it and send the request again";

/// Whether a JSON text (already parsed, so well formed) holds the escape `\u0000` in a
/// string. A raw NUL byte is no JSON at all and the parser refused it already. One pass over
/// the bytes, no second parse: each backslash starts an escape that takes the byte after
/// it, so in `\\u0000` (an escaped backslash, then `u0000`) the `u` is never seen as the
/// start of one.
fn has_nul_escape(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"u0000") {
            return true;
        }
        // Skip the backslash and the byte it escapes (a `\\` included).
        rest = escape.get(1..).unwrap_or_default();
    }
    false
}

/// Whether a request target (path and query, as sent) holds `%00`, which actix decodes to a
/// NUL in path and query parameters. `%` always starts an escape (a literal `%` is `%25`),
/// so `%2500` is no NUL.
pub(crate) fn has_nul_in_target(target: &str) -> bool {
    let mut rest = target.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"00") {
            return true;
        }
        rest = escape.get(2..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_no_object_or_holds_a_value_of_the_wrong_kind_is_told_so_in_our_words() {
        let told = |body: &str| {
            let e =
                serde_json::from_str::<nearhop_wire::CreateAccountRequest>(body).expect_err(body);
            body_refusal(body.as_bytes(), &e)
        };
        for body in ["[]", " [1,2]", "5", "\"x\""] {
            let m = told(body);
            assert!(
                m.starts_with("the request body must be a JSON object"),
                "{body}: {m}"
            );
            assert!(!m.contains("struct"), "{body}: {m}");
        }
        let m = told(r#"{"name":"x","plan":5}"#);
        assert!(m.contains("holds a kind of value it never takes"), "{m}");
        assert!(m.contains("column"), "where, as serde says it: {m}");
        // serde's own sentences where they are clear.
        let m = told(r#"{"name":"x","plan":"gold"}"#);
        assert!(
            m.contains("unknown variant `gold`, expected `free` or `pro`"),
            "{m}"
        );
    }

    #[test]
    fn a_numeric_path_parameter_that_is_no_number_is_named_in_our_words() {
        let m = not_a_number("account_id", "abc").unwrap();
        assert!(
            m.starts_with("\"abc\" in the path is not an account id"),
            "{m}"
        );
        assert!(
            m.contains("whole number") && m.contains("account create"),
            "{m}"
        );
        let m = not_a_number("token_id", "99999999999999999999").unwrap();
        assert!(m.contains("is too large to be a token id"), "{m}");
        assert!(m.contains(&i64::MAX.to_string()), "{m}");
        let m = not_a_number("tunnel_id", "1.5").unwrap();
        assert!(
            m.contains("is not a tunnel id: a tunnel id is a whole number"),
            "{m}"
        );
        assert_eq!(not_a_number("account_id", "42"), None);
        assert_eq!(
            not_a_number("account_id", "-3"),
            None,
            "not_found decides that one"
        );
        assert_eq!(not_a_number("hostname", "abc"), None);
    }

    fn pairs(query: &str) -> Vec<(String, String)> {
        web::Query::<Vec<(String, String)>>::from_query(query)
            .unwrap()
            .into_inner()
    }

    #[test]
    fn a_query_parameter_with_a_value_it_does_not_take_is_named_in_our_words() {
        let m = not_a_value(&pairs("verified=maybe")).unwrap();
        assert_eq!(
            m,
            "the query parameter verified is \"maybe\": it must be true or false (left out, \
             it is false)"
        );
        let m = not_a_value(&pairs("verified=")).unwrap();
        assert!(m.starts_with("the query parameter verified is \"\""), "{m}");
        let m = not_a_value(&pairs("verified=true&verified=false")).unwrap();
        assert!(
            m.starts_with("the query gives verified more than once"),
            "{m}"
        );
        assert_eq!(not_a_value(&pairs("verified=true")), None);
        assert_eq!(not_a_value(&pairs("")), None);
        // A parameter the API does not know (a typo) is named, with the ones it takes.
        let m = not_a_value(&pairs("verify=true")).unwrap();
        assert_eq!(
            m,
            "\"verify\" is not a query parameter this route takes (it takes: verified); \
             docs/control.md lists each route's"
        );
    }

    #[test]
    fn a_path_that_cannot_be_read_is_refused_in_one_sentence() {
        use serde::de::Error as _;
        let req = actix_web::test::TestRequest::default()
            .uri("/v1/x")
            .to_http_request();
        let err = PathError::Deserialize(serde::de::value::Error::custom("no"));
        let m = path_refusal(err, &req).to_string();
        assert_eq!(
            m,
            "the path \"/v1/x\" could not be read; docs/control.md shows each route's path \
             and what goes in its parts"
        );
    }

    #[test]
    fn a_quoted_path_part_is_cut_and_escaped() {
        assert_eq!(quoted("abc"), "\"abc\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(100);
        assert_eq!(
            quoted(&long),
            format!("{:?}", format!("{}…", "x".repeat(40)))
        );
    }

    #[test]
    fn a_nul_in_the_target_is_found_but_not_an_encoded_percent() {
        assert!(has_nul_in_target("/v1/edges/us%00x/heartbeat"));
        assert!(has_nul_in_target("/v1/x?verified=%00"));
        assert!(!has_nul_in_target("/v1/edges/us%2500/heartbeat"));
        assert!(!has_nul_in_target("/v1/edges/us-1/heartbeat"));
        assert!(!has_nul_in_target("/v1/a%0"));
        assert!(!has_nul_in_target("%"));
    }

    #[test]
    fn a_nul_escape_in_a_string_is_found() {
        assert!(has_nul_escape(br#"{"reason":"a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"reason":"\u0000"}"#));
        assert!(
            has_nul_escape(br#"{"a":"\\\u0000"}"#),
            "a backslash, then a NUL"
        );
        assert!(has_nul_escape(br#"{"a\u0000":1}"#), "in a key too");
        assert!(
            has_nul_escape(br#"{"a":"\u00000"}"#),
            "a NUL, then the digit 0"
        );
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_no_nul() {
        assert!(!has_nul_escape(br#"{"reason":"a\\u0000b"}"#));
        assert!(!has_nul_escape(br#"{"reason":"\\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"reason":"\u0001\"\\"}"#));
        assert!(!has_nul_escape(br#"{"reason":"\u1000 \u0100 \u0010"}"#));
        assert!(!has_nul_escape(br#"{"tunnel_ids":[1,2,3]}"#));
        assert!(!has_nul_escape(b""));
        assert!(!has_nul_escape(b"\\"));
    }

    #[test]
    fn the_parser_reads_the_escape_as_nul_and_the_refusal_says_so() {
        let body = br#"{"hostname":"x.a.tunnel.test","reason":"a\u0000b"}"#;
        let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(parsed["reason"], "a\u{0}b");
        assert!(has_nul_escape(body));
        assert!(NUL_REFUSAL.contains("NUL") && NUL_REFUSAL.contains("\\u0000"));
    }
}
