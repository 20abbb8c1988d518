//! [`TowerSessionsBackend`]: a tower-sessions 0.15 store behind our
//! [`SessionStore`] trait.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use tower_sessions_core::session::{Id, Record as TheirRecord};
use tower_sessions_core::session_store::{Error as TheirError, SessionStore as TheirStore};

use crate::id::StorageKey;
use crate::store::{
    ChangeSet, DEFAULT_MAX_SESSION_BYTES, Record, SaveOutcome, SessionStore, SessionSummary,
    StoreError, data_bytes,
};

/// The key of their data map under which we keep our whole record.
const RECORD_KEY: &str = "unstuck";

/// How many locks serialize this process's operations on one session.
const STRIPES: usize = 64;

/// Any tower-sessions 0.15 store (`tower_sessions::SessionStore`), as a
/// [`SessionStore`] that can back our [`SessionLayer`](crate::SessionLayer).
///
/// Use it to keep a store you already run (a tower-sessions store for a
/// database we have no store for) while moving to our layer. For Redis,
/// PostgreSQL or memory use our own stores instead: this adapter cannot give the
/// guarantees they give, because tower-sessions' trait only loads, creates,
/// saves and deletes whole records.
///
/// # Limits
/// - **Read-modify-write, no atomic deltas.** A save loads the record, applies
///   the request's [`ChangeSet`] and writes the whole record back. Operations on
///   one session are serialized *within this process* (so concurrent requests on
///   one instance merge their deltas, and a save cannot slip in after a delete),
///   but two instances saving one session at the same moment can still lose one
///   of the saves, and a save racing a delete made by *another* instance can
///   recreate the session if the wrapped store's `save` is an upsert (most are;
///   tower-sessions-redis-store's `SET XX` is not).
/// - **`create` and `rotate` are check-then-write**, not atomic, across instances.
/// - **No user index.** [`SessionStore::user_sessions`] and
///   [`SessionStore::delete_user_sessions`] fail with [`StoreError::Backend`]
///   wrapping [`UserIndexUnsupported`] (never an empty answer, so "log out
///   everywhere" cannot silently do nothing). The user set with
///   [`Session::set_user`](crate::Session::set_user) is still stored with the
///   session. Don't configure a per-user session cap on a layer over this store.
/// - **Errors**: the wrapped store's backend errors map to
///   [`StoreError::Unavailable`] (its driver's failures, usually connection
///   trouble: the layer answers `503`), its encoding and decoding errors to
///   [`StoreError::Backend`].
///
/// The wrapped store sees, as the session's `Id`, 128 bits of our storage key
/// (itself a SHA-256 hash of the session ID), never the ID. Our record is kept
/// in their data map under one key, `unstuck`, with the values as JSON; their
/// `expiry_date` is our expiry, so their store's own expiry handling applies.
///
/// # Examples
/// ```
/// use unstuck::SessionLayer;
/// use unstuck::store::tower_sessions::TowerSessionsBackend;
///
/// let store = TowerSessionsBackend::new(tower_sessions::MemoryStore::default());
/// let layer = SessionLayer::new(store);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct TowerSessionsBackend<T> {
    store: T,
    locks: Arc<[Mutex<()>]>,
    max_session_bytes: usize,
}

/// The error [`TowerSessionsBackend`] gives for the per-user index, which
/// tower-sessions stores do not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "tower-sessions stores keep no per-user index: listing or deleting a user's sessions needs one of unstuck's own stores"
)]
pub struct UserIndexUnsupported;

/// Our record, as kept in their data map.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Milliseconds since the Unix epoch.
    created_at_ms: u64,
    user: Option<String>,
    data: HashMap<String, Value>,
}

impl<T: TheirStore> TowerSessionsBackend<T> {
    /// Wraps `store`.
    pub fn new(store: T) -> Self {
        Self {
            store,
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
        }
    }

    /// The most bytes of keys and JSON text one session may hold (default 64
    /// KiB), checked under the same per-session lock as every write; writes
    /// that would pass it fail with [`StoreError::TooLarge`].
    ///
    /// A [`SessionCap`](crate::SessionCap) cannot be kept without a user
    /// index: a change set that carries one fails with
    /// [`UserIndexUnsupported`] (as a [`StoreError::Backend`]).
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Self {
        self.max_session_bytes = bytes;
        self
    }

    /// Refuses a record over the limit (or changes that cannot be kept).
    fn check(&self, record: &Record, changes: Option<&ChangeSet>) -> Result<(), StoreError> {
        let size = match changes {
            Some(changes) if changes.user_cap().is_some() => {
                return Err(StoreError::backend(UserIndexUnsupported));
            }
            Some(changes) if !changes.sets_values() => return Ok(()),
            Some(changes) => changes.bytes_after(&record.data),
            None => data_bytes(&record.data),
        };
        if size > self.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_session_bytes,
            });
        }
        Ok(())
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &T {
        &self.store
    }

    /// The lock for the session whose ID (in their store) is `id`.
    fn stripe(&self, id: Id) -> usize {
        (id.0 as u128 % STRIPES as u128) as usize
    }

    /// Loads the live record at `id`.
    async fn load_live(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        let Some(theirs) = self.store.load(id).await.map_err(store_error)? else {
            return Ok(None);
        };
        let record = ours(&theirs)?;
        Ok((record.expires_at > SystemTime::now()).then_some(record))
    }

    /// Stores `record` as a new record under `id`, unless the wrapped store
    /// holds a record there (which it may, for an expired session it has not
    /// removed yet). Returns whether it was stored. Call with the lock held,
    /// after checking that no live session is at `id`.
    async fn create_at(&self, id: Id, record: &Record) -> Result<bool, StoreError> {
        for _ in 0..2 {
            let mut theirs = theirs(id, record)?;
            self.store.create(&mut theirs).await.map_err(store_error)?;
            if theirs.id == id {
                return Ok(true);
            }
            // The wrapped store found `id` taken and filed the record under an
            // ID of its own choosing: take that copy back.
            self.store.delete(&theirs.id).await.map_err(store_error)?;
            if self.load_live(&id).await?.is_some() {
                return Ok(false);
            }
            // What holds `id` is dead (expired but not yet removed): clear it.
            self.store.delete(&id).await.map_err(store_error)?;
        }
        Ok(false)
    }
}

impl<T: fmt::Debug> fmt::Debug for TowerSessionsBackend<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerSessionsBackend")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The wrapped store's ID for our storage key: its first 128 bits.
fn their_id(key: &StorageKey) -> Result<Id, StoreError> {
    let mut digest = [0u8; 33];
    let written = URL_SAFE_NO_PAD
        .decode_slice(key.as_str(), &mut digest)
        .map_err(|_| StoreError::backend("storage key is not base64url"))?;
    let bytes: [u8; 16] = digest[..written.min(16)]
        .try_into()
        .map_err(|_| StoreError::backend("storage key is too short"))?;
    Ok(Id(i128::from_le_bytes(bytes)))
}

fn store_error(error: TheirError) -> StoreError {
    match error {
        TheirError::Backend(_) => StoreError::unavailable(error),
        TheirError::Encode(_) | TheirError::Decode(_) => StoreError::backend(error),
    }
}

use crate::time::{from_unix_millis_u64, unix_millis_u64 as millis};

/// Our record as their record with ID `id`.
fn theirs(id: Id, record: &Record) -> Result<TheirRecord, StoreError> {
    let data = record
        .data
        .iter()
        .map(|(key, json)| Ok((key.clone(), serde_json::from_str(json)?)))
        .collect::<Result<_, serde_json::Error>>()
        .map_err(StoreError::backend)?;
    let stored = Stored {
        created_at_ms: millis(record.created_at),
        user: record.user.clone(),
        data,
    };
    let stored = serde_json::to_value(stored).map_err(StoreError::backend)?;
    Ok(TheirRecord {
        id,
        data: HashMap::from([(RECORD_KEY.to_owned(), stored)]),
        expiry_date: super::record::expiry_date(record.expires_at).ok_or_else(|| {
            StoreError::backend("the session's expiry is beyond what tower-sessions can hold")
        })?,
    })
}

/// Their record as ours.
fn ours(theirs: &TheirRecord) -> Result<Record, StoreError> {
    let stored = theirs
        .data
        .get(RECORD_KEY)
        .ok_or_else(|| StoreError::backend("the stored session holds no unstuck record"))?;
    let stored = Stored::deserialize(stored).map_err(StoreError::backend)?;
    Ok(Record {
        data: stored
            .data
            .into_iter()
            .map(|(key, value)| (key, value.to_string()))
            .collect(),
        user: stored.user,
        created_at: from_unix_millis_u64(stored.created_at_ms),
        expires_at: theirs.expiry_date.into(),
    })
}

#[async_trait]
impl<T: TheirStore> SessionStore for TowerSessionsBackend<T> {
    fn name(&self) -> &'static str {
        "tower_sessions"
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.load_live(&their_id(key)?).await
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        self.check(record, None)?;
        let id = their_id(key)?;
        let _guard = self.locks[self.stripe(id)].lock().await;
        if self.load_live(&id).await?.is_some() {
            return Ok(false);
        }
        if record.expires_at <= SystemTime::now() {
            // Born expired: nothing to keep, but the caller did nothing wrong.
            return Ok(true);
        }
        self.create_at(id, record).await
    }

    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        let id = their_id(key)?;
        let _guard = self.locks[self.stripe(id)].lock().await;
        let Some(mut record) = self.load_live(&id).await? else {
            return Ok(SaveOutcome::Gone);
        };
        self.check(&record, Some(changes))?;
        changes.apply_to(&mut record);
        if record.expires_at <= SystemTime::now() {
            self.store.delete(&id).await.map_err(store_error)?;
        } else {
            self.store
                .save(&theirs(id, &record)?)
                .await
                .map_err(store_error)?;
        }
        Ok(SaveOutcome::Applied)
    }

    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        let (from_id, to_id) = (their_id(from)?, their_id(to)?);
        let _guards = self.lock_two(from_id, to_id).await;
        let Some(mut record) = self.load_live(&from_id).await? else {
            return Ok(SaveOutcome::Gone);
        };
        if self.load_live(&to_id).await?.is_some() {
            return Err(StoreError::backend("rotation target key is already taken"));
        }
        self.check(&record, Some(changes))?;
        changes.apply_to(&mut record);
        if record.expires_at > SystemTime::now() && !self.create_at(to_id, &record).await? {
            return Err(StoreError::backend("rotation target key is already taken"));
        }
        self.store.delete(&from_id).await.map_err(store_error)?;
        Ok(SaveOutcome::Applied)
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let id = their_id(key)?;
        let _guard = self.locks[self.stripe(id)].lock().await;
        let live = self.load_live(&id).await?.is_some();
        self.store.delete(&id).await.map_err(store_error)?;
        Ok(live)
    }

    async fn user_sessions(&self, _user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        Err(StoreError::backend(UserIndexUnsupported))
    }

    async fn delete_user_sessions(&self, _user: &str) -> Result<u64, StoreError> {
        Err(StoreError::backend(UserIndexUnsupported))
    }
}

impl<T: TheirStore> TowerSessionsBackend<T> {
    /// Locks the stripes of two sessions, in a fixed order so that two
    /// rotations cannot deadlock.
    async fn lock_two(&self, a: Id, b: Id) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let (a, b) = (self.stripe(a), self.stripe(b));
        if a == b {
            return (self.locks[a].lock().await, None);
        }
        let (first, second) = (a.min(b), a.max(b));
        let first = self.locks[first].lock().await;
        let second = self.locks[second].lock().await;
        (first, Some(second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn their_id_is_part_of_the_hash_and_differs_per_session() {
        let a = SessionId::generate().storage_key();
        let b = SessionId::generate().storage_key();
        assert_eq!(their_id(&a).unwrap(), their_id(&a).unwrap());
        assert_ne!(their_id(&a).unwrap(), their_id(&b).unwrap());
    }

    #[test]
    fn records_round_trip_through_their_layout() {
        let record = Record {
            data: HashMap::from([
                ("n".to_owned(), "3".to_owned()),
                ("o".to_owned(), r#"{"a":[1,"x"]}"#.to_owned()),
            ]),
            user: Some("ann".to_owned()),
            created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            expires_at: UNIX_EPOCH + Duration::from_millis(1_700_000_600_456),
        };
        let id = their_id(&SessionId::generate().storage_key()).unwrap();
        let theirs = theirs(id, &record).unwrap();
        assert_eq!(theirs.id, id);
        assert_eq!(theirs.data.len(), 1, "one key holds our record");
        assert_eq!(ours(&theirs).unwrap(), record);
    }

    #[test]
    fn values_that_are_not_json_are_refused_not_mangled() {
        let record = Record {
            data: HashMap::from([("n".to_owned(), "not json".to_owned())]),
            user: None,
            created_at: SystemTime::now(),
            expires_at: SystemTime::now(),
        };
        assert!(matches!(
            theirs(Id(1), &record),
            Err(StoreError::Backend(_))
        ));
    }
}
