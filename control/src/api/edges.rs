//! `/v1/edges`: registration, batched heartbeats, the mesh's peer list, custom-domain routes,
//! certificates.

use super::extract::{read_json, EdgeCall, EdgeJson};
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use nearhop_wire::{EdgeHeartbeatRequest, EdgeLeavingRequest, RegisterEdgeRequest};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/edges/register", web::post().to(register))
        .route("/v1/edges/{id}/heartbeat", web::post().to(heartbeat))
        .route("/v1/edges/{id}/leaving", web::post().to(leaving))
        .route("/v1/edges/{id}/peers", web::get().to(peers))
        .route("/v1/edges/{id}/routes", web::get().to(routes))
        .route("/v1/edges/{id}/certificates", web::get().to(certificates));
}

async fn register(
    st: web::Data<AppState>,
    call: EdgeJson<RegisterEdgeRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.registers(&st, &call.body).await?;
    let joins_mesh = call.edge.joins_mesh();
    Ok(HttpResponse::Ok().json(crate::edges::register(&st, call.body, joins_mesh).await?))
}

/// A heartbeat lists every tunnel of the edge, up to [`crate::edges::MAX_HEARTBEAT_TUNNELS`]
/// ids of up to 20 characters each: its body may be far larger than `max_body_bytes`, which
/// would refuse the heartbeat of an edge past some 9,000 tunnels and let every lease lapse.
fn heartbeat_body_limit(st: &AppState) -> usize {
    st.cfg
        .max_body_bytes
        .max(crate::edges::MAX_HEARTBEAT_TUNNELS * 21 + 4096)
}

async fn heartbeat(
    st: web::Data<AppState>,
    id: web::Path<String>,
    req: HttpRequest,
    EdgeCall(edge): EdgeCall,
    payload: web::Payload,
) -> ControlResult<HttpResponse> {
    edge.acts_as(&st, &id).await?;
    let body: EdgeHeartbeatRequest =
        read_json(&req, payload.into_inner(), heartbeat_body_limit(&st)).await?;
    let tunnel_ids = body.tunnel_ids;
    let res = crate::edges::heartbeat(&st, id.into_inner(), tunnel_ids, edge.joins_mesh()).await?;
    Ok(HttpResponse::Ok().json(res))
}

/// The edge is stopping: `draining` when it starts, `stopped` at its end.
async fn leaving(
    st: web::Data<AppState>,
    id: web::Path<String>,
    call: EdgeJson<EdgeLeavingRequest>,
) -> ControlResult<HttpResponse> {
    call.edge.acts_as(&st, &id).await?;
    crate::edges::leaving(&st, id.into_inner(), call.body.stage).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

/// The peer list alone, for an edge that a peer it does not know yet has dialled.
async fn peers(
    st: web::Data<AppState>,
    id: web::Path<String>,
    EdgeCall(edge): EdgeCall,
) -> ControlResult<HttpResponse> {
    edge.acts_as(&st, &id).await?;
    let joins_mesh = edge.joins_mesh();
    Ok(HttpResponse::Ok().json(crate::edges::peers(&st, id.into_inner(), joins_mesh).await?))
}

async fn routes(
    st: web::Data<AppState>,
    id: web::Path<String>,
    EdgeCall(edge): EdgeCall,
) -> ControlResult<HttpResponse> {
    edge.acts_as(&st, &id).await?;
    Ok(HttpResponse::Ok().json(crate::edges::routes(&st, id.into_inner()).await?))
}

/// Every certificate in service, keys included: only for an edge, as itself.
async fn certificates(
    st: web::Data<AppState>,
    id: web::Path<String>,
    EdgeCall(edge): EdgeCall,
) -> ControlResult<HttpResponse> {
    edge.acts_as(&st, &id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(crate::edges::certificates(&st).await?))
}
