//! `/v1/admin/certificates`: the ACME certificates' state, and forced renewal.

use super::extract::AdminCall;
use crate::error::ControlResult;
use crate::state::AppState;
use actix_web::{web, HttpResponse};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/admin/certificates", web::get().to(list))
        .route(
            "/v1/admin/certificates/{subject}/renew",
            web::post().to(renew),
        );
}

async fn list(st: web::Data<AppState>, _: AdminCall) -> ControlResult<HttpResponse> {
    let st2 = st.clone();
    let rows = st
        .blocking(move |conn| crate::acme::operator_statuses(conn, &st2.cfg))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "certificates": rows })))
}

async fn renew(
    st: web::Data<AppState>,
    subject: web::Path<String>,
    _: AdminCall,
) -> ControlResult<HttpResponse> {
    let subject = subject.into_inner();
    let s2 = subject.clone();
    st.blocking(move |conn| crate::acme::force_renewal(conn, &s2))
        .await?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "renewal_requested": subject })))
}
