//! `/v1/tunnels`: edges set tunnels up and close them.

use super::extract::EdgeJson;
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use nearhop_wire::{CloseTunnelRequest, CreateTunnelRequest};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tunnels", web::post().to(create))
        .route("/v1/tunnels/{tunnel_id}/close", web::post().to(close));
}

async fn create(
    st: web::Data<AppState>,
    call: EdgeJson<CreateTunnelRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.acts_as(&st, &call.body.edge_id).await?;
    let created = crate::tunnels::create(&st, call.body).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn close(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    call: EdgeJson<CloseTunnelRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.closes(&st, *id, &call.body.edge_id).await?;
    let body = call.body;
    crate::tunnels::closing::close_for_edge(&st, id.into_inner(), body.edge_id, body.reason)
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"closed": true})))
}
