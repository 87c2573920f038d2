//! `/v1/edges`: registration, batched heartbeats, custom-domain routes.

use super::extract::{EdgeCall, EdgeJson};
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use nearhop_wire::{EdgeHeartbeatRequest, RegisterEdgeRequest};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/edges/register", web::post().to(register))
        .route("/v1/edges/{id}/heartbeat", web::post().to(heartbeat))
        .route("/v1/edges/{id}/routes", web::get().to(routes));
}

async fn register(
    st: web::Data<AppState>,
    body: EdgeJson<RegisterEdgeRequest>,
) -> ControlResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(crate::edges::register(&st, body.into_inner()).await?))
}

async fn heartbeat(
    st: web::Data<AppState>,
    id: web::Path<String>,
    body: EdgeJson<EdgeHeartbeatRequest>,
) -> ControlResult<HttpResponse> {
    let tunnel_ids = body.into_inner().tunnel_ids;
    let res = crate::edges::heartbeat(&st, id.into_inner(), tunnel_ids).await?;
    Ok(HttpResponse::Ok().json(res))
}

async fn routes(
    st: web::Data<AppState>,
    id: web::Path<String>,
    _: EdgeCall,
) -> ControlResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(crate::edges::routes(&st, id.into_inner()).await?))
}
