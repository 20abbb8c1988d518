//! The [`SessionStore`] trait and the data it exchanges with the layer.
//!
//! The trait is built around *change sets*: a request hands the store only the keys
//! it set or removed, never the whole record, so concurrent requests that touch
//! different keys both persist. Stores never recreate a session that is gone.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(feature = "tower-sessions", feature = "tower-sessions-014"))]
pub mod tower_sessions;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use self::postgres::{DEFAULT_TABLE, InvalidIdentifier, PostgresCleanup, PostgresStore};
#[cfg(feature = "redis")]
pub use self::redis::{NearCache, NearCacheStats, RedisStore};
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
}

impl StoreError {
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
}

impl ChangeSet {
    /// An empty change set that only moves the expiry to `expires_at`.
    pub fn new(expires_at: SystemTime) -> Self {
        Self {
            set: BTreeMap::new(),
            removed: BTreeSet::new(),
            user: UserChange::Keep,
            expires_at,
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

/// One session of a user, as listed by [`SessionStore::user_sessions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session's storage key (a hash; safe to show and to pass back to
    /// [`SessionStore::delete`]).
    pub key: StorageKey,
    /// When the session was created.
    pub created_at: SystemTime,
    /// When it expires unless refreshed.
    pub expires_at: SystemTime,
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
///
/// The trait is object safe: the layer keeps stores as `Arc<dyn SessionStore>`,
/// so a store can be chosen at run time.
#[async_trait]
pub trait SessionStore: fmt::Debug + Send + Sync + 'static {
    /// Loads a live session.
    ///
    /// # Errors
    /// When the store cannot be read.
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError>;

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

    /// Moves the live session at `from` to the fresh key `to`, applying `changes`
    /// on the way; `from` no longer exists afterwards. Used when a session's ID is
    /// cycled (at login).
    ///
    /// # Errors
    /// When the store cannot be written, or `to` is taken.
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
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        (**self).load(key).await
    }
    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        (**self).create(key, record).await
    }
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        (**self).save(key, changes).await
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
