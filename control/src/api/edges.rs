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
    call: EdgeJson<RegisterEdgeRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.registers(&st, &call.body).await?;
    Ok(HttpResponse::Ok().json(crate::edges::register(&st, call.body).await?))
}

async fn heartbeat(
    st: web::Data<AppState>,
    id: web::Path<String>,
    call: EdgeJson<EdgeHeartbeatRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.acts_as(&st, &id).await?;
    let tunnel_ids = call.body.tunnel_ids;
    let res = crate::edges::heartbeat(&st, id.into_inner(), tunnel_ids).await?;
    Ok(HttpResponse::Ok().json(res))
}

async fn routes(
    st: web::Data<AppState>,
    id: web::Path<String>,
    EdgeCall(edge): EdgeCall,
) -> ControlResult<HttpResponse> {
    edge.acts_as(&st, &id).await?;
    Ok(HttpResponse::Ok().json(crate::edges::routes(&st, id.into_inner()).await?))
}
