//! `/v1/edges`: registration, batched heartbeats, custom-domain routes.

use super::parse_json;
use crate::edge_auth::authenticate_edge;
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use nearhop_wire::{EdgeHeartbeatRequest, EdgeRegistration};

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
    let edge = authenticate_edge(&st, &req).await?;
    let body: EdgeRegistration = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    edge.registers(&st, &body).await?;
    Ok(HttpResponse::Ok().json(crate::edges::register(&st, body).await?))
}

async fn heartbeat(
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> ControlResult<HttpResponse> {
    let edge = authenticate_edge(&st, &req).await?;
    edge.acts_as(&st, &id).await?;
    let body: EdgeHeartbeatRequest = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    let res = crate::edges::heartbeat(&st, id.into_inner(), body.tunnel_ids).await?;
    Ok(HttpResponse::Ok().json(res))
}

async fn routes(
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> ControlResult<HttpResponse> {
    authenticate_edge(&st, &req)
        .await?
        .acts_as(&st, &id)
        .await?;
    Ok(HttpResponse::Ok().json(crate::edges::routes(&st, id.into_inner()).await?))
}
