//! The `UNSTUCK_*` settings the demo, login and cluster examples share
//! (`examples/demo.rs` documents them), and how a store URL becomes a store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use unstuck::{
    CapPolicy, Key, MemoryStore, SessionLayer, SessionStore, SessionTransport, TokenHeader,
};

const DEV_SECRET: &str = "unstuck demo secret: never use this one in production";

/// Settings read from the environment.
pub struct Settings {
    vars: HashMap<String, String>,
    pub listen: String,
    pub store: String,
    pub instance: Option<String>,
    pub idle: Duration,
    pub absolute: Duration,
    pub keys: Vec<Key>,
    pub dev_secret: bool,
    pub secure: bool,
    pub near_cache: bool,
    pub replica_acks: u32,
    pub transport: SessionTransport,
    /// `UNSTUCK_MAX_SESSION_BYTES`: the layer's and the store's size limit.
    pub max_session_bytes: usize,
    /// `UNSTUCK_MAX_SESSIONS_PER_USER` and `UNSTUCK_SESSION_CAP_POLICY`.
    pub sessions_per_user: Option<(u32, CapPolicy)>,
}

impl Settings {
    /// Reads the settings; the message names the variable that is wrong.
    pub fn from_env() -> Result<Self, String> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let mut settings = Self {
            vars,
            listen: String::new(),
            store: String::new(),
            instance: None,
            idle: Duration::ZERO,
            absolute: Duration::ZERO,
            keys: Vec::new(),
            dev_secret: false,
            secure: true,
            near_cache: false,
            replica_acks: 0,
            transport: SessionTransport::Cookie,
            max_session_bytes: unstuck::store::DEFAULT_MAX_SESSION_BYTES,
            sessions_per_user: None,
        };
        settings.listen = settings
            .var("UNSTUCK_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
        settings.store = settings
            .var("UNSTUCK_STORE")
            .unwrap_or_else(|| "memory".to_owned());
        settings.instance = settings.var("UNSTUCK_INSTANCE");
        settings.idle = settings.secs("UNSTUCK_IDLE_SECS", 1800)?;
        settings.absolute = settings.secs("UNSTUCK_ABSOLUTE_SECS", 28800)?;
        settings.secure = settings.flag("UNSTUCK_COOKIE_SECURE", true)?;
        settings.near_cache = settings.flag("UNSTUCK_NEAR_CACHE", false)?;
        settings.replica_acks = match settings.var("UNSTUCK_REPLICA_ACKS") {
            None => 0,
            Some(text) => text.parse().map_err(|_| {
                format!("UNSTUCK_REPLICA_ACKS must be a whole number of replicas, got {text:?}")
            })?,
        };
        if let Some(text) = settings.var("UNSTUCK_SESSION_HEADER") {
            settings.transport = session_transport(&text)?;
        }
        if let Some(text) = settings.var("UNSTUCK_MAX_SESSION_BYTES") {
            settings.max_session_bytes = match text.parse() {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "UNSTUCK_MAX_SESSION_BYTES must be a positive whole number of bytes, got {text:?}"
                    ));
                }
                Ok(bytes) => bytes,
            };
        }
        let policy = match settings.var("UNSTUCK_SESSION_CAP_POLICY").as_deref() {
            None | Some("evict-oldest") => CapPolicy::EvictOldest,
            Some("refuse") => CapPolicy::Refuse,
            Some(other) => {
                return Err(format!(
                    "UNSTUCK_SESSION_CAP_POLICY must be evict-oldest or refuse, got {other:?}"
                ));
            }
        };
        if let Some(text) = settings.var("UNSTUCK_MAX_SESSIONS_PER_USER") {
            match text.parse::<u32>() {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "UNSTUCK_MAX_SESSIONS_PER_USER must be a positive whole number, got {text:?}"
                    ));
                }
                Ok(max) => settings.sessions_per_user = Some((max, policy)),
            }
        }
        let (secrets, dev_secret) = match settings.var("UNSTUCK_SECRET") {
            Some(list) => (list.split(',').map(str::to_owned).collect(), false),
            None => (vec![DEV_SECRET.to_owned()], true),
        };
        settings.dev_secret = dev_secret;
        settings.keys = secrets
            .iter()
            .enumerate()
            .map(|(i, secret)| {
                Key::derive_from(secret.as_bytes())
                    .map_err(|e| format!("UNSTUCK_SECRET entry {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(settings)
    }

    /// A variable's trimmed value; empty counts as unset.
    pub fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn secs(&self, name: &str, default: u64) -> Result<Duration, String> {
        match self.var(name) {
            None => Ok(Duration::from_secs(default)),
            Some(text) => match text.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "{name} must be a positive whole number of seconds, got {text:?}"
                )),
                Ok(n) => Ok(Duration::from_secs(n)),
            },
        }
    }

    /// A `0`/`1` variable.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.var(name).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes") => Ok(true),
            Some("0" | "false" | "no") => Ok(false),
            Some(other) => Err(format!("{name} must be 0 or 1, got {other:?}")),
        }
    }

    /// Warns when cookies are signed with the public dev secret.
    pub fn warn_about_dev_secret(&self) {
        if self.dev_secret {
            eprintln!(
                "warning: UNSTUCK_SECRET is not set: signing cookies with the public dev secret"
            );
        }
    }

    /// A session layer on `store` with these settings.
    pub fn layer(&self, store: Arc<dyn SessionStore>) -> SessionLayer {
        let layer = SessionLayer::from_arc(store)
            .with_keys(self.keys.clone())
            .with_secure(self.secure)
            .with_idle_timeout(self.idle)
            .with_absolute_timeout(self.absolute)
            .with_transport(self.transport.clone())
            .with_max_session_bytes(self.max_session_bytes);
        match self.sessions_per_user {
            Some((max, policy)) => layer.with_max_sessions_per_user(max, policy),
            None => layer,
        }
    }
}

/// `UNSTUCK_SESSION_HEADER`: `bearer` (`Authorization: Bearer`, new tokens in
/// `X-Session-Token`) or a header name, header only; with `,cookie` appended,
/// requests without the header use the cookie.
fn session_transport(text: &str) -> Result<SessionTransport, String> {
    let (header, with_cookie) = match text.strip_suffix(",cookie") {
        Some(header) => (header.trim(), true),
        None => (text, false),
    };
    let header = if header.eq_ignore_ascii_case("bearer") {
        TokenHeader::bearer()
    } else {
        TokenHeader::named(header.parse().map_err(|_| {
            format!("UNSTUCK_SESSION_HEADER must be `bearer` or a header name, got {header:?}")
        })?)
    };
    let transport = if with_cookie {
        SessionTransport::Both(header)
    } else {
        SessionTransport::Header(header)
    };
    // A header the layer refuses (Cookie, Authorization…) fails here, with
    // the variable's name, rather than when the router is built.
    SessionLayer::new(MemoryStore::new())
        .with_transport(transport.clone())
        .validate()
        .map_err(|e| format!("UNSTUCK_SESSION_HEADER: {e}"))?;
    Ok(transport)
}

/// Background work a store needs while the server runs (dropping it stops it).
pub type Keepalive = Option<Box<dyn std::any::Any + Send>>;

/// How long a write waits for `UNSTUCK_REPLICA_ACKS` replicas: a replica on
/// the same network confirms in about a millisecond; much longer means it is
/// gone, and the write should fail fast rather than hold the request.
#[cfg(feature = "redis")]
const REPLICA_ACK_TIMEOUT: Duration = Duration::from_millis(200);

/// Opens the store `UNSTUCK_STORE` names, with the near cache and replica
/// acks the settings ask for.
pub async fn open_store(settings: &Settings) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    let url = settings.store.as_str();
    let (near_cache, replica_acks) = (settings.near_cache, settings.replica_acks);
    let limit = settings.max_session_bytes;
    let scheme = url.split("://").next().unwrap_or_default();
    if near_cache && !scheme.starts_with("redis") {
        return Err(
            "UNSTUCK_NEAR_CACHE=1 works with Redis stores (redis://, redis+sentinel:// or redis+cluster://)"
                .to_owned(),
        );
    }
    if replica_acks > 0 && !scheme.starts_with("redis") {
        return Err(format!(
            "UNSTUCK_REPLICA_ACKS={replica_acks} works with Redis stores only"
        ));
    }
    match scheme {
        "memory" => Ok((
            Arc::new(MemoryStore::new().with_max_session_bytes(limit)),
            None,
        )),
        "redis" | "rediss" | "redis+sentinel" | "redis+cluster" => Ok((
            redis_store(url, near_cache, replica_acks, limit).await?,
            None,
        )),
        "postgres" | "postgresql" => postgres_store(url, limit).await,
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
    max_session_bytes: usize,
) -> Result<Arc<dyn SessionStore>, String> {
    let store = unstuck::RedisStore::connect(url)
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot open the Redis store: {e}"))?
        .with_replica_acks(replica_acks, REPLICA_ACK_TIMEOUT)
        .with_max_session_bytes(max_session_bytes);
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
    _max_session_bytes: usize,
) -> Result<Arc<dyn SessionStore>, String> {
    Err(
        "UNSTUCK_STORE is a Redis URL, but this build has no Redis support: \
         run the example with `--features redis`"
            .to_owned(),
    )
}

#[cfg(feature = "postgres")]
async fn postgres_store(
    url: &str,
    max_session_bytes: usize,
) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    let store = unstuck::PostgresStore::connect(url)
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot open the PostgreSQL store: {e}"))?
        .with_max_session_bytes(max_session_bytes);
    store
        .migrate()
        .await
        .map_err(|e| format!("UNSTUCK_STORE: cannot create the sessions table: {e}"))?;
    // Expired rows are invisible at once; this only reclaims their space.
    let cleanup = store.spawn_cleanup(Duration::from_secs(60), 1000);
    Ok((Arc::new(store), Some(Box::new(cleanup))))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(
    _url: &str,
    _max_session_bytes: usize,
) -> Result<(Arc<dyn SessionStore>, Keepalive), String> {
    Err(
        "UNSTUCK_STORE is a PostgreSQL URL, but this build has no PostgreSQL support: \
         build the example with `--features postgres`"
            .to_owned(),
    )
}
