//! Calls from the edge to control (`/v1/...`, bearer: this edge's own credential), and the
//! sentences an SSH user sees when control refuses or cannot be reached.

use nearhop_wire::{
    ApiError, CloseTunnelRequest, CreateTunnelRequest, CreateTunnelResponse, EdgeCertificates,
    EdgeHeartbeatRequest, EdgeHeartbeatResponse, EdgeLeavingRequest, EdgePeers, EdgeRoutes,
    ErrorCode, LeavingStage, RegisterEdgeRequest, RegisterEdgeResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use thiserror::Error;

/// A failed call to control.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No answer: connection refused, timeout, broken connection.
    #[error("control unreachable: {0}")]
    Unreachable(String),
    /// Control answered with its error shape.
    #[error("control refused ({status}): {:?}: {}", .error.error.code, .error.error.message)]
    Refused {
        /// HTTP status.
        status: u16,
        /// The body.
        error: ApiError,
    },
    /// Control answered something that is not the contract.
    #[error("unexpected answer from control ({status}): {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// The body, truncated.
        body: String,
    },
}

impl ControlError {
    /// The error code, when control gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ControlError::Refused { error, .. } => Some(error.error.code),
            _ => None,
        }
    }

    /// A sentence for the SSH user.
    pub fn user_message(&self) -> String {
        match self {
            ControlError::Unreachable(_) | ControlError::Unexpected { .. } => {
                "nearhop cannot set up new tunnels right now: its control plane is unreachable. \
                 Tunnels that are already live are not affected. Please try again in a minute."
                    .to_string()
            }
            ControlError::Refused { error, .. } => {
                let message = error.error.message.trim();
                let lead = match error.error.code {
                    ErrorCode::BadToken => "Your token was not accepted",
                    ErrorCode::NameOwned => "That name belongs to another account",
                    ErrorCode::NameInUse => "That name is live in another tunnel",
                    ErrorCode::NameBanned => "That name has been taken down",
                    ErrorCode::RateLimited => "Too many tunnel setups",
                    ErrorCode::InvalidName => "That name is not valid",
                    ErrorCode::PlanLimit => "Your plan does not allow this",
                    // Control's message says that live tunnels go on.
                    ErrorCode::DatabaseUnavailable => "nearhop cannot set up new tunnels right now",
                    ErrorCode::Internal => {
                        "nearhop cannot set up new tunnels right now (live tunnels are not affected)"
                    }
                    _ => "The tunnel was refused",
                };
                // Control's message says what to do where the caller can act on it (a
                // live name of the caller's own names `force`); the edge adds only what
                // is about connecting over SSH.
                let hint = match error.error.code {
                    ErrorCode::BadToken => {
                        " Connect as TOKEN@host with a token from your account, or without a token (http@host) for an anonymous free tunnel."
                    }
                    _ => "",
                };
                let stop = if message.ends_with(['.', '!', '?']) {
                    ""
                } else {
                    "."
                };
                format!("{lead}: {message}{stop}{hint}")
            }
        }
    }
}

/// Client for control's edge API.
#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl ControlClient {
    /// A client for control at `base` (e.g. `http://127.0.0.1:7080`).
    pub fn new(base: &str, secret: &str, timeout: Duration) -> anyhow::Result<ControlClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(8)
            // Idle connections leave the pool before control would close them: no request
            // is ever written onto a connection the server is closing.
            .pool_idle_timeout(nearhop_wire::API_CLIENT_POOL_IDLE)
            .build()?;
        Ok(ControlClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
        })
    }

    /// `POST /v1/edges/register`.
    pub async fn register(
        &self,
        req: &RegisterEdgeRequest,
    ) -> Result<RegisterEdgeResponse, ControlError> {
        self.post("/v1/edges/register", req).await
    }

    /// `POST /v1/edges/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        edge_id: &str,
        req: &EdgeHeartbeatRequest,
    ) -> Result<EdgeHeartbeatResponse, ControlError> {
        self.post(&format!("/v1/edges/{edge_id}/heartbeat"), req)
            .await
    }

    /// `POST /v1/edges/{id}/leaving`.
    pub async fn leaving(&self, edge_id: &str, stage: LeavingStage) -> Result<(), ControlError> {
        let req = EdgeLeavingRequest { stage };
        self.post::<_, serde_json::Value>(&format!("/v1/edges/{edge_id}/leaving"), &req)
            .await
            .map(|_| ())
    }

    /// `POST /v1/tunnels`.
    pub async fn create_tunnel(
        &self,
        req: &CreateTunnelRequest,
    ) -> Result<CreateTunnelResponse, ControlError> {
        self.post("/v1/tunnels", req).await
    }

    /// `POST /v1/tunnels/{id}/close`.
    pub async fn close_tunnel(
        &self,
        tunnel_id: i64,
        req: &CloseTunnelRequest,
    ) -> Result<(), ControlError> {
        self.post::<_, serde_json::Value>(&format!("/v1/tunnels/{tunnel_id}/close"), req)
            .await
            .map(|_| ())
    }

    /// `GET /v1/edges/{id}/peers`.
    pub async fn peers(&self, edge_id: &str) -> Result<EdgePeers, ControlError> {
        self.get(&format!("/v1/edges/{edge_id}/peers")).await
    }

    /// `GET /v1/edges/{id}/routes`.
    pub async fn routes(&self, edge_id: &str) -> Result<EdgeRoutes, ControlError> {
        self.get(&format!("/v1/edges/{edge_id}/routes")).await
    }

    /// `GET /v1/edges/{id}/certificates`.
    pub async fn certificates(&self, edge_id: &str) -> Result<EdgeCertificates, ControlError> {
        self.get(&format!("/v1/edges/{edge_id}/certificates")).await
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ControlError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| ControlError::Unreachable(e.to_string()))?;
        decode(resp).await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ControlError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| ControlError::Unreachable(e.to_string()))?;
        decode(resp).await
    }
}

async fn decode<R: DeserializeOwned>(resp: reqwest::Response) -> Result<R, ControlError> {
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| ControlError::Unreachable(e.to_string()))?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body).map_err(|e| ControlError::Unexpected {
            status,
            body: format!(
                "{e}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ),
        });
    }
    match serde_json::from_slice::<ApiError>(&body) {
        Ok(error) => Err(ControlError::Refused { status, error }),
        Err(_) => Err(ControlError::Unexpected {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_sentences_with_controls_message() {
        let e = ControlError::Refused {
            status: 409,
            error: ApiError::new(
                ErrorCode::NameInUse,
                "androidblog is live on edge ap-1; add `force` to take it over",
            ),
        };
        let m = e.user_message();
        assert_eq!(
            m,
            "That name is live in another tunnel: androidblog is live on edge ap-1; \
             add `force` to take it over."
        );
        let e = ControlError::Refused {
            status: 401,
            error: ApiError::new(ErrorCode::BadToken, "the token was revoked."),
        };
        let m = e.user_message();
        assert!(
            m.starts_with("Your token was not accepted: the token was revoked. Connect as"),
            "{m}"
        );
        let down = ControlError::Unreachable("connection refused".into()).user_message();
        assert!(down.contains("unreachable") && down.contains("not affected"));
    }
}
