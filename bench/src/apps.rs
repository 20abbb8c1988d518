//! The configurations under test, each an axum app on its own loopback port.
//! Every app answers the same routes with the same work: `/read` reads a
//! counter, `/write` increments it, `/new` starts a session holding it, and
//! `/pad/{bytes}` adds a value of that size to the session (the size sweep).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;

pub const NO_SESSIONS: &str = "no sessions";
pub const UNSTUCK_MEMORY: &str = "unstuck + memory";
pub const UNSTUCK_REDIS: &str = "unstuck + Redis";
pub const UNSTUCK_NEAR: &str = "unstuck + Redis + near cache";
pub const TOWER_SESSIONS_REDIS: &str = "tower-sessions + Redis";

const IDLE: Duration = Duration::from_secs(30 * 60);

pub struct Row {
    pub name: &'static str,
    pub address: SocketAddr,
    /// Whether the row talks to Redis (its commands are counted).
    pub uses_redis: bool,
}

/// Every configuration, in table order.
pub const ALL: [&str; 5] = [NO_SESSIONS, UNSTUCK_MEMORY, UNSTUCK_REDIS, UNSTUCK_NEAR, TOWER_SESSIONS_REDIS];

/// Serves every configuration in this process.
pub async fn start(redis_url: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for name in ALL {
        rows.push(serve(name, app(name, redis_url).await).await);
    }
    rows
}

/// The app of configuration `name` (one of [`ALL`]), its store on `redis_url`.
pub async fn app(name: &str, redis_url: &str) -> Router {
    let redis = || async {
        unstuck::RedisStore::connect(redis_url)
            .await
            .expect("unstuck RedisStore on the bench redis")
    };
    match name {
        NO_SESSIONS => none::app(),
        UNSTUCK_MEMORY => ours::app(unstuck::MemoryStore::new()),
        UNSTUCK_REDIS => ours::app(redis().await),
        UNSTUCK_NEAR => ours::app(
            unstuck::NearCache::new(redis().await)
                .expect("near cache")
                .with_max_entries(100_000),
        ),
        TOWER_SESSIONS_REDIS => theirs::app(redis_url).await,
        other => panic!("no configuration named {other:?}"),
    }
}

pub async fn serve(name: &'static str, app: Router) -> Row {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Row {
        name,
        address,
        uses_redis: name.contains("Redis"),
    }
}

/// The ceiling: the same routes with no session at all.
mod none {
    use super::*;

    pub fn app() -> Router {
        Router::new()
            .route("/read", get(|| async { "0" }))
            .route("/write", get(|| async { "1" }))
            .route("/new", get(|| async { "1" }))
            .route("/pad/{bytes}", get(|| async { "1" }))
    }
}

mod ours {
    use super::*;
    use unstuck::{Session, SessionLayer, SessionStore};

    async fn read(session: Session) -> Result<String, unstuck::Error> {
        Ok(session.get::<u64>("count")?.unwrap_or(0).to_string())
    }

    async fn write(session: Session) -> Result<String, unstuck::Error> {
        let n = session.get::<u64>("count")?.unwrap_or(0) + 1;
        session.insert("count", n)?;
        Ok(n.to_string())
    }

    async fn pad(session: Session, Path(bytes): Path<usize>) -> Result<String, unstuck::Error> {
        session.insert("pad", "x".repeat(bytes))?;
        Ok(bytes.to_string())
    }

    pub fn app(store: impl SessionStore) -> Router {
        let layer = SessionLayer::new(store)
            .with_keys([unstuck::Key::derive_from(&[7; 32]).unwrap()])
            .with_idle_timeout(IDLE);
        Router::new()
            .route("/read", get(read))
            .route("/write", get(write))
            .route("/new", get(write))
            .route("/pad/{bytes}", get(pad))
            .layer(layer)
    }
}

mod theirs {
    use super::*;
    use tower_sessions::{Expiry, Session, SessionManagerLayer};
    use tower_sessions_redis_store::RedisStore;
    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};

    async fn read(session: Session) -> String {
        session
            .get::<u64>("count")
            .await
            .expect("tower-sessions get")
            .unwrap_or(0)
            .to_string()
    }

    async fn write(session: Session) -> String {
        let n = session.get::<u64>("count").await.expect("tower-sessions get").unwrap_or(0) + 1;
        session.insert("count", n).await.expect("tower-sessions insert");
        n.to_string()
    }

    async fn pad(session: Session, Path(bytes): Path<usize>) -> String {
        session.insert("pad", "x".repeat(bytes)).await.expect("tower-sessions insert");
        bytes.to_string()
    }

    pub async fn app(redis_url: &str) -> Router {
        let pool = Pool::new(Config::from_url(redis_url).expect("fred config"), None, None, None, 6)
            .expect("fred pool");
        pool.init().await.expect("fred connects");
        let layer = SessionManagerLayer::new(RedisStore::new(pool))
            .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::seconds(
                IDLE.as_secs() as i64,
            )));
        Router::new()
            .route("/read", get(read))
            .route("/write", get(write))
            .route("/new", get(write))
            .route("/pad/{bytes}", get(pad))
            .layer(layer)
    }
}
