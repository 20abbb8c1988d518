//! The near cache: session records kept in this process, coherent with Redis
//! through server-assisted client-side caching (RESP3 `CLIENT TRACKING`).
//!
//! How it stays coherent:
//! - Every cached record was read on one dedicated connection with tracking on
//!   (`CLIENT TRACKING ON REDIRECT <id> NOLOOP`), so Redis remembers that this
//!   process holds the key and, as soon as anyone else changes it (or it
//!   expires, or the database is flushed), publishes an invalidation to a
//!   second connection of ours subscribed to `__redis__:invalidate`.
//! - That invalidation socket is drained synchronously, without waiting for any
//!   task to be scheduled, before the cache answers a load and before it
//!   accepts a reply: whatever invalidation has reached this machine is applied
//!   first. Redis sends it in the same event-loop turn as its reply to the
//!   writer, so by the time a client has heard of a write from one instance and
//!   asked another, the invalidation is already in the other's socket. What
//!   remains is the microseconds the message spends on the network: a read that
//!   races a write on another instance that closely can see the value from just
//!   before it, as with any cache.
//! - An invalidation may also arrive *after* a reply that is not cached yet.
//!   Callers take a [`Ticket`] before sending; an invalidation of the key (or a
//!   flush) in between voids the ticket and the reply is not cached.
//! - Session saves run on the tracking connection with `NOLOOP`, so this
//!   process's own writes do not invalidate it; the save script ends by reading
//!   the session's version (`m:v`, bumped by every write), which re-registers
//!   the key for tracking (a write drops it from Redis's tracking table, even
//!   for the `NOLOOP` connection that made it). If the new version is exactly
//!   one past the cached one, nothing else wrote in between, and the cache
//!   applies the same changes itself; otherwise it drops the entry.
//! - When either connection drops, or Redis reports the redirection broken, the
//!   cache is flushed (no invalidation can be trusted to have arrived) and both
//!   are opened again on next use; entries also expire after a maximum age, and
//!   with the session itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use deadpool_redis::redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo,
    PushKind,
};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use tokio::net::TcpStream;

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, map_redis_error, url::Target};
use crate::store::{ChangeSet, Record, StoreError};

/// Invalidations are tracked in this many stripes (keys hash into them), so
/// that a ticket can tell whether its key was invalidated without remembering
/// every key ever invalidated.
const STRIPES: usize = 1024;

/// Settings of [`RedisStore::with_near_cache`](super::RedisStore::with_near_cache).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use unstuck::NearCache;
///
/// let cache = NearCache::new()
///     .with_max_entries(50_000)
///     .with_max_age(Duration::from_secs(120));
/// # let _ = cache;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NearCache {
    max_entries: usize,
    max_age: Duration,
}

impl Default for NearCache {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_age: Duration::from_secs(60),
        }
    }
}

impl NearCache {
    /// At most 10 000 sessions, each kept at most 60 seconds.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sessions the cache holds at most (default 10 000). When full,
    /// an arbitrary entry makes room.
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// How long a cached session is served before it is read again even
    /// without an invalidation (default 60 s): a safety net, not the coherence
    /// mechanism.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }
}

/// Counters of a near cache, for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NearCacheStats {
    /// Sessions held now.
    pub entries: usize,
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to Redis.
    pub misses: u64,
    /// Keys Redis told this process to drop.
    pub invalidations: u64,
    /// Times the whole cache was dropped (connection lost, database flushed).
    pub flushes: u64,
}

struct Entry {
    record: Record,
    version: u64,
    fetched: Instant,
}

struct Cache {
    /// The tracking connection and its generation; `None` while there is none.
    conn: Option<(u64, MultiplexedConnection)>,
    /// The connection invalidations are published to, and what has been read
    /// from it but not yet parsed.
    invalidations: Option<Arc<TcpStream>>,
    unparsed: Vec<u8>,
    /// Stops the task that reads the current invalidation connection, which
    /// otherwise would wait on a subscribed socket that may never speak again.
    stop_reader: Option<Arc<tokio::sync::Notify>>,
    next_generation: u64,
    entries: HashMap<String, Entry>,
    stripes: Box<[u64]>,
    /// Bumped by every flush.
    epoch: u64,
    stats: NearCacheStats,
}

impl Cache {
    fn stripe(key: &str) -> usize {
        // FNV-1a: cheap, and stripes only need spreading, not secrecy.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (hash % STRIPES as u64) as usize
    }

    fn invalidate(&mut self, key: &str) {
        self.entries.remove(key);
        self.stripes[Self::stripe(key)] += 1;
    }

    fn flush(&mut self) {
        self.entries.clear();
        self.epoch += 1;
        self.stats.flushes += 1;
    }

    fn generation(&self) -> Option<u64> {
        self.conn.as_ref().map(|(generation, _)| *generation)
    }

    /// Whether nothing voided `ticket` for `key`: the same connection, no flush,
    /// and no invalidation in the key's stripe since it was taken.
    fn honours(&self, ticket: &Ticket, key: &str) -> bool {
        self.generation() == Some(ticket.generation)
            && self.epoch == ticket.epoch
            && self.stripes[Self::stripe(key)] == ticket.stripe
    }

    /// Gives up on the current connections: nothing they would have told us can
    /// be trusted to have arrived.
    fn lose(&mut self, why: &str) {
        if self.conn.is_some() {
            tracing::warn!("near cache: {why}; cache flushed");
        }
        self.flush();
        self.conn = None;
        self.invalidations = None;
        self.unparsed.clear();
        if let Some(stop) = self.stop_reader.take() {
            stop.notify_one();
        }
    }

    /// Applies every invalidation that has reached this machine, without
    /// waiting for more.
    fn drain(&mut self) {
        let Some(socket) = self.invalidations.clone() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match socket.try_read(&mut chunk) {
                Ok(0) => return self.lose("invalidation connection closed"),
                Ok(n) => self.unparsed.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.lose("invalidation connection failed"),
            }
        }
        loop {
            match decode(&self.unparsed) {
                Ok(Some((frame, used))) => {
                    self.unparsed.drain(..used);
                    self.apply(frame);
                }
                Ok(None) => break,
                Err(_) => return self.lose("unreadable invalidation message"),
            }
        }
    }

    /// Applies one message of `__redis__:invalidate`: a list of keys, or nil
    /// when the server flushed its databases.
    fn apply(&mut self, frame: OwnedFrame) {
        let OwnedFrame::Array(mut parts) = frame else {
            return;
        };
        let is_message = parts.len() == 3
            && matches!(&parts[0], OwnedFrame::BulkString(kind) if kind == b"message");
        if !is_message {
            return;
        }
        match parts.pop() {
            Some(OwnedFrame::Array(keys)) => {
                for key in keys {
                    if let OwnedFrame::BulkString(key) = key
                        && let Ok(key) = std::str::from_utf8(&key)
                    {
                        self.invalidate(key);
                        self.stats.invalidations += 1;
                    }
                }
            }
            _ => self.flush(),
        }
    }
}

/// Proof that nothing invalidated a key between taking the ticket and using a
/// reply: only then may the reply be cached.
pub(super) struct Ticket {
    generation: u64,
    epoch: u64,
    stripe: u64,
}

/// Watches the tracking connection: its loss, or Redis reporting that the
/// invalidation connection is gone (`tracking-redir-broken`), empties the cache.
struct Invalidator {
    shared: Weak<Mutex<Cache>>,
    generation: u64,
}

impl AsyncPushSender for Invalidator {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(SendError);
        };
        let mut cache = lock(&shared);
        if cache.generation() != Some(self.generation) {
            return Ok(());
        }
        match info.kind {
            PushKind::Disconnection => cache.lose("tracking connection lost"),
            PushKind::Other(kind) if kind == "tracking-redir-broken" => {
                cache.lose("invalidation connection lost");
            }
            _ => {}
        }
        Ok(())
    }
}

fn lock(shared: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // Every critical section leaves the cache consistent (map operations and
    // counters), so a panic elsewhere cannot poison it meaningfully.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the tracking connection goes.
enum Source {
    Standalone(ConnectionInfo),
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
        db: i64,
    },
}

/// A near cache and its tracking connection.
pub(super) struct Tracker {
    settings: NearCache,
    source: Source,
    shared: Arc<Mutex<Cache>>,
    /// Serializes (re)connecting, so an outage does not open a connection per
    /// waiting request.
    connecting: tokio::sync::Mutex<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(stop) = self.cache().stop_reader.take() {
            stop.notify_one();
        }
    }
}

impl Tracker {
    pub fn new(target: &Target, settings: NearCache) -> Result<Self, StoreError> {
        let source = match target {
            Target::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(map_redis_error)?;
                let info = client.get_connection_info().clone();
                if !matches!(info.addr(), ConnectionAddr::Tcp(..)) {
                    return Err(StoreError::backend(
                        "the near cache needs a plain TCP connection to Redis (no TLS or Unix socket)",
                    ));
                }
                Source::Standalone(info)
            }
            Target::Sentinel {
                sentinels,
                master_name,
                db,
            } => Source::Sentinel {
                sentinels: sentinels.clone(),
                master_name: master_name.clone(),
                db: *db,
            },
            Target::Cluster { .. } => {
                return Err(StoreError::backend(
                    "the near cache works with standalone and Sentinel deployments, not Cluster",
                ));
            }
        };
        Ok(Self {
            settings,
            source,
            shared: Arc::new(Mutex::new(Cache {
                conn: None,
                invalidations: None,
                unparsed: Vec::new(),
                stop_reader: None,
                next_generation: 1,
                entries: HashMap::new(),
                stripes: vec![0; STRIPES].into_boxed_slice(),
                epoch: 0,
                stats: NearCacheStats::default(),
            })),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        lock(&self.shared)
    }

    pub fn stats(&self) -> NearCacheStats {
        let cache = self.cache();
        NearCacheStats {
            entries: cache.entries.len(),
            ..cache.stats
        }
    }

    /// The cached record for `key`, if it is fresh.
    pub fn lookup(&self, key: &str) -> Option<Record> {
        let mut cache = self.cache();
        cache.drain();
        let now = SystemTime::now();
        let max_age = self.settings.max_age;
        let fresh = cache.entries.get(key).and_then(|entry| {
            (entry.fetched.elapsed() < max_age && entry.record.expires_at > now)
                .then(|| entry.record.clone())
        });
        match fresh {
            Some(record) => {
                cache.stats.hits += 1;
                Some(record)
            }
            None => {
                cache.entries.remove(key);
                cache.stats.misses += 1;
                None
            }
        }
    }

    /// A ticket for caching a reply about `key` that is about to be requested on
    /// the connection of generation `generation`.
    pub fn ticket(&self, key: &str, generation: u64) -> Ticket {
        let mut cache = self.cache();
        cache.drain();
        Ticket {
            generation,
            epoch: cache.epoch,
            stripe: cache.stripes[Cache::stripe(key)],
        }
    }

    /// Caches `record` (at `version`) for `key` if nothing invalidated it since
    /// `ticket` was taken and it is not older than what is cached.
    pub fn offer(&self, ticket: &Ticket, key: &str, record: Record, version: u64) {
        let mut cache = self.cache();
        cache.drain();
        if !cache.honours(ticket, key) {
            return;
        }
        if cache.entries.get(key).is_some_and(|e| e.version > version) {
            return;
        }
        if cache.entries.len() >= self.settings.max_entries
            && !cache.entries.contains_key(key)
            && let Some(victim) = cache.entries.keys().next().cloned()
        {
            cache.entries.remove(&victim);
        }
        cache.entries.insert(
            key.to_owned(),
            Entry {
                record,
                version,
                fetched: Instant::now(),
            },
        );
    }

    /// Brings the cached record for `key` to `version` by applying `changes`,
    /// this process's own save, if it was cached at exactly the version before
    /// and nothing invalidated it since `ticket`; otherwise drops it. A save on
    /// the tracking connection is `NOLOOP`, so no invalidation would come.
    pub fn apply(&self, ticket: &Ticket, key: &str, changes: &ChangeSet, version: u64) {
        let mut cache = self.cache();
        cache.drain();
        let valid = cache.honours(ticket, key);
        match cache.entries.get_mut(key) {
            Some(entry) if valid && entry.version + 1 == version => {
                changes.apply_to(&mut entry.record);
                entry.version = version;
            }
            _ => cache.invalidate(key),
        }
    }

    /// Drops `key` here, for writes that do not go through the tracking
    /// connection: their invalidation would arrive too late for
    /// read-your-writes.
    pub fn evict(&self, key: &str) {
        self.cache().invalidate(key);
    }

    /// Forgets connection `generation` after it failed: nothing it would have
    /// told us can be trusted to have arrived.
    pub fn connection_failed(&self, generation: u64) {
        let mut cache = self.cache();
        if cache.generation() == Some(generation) {
            cache.lose("tracking connection failed");
        }
    }

    /// The tracking connection, opened on first use and after a failure.
    pub async fn connection(&self) -> Result<(u64, MultiplexedConnection), StoreError> {
        if let Some((generation, conn)) = &self.cache().conn {
            return Ok((*generation, conn.clone()));
        }
        let _connecting = self.connecting.lock().await;
        if let Some((generation, conn)) = &self.cache().conn {
            return Ok((*generation, conn.clone()));
        }
        let generation = {
            let mut cache = self.cache();
            let generation = cache.next_generation;
            cache.next_generation += 1;
            generation
        };
        let info = match &self.source {
            Source::Standalone(info) => info.clone(),
            Source::Sentinel {
                sentinels,
                master_name,
                db,
            } => primary_of(sentinels, master_name, *db).await?,
        };
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(StoreError::backend(
                "the near cache needs a plain TCP connection",
            ));
        };
        let (socket, client_id) = subscribe_to_invalidations(&host, port, &info).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(Invalidator {
                shared: Arc::downgrade(&self.shared),
                generation,
            });
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(map_redis_error)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(map_redis_error)?;
        // NOLOOP: this process's own saves refresh the cache themselves (see the
        // module docs) rather than invalidating it.
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("REDIRECT")
            .arg(client_id)
            .arg("NOLOOP")
            .query_async::<()>(&mut conn)
            .await
            .map_err(map_redis_error)?;
        let socket = Arc::new(socket);
        let stop = Arc::new(tokio::sync::Notify::new());
        {
            let mut cache = self.cache();
            cache.flush();
            cache.conn = Some((generation, conn.clone()));
            cache.invalidations = Some(socket.clone());
            cache.unparsed.clear();
            if let Some(previous) = cache.stop_reader.replace(stop.clone()) {
                previous.notify_one();
            }
        }
        // Applies invalidations as they arrive even while no request looks, so
        // the cache lets go of changed sessions promptly.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    readable = socket.readable() => if readable.is_err() { break },
                    () = stop.notified() => break,
                }
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let mut cache = lock(&shared);
                if cache.generation() != Some(generation) {
                    break;
                }
                cache.drain();
                if cache.invalidations.is_none() {
                    break;
                }
            }
        });
        tracing::debug!(generation, "near cache: tracking connection open");
        Ok((generation, conn))
    }
}

/// Asks the sentinels, in turn, where the primary is now.
async fn primary_of(
    sentinels: &[String],
    master_name: &str,
    db: i64,
) -> Result<ConnectionInfo, StoreError> {
    let mut last_error = None;
    for sentinel in sentinels {
        let attempt = async {
            let client = redis::Client::open(sentinel.as_str())?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match attempt.await {
            Ok(Some((host, port))) => {
                return redis::Client::open(format!("redis://{host}:{port}/{db}"))
                    .map(|client| client.get_connection_info().clone())
                    .map_err(map_redis_error);
            }
            Ok(None) => last_error = Some(StoreError::unavailable("no sentinel knows the primary")),
            Err(error) => last_error = Some(map_redis_error(error)),
        }
    }
    Err(last_error.unwrap_or_else(|| StoreError::backend("no sentinel to ask")))
}

/// Opens the connection invalidations are published to: authenticates if the
/// store does, learns its client ID, and subscribes to `__redis__:invalidate`.
async fn subscribe_to_invalidations(
    host: &str,
    port: u16,
    info: &ConnectionInfo,
) -> Result<(TcpStream, i64), StoreError> {
    let handshake = async {
        let socket = TcpStream::connect((host, port)).await?;
        socket.set_nodelay(true)?;
        let mut unparsed = Vec::new();
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password);
            expect_reply(&socket, &mut unparsed, &auth.get_packed_command()).await?;
        }
        let id = match expect_reply(
            &socket,
            &mut unparsed,
            &redis::cmd("CLIENT").arg("ID").get_packed_command(),
        )
        .await?
        {
            OwnedFrame::Integer(id) => id,
            _ => return Err(std::io::Error::other("unexpected reply to CLIENT ID")),
        };
        expect_reply(
            &socket,
            &mut unparsed,
            &redis::cmd("SUBSCRIBE")
                .arg("__redis__:invalidate")
                .get_packed_command(),
        )
        .await?;
        if !unparsed.is_empty() {
            return Err(std::io::Error::other("unexpected data after SUBSCRIBE"));
        }
        Ok((socket, id))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(error)) => Err(StoreError::unavailable(error)),
        Err(_) => Err(StoreError::unavailable(
            "no answer while opening the invalidation connection",
        )),
    }
}

/// Sends one command and reads its reply, failing on an error reply.
async fn expect_reply(
    socket: &TcpStream,
    unparsed: &mut Vec<u8>,
    command: &[u8],
) -> std::io::Result<OwnedFrame> {
    let mut written = 0;
    while written < command.len() {
        socket.writable().await?;
        match socket.try_write(&command[written..]) {
            Ok(n) => written += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((frame, used)) = decode(unparsed).map_err(std::io::Error::other)? {
            unparsed.drain(..used);
            return match frame {
                OwnedFrame::Error(message) => Err(std::io::Error::other(message)),
                frame => Ok(frame),
            };
        }
        socket.readable().await?;
        match socket.try_read(&mut chunk) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => unparsed.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}
