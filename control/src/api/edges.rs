//! `/v1/edges`: registration, batched heartbeats, custom-domain routes.

use super::{parse_json, require_bearer};
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use nearhop_wire::{EdgeHeartbeatRequest, RegisterEdgeRequest};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/edges/register", web::post().to(register))
        .route("/v1/edges/{id}/heartbeat", web::post().to(heartbeat))
        .route("/v1/edges/{id}/routes", web::get().to(routes));
}

async fn register(
    st: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> ControlResult<HttpResponse> {
    require_bearer(&req, &st.cfg.edge_secret, "edge")?;
    let body: RegisterEdgeRequest = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    Ok(HttpResponse::Ok().json(crate::edges::register(&st, body).await?))
}

async fn heartbeat(
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> ControlResult<HttpResponse> {
    require_bearer(&req, &st.cfg.edge_secret, "edge")?;
    let body: EdgeHeartbeatRequest = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    let res = crate::edges::heartbeat(&st, id.into_inner(), body.tunnel_ids).await?;
    Ok(HttpResponse::Ok().json(res))
}

async fn routes(
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ControlResult<HttpResponse> {
    require_bearer(&req, &st.cfg.edge_secret, "edge")?;
    Ok(HttpResponse::Ok().json(crate::edges::routes(&st, id.into_inner()).await?))
}
