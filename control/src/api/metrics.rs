//! `/metrics` (Prometheus text format) and `/healthz`.

use crate::state::AppState;
use actix_web::{web, HttpResponse};

/// Routes of this resource.
pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz));
}

async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.metrics.render())
}

async fn healthz(st: web::Data<AppState>) -> HttpResponse {
    let db_ok = st
        .blocking(|conn| {
            use diesel::RunQueryDsl;
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
        .is_ok();
    let body = serde_json::json!({"ok": db_ok, "database": if db_ok { "up" } else { "down" }});
    if db_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
