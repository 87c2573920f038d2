//! Control's HTTP API: one module per resource, each with a `config` function.

pub mod admin;
pub mod certificates;
pub mod edges;
pub mod extract;
pub mod metrics;
pub mod tunnels;

use crate::error::ControlError;
use actix_web::{web, HttpResponse};
use nearhop_wire::{ApiError, ErrorCode};

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
    .configure(certificates::config)
    .configure(metrics::config)
    .default_service(web::to(|| async {
        HttpResponse::NotFound().json(ApiError::new(
            ErrorCode::NotFound,
            "no such endpoint; the API lives under /v1/",
        ))
    }));
}
