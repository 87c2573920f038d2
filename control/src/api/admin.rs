//! `/v1/admin`: the operator's API, behind the admin secret.

use super::extract::{AdminCall, AdminJson};
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpResponse};
use nearhop_wire::{AddDomainRequest, CreateAccountRequest, ReserveNameRequest, TakedownRequest};
use serde::Deserialize;

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/admin/accounts", web::post().to(create_account))
        .route(
            "/v1/admin/accounts/{account_id}/tokens",
            web::post().to(create_token),
        )
        .route(
            "/v1/admin/accounts/{account_id}/tokens",
            web::get().to(list_tokens),
        )
        .route(
            "/v1/admin/tokens/{token_id}",
            web::delete().to(revoke_token),
        )
        .route(
            "/v1/admin/accounts/{account_id}/names",
            web::post().to(reserve_name),
        )
        .route("/v1/admin/names/{hostname}", web::delete().to(release_name))
        .route(
            "/v1/admin/accounts/{account_id}/domains",
            web::post().to(add_domain),
        )
        .route("/v1/admin/takedowns", web::post().to(takedown))
        .route(
            "/v1/admin/takedowns/{hostname}",
            web::delete().to(lift_takedown),
        );
}

async fn create_account(
    st: web::Data<AppState>,
    body: AdminJson<CreateAccountRequest>,
) -> ControlResult<HttpResponse> {
    let body = body.into_inner();
    let created = st
        .blocking(move |conn| crate::admin::create_account(conn, &body.name, body.plan))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

async fn create_token(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let id = id.into_inner();
    let created = st
        .blocking(move |conn| crate::admin::create_token(conn, id))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

async fn list_tokens(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let id = id.into_inner();
    let tokens = st
        .blocking(move |conn| crate::admin::list_tokens(conn, id))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"account_id": id, "tokens": tokens})))
}

async fn revoke_token(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let id = id.into_inner();
    let revoked = st
        .blocking(move |conn| crate::admin::revoke_token(conn, id))
        .await?;
    Ok(HttpResponse::Ok().json(revoked))
}

async fn release_name(
    st: web::Data<AppState>,
    hostname: web::Path<String>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let (hostname, st2) = (hostname.into_inner(), st.clone());
    let released = st
        .blocking(move |conn| crate::admin::release_name(&st2, conn, &hostname))
        .await?;
    Ok(HttpResponse::Ok().json(released))
}

async fn reserve_name(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    body: AdminJson<ReserveNameRequest>,
) -> ControlResult<HttpResponse> {
    let (id, name, st2) = (id.into_inner(), body.into_inner().name, st.clone());
    let hostname = st
        .blocking(move |conn| crate::admin::reserve_name(&st2, conn, id, &name))
        .await?;
    Ok(HttpResponse::Created().json(serde_json::json!({"hostname": hostname})))
}

/// A parameter it does not know is refused: `?verify=true` would otherwise add the domain
/// unverified without a word.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifiedQuery {
    #[serde(default)]
    verified: bool,
}

async fn add_domain(
    st: web::Data<AppState>,
    id: web::Path<i64>,
    q: web::Query<VerifiedQuery>,
    body: AdminJson<AddDomainRequest>,
) -> ControlResult<HttpResponse> {
    let (id, body, st2, verified) = (id.into_inner(), body.into_inner(), st.clone(), q.verified);
    let added = st
        .blocking(move |conn| {
            crate::admin::add_domain(&st2, conn, id, &body.domain, &body.target, verified)
        })
        .await?;
    Ok(HttpResponse::Created().json(added))
}

async fn takedown(
    st: web::Data<AppState>,
    body: AdminJson<TakedownRequest>,
) -> ControlResult<HttpResponse> {
    let body = body.into_inner();
    Ok(HttpResponse::Ok().json(crate::admin::takedown(&st, &body.hostname, &body.reason).await?))
}

async fn lift_takedown(
    st: web::Data<AppState>,
    hostname: web::Path<String>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let (hostname, st2) = (hostname.into_inner(), st.clone());
    let lifted = st
        .blocking(move |conn| crate::admin::lift_takedown(&st2, conn, &hostname))
        .await?;
    Ok(HttpResponse::Ok().json(lifted))
}
