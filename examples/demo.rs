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
//!
//! Once listening it prints `listening on ADDR` on stdout.

use std::collections::HashMap;
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
use unstuck::{Key, MemoryStore, Session, SessionLayer, SessionStore};

const DEV_SECRET: &str = "unstuck demo secret: never use this one in production";

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
    session.insert(&key, &value)?;
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

/// The demo's settings, read from the environment.
struct Settings {
    listen: String,
    store: String,
    instance: Option<String>,
    idle: Duration,
    absolute: Duration,
    keys: Vec<Key>,
    dev_secret: bool,
    secure: bool,
    near_cache: bool,
    replica_acks: u32,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let var = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let secs = |name: &str, default: u64| -> Result<Duration, String> {
            match var(name) {
                None => Ok(Duration::from_secs(default)),
                Some(text) => match text.parse::<u64>() {
                    Ok(0) | Err(_) => Err(format!(
                        "{name} must be a positive whole number of seconds, got {text:?}"
                    )),
                    Ok(n) => Ok(Duration::from_secs(n)),
                },
            }
        };
        let flag = |name: &str, default: bool| -> Result<bool, String> {
            match var(name).as_deref() {
                None => Ok(default),
                Some("1" | "true" | "yes") => Ok(true),
                Some("0" | "false" | "no") => Ok(false),
                Some(other) => Err(format!("{name} must be 0 or 1, got {other:?}")),
            }
        };
        let (secrets, dev_secret) = match var("UNSTUCK_SECRET") {
            Some(list) => (
                list.split(',').map(str::to_owned).collect::<Vec<_>>(),
                false,
            ),
            None => (vec![DEV_SECRET.to_owned()], true),
        };
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                Key::derive_from(secret.as_bytes())
                    .map_err(|e| format!("UNSTUCK_SECRET entry {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            listen: var("UNSTUCK_LISTEN").unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
            store: var("UNSTUCK_STORE").unwrap_or_else(|| "memory".to_owned()),
            instance: var("UNSTUCK_INSTANCE"),
            idle: secs("UNSTUCK_IDLE_SECS", 1800)?,
            absolute: secs("UNSTUCK_ABSOLUTE_SECS", 28800)?,
            keys,
            dev_secret,
            secure: flag("UNSTUCK_COOKIE_SECURE", true)?,
            near_cache: flag("UNSTUCK_NEAR_CACHE", false)?,
            replica_acks: match var("UNSTUCK_REPLICA_ACKS") {
                None => 0,
                Some(text) => text.parse().map_err(|_| {
                    format!("UNSTUCK_REPLICA_ACKS must be a whole number of replicas, got {text:?}")
                })?,
            },
        })
    }
}

/// Background work a store needs while the server runs (dropping it stops it).
type Keepalive = Option<Box<dyn std::any::Any + Send>>;

/// How long a write waits for `UNSTUCK_REPLICA_ACKS` replicas: a replica on
/// the same network confirms in about a millisecond; much longer means it is
/// gone, and the write should fail fast rather than hold the request.
#[cfg(feature = "redis")]
const REPLICA_ACK_TIMEOUT: Duration = Duration::from_millis(200);

/// Opens the store `UNSTUCK_STORE` names.
async fn open_store(
    url: &str,
    near_cache: bool,
    replica_acks: u32,
) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    let scheme = url.split("://").next().unwrap_or_default();
    if near_cache && !scheme.starts_with("redis") {
        return Err(
            "UNSTUCK_NEAR_CACHE=1 works with Redis stores (redis:// or redis+sentinel://)"
                .to_owned(),
        );
    }
    if replica_acks > 0 && !scheme.starts_with("redis") {
        return Err(format!(
            "UNSTUCK_REPLICA_ACKS={replica_acks} works with Redis stores only"
        ));
    }
    match scheme {
        "memory" => Ok((Arc::new(MemoryStore::new()), None)),
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" => {
            Ok((redis_store(url, near_cache, replica_acks).await?, None))
        }
        "postgres" | "postgresql" => postgres_store(url).await,
        _ => Err(format!(
            "UNSTUCK_STORE={url:?} is not a store this demo knows: use memory, redis://, \
             redis+sentinel://, redis+cluster:// or postgres://"
        )),
    }
}

#[cfg(feature = "redis")]
async fn redis_store(
    url: &str,
    near_cache: bool,
    replica_acks: u32,
) -> Result<Arc<dyn SessionStore>, String> {
    let store = unstuck::RedisStore::connect(url)
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot open the Redis store: {e}"))?
        .with_replica_acks(replica_acks, REPLICA_ACK_TIMEOUT);
    if near_cache {
        let cached =
            unstuck::NearCache::new(store).map_err(|e| format!("UNSTUCK_NEAR_CACHE: {e}"))?;
        return Ok(Arc::new(cached));
    }
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(
    _url: &str,
    _near_cache: bool,
    _replica_acks: u32,
) -> Result<Arc<dyn SessionStore>, String> {
    Err(
        "UNSTUCK_STORE is a Redis URL, but this build has no Redis support: \
         run the demo with `--features redis`"
            .to_owned(),
    )
}

#[cfg(feature = "postgres")]
async fn postgres_store(url: &str) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    let store = unstuck::PostgresStore::connect(url)
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot open the PostgreSQL store: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot create the sessions table: {e}"))?;
    // Expired rows are invisible at once; this only reclaims their space.
    let cleanup = store.spawn_cleanup(Duration::from_secs(60), 1000);
    Ok((Arc::new(store), Some(Box::new(cleanup))))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(_url: &str) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    Err(
        "UNSTUCK_STORE is a PostgreSQL URL, but this build has no PostgreSQL support: \
         run the demo with `--features postgres`"
            .to_owned(),
    )
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    if settings.dev_secret {
        tracing::warn!("UNSTUCK_SECRET is not set: signing cookies with the public dev secret");
    }
    let (store, _keepalive) =
        open_store(&settings.store, settings.near_cache, settings.replica_acks).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let instance = Instance(
        settings
            .instance
            .unwrap_or_else(|| address.to_string())
            .into(),
    );
    let layer = SessionLayer::from_arc(store)
        .with_keys(settings.keys)
        .with_secure(settings.secure)
        .with_idle_timeout(settings.idle)
        .with_absolute_timeout(settings.absolute);
    let app = app(instance, layer);
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
