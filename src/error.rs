//! The error handlers see.

use axum_core::response::{IntoResponse, Response};
use http::StatusCode;

use crate::store::StoreError;

/// What can go wrong when using a [`Session`](crate::Session).
///
/// It converts into a response ([`status`](Self::status): `500`, `503` when the
/// store is unreachable, `413` for a session over its size limit), so
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
    /// Setting `key` would have taken the session past its size limit
    /// ([`SessionLayer::with_max_session_bytes`]). Nothing changed: the
    /// session is as it was before the call. Answers `413`.
    ///
    /// [`SessionLayer::with_max_session_bytes`]: crate::SessionLayer::with_max_session_bytes
    #[error(
        "setting session value {key:?} would make the session {size} bytes, over its limit of {limit}"
    )]
    TooLarge {
        /// The key being inserted.
        key: String,
        /// The size the session would have had (keys and JSON text).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The value for `key` is larger than one value may be
    /// ([`SessionLayer::with_max_value_bytes`]). Nothing changed. Answers `413`.
    ///
    /// [`SessionLayer::with_max_value_bytes`]: crate::SessionLayer::with_max_value_bytes
    #[error("session value {key:?} of {size} bytes is over the limit of {limit} bytes per value")]
    ValueTooLarge {
        /// The key being inserted.
        key: String,
        /// The value's size (key and JSON text).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// The HTTP status this error answers with: the store's
    /// ([`StoreError::status`]) for store failures, `413 Payload Too Large`
    /// for a value or session over its limit, `500` otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Store(error) => error.status(),
            Self::TooLarge { .. } | Self::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %self, "session store unavailable");
            }
            // The client's doing, not a fault: no error-level log.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::CONFLICT => {
                tracing::info!(error = %self, "session change refused");
            }
            _ => tracing::error!(error = %self, "session error"),
        }
        let body = match status {
            StatusCode::SERVICE_UNAVAILABLE => "session store unavailable",
            StatusCode::PAYLOAD_TOO_LARGE => "session too large",
            StatusCode::CONFLICT => "too many sessions for this user",
            _ => "session error",
        };
        (status, body).into_response()
    }
}

/// A configuration that cannot work, found when it is built: a cookie that
/// browsers would drop, no key, a zero timeout, a store URL that does not
/// parse, a near cache on a store it cannot track. Never a runtime condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The cookie's name or attributes break the rules browsers enforce.
    #[error("invalid session cookie: {0}")]
    Cookie(String),
    /// No key to sign cookies with.
    #[error("at least one cookie key is required")]
    NoKeys,
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Timeouts that contradict each other.
    #[error("{0}")]
    Timeouts(&'static str),
    /// A store URL that does not parse. The message never repeats the URL,
    /// which may carry a password.
    #[error("invalid store URL: {0}")]
    StoreUrl(&'static str),
    /// A limit that must be positive is zero.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// A store feature asked of a store that cannot provide it.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A session token header that would be mistaken for cookies or other
    /// credentials.
    #[error("invalid session token header: {0}")]
    TokenHeader(String),
}
