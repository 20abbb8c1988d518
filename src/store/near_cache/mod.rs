//! [`NearCache`]: a store decorator that keeps sessions this process reads in
//! memory, coherent with the store beneath it.
//!
//! How it stays coherent:
//! - Every cached record was read over one *channel* of the store's (for
//!   Redis, a RESP3 connection with `CLIENT TRACKING ON NOLOOP`): the server
//!   remembers that this process holds the key and, when anyone else changes
//!   it (or it expires, or the data is flushed), tells the channel, which
//!   hands the news to [`Invalidations`].
//! - A reply may race an invalidation of its key. A [`Ticket`](cache) taken
//!   before the request is voided by any invalidation in between, and then the
//!   reply is not cached.
//! - This process's own saves go over the channel too; the channel does not
//!   report them back, and the save returns the session's new [`Version`]: if
//!   it is exactly one past the cached one, nothing else wrote in between and
//!   the cache applies the same changes itself, otherwise it drops the entry.
//! - **Session consistency.** An invalidation takes time to arrive, and on a
//!   busy machine the task that delivers it may not have run yet when another
//!   request looks. So every save reports its version to the layer, which
//!   carries it in the client's signed cookie; a load asks for at least that
//!   version, and an older cached copy is treated as a miss. A client that
//!   keeps the cookies it is sent never reads a session older than its own last
//!   acknowledged write, whichever instance it reaches, however loaded.
//!   Other clients see a change once its invalidation has arrived.
//! - When the channel is lost (or the store says it no longer points at the
//!   primary), the cache is emptied and a new channel opens on next use.
//!   Entries also expire after a maximum age, and with their session.
//! - A channel may be several connections (on Redis Cluster, one per master):
//!   the cache sees one channel, and the loss of any part of it is the loss of
//!   the channel.

mod cache;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use self::cache::Cache;
use super::{ChangeSet, Record, SaveOutcome, SessionStore, SessionSummary, StoreError, Version};
use crate::error::ConfigError;
use crate::id::StorageKey;

/// Counters of a near cache, for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Sessions held now.
    pub entries: usize,
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to the store.
    pub misses: u64,
    /// Misses because the cached copy was older than the client's own last
    /// write (its invalidation had not arrived yet): each is a stale read that
    /// the version in the cookie prevented.
    pub behind: u64,
    /// Keys the store told this process to drop.
    pub invalidations: u64,
    /// Times the whole cache was dropped (channel lost, data flushed).
    pub flushes: u64,
}

/// Where a store delivers what its channel hears: keys changed by others, a
/// flush of everything, or the loss of the channel. Handed to
/// [`Trackable::open_channel`]; cheap to clone, and safe to call from any
/// thread (it takes a short lock, never blocks on I/O).
#[derive(Clone)]
pub struct Invalidations {
    cache: Weak<Mutex<Cache>>,
    generation: u64,
}

impl fmt::Debug for Invalidations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidations")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Invalidations {
    fn with(&self, f: impl FnOnce(&mut Cache)) {
        if let Some(cache) = self.cache.upgrade() {
            f(&mut lock(&cache));
        }
    }

    /// `key` was changed or deleted by someone else.
    pub fn key(&self, key: &StorageKey) {
        self.with(|cache| cache.invalidated(self.generation, key));
    }

    /// Everything may have changed (the server flushed its data).
    pub fn all(&self) {
        self.with(|cache| {
            if cache.channel() == Some(self.generation) {
                cache.flush();
            }
        });
    }

    /// The channel is lost, or no longer trustworthy: the cache empties and
    /// the next call opens a new one.
    pub fn lost(&self, why: &str) {
        self.with(|cache| {
            if cache.lose(self.generation) {
                tracing::warn!("near cache: {why}; cache flushed");
            }
        });
    }

    /// Whether the cache still listens to this channel (it is dropped
    /// otherwise), so a store can stop work done for it.
    pub fn is_current(&self) -> bool {
        self.cache
            .upgrade()
            .is_some_and(|cache| lock(&cache).channel() == Some(self.generation))
    }
}

/// What a save on a store's channel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackedSave {
    /// Applied over the channel, producing this version; the channel will not
    /// report it back, so the cache updates itself.
    OnChannel(Version),
    /// Applied, producing this version, but not over the channel (for
    /// example because it had to wait for replicas): the cache drops its copy.
    Elsewhere(Version),
    /// The session was gone; nothing was written.
    Gone,
}

/// A store a [`NearCache`] can sit on: it opens a *channel* on which the keys it
/// reads are tracked by the server, which then reports other clients' changes
/// to those keys. Implemented by [`RedisStore`](crate::RedisStore) with RESP3
/// client tracking.
#[async_trait]
pub trait Trackable: SessionStore {
    /// One open channel.
    type Channel: Send + Sync + 'static;

    /// Checks once, when the cache is built, that this store can be tracked.
    ///
    /// # Errors
    /// When it cannot (for Redis: a store built from a pool, which does not
    /// know where to open its channel).
    fn check_trackable(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Opens a channel. Whatever it hears (keys changed by others, a flush, its
    /// own loss) goes to `events`, and any error on it that means the channel
    /// broke must be reported with [`Invalidations::lost`].
    ///
    /// # Errors
    /// When the store cannot be reached.
    async fn open_channel(&self, events: Invalidations) -> Result<Self::Channel, StoreError>;

    /// Whether `channel` still talks to the right server (for Redis: no
    /// Sentinel switch since it opened). Called before every cached answer,
    /// so it must be cheap.
    fn channel_is_current(&self, channel: &Self::Channel) -> bool {
        let _ = channel;
        true
    }

    /// Loads over `channel`, so the key is tracked, with the record's version.
    ///
    /// # Errors
    /// As [`SessionStore::load`].
    async fn load_tracked(
        &self,
        channel: &Self::Channel,
        key: &StorageKey,
    ) -> Result<Option<(Record, Version)>, StoreError>;

    /// Saves over `channel` (or elsewhere, saying so), with the new version.
    ///
    /// # Errors
    /// As [`SessionStore::save`].
    async fn save_tracked(
        &self,
        channel: &Self::Channel,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<TrackedSave, StoreError>;
}

/// What the hit path found.
enum Lookup {
    Hit(Record),
    /// Looked up (and counted) under the current channel: not there.
    Miss,
    /// No current channel to trust a cached copy from.
    NoChannel,
}

/// A store decorator that keeps the sessions this process reads in a bounded
/// in-process cache, kept coherent by the store beneath it (see
/// [`Trackable`]): loads of a cached session cost no round trip, and a change
/// made by any instance reaches this one as an invalidation pushed by the
/// server.
///
/// # Guarantees
/// - A client that keeps the cookies it is sent never reads a session older
///   than its own last acknowledged write, whichever instance it reaches and
///   however loaded the machine is: each save's version travels in the signed
///   cookie, and a cached copy older than it is a miss (counted in
///   [`NearCacheStats::behind`]). The cost is a `Set-Cookie` on every response
///   that changed the session.
/// - Other clients (another browser of the same user, "log out everywhere"
///   from elsewhere) see a change once its invalidation has arrived: Redis
///   sends it before it answers the writer, so the window is the time the
///   message takes to reach this process and be read (microseconds on a
///   quiet machine, longer on a busy one).
/// - When the channel drops, the cache is emptied; entries also expire after
///   [`with_max_age`](Self::with_max_age) and with their session.
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use unstuck::{NearCache, RedisStore, SessionLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let cached = NearCache::new(store)?
///     .with_max_entries(50_000)
///     .with_max_age(Duration::from_secs(120));
/// let layer = SessionLayer::new(cached);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub struct NearCache<S: Trackable> {
    inner: S,
    cache: Arc<Mutex<Cache>>,
    channel: Mutex<Option<(u64, Arc<S::Channel>)>>,
    /// Serializes opening a channel, so an outage does not open one per
    /// waiting request.
    connecting: tokio::sync::Mutex<()>,
}

impl<S: Trackable> fmt::Debug for NearCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("inner", &self.inner)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    // Every critical section leaves the cache consistent (map operations and
    // counters), so a panic elsewhere cannot poison it meaningfully.
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Trackable> NearCache<S> {
    /// Caches sessions of `store`: at most 10 000, each at most 60 seconds.
    /// Nothing is opened until the first call.
    ///
    /// # Errors
    /// When `store` cannot be tracked (see [`Trackable::check_trackable`]).
    pub fn new(store: S) -> Result<Self, ConfigError> {
        store.check_trackable()?;
        Ok(Self {
            inner: store,
            cache: Arc::new(Mutex::new(Cache::new(10_000, Duration::from_secs(60)))),
            channel: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// How many sessions the cache holds at most (default 10 000). When full,
    /// an arbitrary entry makes room.
    pub fn with_max_entries(self, max_entries: usize) -> Self {
        lock(&self.cache).set_max_entries(max_entries);
        self
    }

    /// How long a cached session is served before it is read again even
    /// without an invalidation (default 60 s): a safety net, not the coherence
    /// mechanism.
    pub fn with_max_age(self, max_age: Duration) -> Self {
        lock(&self.cache).set_max_age(max_age);
        self
    }

    /// The store beneath the cache.
    pub fn store(&self) -> &S {
        &self.inner
    }

    /// The cache's counters.
    pub fn stats(&self) -> NearCacheStats {
        lock(&self.cache).stats()
    }

    /// The open channel, if the cache still listens to it and it still talks
    /// to the right server.
    fn current_channel(&self) -> Option<(u64, Arc<S::Channel>)> {
        let slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, channel) = slot.as_ref()?;
        if lock(&self.cache).channel() != Some(*generation) {
            return None;
        }
        if !self.inner.channel_is_current(channel) {
            if lock(&self.cache).lose(*generation) {
                tracing::warn!("near cache: the store's primary changed; cache flushed");
            }
            return None;
        }
        Some((*generation, channel.clone()))
    }

    /// The open channel, opening one first if needed.
    async fn channel(&self) -> Result<Arc<S::Channel>, StoreError> {
        if let Some((_, channel)) = self.current_channel() {
            return Ok(channel);
        }
        let _connecting = self.connecting.lock().await;
        if let Some((_, channel)) = self.current_channel() {
            return Ok(channel);
        }
        let generation = lock(&self.cache).next_generation();
        let events = Invalidations {
            cache: Arc::downgrade(&self.cache),
            generation,
        };
        let channel = Arc::new(self.inner.open_channel(events).await?);
        // The cache starts listening (and empty) before the slot is filled, so
        // no request can use the channel while the cache ignores it.
        lock(&self.cache).opened(generation);
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, channel.clone()));
        tracing::debug!(generation, "near cache: channel open");
        Ok(channel)
    }

    /// The hit path: the cached copy of `key`, if the channel it came over
    /// is still open, listened to and current. One look at the channel and
    /// one at the cache, without holding on to the channel: a hit needs no
    /// channel of its own.
    fn cached(&self, key: &StorageKey, seen: Version) -> Lookup {
        let slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        let Some((generation, channel)) = slot.as_ref() else {
            return Lookup::NoChannel;
        };
        // A channel that no longer talks to the primary is dropped by
        // `channel`, on the slow path.
        if !self.inner.channel_is_current(channel) {
            return Lookup::NoChannel;
        }
        let mut cache = lock(&self.cache);
        if cache.channel() != Some(*generation) {
            return Lookup::NoChannel;
        }
        drop(slot);
        let hit = cache.lookup(key, seen, Instant::now(), SystemTime::now());
        crate::metrics::near_cache(self.inner.name(), hit.is_some());
        match hit {
            Some(record) => Lookup::Hit(record),
            None => Lookup::Miss,
        }
    }

    fn evict(&self, key: &StorageKey) {
        lock(&self.cache).invalidate(key);
    }
}

#[async_trait]
impl<S: Trackable> SessionStore for NearCache<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.load_at_least(key, Version::ZERO).await
    }

    async fn load_at_least(
        &self,
        key: &StorageKey,
        seen: Version,
    ) -> Result<Option<Record>, StoreError> {
        let looked_up = match self.cached(key, seen) {
            Lookup::Hit(record) => return Ok(Some(record)),
            Lookup::Miss => true,
            Lookup::NoChannel => false,
        };
        let channel = self.channel().await?;
        let ticket = {
            let mut cache = lock(&self.cache);
            if !looked_up {
                // The channel was (re)opened: the cache is empty, but another
                // request may have filled it meanwhile.
                let hit = cache.lookup(key, seen, Instant::now(), SystemTime::now());
                crate::metrics::near_cache(self.inner.name(), hit.is_some());
                if hit.is_some() {
                    return Ok(hit);
                }
            }
            cache.ticket(key)
        };
        let Some((record, version)) = self.inner.load_tracked(&channel, key).await? else {
            return Ok(None);
        };
        if record.expires_at <= SystemTime::now() {
            return Ok(None);
        }
        if let Some(ticket) = ticket {
            lock(&self.cache).offer(&ticket, key, record.clone(), version, Instant::now());
        }
        Ok(Some(record))
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        let created = self.inner.create(key, record).await;
        self.evict(key);
        created
    }

    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        Ok(self.save_versioned(key, changes).await?.0)
    }

    async fn save_versioned(
        &self,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<(SaveOutcome, Option<Version>), StoreError> {
        let channel = self.channel().await?;
        let ticket = lock(&self.cache).ticket(key);
        let saved = self.inner.save_tracked(&channel, key, changes).await;
        let mut cache = lock(&self.cache);
        match saved {
            Ok(TrackedSave::OnChannel(version)) => {
                match ticket {
                    Some(ticket) => cache.apply(&ticket, key, changes, version),
                    None => cache.invalidate(key),
                }
                Ok((SaveOutcome::Applied, Some(version)))
            }
            Ok(TrackedSave::Elsewhere(version)) => {
                cache.invalidate(key);
                Ok((SaveOutcome::Applied, Some(version)))
            }
            Ok(TrackedSave::Gone) => {
                cache.invalidate(key);
                Ok((SaveOutcome::Gone, None))
            }
            Err(error) => {
                // The save may have been applied before the error: the copy
                // here can no longer be trusted.
                cache.invalidate(key);
                Err(error)
            }
        }
    }

    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        let rotated = self.inner.rotate(from, to, changes).await;
        self.evict(from);
        self.evict(to);
        rotated
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let deleted = self.inner.delete(key).await;
        self.evict(key);
        deleted
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        self.inner.user_sessions(user).await
    }

    /// The deleted sessions leave this cache as their invalidations arrive
    /// (the store does not say which keys they were); the caller's own
    /// session is dropped by the layer's delete of it.
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        self.inner.delete_user_sessions(user).await
    }
}
