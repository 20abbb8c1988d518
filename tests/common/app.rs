//! A small application behind a [`SessionLayer`], driven in process (no
//! sockets), for store tests that go through the layer: several "instances"
//! share one store deployment and one cookie key, as they would behind a load
//! balancer.

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post, put};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use unstuck::{Key, Session, SessionLayer, SessionStore};

/// The key every instance shares.
pub fn shared_key() -> Key {
    Key::derive_from(b"a shared test secret of at least thirty-two bytes").unwrap()
}

/// One application instance on `store`: [`routes`] behind a layer with the
/// [`shared_key`].
pub fn app(store: impl SessionStore) -> Router {
    routes().layer(SessionLayer::new(store).with_keys([shared_key()]))
}

/// The test application's routes, for tests that put their own layer (or
/// routes of their own) around them:
/// - `GET /counter` increments `count` and returns it;
/// - `PUT /kv/{key}` stores the body (as JSON when it parses, else as a
///   string); `GET /kv/{key}` returns it as JSON text, or 404 with no body;
/// - `GET /session` returns every key as one JSON object;
/// - `GET /key` returns the session's storage key (empty for a new session);
/// - `POST /login` (body: the user) cycles the ID and records the user;
///   `POST /logout` destroys the session; `POST /logout-everywhere` destroys
///   every session of its user and returns how many; `GET /health` needs no
///   session.
pub fn routes() -> Router {
    async fn counter(session: Session) -> Result<String, unstuck::Error> {
        let n: u64 = session.get("count")?.unwrap_or(0) + 1;
        session.insert("count", n)?;
        Ok(n.to_string())
    }
    async fn put_value(
        session: Session,
        Path(key): Path<String>,
        body: String,
    ) -> Result<&'static str, unstuck::Error> {
        let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        session.insert(&key, &value)?;
        Ok("ok")
    }
    async fn get_value(
        session: Session,
        Path(key): Path<String>,
    ) -> Result<(StatusCode, String), unstuck::Error> {
        Ok(match session.get::<serde_json::Value>(&key)? {
            Some(value) => (StatusCode::OK, value.to_string()),
            None => (StatusCode::NOT_FOUND, String::new()),
        })
    }
    async fn all_values(session: Session) -> Result<String, unstuck::Error> {
        let mut data = serde_json::Map::new();
        for key in session.keys() {
            let value: serde_json::Value = session.get(&key)?.unwrap_or_default();
            data.insert(key, value);
        }
        Ok(serde_json::Value::Object(data).to_string())
    }
    async fn login(session: Session, user: String) -> &'static str {
        session.cycle_id();
        session.set_user(user);
        "ok"
    }
    async fn logout(session: Session) -> &'static str {
        session.destroy();
        "ok"
    }
    async fn logout_everywhere(session: Session) -> Result<String, unstuck::Error> {
        Ok(session.destroy_user_sessions().await?.to_string())
    }
    async fn storage_key(session: Session) -> String {
        session
            .storage_key()
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default()
    }
    Router::new()
        .route("/counter", get(counter))
        .route("/kv/{key}", put(put_value).get(get_value))
        .route("/session", get(all_values))
        .route("/key", get(storage_key))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/health", get(|| async { "up" }))
}

/// Sends one request; returns the status, the `name=value` of a cookie the
/// response set (if any), and the body.
pub async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: Option<&str>,
    body: &str,
) -> (StatusCode, Option<String>, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cookie, String::from_utf8(body.to_vec()).unwrap())
}

/// The session ID in a `name=value` cookie: a signed value is a 44-character
/// signature followed by the 43-character ID, and by `.<version>` when the
/// store reports versions (a near cache).
pub fn id_text(cookie: &str) -> &str {
    let value = cookie.split_once('=').expect("name=value").1;
    assert!(
        value.len() == 44 + 43 || value[44 + 43..].starts_with('.'),
        "unexpected cookie value shape: {value}"
    );
    &value[44..44 + 43]
}

/// The session version a cookie carries, if any.
pub fn version_in(cookie: &str) -> Option<u64> {
    let value = cookie.split_once('=').expect("name=value").1;
    value.get(44 + 43..)?.strip_prefix('.')?.parse().ok()
}

/// A browser with one cookie, talking to any instance.
#[derive(Clone, Default)]
pub struct Client {
    pub cookie: Option<String>,
}

impl Client {
    /// Sends a request with the cookie and keeps any cookie the response sets.
    pub async fn send(
        &mut self,
        app: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let (status, cookie, body) = send(app, method, uri, self.cookie.as_deref(), body).await;
        if cookie.is_some() {
            self.cookie = cookie;
        }
        (status, body)
    }

    /// The session ID the cookie carries.
    pub fn session_id(&self) -> String {
        id_text(self.cookie.as_deref().expect("no cookie yet")).to_owned()
    }
}
