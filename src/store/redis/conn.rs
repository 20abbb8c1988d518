//! Connections to Redis: one pooled multiplexed connection, pinned and shared by
//! every request, replaced when it fails.
//!
//! deadpool checks a connection (`UNWATCH` + `PING`) every time it hands one
//! out, which cost a round trip per store call. A redis-rs multiplexed
//! connection already pipelines concurrent requests, so the store keeps one
//! pooled connection checked out and gives each call a cheap clone of it. The
//! pool still opens connections (asking the sentinels for the current primary,
//! or discovering the cluster) and applies its timeouts; a connection that fails
//! at the connection level, answers `READONLY` after a failover, or is abandoned
//! mid-request is detached from the pool and the next call pins a fresh one.
//! A pinned connection that has been idle for a while is checked with a `PING`
//! before use, as deadpool would: it may have died with its server (a crashed
//! primary) without any request noticing.
//!
//! On Sentinel, a connection to the old primary keeps working after a planned
//! failover until that node is demoted (about 10 s), and writes made on it in
//! between are lost. So the store also hears of switches from the sentinels
//! ([`super::sentinel_watch`]) and then retires every connection it has at once
//! ([`Connections::primary_switched`], [`Connections::install_primary`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{
    self, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Script, Value,
};
use deadpool_redis::{cluster, sentinel};

use super::sentinel_watch::Watcher;
use super::{is_unavailable, map_pool_error, map_redis_error};
use crate::store::StoreError;

/// The pools a store can draw connections from.
#[derive(Clone)]
pub(super) enum Backend {
    Standalone(deadpool_redis::Pool),
    Sentinel(sentinel::Pool),
    Cluster(cluster::Pool),
}

/// A connection object checked out of its pool, or opened by the Sentinel
/// watcher straight to a newly announced primary.
enum Pooled {
    Standalone(deadpool_redis::Connection),
    Sentinel(sentinel::Connection),
    Cluster(cluster::Connection),
    /// Opened outside the pool: right after a switch, some sentinels may not
    /// have heard of it yet, and the pool (which asks them in a fixed order)
    /// could land on the old primary again.
    Direct {
        conn: MultiplexedConnection,
        /// `host:port` of the primary it was opened to.
        addr: Arc<str>,
    },
}

impl Pooled {
    fn handle(&self) -> Inner {
        match self {
            Self::Standalone(conn) => Inner::Plain((**conn).clone()),
            Self::Sentinel(conn) => Inner::Plain((**conn).clone()),
            Self::Cluster(conn) => Inner::Cluster((**conn).clone()),
            Self::Direct { conn, .. } => Inner::Plain(conn.clone()),
        }
    }

    /// Takes the connection out of its pool, so dropping it closes it instead
    /// of handing it to the next caller.
    fn detach(self) {
        match self {
            Self::Standalone(conn) => drop(deadpool_redis::Connection::take(conn)),
            Self::Sentinel(conn) => drop(sentinel::Connection::take(conn)),
            Self::Cluster(conn) => drop(cluster::Connection::take(conn)),
            Self::Direct { conn, .. } => drop(conn),
        }
    }
}

/// The primary kept switching while a connection was being opened.
#[derive(Debug, thiserror::Error)]
#[error("the Redis primary switched {0} times while a connection was being opened")]
struct KeptSwitching(u32);

/// How often `get` retries when a switch lands while it opens a connection.
const SWITCH_RETRIES: u32 = 3;

/// A connection unused for longer than this is checked before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

struct Pinned {
    id: u64,
    pooled: Pooled,
}

/// Where a store's calls get their connection.
pub(super) struct Connections {
    backend: Backend,
    pinned: Mutex<Option<Pinned>>,
    next_id: AtomicU64,
    /// When a request last succeeded, in ms since `epoch`.
    last_ok: AtomicU64,
    epoch: Instant,
    /// How many primary switches these connections have followed. Also the
    /// generation of connections: one opened before the latest switch may point
    /// at the old primary.
    switches: watch::Sender<u64>,
    /// The count in `switches`, for readers on every request (the near cache
    /// checks it on each read): a load of it takes no lock.
    switched: AtomicU64,
    /// The Sentinel watcher, if any: it holds only a weak reference back, and
    /// stops when this is dropped with the last store clone.
    watcher: OnceLock<Watcher>,
}

impl Connections {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            pinned: Mutex::new(None),
            next_id: AtomicU64::new(1),
            last_ok: AtomicU64::new(0),
            epoch: Instant::now(),
            switches: watch::channel(0).0,
            switched: AtomicU64::new(0),
            watcher: OnceLock::new(),
        }
    }

    /// Keeps the Sentinel watcher running for as long as these connections
    /// live. A second watcher is refused (dropped, which stops it).
    pub fn keep_watcher(&self, watcher: Watcher) {
        if self.watcher.set(watcher).is_err() {
            tracing::warn!("a sentinel watcher is already running for this store");
        }
    }

    /// Counts the primary switches these connections have followed: the value
    /// changes (by one per switch) as soon as the old primary's connections are
    /// retired, so other parts of the store can retire theirs too.
    #[cfg(test)]
    pub fn switches(&self) -> watch::Receiver<u64> {
        self.switches.subscribe()
    }

    /// How many switches these connections have followed so far (see
    /// [`switches`](Self::switches)); the near cache compares it with the count
    /// when its channel opened.
    pub fn switch_count(&self) -> u64 {
        self.switched.load(Ordering::Acquire)
    }

    /// The primary the watcher last installed a connection to (`host:port`),
    /// if the pinned connection is one.
    pub fn installed_primary(&self) -> Option<Arc<str>> {
        match self.slot().as_ref().map(|pinned| &pinned.pooled) {
            Some(Pooled::Direct { addr, .. }) => Some(addr.clone()),
            _ => None,
        }
    }

    /// The primary changed (Sentinel said so): retires the pinned connection
    /// and every idle pooled one, so the next call opens a connection to the
    /// new primary. Requests already running on the old connection finish
    /// there.
    pub fn primary_switched(&self) {
        self.switch(None);
    }

    /// Like [`primary_switched`](Self::primary_switched), and pins `conn`, a
    /// connection already open to the new primary at `addr` (`host:port`).
    pub fn install_primary(&self, conn: MultiplexedConnection, addr: &str) {
        self.switch(Some(Pooled::Direct {
            conn,
            addr: addr.into(),
        }));
    }

    /// Whether the pinned connection is one [`install_primary`]
    /// (Self::install_primary) opened to `addr`.
    pub fn follows(&self, addr: &str) -> bool {
        matches!(
            self.slot().as_ref().map(|pinned| &pinned.pooled),
            Some(Pooled::Direct { addr: pinned, .. }) if &**pinned == addr
        )
    }

    fn switch(&self, replacement: Option<Pooled>) {
        let retired = {
            let mut slot = self.slot();
            // Bumped under the slot lock: `get` compares the generation under
            // the same lock before it pins, so a connection it opened before
            // this switch is never pinned after it.
            self.switches.send_modify(|n| {
                *n += 1;
                self.switched.store(*n, Ordering::Release);
            });
            let retired = slot.take();
            if let Some(pooled) = replacement {
                *slot = Some(Pinned {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    pooled,
                });
                self.record_ok();
            }
            retired
        };
        if let Some(pinned) = retired {
            pinned.pooled.detach();
        }
        // Idle pooled connections still point at the old primary, and
        // deadpool's check (a `PING`) would not notice.
        let idle = match &self.backend {
            Backend::Standalone(pool) => pool.retain(|_, _| false).removed.len(),
            Backend::Sentinel(pool) => pool.retain(|_, _| false).removed.len(),
            Backend::Cluster(pool) => pool.retain(|_, _| false).removed.len(),
        };
        tracing::info!(
            idle_retired = idle,
            "redis primary switched: retired the store's connections to the old primary"
        );
    }

    pub fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Standalone(_) => "standalone",
            Backend::Sentinel(_) => "sentinel",
            Backend::Cluster(_) => "cluster",
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Pinned>> {
        // The slot only ever holds a complete value; a panic elsewhere cannot
        // leave it half-written.
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle on the pinned connection, pinning a fresh one from the pool
    /// first if there is none.
    pub async fn get(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let current = self
            .slot()
            .as_ref()
            .map(|pinned| Conn::new(self.clone(), pinned.id, pinned.pooled.handle()));
        match current {
            Some(conn) if self.since_last_ok() < IDLE_CHECK_AFTER => Ok(conn),
            // Boxed: the pools' checkout futures (Cluster discovery, Sentinel
            // lookups) are tens of kilobytes, and inline they would make every
            // store call's future that large, copied at each move of it.
            current => Box::pin(self.get_slow(current)).await,
        }
    }

    /// [`get`](Self::get) when the pinned connection is missing or idle.
    async fn get_slow(self: &Arc<Self>, current: Option<Conn>) -> Result<Conn, StoreError> {
        // A failed PING retires the connection; a fresh one is taken below.
        if let Some(mut conn) = current
            && conn.query::<String>(&redis::cmd("PING")).await.is_ok()
        {
            return Ok(conn);
        }
        for _ in 0..SWITCH_RETRIES {
            let generation = *self.switches.borrow();
            let pooled = match &self.backend {
                Backend::Standalone(pool) => {
                    Pooled::Standalone(pool.get().await.map_err(map_pool_error)?)
                }
                Backend::Sentinel(pool) => {
                    Pooled::Sentinel(pool.get().await.map_err(map_pool_error)?)
                }
                Backend::Cluster(pool) => {
                    Pooled::Cluster(pool.get().await.map_err(map_pool_error)?)
                }
            };
            // The pool has just checked it.
            self.record_ok();
            let mut slot = self.slot();
            if *self.switches.borrow() != generation {
                // Taken from the pool (or opened) before the primary switched:
                // it may point at the old one.
                drop(slot);
                pooled.detach();
                continue;
            }
            // Another call may have pinned one meanwhile: use it, and let this
            // one go back to the pool.
            let pinned = slot.get_or_insert_with(|| Pinned {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                pooled,
            });
            return Ok(Conn::new(self.clone(), pinned.id, pinned.pooled.handle()));
        }
        Err(StoreError::unavailable(KeptSwitching(SWITCH_RETRIES)))
    }

    fn since_last_ok(&self) -> Duration {
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ok.load(Ordering::Relaxed)))
    }

    fn record_ok(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Written at most once per millisecond: every request on every core
        // gets here, and a read-modify-write each time would bounce the line.
        if self.last_ok.load(Ordering::Relaxed) < now {
            self.last_ok.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Retires connection `id` if it is still the pinned one.
    fn retire(&self, id: u64) {
        let retired = {
            let mut slot = self.slot();
            match slot.as_ref() {
                Some(pinned) if pinned.id == id => slot.take(),
                _ => None,
            }
        };
        if let Some(pinned) = retired {
            tracing::debug!("retiring a redis session store connection");
            pinned.pooled.detach();
        }
    }
}

/// One call's handle on a connection. If a request on it fails at the
/// connection level, or the handle is dropped mid-request (the call timed out),
/// the connection is retired: after a failover it may still point at the old
/// primary.
pub(super) struct Conn {
    connections: Arc<Connections>,
    id: u64,
    inner: Inner,
    suspect: bool,
}

pub(super) enum Inner {
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    fn new(connections: Arc<Connections>, id: u64, inner: Inner) -> Self {
        Self {
            connections,
            id,
            inner,
            suspect: false,
        }
    }

    /// Raises this handle's reply timeout (for `WAIT`). Other handles on the
    /// same connection keep theirs.
    pub fn widen_response_timeout(&mut self, timeout: Duration) {
        match &mut self.inner {
            Inner::Plain(conn) => conn.set_response_timeout(timeout),
            // The cluster client has no per-handle setting; the store's
            // overall budget bounds it.
            Inner::Cluster(_) => {}
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Runs a request, keeping track of whether the connection is still
    /// trustworthy. `suspect` is raised before the request so that a future
    /// dropped mid-request (timeout) also retires the connection.
    async fn request<T>(
        &mut self,
        request: impl AsyncFnOnce(&mut Inner) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        self.suspect = true;
        let result = request(&mut self.inner).await;
        self.suspect = result.as_ref().is_err_and(is_unavailable);
        if result.is_ok() {
            self.connections.record_ok();
        }
        result
    }

    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, StoreError> {
        self.request(async |conn| cmd.query_async(conn).await)
            .await
            .map_err(map_redis_error)
    }

    /// Runs one command, keeping Redis's own error (a `NOSCRIPT`, say).
    pub async fn command(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        self.request(async |conn| cmd.query_async(conn).await).await
    }

    pub async fn pipeline(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        self.request(async |conn| pipe.query_async(conn).await)
            .await
    }

    pub async fn pipeline_typed<T: FromRedisValue>(
        &mut self,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        self.request(async |conn| pipe.query_async(conn).await)
            .await
            .map_err(map_redis_error)
    }

    pub async fn load(&mut self, script: &Script) -> Result<String, RedisError> {
        self.request(async |conn| script.load_async(conn).await)
            .await
    }

    /// Runs independent commands: pipelined on one server, one by one on
    /// Cluster, where a pipeline must stay within one slot.
    pub async fn many(&mut self, cmds: Vec<Cmd>) -> Result<Vec<Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            let mut values = Vec::with_capacity(cmds.len());
            for cmd in &cmds {
                values.push(self.query(cmd).await?);
            }
            return Ok(values);
        }
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        self.pipeline_typed(&pipe).await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.suspect {
            self.connections.retire(self.id);
        }
    }
}

impl ConnectionLike for Inner {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Plain(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Plain(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Plain(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a pool that never connects: enough to see the switch
    /// counter, which does not need a server.
    fn connections() -> Connections {
        let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        Connections::new(Backend::Standalone(pool))
    }

    #[tokio::test]
    async fn every_switch_bumps_the_counter_other_parts_watch() {
        let connections = connections();
        let mut switches = connections.switches();
        assert_eq!(*switches.borrow_and_update(), 0);
        assert!(!switches.has_changed().unwrap());

        connections.primary_switched();
        assert!(switches.has_changed().unwrap());
        assert_eq!(*switches.borrow_and_update(), 1);

        // A receiver taken later starts from the current count.
        let late = connections.switches();
        connections.primary_switched();
        assert_eq!(*switches.borrow_and_update(), 2);
        assert_eq!(*late.borrow(), 2);
    }

    #[tokio::test]
    async fn a_receiver_waiting_for_a_switch_wakes_up() {
        let connections = Arc::new(connections());
        let mut switches = connections.switches();
        let waiter = tokio::spawn(async move {
            switches.changed().await.unwrap();
            *switches.borrow()
        });
        tokio::task::yield_now().await;
        connections.primary_switched();
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the receiver did not wake up")
            .unwrap();
        assert_eq!(seen, 1);
    }
}
