//! The error handlers see.

use axum_core::response::{IntoResponse, Response};
use http::StatusCode;

use crate::store::StoreError;

/// What can go wrong when using a [`Session`](crate::Session).
///
/// It converts into a response (`500`, or `503` when the store is unreachable), so
/// handlers can return `Result<_, unstuck::Error>` and use `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stored value did not decode into the type asked for. Only that key is
    /// affected; the rest of the session is intact.
    #[error("session value {key:?} does not decode as the requested type: {source}")]
    Decode {
        /// The key whose value failed.
        key: String,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// A value could not be serialized to JSON.
    #[error("session value {key:?} could not be encoded: {source}")]
    Encode {
        /// The key being inserted.
        key: String,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, "session error");
        let status = self.status();
        let body = match status {
            StatusCode::SERVICE_UNAVAILABLE => "session store unavailable",
            _ => "session error",
        };
        (status, body).into_response()
    }
}
