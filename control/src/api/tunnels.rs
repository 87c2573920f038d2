//! `/v1/tunnels`: edges set tunnels up and close them.

use super::parse_json;
use crate::edge_auth::authenticate_edge;
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use nearhop_wire::{CloseTunnelRequest, CreateTunnelRequest};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tunnels", web::post().to(create))
        .route("/v1/tunnels/{id}/close", web::post().to(close));
}

async fn create(
    st: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> ControlResult<HttpResponse> {
    let edge = authenticate_edge(&st, &req).await?;
    let body: CreateTunnelRequest = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    edge.acts_as(&st, &body.edge_id).await?;
    let created = crate::tunnels::create(&st, body).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn close(
    st: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Payload,
) -> ControlResult<HttpResponse> {
    let edge = authenticate_edge(&st, &req).await?;
    let body: CloseTunnelRequest = parse_json(&req, body, st.cfg.max_body_bytes).await?;
    edge.closes(&st, *id, &body.edge_id).await?;
    crate::tunnels::close(&st, id.into_inner(), body.edge_id, body.reason).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"closed": true})))
}
