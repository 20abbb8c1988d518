//! The [`Session`] extractor and its lazy loading.

use std::sync::Arc;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::session::Session;
use crate::store::{SessionStore, StoreError};
use crate::transport::{Channel, Handout};

/// What the layer leaves in each request's extensions: enough to load the
/// session, which happens only if something extracts it. Even the cookie is
/// read then, so a route without sessions does not pay for its signature check.
#[derive(Clone)]
pub(crate) struct LazySession {
    inner: Arc<LazyInner>,
}

struct LazyInner {
    store: Arc<dyn SessionStore>,
    config: Arc<Config>,
    /// Whether the token travels in the cookie or the header, for reading it
    /// and for handing out a new one.
    channel: Channel,
    session: OnceCell<Session>,
}

impl LazySession {
    pub fn new(store: Arc<dyn SessionStore>, config: Arc<Config>, headers: &HeaderMap) -> Self {
        let channel = config.transport.channel(headers);
        Self {
            inner: Arc::new(LazyInner {
                store,
                config,
                channel,
                session: OnceCell::new(),
            }),
        }
    }

    /// The session, loading it on first use. A failed load is not remembered, so
    /// a later extraction in the same request tries again.
    pub async fn get(&self, headers: &HeaderMap) -> Result<Session, StoreError> {
        let inner = &*self.inner;
        inner
            .session
            .get_or_try_init(|| {
                let config = &inner.config;
                let presented = config
                    .transport
                    .read(inner.channel, &config.cookie, headers);
                Session::load(inner.store.clone(), inner.config.clone(), presented)
            })
            .await
            .cloned()
    }

    /// The session, if the request loaded it.
    pub fn loaded(&self) -> Option<&Session> {
        self.inner.session.get()
    }

    /// Puts what a commit hands the client on the response, the way this
    /// request's token travelled.
    pub fn hand_out(&self, handout: Handout, headers: &mut HeaderMap) {
        let config = &self.inner.config;
        config
            .transport
            .hand_out(self.inner.channel, &config.cookie, handout, headers);
    }
}

/// Why the [`Session`] extractor failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionRejection {
    /// The route is not behind a [`SessionLayer`](crate::SessionLayer): a
    /// programming error, answered with `500`.
    #[error("the Session extractor was used on a route without a SessionLayer")]
    MissingLayer,
    /// The session could not be loaded; answered with `503 Service Unavailable`.
    #[error("could not load the session: {0}")]
    Store(#[from] StoreError),
}

impl SessionRejection {
    /// The status the rejection answers with: `500` for a missing layer, the
    /// store's ([`StoreError::status`]) otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Store(error) => error.status(),
        }
    }

    /// The plain-text body the rejection answers with (no internal details:
    /// those go to the log).
    pub fn body_text(&self) -> String {
        match self {
            Self::MissingLayer => "session layer missing".to_owned(),
            Self::Store(_) if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                "session store unavailable".to_owned()
            }
            Self::Store(_) => "session store error".to_owned(),
        }
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        // As axum logs its own rejections: at TRACE, on the `axum::rejection`
        // target, so one filter shows them all. The store has already logged
        // the cause of a store failure at WARN or ERROR where it happened.
        tracing::event!(
            target: "axum::rejection",
            tracing::Level::TRACE,
            status = self.status().as_u16(),
            body = %self.body_text(),
            rejection_type = "unstuck::SessionRejection",
            error = %self,
            "rejecting request",
        );
        (self.status(), self.body_text()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let lazy = parts
            .extensions
            .get::<LazySession>()
            .ok_or(SessionRejection::MissingLayer)?;
        Ok(lazy.get(&parts.headers).await?)
    }
}
