//! Control's one error type: every failure maps to a status code and the shared JSON shape
//! `{"error":{"code":...,"message":...}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use nearhop_wire::{ApiError, ErrorCode};

/// A failure of a control operation, with the sentence the caller sees.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The caller sent something unusable.
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// The caller sent something unusable, found out by a parser or reader whose error is
    /// kept as the source (for the log; the caller sees the message).
    #[error("{message}")]
    RefusedBecause {
        /// The stable code.
        code: ErrorCode,
        /// The sentence the caller sees.
        message: String,
        /// What failed underneath.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database could not be reached.
    #[error("the database is unavailable: {0}")]
    Database(String),
    /// A bug or an unexpected state; details are in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of a control operation.
pub type ControlResult<T> = Result<T, ControlError>;

impl ControlError {
    /// A refusal with a stable code.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError::Refused(code, message.into())
    }

    /// A refusal caused by `source`; the message should say what it means for the caller.
    pub fn refused_because(
        code: ErrorCode,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ControlError {
        ControlError::RefusedBecause {
            code,
            message: message.into(),
            source: Box::new(source),
        }
    }

    /// The code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::Refused(code, _) | ControlError::RefusedBecause { code, .. } => *code,
            ControlError::Database(_) => ErrorCode::DatabaseUnavailable,
            ControlError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<diesel::result::Error> for ControlError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => ControlError::refused(ErrorCode::NotFound, "not found"),
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                ControlError::Database(info.message().to_string())
            }
            other => ControlError::Internal(other.to_string()),
        }
    }
}

impl From<diesel::r2d2::PoolError> for ControlError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        ControlError::Database(e.to_string())
    }
}

impl From<actix_web::error::BlockingError> for ControlError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl ResponseError for ControlError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ControlError::Internal(_) | ControlError::Database(_) => {
                tracing::error!(error = %self, "request failed");
            }
            ControlError::RefusedBecause { source, .. } => {
                tracing::debug!(error = %self, cause = %source, "request refused");
            }
            ControlError::Refused(..) => {}
        }
        let message = match self {
            ControlError::Database(_) => {
                "the tunnel service's database is unavailable; live tunnels keep working, \
                 new tunnels can be set up once it is back (try again in a minute)"
                    .to_string()
            }
            ControlError::Internal(_) => {
                "the tunnel service hit an internal error; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        HttpResponse::build(self.status_code()).json(ApiError::new(self.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses() {
        let e = ControlError::refused(ErrorCode::NameInUse, "x");
        assert_eq!(e.status_code(), StatusCode::CONFLICT);
        assert_eq!(e.code().as_str(), "name_in_use");
        let e = ControlError::Database("down".into());
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
