//! Extractors for the handlers' shared prologue: who the caller is (an edge, by its own
//! credential; the operator, by the admin secret), then the JSON body.

use crate::config::Config;
use crate::edge_auth::{authenticate_edge, EdgeIdentity};
use crate::error::{ControlError, ControlResult};
use crate::state::AppState;
use actix_web::dev::Payload;
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
    serde_json::from_slice(&body).map_err(|e| {
        ControlError::refused_because(
            ErrorCode::BadRequest,
            format!("the request body is not valid: {e}"),
            e,
        )
    })
}
