//! [`SessionLayer`] and the [`SessionService`] it wraps services in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use cookie::SameSite;
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::Config;
use crate::cookie::CookieProtection;
use crate::error::ConfigError;
use crate::events::SessionEvents;
use crate::extract::LazySession;
use crate::key::Key;
use crate::session::{CommitError, Session};
use crate::store::SessionStore;
use crate::transport::{Handout, SessionTransport};

/// Adds sessions to a service: put it on a router, then take
/// [`Session`](crate::Session) in handlers.
///
/// Secure defaults: a cookie named `id`, signed with HMAC-SHA256, `HttpOnly`,
/// `Secure`, `SameSite=Lax`, `Path=/`, ending with the browser session; a 30
/// minute idle timeout and an 8 hour absolute timeout. Configure with the
/// `with_*` methods; cloning is cheap.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use unstuck::{Key, MemoryStore, Session, SessionLayer};
///
/// let key = Key::derive_from(b"replace me with 32+ secret bytes from config")?;
/// let sessions = SessionLayer::new(MemoryStore::new())
///     .with_keys([key])
///     .with_idle_timeout(Duration::from_secs(15 * 60));
/// let app: Router = Router::new()
///     .route("/", get(|session: Session| async move { session.is_new().to_string() }))
///     .layer(sessions);
/// # Ok::<(), unstuck::KeyError>(())
/// ```
#[derive(Clone, Debug)]
pub struct SessionLayer {
    store: Arc<dyn SessionStore>,
    config: Arc<Config>,
}

impl SessionLayer {
    /// A layer keeping sessions in `store`.
    ///
    /// Until [`with_keys`](Self::with_keys) is called, cookies are signed with a
    /// random key made here: they stop working when the process restarts and are
    /// not accepted by other instances.
    pub fn new(store: impl SessionStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// A layer keeping sessions in a store chosen at run time.
    pub fn from_arc(store: Arc<dyn SessionStore>) -> Self {
        let mut config = Config::default();
        config.cookie.keys.push(Key::generate());
        config.generated_key = true;
        Self {
            store,
            config: Arc::new(config),
        }
    }

    /// The configuration, for a change: the change has to be checked again.
    fn config(&mut self) -> &mut Config {
        let config = Arc::make_mut(&mut self.config);
        config.checked = Arc::default();
        config
    }

    /// Checks the configuration: a cookie browsers would drop (an invalid
    /// name, a `__Host-`/`__Secure-` cookie without `Secure`, or a `__Host-`
    /// one with a `Domain` or a `Path` other than `/`, `SameSite=None` without
    /// `Secure`), no keys, a zero timeout, or a refresh interval not shorter
    /// than the idle timeout. Call it at startup to get an error instead of the
    /// panic of [`Layer::layer`]; the check runs once either way.
    ///
    /// # Errors
    /// The first problem found.
    ///
    /// # Examples
    /// ```
    /// use unstuck::{ConfigError, MemoryStore, SessionLayer};
    ///
    /// let layer = SessionLayer::new(MemoryStore::new()).with_keys([]);
    /// assert_eq!(layer.validate(), Err(ConfigError::NoKeys));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.config.check_once()
    }

    /// The layer itself once [`validate`](Self::validate) passes, for a
    /// builder-style chain: `SessionLayer::new(store).with_keys(keys).validated()?`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn validated(self) -> Result<Self, ConfigError> {
        self.validate().map(|()| self)
    }

    /// The store sessions are kept in.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The keys that protect the cookie: the first signs (or encrypts), every one
    /// verifies, so a key can be rotated without logging anyone out. Instances
    /// behind one load balancer must share them.
    ///
    /// An empty list is a configuration error ([`ConfigError::NoKeys`]).
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        let config = self.config();
        config.cookie.keys = keys.into_iter().collect();
        config.generated_key = false;
        self
    }

    /// Encrypts the cookie ([`CookieProtection::Private`]) instead of only signing it.
    pub fn with_protection(mut self, protection: CookieProtection) -> Self {
        self.config().cookie.protection = protection;
        self
    }

    /// Where the session token travels: the cookie (the default), a header
    /// for API and mobile clients, or both, each request answered the way it
    /// came (see [`SessionTransport`]). Header tokens are sealed with the same
    /// keys and protection as cookies, and expire, rotate and end the same way.
    ///
    /// # Examples
    /// ```
    /// use unstuck::{MemoryStore, SessionLayer, SessionTransport, TokenHeader};
    ///
    /// // `Authorization: Bearer <token>` in, `X-Session-Token: <token>` out;
    /// // browsers keep using the cookie.
    /// let layer = SessionLayer::new(MemoryStore::new())
    ///     .with_transport(SessionTransport::Both(TokenHeader::bearer()));
    /// assert!(layer.validate().is_ok());
    /// ```
    pub fn with_transport(mut self, transport: SessionTransport) -> Self {
        self.config().transport = transport;
        self
    }

    /// The cookie's name (default `id`: generic, so it does not advertise the
    /// stack). A `__Host-` or `__Secure-` prefix is honoured: its rules are
    /// checked when the layer is applied.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.config().cookie.name = name.into();
        self
    }

    /// The cookie's `Path` (default `/`).
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.config().cookie.path = path.into();
        self
    }

    /// The cookie's `Domain` (default none: the cookie goes to the origin host only).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.config().cookie.domain = Some(domain.into());
        self
    }

    /// Whether the cookie is `Secure` (default `true`). Turn it off only for
    /// plain-HTTP development.
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.config().cookie.secure = secure;
        self
    }

    /// Whether the cookie is `HttpOnly` (default `true`).
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.config().cookie.http_only = http_only;
        self
    }

    /// The cookie's `SameSite` (default `Lax`). `None` requires `Secure`.
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.config().cookie.same_site = same_site;
        self
    }

    /// Whether the cookie persists across browser restarts (`Max-Age` set to the
    /// session's remaining life, refreshed with it) rather than ending with the
    /// browser session (the default).
    pub fn with_persistent_cookie(mut self, persistent: bool) -> Self {
        self.config().cookie.persistent = persistent;
        self
    }

    /// How long a session may go unused (default 30 minutes). Unless set with
    /// [`with_idle_refresh_interval`](Self::with_idle_refresh_interval) (in
    /// any order), the refresh interval is a quarter of it.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.config().timeouts.idle = idle;
        self
    }

    /// How long a session may live however active it is (default 8 hours).
    pub fn with_absolute_timeout(mut self, absolute: Duration) -> Self {
        self.config().timeouts.absolute = absolute;
        self
    }

    /// How much a request must gain before it pushes the idle deadline back
    /// (default a quarter of the idle timeout). Read-only requests then write to
    /// the store at most once per interval, at the price of an effective idle
    /// timeout between `idle - interval` and `idle`. Zero refreshes on every
    /// request; it must be shorter than the idle timeout.
    pub fn with_idle_refresh_interval(mut self, interval: Duration) -> Self {
        self.config().timeouts.refresh_interval = Some(interval);
        self
    }

    /// Sends the layer's lifecycle events (created, rotated, destroyed, logged
    /// out everywhere) to `events`, once the store has confirmed each change.
    /// Give the same hub to the store to get its expirations too. See
    /// [`SessionEvents`] for how delivery works.
    ///
    /// # Examples
    /// ```
    /// use unstuck::{MemoryStore, SessionEvent, SessionEventKind, SessionEvents, SessionLayer};
    ///
    /// let events = SessionEvents::new().with_listener(|event: &SessionEvent| {
    ///     if let SessionEventKind::Rotated { .. } = event.kind {
    ///         tracing::info!(user = ?event.user, "login");
    ///     }
    /// });
    /// let layer = SessionLayer::new(MemoryStore::new()).with_events(events);
    /// # let _ = layer;
    /// ```
    pub fn with_events(mut self, events: SessionEvents) -> Self {
        self.config().events = Some(events);
        self
    }

    /// The deadline of a request's store work (default 5 seconds): once for
    /// loading the session, once for saving it with all that involves (a
    /// delete, both steps of a rotation, replica acks). The stores keep their
    /// calls within it; running out answers `503`.
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.config().store_timeout = timeout;
        self
    }

    /// The most a session may hold, in bytes of keys and JSON text (default
    /// 64 KiB, [`DEFAULT_MAX_SESSION_BYTES`]); `usize::MAX` lifts the limit.
    /// An insert that would pass it fails with [`Error::TooLarge`] (`413`)
    /// and changes nothing. Stores have a limit of their own (also 64 KiB by
    /// default), which they enforce atomically against concurrent requests:
    /// raise both together.
    ///
    /// [`DEFAULT_MAX_SESSION_BYTES`]: crate::store::DEFAULT_MAX_SESSION_BYTES
    /// [`Error::TooLarge`]: crate::Error::TooLarge
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Self {
        self.config().limits.session_bytes = bytes;
        self
    }

    /// The most one value may take, in bytes of its key and JSON text
    /// (default 64 KiB, the session limit's default). An insert of a larger
    /// value fails with [`Error::ValueTooLarge`] (`413`) and changes nothing.
    ///
    /// [`Error::ValueTooLarge`]: crate::Error::ValueTooLarge
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.config().limits.value_bytes = bytes;
        self
    }

    /// Caps the live sessions of one user at `max` (default: no cap). The
    /// store applies it atomically when a session is attached to a user
    /// ([`Session::set_user`](crate::Session::set_user)): with
    /// [`CapPolicy::EvictOldest`] the user's oldest sessions end, with
    /// [`CapPolicy::Refuse`] the login's response becomes `409 Conflict` and
    /// nothing is saved. Instances sharing a store must share the cap.
    ///
    /// [`CapPolicy::EvictOldest`]: crate::CapPolicy::EvictOldest
    /// [`CapPolicy::Refuse`]: crate::CapPolicy::Refuse
    pub fn with_max_sessions_per_user(mut self, max: u32, policy: crate::CapPolicy) -> Self {
        self.config().limits.sessions_per_user = Some((max, policy));
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    /// # Panics
    /// When [`SessionLayer::validate`] fails: such a layer could only issue
    /// cookies that browsers drop, or expire active sessions. Call `validate`
    /// at startup to handle it as an error instead.
    fn layer(&self, inner: S) -> Self::Service {
        if let Err(problem) = self.config.check_once() {
            panic!("invalid SessionLayer configuration: {problem}");
        }
        SessionService {
            inner,
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

/// The service [`SessionLayer`] produces.
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    store: Arc<dyn SessionStore>,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let lazy = LazySession::new(self.store.clone(), self.config.clone(), request.headers());
        request.extensions_mut().insert(lazy.clone());

        // The clone that was driven to readiness is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Handling {
                future: inner.call(request),
                lazy: Some(lazy),
            },
        }
    }
}

/// A save in progress.
type Saving = Pin<Box<dyn Future<Output = Result<Option<Handout>, CommitError>> + Send>>;

pin_project! {
    /// The future [`SessionService`] answers with: the inner service's
    /// response, then the save of what the request changed in the session.
    /// Only a request that has something to write allocates for its save.
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        /// The inner service is handling the request.
        Handling {
            #[pin]
            future: F,
            lazy: Option<LazySession>,
        },
        /// The session is being saved; the response waits for it.
        Saving {
            save: Saving,
            response: Option<Response<B>>,
            lazy: LazySession,
        },
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                StateProj::Handling { future, lazy } => {
                    let response = ready!(future.poll(cx))?;
                    let lazy = lazy.take().expect("polled after completion");
                    let Some((session, planned)) = lazy
                        .loaded()
                        .and_then(|session| Some((session.clone(), session.plan_commit()?)))
                    else {
                        return Poll::Ready(Ok(response));
                    };
                    state.set(State::Saving {
                        save: Box::pin(Session::commit(session, planned)),
                        response: Some(response),
                        lazy,
                    });
                }
                StateProj::Saving {
                    save,
                    response,
                    lazy,
                } => {
                    let saved = ready!(save.as_mut().poll(cx));
                    let mut response = response.take().expect("polled after completion");
                    match saved {
                        Ok(None) => {}
                        Ok(Some(handout)) => {
                            let headers = response.headers_mut();
                            lazy.hand_out(handout, headers);
                            // A response that hands out a session token must
                            // never be cached and replayed to someone else.
                            headers.insert(
                                header::CACHE_CONTROL,
                                HeaderValue::from_static("no-store"),
                            );
                        }
                        Err(error) => return Poll::Ready(Ok(failed_save(&error))),
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// The response that replaces the handler's when its changes were not saved:
/// reporting success for a lost write would be a lie.
fn failed_save<B: Default>(error: &CommitError) -> Response<B> {
    let status = error.status();
    match status {
        StatusCode::CONFLICT => tracing::warn!(%error, "session changes discarded"),
        // A session past its size limit is the client's doing, not a fault.
        StatusCode::PAYLOAD_TOO_LARGE => tracing::warn!(%error, "session changes refused"),
        StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(%error, "session not saved: store unavailable");
        }
        _ => tracing::error!(%error, "failed to save the session"),
    }
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}
