//! Control's HTTP API: one module per resource, each with a `config` function.

pub mod admin;
pub mod certificates;
pub mod edges;
pub mod extract;
pub mod metrics;
pub mod tunnels;
pub mod unreadable_heads;

use crate::error::ControlError;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use nearhop_wire::{ApiError, ErrorCode};

/// Middleware: refuses a request whose path or query holds `%00` before any handler sees
/// it. Path and query parameters are decoded, and PostgreSQL cannot store NUL in text (it
/// was a 500); JSON bodies are checked by [`extract::read_json`].
pub async fn refuse_nul_in_target(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    if extract::has_nul_in_target(target) {
        let refusal = ControlError::refused(
            ErrorCode::BadRequest,
            "the path and query may not contain the NUL character (%00); remove it and send \
             the request again",
        );
        return Ok(req
            .into_response(refusal.error_response())
            .map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Registers every route, the path and query error handlers, and the JSON 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default().error_handler(|err, req| extract::path_refusal(err, req).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|err, req| extract::query_refusal(err, req).into()),
    )
    .configure(tunnels::config)
    .configure(edges::config)
    .configure(admin::config)
    .configure(certificates::config)
    .configure(metrics::config)
    .default_service(web::to(|req: HttpRequest| async move { unrouted(&req) }));
}

/// The answer to a request no route took: 405 when the path is a route's (another method
/// is what it takes), else 404.
fn unrouted(req: &HttpRequest) -> HttpResponse {
    if req.resource_map().has_resource(req.path()) {
        return HttpResponse::MethodNotAllowed().json(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{} is not a method of {}; docs/control.md lists each route with its method",
                req.method(),
                req.path()
            ),
        ));
    }
    HttpResponse::NotFound().json(ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; the API lives under /v1/",
    ))
}
