//! The [`SessionStore`] trait and the data it exchanges with the layer.
//!
//! The trait is built around *change sets*: a request hands the store only the keys
//! it set or removed, never the whole record, so concurrent requests that touch
//! different keys both persist. Stores never recreate a session that is gone.

mod limits;
mod memory;
mod near_cache;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "tower-sessions", feature = "tower-sessions-014"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "tower-sessions", feature = "tower-sessions-014")))
)]
pub mod tower_sessions;
/// Each store's decoders, for the fuzz targets (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) use super::postgres::fuzzing as postgres;
    pub(crate) use super::redis::fuzzing as redis;
    pub(crate) use super::tower_sessions::fuzzing as tower_sessions;
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub use self::limits::{
    CapPolicy, DEFAULT_MAX_SESSION_BYTES, STORED_FORMAT, SessionCap, data_bytes, entry_bytes,
};
pub use self::memory::MemoryStore;
pub use self::near_cache::{Invalidations, NearCache, NearCacheStats, Trackable, TrackedSave};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{DEFAULT_TABLE, InvalidIdentifier, PostgresCleanup, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisChannel, RedisExpiryEvents, RedisStore};
use crate::error::ConfigError;
use crate::id::StorageKey;

/// A boxed error from a store's backend, kept as the `source` of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached in time: connection refused or lost, a
    /// timeout, an exhausted pool. Usually temporary; requests that need a
    /// session get `503 Service Unavailable`.
    #[error("session store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The store answered, but with an error, a record it could not read, or a
    /// write it could not make durable.
    #[error("session store failed: {0}")]
    Backend(#[source] BoxError),
    /// A key that must be fresh (the target of a rotation) holds a live
    /// session. With 256-bit IDs this means a bug, not bad luck.
    #[error("session store refused a key that is already taken")]
    KeyTaken,
    /// The write would have made the session larger than the store allows
    /// (keys and JSON text, see [`data_bytes`]); nothing was written and the
    /// session is as it was. Requests answer `413 Payload Too Large`.
    #[error("session of {size} bytes refused: the store's limit is {limit} bytes")]
    TooLarge {
        /// The size the session would have had.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The user already holds the most sessions their [`SessionCap`] allows,
    /// and its policy is [`CapPolicy::Refuse`]; nothing was written. Requests
    /// answer `409 Conflict`.
    #[error("the user already holds the maximum of {max} sessions")]
    TooManySessions {
        /// The cap.
        max: u32,
    },
    /// The record was written in a stored format newer than this release
    /// reads ([`STORED_FORMAT`]), by a newer release sharing the store. It is
    /// neither read nor changed.
    #[error("session record in stored format {found}; this release reads format {supported}")]
    UnsupportedFormat {
        /// The format the record says it has.
        found: u32,
        /// The newest format this release reads.
        supported: u32,
    },
    /// The store was set up wrongly (a malformed URL, say).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StoreError {
    /// The HTTP status a request that needed the store answers with: `503
    /// Service Unavailable` while the store cannot be reached (worth a retry),
    /// `413 Payload Too Large` for a session over the store's size limit,
    /// `409 Conflict` for a login refused by the user's session cap, `500`
    /// for everything else. The one place store errors meet HTTP.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManySessions { .. } => http::StatusCode::CONFLICT,
            Self::Backend(_)
            | Self::KeyTaken
            | Self::UnsupportedFormat { .. }
            | Self::Config(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Wraps a connection-level failure.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }

    /// Wraps an error the store reported.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }
}

/// Each session value is kept as JSON text, decoded only when a handler asks for
/// it, so one value that no longer decodes cannot spoil the rest of the session.
pub type Data = HashMap<String, String>;

/// A whole session as a store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The session's values: key → JSON text.
    pub data: Data,
    /// The user the session belongs to, for the per-user index.
    pub user: Option<String>,
    /// When the session was created; the absolute timeout counts from here.
    pub created_at: SystemTime,
    /// When the session expires unless refreshed. Stores must not return a
    /// record once this instant has passed.
    pub expires_at: SystemTime,
}

/// What a change set does to the session's user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum UserChange {
    /// Leave the user as it is.
    #[default]
    Keep,
    /// Attach the session to this user (and index it under them).
    Set(String),
    /// Detach the session from its user.
    Clear,
}

/// The changes one request made to a session: the keys it set and removed, its
/// user, and the new expiry. Stores apply it to whatever the record holds *now*,
/// so keys other requests changed meanwhile are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSet {
    set: BTreeMap<String, String>,
    removed: BTreeSet<String>,
    user: UserChange,
    expires_at: SystemTime,
    user_cap: Option<SessionCap>,
}

impl ChangeSet {
    /// An empty change set that only moves the expiry to `expires_at`.
    pub fn new(expires_at: SystemTime) -> Self {
        Self {
            set: BTreeMap::new(),
            removed: BTreeSet::new(),
            user: UserChange::Keep,
            expires_at,
            user_cap: None,
        }
    }

    /// Records that `key` now holds `json` (JSON text). A later [`remove`](Self::remove)
    /// of the same key cancels it.
    pub fn insert(&mut self, key: impl Into<String>, json: impl Into<String>) -> &mut Self {
        let key = key.into();
        self.removed.remove(&key);
        self.set.insert(key, json.into());
        self
    }

    /// Records that `key` was removed. A later [`insert`](Self::insert) of the same key
    /// cancels it.
    pub fn remove(&mut self, key: impl Into<String>) -> &mut Self {
        let key = key.into();
        self.set.remove(&key);
        self.removed.insert(key);
        self
    }

    /// Records a change of the session's user.
    pub fn set_user(&mut self, user: UserChange) -> &mut Self {
        self.user = user;
        self
    }

    /// Caps the sessions of the user this change set attaches the session to
    /// (with [`UserChange::Set`]): the store admits the session under the cap
    /// atomically, evicting the user's oldest sessions or refusing with
    /// [`StoreError::TooManySessions`], as the cap's policy says. Ignored by
    /// change sets that do not set a user.
    pub fn cap_user_sessions(&mut self, cap: Option<SessionCap>) -> &mut Self {
        self.user_cap = cap;
        self
    }

    /// The cap to apply when the change set attaches the session to a user.
    pub fn user_cap(&self) -> Option<SessionCap> {
        match self.user {
            UserChange::Set(_) => self.user_cap,
            _ => None,
        }
    }

    /// Moves the expiry.
    pub fn set_expires_at(&mut self, expires_at: SystemTime) -> &mut Self {
        self.expires_at = expires_at;
        self
    }

    /// Keys set, with their JSON text, in key order.
    pub fn inserted(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.set.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Keys removed, in key order.
    pub fn removed(&self) -> impl ExactSizeIterator<Item = &str> {
        self.removed.iter().map(String::as_str)
    }

    /// The change to the session's user.
    pub fn user(&self) -> &UserChange {
        &self.user
    }

    /// The session's new expiry.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// True when nothing but the expiry changes.
    pub fn is_touch_only(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty() && self.user == UserChange::Keep
    }

    /// Applies the change set to a record in memory: the reference semantics that
    /// every store must match.
    pub fn apply_to(&self, record: &mut Record) {
        for key in &self.removed {
            record.data.remove(key);
        }
        for (key, json) in &self.set {
            record.data.insert(key.clone(), json.clone());
        }
        match &self.user {
            UserChange::Keep => {}
            UserChange::Set(user) => record.user = Some(user.clone()),
            UserChange::Clear => record.user = None,
        }
        record.expires_at = self.expires_at;
    }
}

/// Whether a change set reached a live session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum SaveOutcome {
    /// The session existed and now holds the changes.
    Applied,
    /// The session had been deleted or had expired, so nothing was written: saves
    /// never bring a session back.
    Gone,
}

/// Where a session stands in its store's history: stores that count versions
/// bump it on every write, so a larger version is a later state.
///
/// Only stores whose reads can lag behind their writes (a
/// [`NearCache`](crate::store::NearCache)) report versions to the layer. The
/// layer then carries the version of a client's last write in its (signed)
/// cookie and asks for at least that version on the next load, so a client
/// never reads a session older than its own last acknowledged write, whichever
/// instance it reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The version before any write: every stored version is at least this.
    pub const ZERO: Self = Self(0);

    /// A version as the store counts it.
    pub const fn new(version: u64) -> Self {
        Self(version)
    }

    /// The number behind the version.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// One session of a user, as listed by [`SessionStore::user_sessions`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The session's storage key (a hash; safe to show and to pass back to
    /// [`SessionStore::delete`]).
    pub key: StorageKey,
    /// When the session was created.
    pub created_at: SystemTime,
    /// When it expires unless refreshed.
    pub expires_at: SystemTime,
}

impl SessionSummary {
    /// A listing entry, for stores to return from
    /// [`SessionStore::user_sessions`].
    pub fn new(key: StorageKey, created_at: SystemTime, expires_at: SystemTime) -> Self {
        Self {
            key,
            created_at,
            expires_at,
        }
    }
}

/// Where sessions live. Implemented by [`MemoryStore`] and the networked stores;
/// implement it to bring your own.
///
/// Every method takes a [`StorageKey`], the hash of a session ID: a store never
/// sees an ID. The contract, checked by the conformance suite in `tests/`:
/// - A record whose `expires_at` has passed is gone: `load` returns `None` and
///   writes to it return [`SaveOutcome::Gone`].
/// - `save` and `rotate` apply a [`ChangeSet`] to the record as it is *now*
///   ([`ChangeSet::apply_to`] is the reference), atomically, and never create a
///   record.
/// - Sessions with a user are listed by `user_sessions` while they live, and the
///   index forgets them when they are deleted, rotated away or expire.
/// - Limits: `create`, `save` and `rotate` refuse, with
///   [`StoreError::TooLarge`] and without writing anything, a record whose
///   data would exceed the store's size limit (by default
///   [`DEFAULT_MAX_SESSION_BYTES`], counted as [`ChangeSet::bytes_after`]
///   does), judged against the record as it is at the time of the write; a
///   change set that sets no value is never refused for size. A change set
///   that attaches a session to a user under a [`SessionCap`] is admitted
///   atomically: however many logins of one user race, on however many
///   instances, the user never ends up with more live sessions than the cap.
/// - Formats: a record marked with a stored format newer than
///   [`STORED_FORMAT`] is neither returned nor changed: the call fails with
///   [`StoreError::UnsupportedFormat`].
///
/// The trait is object safe: the layer keeps stores as `Arc<dyn SessionStore>`,
/// so a store can be chosen at run time.
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// The kind of store, for metrics labels, spans and events: `memory`,
    /// `redis`, `postgres`, `tower_sessions`; `custom` unless overridden.
    fn name(&self) -> &'static str {
        "custom"
    }

    /// Loads a live session.
    ///
    /// # Errors
    /// When the store cannot be read.
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError>;

    /// Loads a live session at least as new as `seen`, the version the
    /// client's last write produced (see [`Version`]). Only stores that may
    /// answer from a copy that lags behind (a near cache) need to look at
    /// `seen`; the default is [`load`](Self::load).
    ///
    /// # Errors
    /// When the store cannot be read.
    async fn load_at_least(
        &self,
        key: &StorageKey,
        seen: Version,
    ) -> Result<Option<Record>, StoreError> {
        let _ = seen;
        self.load(key).await
    }

    /// Stores a new session under `key`, unless the key is taken (by a live session).
    /// Returns whether it was stored.
    ///
    /// # Errors
    /// When the store cannot be written.
    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError>;

    /// Applies `changes` to the live session at `key`.
    ///
    /// # Errors
    /// When the store cannot be written. A session that is gone is not an error:
    /// it gives [`SaveOutcome::Gone`].
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError>;

    /// Like [`save`](Self::save), and also says which [`Version`] of the
    /// session the save produced, when later loads could otherwise be answered
    /// from an older copy: the layer hands that version back through
    /// [`load_at_least`](Self::load_at_least). Stores whose loads always see
    /// their latest write return `None` (the default), and the layer then sends
    /// no cookie for the save.
    ///
    /// # Errors
    /// As for [`save`](Self::save).
    async fn save_versioned(
        &self,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<(SaveOutcome, Option<Version>), StoreError> {
        Ok((self.save(key, changes).await?, None))
    }

    /// Moves the live session at `from` to the fresh key `to`, applying `changes`
    /// on the way; `from` no longer exists afterwards. Used when a session's ID is
    /// cycled (at login).
    ///
    /// # Errors
    /// When the store cannot be written; [`StoreError::KeyTaken`] when `to`
    /// is taken.
    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError>;

    /// Deletes a session. Returns whether a live session was deleted.
    ///
    /// # Errors
    /// When the store cannot be written.
    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError>;

    /// Lists the live sessions of `user`.
    ///
    /// # Errors
    /// When the store cannot be read.
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError>;

    /// Deletes every session of `user` ("log out everywhere"). Returns how many
    /// live sessions were deleted.
    ///
    /// # Errors
    /// When the store cannot be written.
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError>;
}

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        (**self).load(key).await
    }
    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        (**self).create(key, record).await
    }
    async fn load_at_least(
        &self,
        key: &StorageKey,
        seen: Version,
    ) -> Result<Option<Record>, StoreError> {
        (**self).load_at_least(key, seen).await
    }
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        (**self).save(key, changes).await
    }
    async fn save_versioned(
        &self,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<(SaveOutcome, Option<Version>), StoreError> {
        (**self).save_versioned(key, changes).await
    }
    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        (**self).rotate(from, to, changes).await
    }
    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        (**self).delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        (**self).user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        (**self).delete_user_sessions(user).await
    }
}
