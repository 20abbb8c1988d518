//! Every behaviour of the crate, visible over HTTP: the demo server that the
//! README, black-box tests and curl users drive.
//!
//! ```sh
//! UNSTUCK_COOKIE_SECURE=0 cargo run --example demo
//! curl -c jar -b jar http://127.0.0.1:3000/counter
//! ```
//!
//! Configuration (environment):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `UNSTUCK_LISTEN` | address to listen on (port 0 picks a free one) | `127.0.0.1:3000` |
//! | `UNSTUCK_STORE` | `memory`, `redis://…`, `redis+sentinel://…`, `redis+cluster://…`, `postgres://…` | `memory` |
//! | `UNSTUCK_INSTANCE` | a name echoed in every JSON response | the listen address |
//! | `UNSTUCK_IDLE_SECS` | idle timeout | 1800 |
//! | `UNSTUCK_ABSOLUTE_SECS` | absolute timeout | 28800 |
//! | `UNSTUCK_SECRET` | comma-separated secrets (≥ 32 bytes each); the first signs, all verify | a fixed dev secret, with a warning |
//! | `UNSTUCK_COOKIE_SECURE` | `0` drops the `Secure` attribute for plain-HTTP testing | `1` |
//! | `UNSTUCK_NEAR_CACHE` | `1` enables the near cache (Redis) | `0` |
//! | `UNSTUCK_REPLICA_ACKS` | Redis: every session write waits (`WAIT`, up to 200 ms) for this many replicas and fails otherwise | `0` |
//! | `UNSTUCK_SESSION_HEADER` | session token in a header instead of the cookie: `bearer` (`Authorization: Bearer`, new tokens in `X-Session-Token`) or a header name (both ways); append `,cookie` to keep the cookie for requests without the header | cookie only |
//! | `UNSTUCK_MAX_SESSION_BYTES` | the most a session may hold (keys and JSON text), in the layer and the store; a `PUT /kv` beyond it answers `413` and changes nothing | 65536 |
//! | `UNSTUCK_MAX_SESSIONS_PER_USER` | cap on a user's live sessions | none |
//! | `UNSTUCK_SESSION_CAP_POLICY` | `evict-oldest`: a login beyond the cap ends the user's oldest sessions; `refuse`: it answers `409` | `evict-oldest` |
//!
//! Once listening it prints `listening on ADDR` on stdout.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use unstuck::{Session, SessionLayer};

// The `UNSTUCK_*` settings and store opening, shared with the login and
// cluster examples.
#[path = "common/settings.rs"]
mod settings;
use settings::{Settings, open_store};

/// The instance name, echoed in every response so a client behind a load
/// balancer can see which instance answered.
#[derive(Clone)]
struct Instance(Arc<str>);

impl Instance {
    fn reply(&self, status: StatusCode, mut body: Value) -> Response {
        body["instance"] = json!(&*self.0);
        (status, Json(body)).into_response()
    }

    fn ok(&self, body: Value) -> Response {
        self.reply(StatusCode::OK, body)
    }
}

type Reply = Result<Response, unstuck::Error>;

async fn health(State(me): State<Instance>) -> Response {
    me.ok(json!({"status": "ok"}))
}

async fn counter(State(me): State<Instance>, session: Session) -> Reply {
    let count: u64 = session.get("count")?.unwrap_or(0) + 1;
    session.insert("count", count)?;
    Ok(me.ok(json!({"count": count})))
}

async fn peek(State(me): State<Instance>, session: Session) -> Reply {
    let count: Option<Value> = session.get("count")?;
    Ok(me.ok(json!({"count": count})))
}

#[derive(Deserialize)]
struct Delay {
    delay_ms: Option<u64>,
}

async fn put_value(
    State(me): State<Instance>,
    session: Session,
    Path(key): Path<String>,
    Query(delay): Query<Delay>,
    body: Bytes,
) -> Reply {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return Ok(me.reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "the body must be JSON"}),
        ));
    };
    match session.insert(&key, &value) {
        Ok(()) => {}
        // Past the session's size limit: nothing changed.
        Err(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Ok(me.reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": error.to_string()}),
            ));
        }
        Err(error) => return Err(error),
    }
    if let Some(ms) = delay.delay_ms {
        // Bounded, so a typo cannot park a request for hours.
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    Ok(me.ok(json!({"key": key, "value": value})))
}

async fn get_value(State(me): State<Instance>, session: Session, Path(key): Path<String>) -> Reply {
    Ok(match session.get::<Value>(&key)? {
        Some(value) => me.ok(json!({"key": key, "value": value})),
        None => me.reply(
            StatusCode::NOT_FOUND,
            json!({"error": "no such key", "key": key}),
        ),
    })
}

async fn delete_value(
    State(me): State<Instance>,
    session: Session,
    Path(key): Path<String>,
) -> Response {
    let removed = session.remove(&key);
    me.ok(json!({"key": key, "removed": removed}))
}

async fn whole_session(State(me): State<Instance>, session: Session) -> Reply {
    let mut data = serde_json::Map::new();
    for key in session.keys() {
        let value: Value = session.get(&key)?.unwrap_or(Value::Null);
        data.insert(key, value);
    }
    let expiry = session.expiry().map(|e| {
        json!({
            "created_at": unix_secs(e.created_at),
            "expires_at": unix_secs(e.expires_at),
            "absolute_deadline": unix_secs(e.absolute_deadline),
        })
    });
    Ok(me.ok(json!({"data": data, "user": session.user(), "expiry": expiry})))
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

async fn login(State(me): State<Instance>, session: Session, body: Bytes) -> Response {
    let user = match serde_json::from_slice::<Login>(&body) {
        Ok(login) if !login.user.is_empty() => login.user,
        _ => {
            return me.reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "expected {\"user\": \"name\"}"}),
            );
        }
    };
    // A new ID at every privilege change defeats session fixation.
    session.cycle_id();
    session.set_user(user.clone());
    me.ok(json!({"user": user}))
}

async fn logout(State(me): State<Instance>, session: Session) -> Response {
    session.destroy();
    me.ok(json!({"logged_out": true}))
}

async fn logout_everywhere(State(me): State<Instance>, session: Session) -> Reply {
    let Some(user) = session.user() else {
        return Ok(me.reply(StatusCode::UNAUTHORIZED, json!({"error": "not logged in"})));
    };
    let deleted = session.destroy_user_sessions().await?;
    Ok(me.ok(json!({"user": user, "deleted": deleted})))
}

async fn me_route(State(me): State<Instance>, session: Session) -> Response {
    me.ok(json!({"user": session.user()}))
}

/// The logged-in user's sessions, the current one marked: what a "your devices"
/// page would show.
async fn sessions(State(me): State<Instance>, session: Session) -> Reply {
    let current = session.storage_key();
    let list: Vec<Value> = session
        .user_sessions()
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "key": s.key.as_str(),
                "current": Some(&s.key) == current.as_ref(),
                "created_at": unix_secs(s.created_at),
                "expires_at": unix_secs(s.expires_at),
            })
        })
        .collect();
    Ok(me.ok(json!({"user": session.user(), "sessions": list})))
}

fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn app(instance: Instance, sessions_layer: SessionLayer) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/counter", get(counter))
        .route("/peek", get(peek))
        .route(
            "/kv/{key}",
            put(put_value).get(get_value).delete(delete_value),
        )
        .route("/session", get(whole_session))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/me", get(me_route))
        .route("/sessions", get(sessions))
        .layer(sessions_layer)
        .with_state(instance)
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    settings.warn_about_dev_secret();
    let (store, _keepalive) = open_store(&settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let instance = Instance(
        settings
            .instance
            .clone()
            .unwrap_or_else(|| address.to_string())
            .into(),
    );
    let app = app(instance, settings.layer(store));
    println!("listening on {address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(problem) = run().await {
        eprintln!("demo: {problem}");
        std::process::exit(2);
    }
}
