//! Control's HTTP API: one module per resource, each with a `config` function.

pub mod admin;
pub mod edges;
pub mod metrics;
pub mod tunnels;

use crate::error::{ControlError, ControlResult};
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use nearhop_wire::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

/// Registers every route, the JSON and path error handlers, and the JSON 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PathConfig::default().error_handler(|err, _req| {
        ControlError::refused(ErrorCode::BadRequest, format!("bad path: {err}")).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, _req| {
        ControlError::refused(ErrorCode::BadRequest, format!("bad query: {err}")).into()
    }))
    .configure(tunnels::config)
    .configure(edges::config)
    .configure(admin::config)
    .configure(metrics::config)
    .default_service(web::to(|| async {
        HttpResponse::NotFound().json(ApiError::new(
            ErrorCode::NotFound,
            "no such endpoint; the API lives under /v1/",
        ))
    }));
}

/// Parses a JSON body. Handlers call it after checking the secret, so that an unauthorized
/// caller learns nothing about the body's shape.
pub async fn parse_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> ControlResult<T> {
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
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
            ControlError::refused(ErrorCode::BadRequest, format!("reading the body: {e}"))
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
        ControlError::refused(
            ErrorCode::BadRequest,
            format!("the request body is not valid: {e}"),
        )
    })
}

/// Compares without an early exit, so response time does not leak the secret's prefix.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The secret in `Authorization: Bearer <secret>`, empty when there is none.
pub fn bearer_token(req: &HttpRequest) -> &str {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Checks `Authorization: Bearer <secret>`.
pub fn require_bearer(req: &HttpRequest, secret: &str, what: &str) -> ControlResult<()> {
    let given = bearer_token(req);
    if !given.is_empty() && same_secret(given.as_bytes(), secret.as_bytes()) {
        Ok(())
    } else {
        Err(ControlError::refused(
            ErrorCode::Unauthorized,
            format!("missing or wrong {what} secret (Authorization: Bearer ...)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
