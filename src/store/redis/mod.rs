//! [`RedisStore`]: sessions in Redis (standalone, Sentinel or Cluster).

mod cluster_tracking;
mod codec;
mod conn;
mod errors;
mod exec;
mod expiry;
mod index;
mod pubsub;
mod scripts;
mod sentinel_watch;
mod tracking;
mod url;
mod write;
/// The decoders a load runs on what Redis holds, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use std::collections::HashMap;

    use crate::id::StorageKey;
    use crate::store::{Record, StoreError, Version};

    /// Decodes `fields` as a load does: from an `HGETALL` reply.
    pub(crate) fn decode_hash(
        fields: HashMap<String, String>,
    ) -> Result<(Record, Version), StoreError> {
        let reply = fields
            .into_iter()
            .flat_map(|(field, value)| [field, value])
            .map(|text| deadpool_redis::redis::Value::BulkString(text.into_bytes()))
            .collect();
        super::codec::decode_reply(deadpool_redis::redis::Value::Array(reply))?
            .ok_or_else(|| StoreError::backend("an empty hash is no session"))
    }

    pub(crate) fn storage_key_of(prefix: &str, redis_key: &[u8]) -> Option<StorageKey> {
        super::codec::storage_key_of(prefix, redis_key)
    }
}

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncConnectionConfig};
use deadpool_redis::{Runtime, cluster, sentinel};

use self::codec::{
    CREATED, DataField, EXPIRES, USER, decode, decode_reply, from_millis, index_score, session_key,
    unsupported,
};
use self::conn::{Backend, Conn, Connections};
use self::errors::{TimedOut, is_unavailable, map_pool_error, map_redis_error};
pub use self::expiry::RedisExpiryEvents;
pub use self::tracking::RedisChannel;

use super::{
    ChangeSet, DEFAULT_MAX_SESSION_BYTES, Record, SaveOutcome, SessionStore, SessionSummary,
    StoreError, data_bytes,
};
use crate::id::StorageKey;

/// The longest one store call may take by default, connection included.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long opening a connection to one node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one reply may take, `WAIT` excluded.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The key prefix unless [`RedisStore::with_prefix`] says otherwise.
const DEFAULT_PREFIX: &str = "unstuck:";

/// Applies the store's connection timeouts to a deadpool builder (a macro: the
/// three pool types share no nameable trait without a direct `deadpool` dependency).
macro_rules! bounded_pool {
    ($builder:expr) => {
        $builder
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RESPONSE_TIMEOUT))
            .build()
            .map_err(StoreError::backend)
    };
}
/// Sessions in Redis, shared by every instance of an application: standalone,
/// Sentinel or Cluster, through [deadpool-redis] pools.
///
/// # Layout
/// Each session is one hash at `{prefix}{<storage key>}` (default prefix
/// `unstuck:`). The braces are a Cluster hash tag; the storage key is the
/// SHA-256 of the session ID, so a dump of Redis holds no usable cookie. Values
/// live in fields `d:<key>` as JSON text, beside `m:created`, `m:expires` (ms
/// since the Unix epoch) and `m:user`, `m:v` (a version bumped by every save)
/// and `m:sz` (the session's size). Redis itself expires the hash
/// (`PEXPIREAT`), so no sweeper is needed.
///
/// # Limits and stored format
/// A session holds at most 64 KiB of keys and JSON text unless
/// [`with_max_session_bytes`](Self::with_max_session_bytes) says otherwise;
/// the save script checks it against the hash as it is, so concurrent saves
/// cannot pass it together. Under a [`SessionCap`](crate::SessionCap), a
/// login is admitted by a script on the user's index key (atomic however many
/// instances race), which evicts the user's lowest-scored entries: the
/// sessions that logged in first (or, for sessions kept alive past their
/// first idle period, were re-indexed first). Hashes carry their stored
/// format in `m:fmt` only when it is not 1, so every hash written so far is
/// format 1 as it stands; one marked with a later format is refused.
///
/// Every write is one Lua script on one key, run with `EVALSHA` (reloaded after a
/// `NOSCRIPT`): creation refuses a taken key, a save applies only the request's
/// delta and refuses a key that is gone, so a late request cannot resurrect a
/// session after logout or expiry.
///
/// Sessions with a user are also listed in a sorted set per user at
/// `{prefix}user:{<SHA-256 of the user>}`, scored by expiry. Expired entries are
/// trimmed on every index write and the index key's own TTL follows its latest
/// entry, so the index cannot outgrow the sessions it lists. On Cluster the index
/// and the session live on different slots and are written by separate commands:
/// listings check every entry against the session itself and skip stale ones.
///
/// # From one Redis to Sentinel to Cluster
/// - **Standalone** (`redis://host:port/db`): simplest; if that Redis dies, every
///   store call fails fast with [`StoreError::Unavailable`] (handlers that need a
///   session answer `503`) until it is back. Sessions survive a restart only if
///   Redis persists them (RDB/AOF).
/// - **Sentinel** (`redis+sentinel://s1:26379,s2:26379/mymaster`): a primary with
///   replicas, watched by sentinels that promote a replica when the primary
///   fails; the pool asks the sentinels for the current primary when it
///   reconnects. Connections that see the failure are dropped from the pool at
///   once. After a *manual* failover (`SENTINEL FAILOVER`) the old primary keeps
///   accepting writes until it is demoted (about 10 s) and loses them then; so a
///   store made by [`connect`](Self::connect) listens to the sentinels'
///   announcements and moves to the promoted replica the moment it answers as
///   primary, retiring every connection to the old one (and checks the sentinels
///   about every second in case an announcement was missed). A store made by
///   [`from_sentinel_pool`](Self::from_sentinel_pool) does not know the
///   sentinels' addresses: its connections to the old primary go only when a
///   write fails with `READONLY` after the demotion.
/// - **Cluster** (`redis+cluster://n1:7000,n2:7001`): sessions spread over
///   shards by hash slot; each shard fails over like Sentinel.
///
/// # What a failover can lose, and how to bound it
/// Redis replicates asynchronously: a write acknowledged by a primary that dies
/// before its replicas copied it is gone after the promotion. For sessions that
/// means a value set just before the crash disappears, a login can be undone, or
/// (worse) a logout or "log out everywhere" can be undone.
/// [`with_replica_acks`](Self::with_replica_acks) makes every session write wait
/// (`WAIT`) until that many replicas have it, and report an error when they do
/// not in time: a write that succeeded then survives the loss of the primary,
/// at the cost of one replication round trip per write. It is not a consensus
/// protocol: a write that timed out may still have been applied, and a
/// network partition can still lose writes acknowledged by a primary that is on
/// the minority side.
///
/// # Timeouts
/// Every store call is bounded (default 2 s, see
/// [`with_timeout`](Self::with_timeout)); connecting to a node is bounded at 1 s
/// and each reply at 1 s, so a dead or hung Redis gives
/// [`StoreError::Unavailable`] quickly instead of a hung request. Connection,
/// I/O, timeout, failover (`READONLY`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`,
/// `LOADING`) and pool errors are `Unavailable`; other server error replies are
/// [`StoreError::Backend`].
///
/// # Examples
/// ```no_run
/// use unstuck::{RedisStore, SessionLayer};
///
/// # async fn run() -> Result<(), unstuck::StoreError> {
/// let store = RedisStore::connect("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/sessions")
///     .await?
///     .with_replica_acks(1, std::time::Duration::from_millis(100));
/// let layer = SessionLayer::new(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// [deadpool-redis]: https://docs.rs/deadpool-redis
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisStore {
    connections: Arc<Connections>,
    /// Where `connect` was pointed, kept for the near cache's channel.
    target: Option<Arc<url::Target>>,
    prefix: Arc<str>,
    timeout: Duration,
    replica_acks: Option<ReplicaAcks>,
    max_session_bytes: usize,
}

#[derive(Clone, Copy, Debug)]
struct ReplicaAcks {
    replicas: u32,
    timeout: Duration,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self.connections.mode();
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("replica_acks", &self.replica_acks)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis and checks that it answers.
    ///
    /// The URL picks the deployment:
    /// - `redis://[user:password@]host:port[/db]` (or `rediss://`): one server;
    /// - `redis+sentinel://host:port,host:port/MASTER_NAME[/db]`: the sentinels'
    ///   addresses and the name of the monitored primary;
    /// - `redis+cluster://host:port,host:port`: seed nodes of a Cluster.
    ///
    /// Sentinel and Cluster URLs take no credentials or TLS options: for those,
    /// build a pool and use [`from_sentinel_pool`](Self::from_sentinel_pool) or
    /// [`from_cluster_pool`](Self::from_cluster_pool).
    ///
    /// # Errors
    /// [`StoreError::Config`] for a malformed URL (the message never repeats
    /// it); [`StoreError::Unavailable`] if Redis cannot be reached within the
    /// timeout.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let target = url::parse(url)?;
        let mut store = match target.clone() {
            url::Target::Standalone(url) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let manager = deadpool_redis::Manager::new_with_config(url.as_str(), config)
                    .map_err(map_redis_error)?;
                let pool = deadpool_redis::Pool::builder(manager);
                Self::from_pool(bounded_pool!(pool)?)
            }
            url::Target::Sentinel {
                sentinels,
                master_name,
                db,
            } => {
                // The watcher follows switches as Sentinel announces them.
                let (watched, master) = (sentinels.clone(), master_name.clone());
                let mut config = sentinel::Config::from_urls(
                    sentinels,
                    master_name,
                    sentinel::SentinelServerType::Master,
                );
                if db != 0 {
                    config.node_connection_info = Some(sentinel::SentinelNodeConnectionInfo {
                        tls_mode: None,
                        redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                            db,
                            ..Default::default()
                        }),
                    });
                }
                let pool = config.builder().map_err(StoreError::backend)?;
                let store = Self::from_sentinel_pool(bounded_pool!(pool)?);
                sentinel_watch::watch(&store.connections, watched, master, db);
                store
            }
            url::Target::Cluster { nodes } => {
                let pool = cluster::Config::from_urls(nodes)
                    .builder()
                    .map_err(StoreError::backend)?;
                Self::from_cluster_pool(bounded_pool!(pool)?)
            }
        };
        store.target = Some(Arc::new(target));
        store
            .bounded(0, async {
                let mut conn = store.conn().await?;
                conn.query::<String>(&redis::cmd("PING")).await
            })
            .await?;
        Ok(store)
    }

    /// A store on a standalone Redis pool you built (for TLS, credentials, pool
    /// sizing). Connects lazily: nothing is checked until the first call.
    ///
    /// Give the pool's connections a response timeout
    /// ([`Manager::new_with_config`](deadpool_redis::Manager::new_with_config))
    /// and the pool wait/create timeouts, or a dead Redis is only caught by the
    /// store's own [`with_timeout`](Self::with_timeout).
    pub fn from_pool(pool: deadpool_redis::Pool) -> Self {
        Self::new(Backend::Standalone(pool))
    }

    /// A store on a Sentinel pool you built ([`deadpool_redis::sentinel`]). The
    /// pool asks the sentinels for the current primary whenever it opens a
    /// connection, so it follows failovers. Connects lazily.
    pub fn from_sentinel_pool(pool: sentinel::Pool) -> Self {
        Self::new(Backend::Sentinel(pool))
    }

    /// A store on a Cluster pool you built ([`deadpool_redis::cluster`]).
    /// Connects lazily.
    pub fn from_cluster_pool(pool: cluster::Pool) -> Self {
        Self::new(Backend::Cluster(pool))
    }

    fn new(backend: Backend) -> Self {
        Self {
            connections: Arc::new(Connections::new(backend)),
            target: None,
            prefix: DEFAULT_PREFIX.into(),
            timeout: DEFAULT_TIMEOUT,
            replica_acks: None,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
        }
    }

    /// The most bytes of keys and JSON text one session may hold (default 64
    /// KiB); writes that would pass it fail with [`StoreError::TooLarge`] and
    /// write nothing.
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Self {
        self.max_session_bytes = bytes;
        self
    }

    /// Prefixes every key the store writes (default `unstuck:`), so several
    /// applications can share one Redis. Instances sharing sessions must use the
    /// same prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// Bounds every store call made outside a [`SessionLayer`](crate::SessionLayer),
    /// from taking a connection to the last reply (default 2 s, widened by the
    /// replica-ack timeout for each write that waits). Under a layer, the
    /// layer's store timeout is the one deadline of a request's store work and
    /// the store keeps to it instead. A call that runs out of time fails with
    /// [`StoreError::Unavailable`]. Connecting to a node (1 s) and each reply
    /// (1 s) have timeouts of their own, which detect a dead connection.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Makes every session write wait until at least `replicas` replicas have
    /// it (Redis `WAIT replicas timeout`), so writes reported as done survive a
    /// failover to one of those replicas.
    ///
    /// A write that does not reach enough replicas within `timeout` fails with
    /// [`StoreError::Unavailable`] saying so (a `503` through the layer: the
    /// usual cause is a replica that is down or resyncing during a failover,
    /// which passes); it may still have been applied on the primary (and be
    /// lost if it fails over). Each write costs one replication
    /// round trip more; with no replica reachable every write fails, which trades
    /// availability for durability: choose `replicas` below the number of
    /// replicas you run. Index updates for "log out everywhere" do not wait.
    ///
    /// On Sentinel the pool's connections keep redis-rs's default reply timeout
    /// (0.5 s); the store raises it on each connection it uses to cover `timeout`.
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_acks = (replicas > 0).then_some(ReplicaAcks { replicas, timeout });
        self
    }

    fn session_key(&self, key: &StorageKey) -> String {
        session_key(&self.prefix, key)
    }

    /// How many times the store has seen its primary change (Sentinel), so a
    /// near cache channel opened before a switch can tell it is stale.
    fn primary_switches(&self) -> u64 {
        self.connections.switch_count()
    }

    /// Runs `op` within the store's time budget, widened by one replica-ack
    /// timeout per `WAIT` the call may make.
    async fn bounded<T>(
        &self,
        waits: u32,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // Under a SessionLayer, the request's deadline is the budget (it
        // already allows for everything the request's store work involves);
        // used directly, the store's own timeout, widened per `WAIT`.
        let budget = crate::deadline::remaining().unwrap_or_else(|| {
            self.timeout
                + self
                    .replica_acks
                    .map_or(Duration::ZERO, |acks| acks.timeout * waits)
        });
        match tokio::time::timeout(budget, op).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(?budget, "redis session store call timed out");
                Err(StoreError::unavailable(TimedOut(budget)))
            }
        }
    }

    /// [`bounded`](Self::bounded) for a call on pool connections only, which
    /// needs no timeout handling of its own: under a layer, whose timer at the
    /// same deadline ends the call anyway (and a connection dropped
    /// mid-request is retired), it sets no second timer. Calls on the near
    /// cache's channel keep theirs: they must see their own timeout to mark
    /// the channel lost.
    async fn bounded_pooled<T>(
        &self,
        waits: u32,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if crate::deadline::remaining().is_some() {
            op.await
        } else {
            self.bounded(waits, op).await
        }
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        let mut conn = self.connections.get().await?;
        if let Some(acks) = self.replica_acks {
            conn.widen_response_timeout(RESPONSE_TIMEOUT + acks.timeout);
        }
        Ok(conn)
    }

    /// The connection in `slot`, taken on first use.
    async fn lazy_conn<'a>(&self, slot: &'a mut Option<Conn>) -> Result<&'a mut Conn, StoreError> {
        if slot.is_none() {
            *slot = Some(self.conn().await?);
        }
        Ok(slot.as_mut().expect("just filled"))
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let reply: redis::Value = self
            .bounded_pooled(0, async {
                let mut conn = self.conn().await?;
                conn.query(redis::cmd("HGETALL").arg(self.session_key(key)))
                    .await
            })
            .await?;
        let Some((record, _)) = decode_reply(reply)? else {
            return Ok(None);
        };
        // Redis expires the key on its own clock; this guards against a server
        // clock that lags ours.
        Ok((record.expires_at > SystemTime::now()).then_some(record))
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        let size = data_bytes(&record.data);
        if size > self.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_session_bytes,
            });
        }
        self.bounded_pooled(1, async {
            let mut conn = self.conn().await?;
            // Index first: if the session write then fails, the index holds a
            // stale entry (skipped by listings) rather than missing a live
            // session that "log out everywhere" would then not find.
            let score = index_score(record.expires_at);
            if let Some(user) = &record.user {
                self.index_add(&mut conn, user, key, score).await?;
            }
            self.create_record(&mut conn, key, record, score).await
        })
        .await
    }

    /// A save is one script call. A session with a user costs more only when
    /// its user index entry must move: at login, when the user changes, and
    /// when the session outlives the entry's score, which [`index_score`] sets
    /// well ahead of the session's expiry so that sliding expiry rarely needs it.
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_with(key, changes, None).await?.0)
    }

    /// Rotation works on Cluster, where `from` and `to` usually live on
    /// different nodes: a script atomically takes (reads and deletes) the old
    /// session, then the new one is created with the changes applied. Between
    /// the two steps the session exists under neither key, so a concurrent
    /// request on the old ID sees it gone (as it would after the rotation), and
    /// if Redis or this process fails right there the session is lost: the user
    /// logs in again. It is never left readable under the old ID.
    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        self.bounded(3, async {
            let mut conn = self.conn().await?;
            let taken: i64 = conn
                .query(redis::cmd("EXISTS").arg(self.session_key(to)))
                .await?;
            if taken == 1 {
                return Err(StoreError::KeyTaken);
            }
            let taken: Vec<String> = self
                .eval(
                    &mut conn,
                    &scripts::TAKE,
                    &self.session_key(from),
                    |cmd| {
                        if changes.sets_values() {
                            cmd.arg(self.max_session_bytes);
                        } else {
                            cmd.arg(-1);
                        }
                        cmd.arg(changes.removed().len());
                        let mut field = DataField::default();
                        for name in changes.removed() {
                            cmd.arg(field.of(name));
                        }
                        for (name, json) in changes.inserted() {
                            cmd.arg(field.of(name)).arg(json);
                        }
                    },
                    true,
                )
                .await?;
            if let [mark, kind, value] = &taken[..]
                && mark == "!"
            {
                return Err(if kind == "format" {
                    unsupported(value)
                } else {
                    StoreError::TooLarge {
                        size: value.parse().unwrap_or(usize::MAX),
                        limit: self.max_session_bytes,
                    }
                });
            }
            if taken.is_empty() {
                return Ok(SaveOutcome::Gone);
            }
            let mut fields = HashMap::with_capacity(taken.len() / 2);
            let mut pairs = taken.into_iter();
            while let (Some(field), Some(value)) = (pairs.next(), pairs.next()) {
                fields.insert(field, value);
            }
            let original = decode(fields)?;
            let mut record = original.clone();
            changes.apply_to(&mut record);
            let score = index_score(record.expires_at);
            let cap = changes.user_cap();
            if let Some(user) = &record.user {
                let joined = self
                    .index_join(&mut conn, user, to, score, cap, Some(from))
                    .await;
                if let Err(error) = joined {
                    // Refused by the cap (or failed): the session goes back
                    // where it was, unchanged.
                    self.create_record(&mut conn, from, &original, 0).await?;
                    return Err(error);
                }
            }
            if !self.create_record(&mut conn, to, &record, score).await? {
                // Only a racing create of the same fresh key gets here: put the
                // session back rather than lose it.
                self.create_record(&mut conn, from, &original, 0).await?;
                return Err(StoreError::KeyTaken);
            }
            if let (Some(user), Some(_)) = (&record.user, cap)
                && !self.still_indexed(&mut conn, user, to).await?
            {
                self.delete_owned(&mut conn, to, user).await?;
                if let Some(user) = &original.user {
                    self.index_remove(&mut conn, user, &[from]).await?;
                }
                return Ok(SaveOutcome::Gone);
            }
            if let Some(user) = &original.user {
                self.index_remove(&mut conn, user, &[from]).await?;
            }
            Ok(SaveOutcome::Applied)
        })
        .await
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.bounded(1, async {
            let mut conn = self.conn().await?;
            let (deleted, user): (i64, Option<String>) = self
                .eval(
                    &mut conn,
                    &scripts::DELETE,
                    &self.session_key(key),
                    |cmd| {
                        cmd.arg("a").arg("");
                    },
                    true,
                )
                .await?;
            if let (1, Some(user)) = (deleted, &user) {
                self.index_remove(&mut conn, user, &[key]).await?;
            }
            Ok(deleted == 1)
        })
        .await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        let mut sessions = self
            .bounded(0, async {
                let mut conn = self.conn().await?;
                let keys = self.indexed(&mut conn, user).await?;
                let cmds = keys
                    .iter()
                    .map(|key| {
                        let mut cmd = redis::cmd("HMGET");
                        cmd.arg(self.session_key(key))
                            .arg(USER)
                            .arg(CREATED)
                            .arg(EXPIRES);
                        cmd
                    })
                    .collect();
                let replies = conn.many(cmds).await?;
                let now = SystemTime::now();
                let mut sessions = Vec::with_capacity(keys.len());
                for (key, reply) in keys.into_iter().zip(replies) {
                    let (owner, created, expires): (Option<String>, Option<u64>, Option<u64>) =
                        redis::from_redis_value(reply).map_err(StoreError::backend)?;
                    // Stale entries (the session is gone or belongs to someone
                    // else now) are skipped, not dropped: the entry may belong to
                    // a create still in flight, which must stay findable. They
                    // leave the index when their score (expiry) passes.
                    let (Some(owner), Some(created), Some(expires)) = (owner, created, expires)
                    else {
                        continue;
                    };
                    let expires_at = from_millis(expires);
                    if owner == user && expires_at > now {
                        sessions.push(SessionSummary {
                            key,
                            created_at: from_millis(created),
                            expires_at,
                        });
                    }
                }
                Ok(sessions)
            })
            .await?;
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    /// The deletes go out together: one pipeline (and one `WAIT`) on a single
    /// server, one call per session on Cluster, within one time budget, so the
    /// call does not stop halfway because of a per-session timeout.
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        let keys = self
            .bounded(0, async {
                let mut conn = self.conn().await?;
                self.indexed(&mut conn, user).await
            })
            .await?;
        if keys.is_empty() {
            return Ok(0);
        }
        let waits = if self.connections.mode() == "cluster" {
            u32::try_from(keys.len()).unwrap_or(u32::MAX)
        } else {
            1
        };
        self.bounded(waits, async {
            let mut conn = self.conn().await?;
            let calls = keys
                .iter()
                .map(|key| {
                    let mut cmd = exec::script_call(&scripts::DELETE, &self.session_key(key));
                    cmd.arg("u").arg(user);
                    cmd
                })
                .collect();
            let replies: Vec<(i64, Option<String>)> = self
                .eval_each(&mut conn, &scripts::DELETE, calls, true)
                .await?;
            let deleted: Vec<&StorageKey> = keys
                .iter()
                .zip(replies)
                .filter_map(|(key, (deleted, _))| (deleted == 1).then_some(key))
                .collect();
            if !deleted.is_empty() {
                self.index_remove(&mut conn, user, &deleted).await?;
            }
            Ok(deleted.len() as u64)
        })
        .await
    }
}
