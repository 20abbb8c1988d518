//! [`MemoryStore`]: sessions in this process, for one instance and for tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    ChangeSet, DEFAULT_MAX_SESSION_BYTES, Record, SaveOutcome, SessionStore, SessionSummary,
    StoreError, UserChange, data_bytes,
};
use crate::events::{SessionEvent, SessionEventKind, SessionEvents};
use crate::id::StorageKey;

/// How often, at most, a write sweeps out every expired session.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Sessions kept in this process's memory: the embedded default.
///
/// It has the same semantics as the networked stores (deltas, no resurrection,
/// expiry, user index), so code tested against it behaves the same on Redis or
/// PostgreSQL. Its sessions die with the process and are not shared between
/// instances: for more than one instance use a networked store.
///
/// Expired sessions are invisible at once and swept out by writes, at most every
/// 30 seconds, so memory stays bounded by the sessions live in that window.
/// Cloning is cheap and clones share the same sessions.
///
/// With [`with_events`](Self::with_events), every session the sweep (or
/// [`delete_expired`](Self::delete_expired)) removes is reported as
/// [`Expired`](crate::SessionEventKind::Expired), with its user: exact, but as
/// late as the next sweep.
///
/// Each session holds at most 64 KiB of keys and JSON text unless
/// [`with_max_session_bytes`](Self::with_max_session_bytes) says otherwise.
///
/// # Examples
/// ```
/// use unstuck::{MemoryStore, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::new());
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    events: Option<SessionEvents>,
    max_session_bytes: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            events: None,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
        }
    }
}

#[derive(Debug)]
struct Inner {
    sessions: HashMap<StorageKey, Record>,
    users: HashMap<String, HashSet<StorageKey>>,
    last_sweep: SystemTime,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            sessions: HashMap::new(),
            users: HashMap::new(),
            last_sweep: SystemTime::now(),
        }
    }
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports the sessions the sweep removes to `events` (as
    /// [`Expired`](crate::SessionEventKind::Expired)).
    pub fn with_events(mut self, events: SessionEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// The most bytes of keys and JSON text one session may hold (default 64
    /// KiB); writes that would pass it fail with [`StoreError::TooLarge`].
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Self {
        self.max_session_bytes = bytes;
        self
    }

    /// Refuses `changes` when they set values and the record they apply to
    /// would end up over the limit.
    fn check_size(&self, record: &Record, changes: &ChangeSet) -> Result<(), StoreError> {
        if !changes.sets_values() {
            return Ok(());
        }
        let size = changes.bytes_after(&record.data);
        if size > self.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_session_bytes,
            });
        }
        Ok(())
    }

    /// Removes every expired session now, and returns how many there were.
    pub fn delete_expired(&self) -> usize {
        self.sweep(&mut self.lock(), SystemTime::now())
    }

    /// Sweeps out expired sessions, reporting them.
    fn sweep(&self, inner: &mut Inner, now: SystemTime) -> usize {
        let expired = inner.sweep(now);
        if let Some(events) = &self.events {
            for (key, record) in &expired {
                let kind = SessionEventKind::Expired { key: key.clone() };
                events.emit(SessionEvent::new(kind, record.user.clone(), "memory"));
            }
        }
        expired.len()
    }

    /// The number of sessions held, counting expired ones not yet swept out.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change set
        // (each write is a few infallible map operations), so poisoning is safe
        // to ignore.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Locks for a write, sweeping expired sessions when one is due.
    fn lock_for_write(&self, now: SystemTime) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        if now
            .duration_since(inner.last_sweep)
            .is_ok_and(|elapsed| elapsed >= SWEEP_EVERY)
        {
            self.sweep(&mut inner, now);
        }
        inner
    }
}

impl Inner {
    fn live(&self, key: &StorageKey, now: SystemTime) -> Option<&Record> {
        self.sessions.get(key).filter(|r| r.expires_at > now)
    }

    /// Removes the expired sessions and returns them.
    fn sweep(&mut self, now: SystemTime) -> Vec<(StorageKey, Record)> {
        self.last_sweep = now;
        let expired: Vec<StorageKey> = self
            .sessions
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|key| self.remove(&key).map(|record| (key, record)))
            .collect()
    }

    /// Removes a record (live or not) and its index entry; returns it.
    fn remove(&mut self, key: &StorageKey) -> Option<Record> {
        let record = self.sessions.remove(key)?;
        if let Some(user) = &record.user {
            self.unindex(user, key);
        }
        Some(record)
    }

    fn index(&mut self, user: &str, key: &StorageKey) {
        self.users
            .entry(user.to_owned())
            .or_default()
            .insert(key.clone());
    }

    fn unindex(&mut self, user: &str, key: &StorageKey) {
        if let Some(keys) = self.users.get_mut(user) {
            keys.remove(key);
            if keys.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Makes room for one more session of the user `changes` attach a session
    /// to, under their cap: the user's live sessions other than `joining`
    /// (the session's own keys, so a session already counted is not counted
    /// twice) are counted, and the
    /// oldest ended or the login refused. Runs under the store's lock, so
    /// concurrent logins are admitted one at a time.
    fn admit(
        &mut self,
        changes: &ChangeSet,
        joining: &[&StorageKey],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let (UserChange::Set(user), Some(cap)) = (changes.user(), changes.user_cap()) else {
            return Ok(());
        };
        let mut held: Vec<(SystemTime, StorageKey)> = self
            .users
            .get(user)
            .into_iter()
            .flatten()
            .filter(|key| !joining.contains(key))
            .filter_map(|key| self.live(key, now).map(|r| (r.created_at, key.clone())))
            .collect();
        let evict = cap.to_evict(held.len())?;
        held.sort();
        for (_, key) in held.into_iter().take(evict) {
            self.remove(&key);
        }
        Ok(())
    }

    /// Applies a change set to the record at `key`, keeping the index in step.
    fn apply(&mut self, key: &StorageKey, changes: &ChangeSet) {
        let Some(record) = self.sessions.get_mut(key) else {
            return;
        };
        let before = record.user.clone();
        changes.apply_to(record);
        let after = record.user.clone();
        if before != after {
            if let Some(user) = before {
                self.unindex(&user, key);
            }
            if let Some(user) = after {
                self.index(&user, key);
            }
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        Ok(self.lock().live(key, SystemTime::now()).cloned())
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        let size = data_bytes(&record.data);
        if size > self.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_session_bytes,
            });
        }
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        if inner.live(key, now).is_some() {
            return Ok(false);
        }
        inner.remove(key);
        if record.expires_at <= now {
            // Born expired: nothing to keep, but the caller did nothing wrong.
            return Ok(true);
        }
        if let Some(user) = &record.user {
            inner.index(user, key);
        }
        inner.sessions.insert(key.clone(), record.clone());
        Ok(true)
    }

    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        let Some(record) = inner.live(key, now) else {
            return Ok(SaveOutcome::Gone);
        };
        self.check_size(record, changes)?;
        inner.admit(changes, &[key], now)?;
        inner.apply(key, changes);
        if changes.expires_at() <= now {
            inner.remove(key);
        }
        Ok(SaveOutcome::Applied)
    }

    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        let Some(record) = inner.live(from, now) else {
            return Ok(SaveOutcome::Gone);
        };
        self.check_size(record, changes)?;
        if inner.live(to, now).is_some() {
            return Err(StoreError::KeyTaken);
        }
        inner.admit(changes, &[from, to], now)?;
        inner.remove(to);
        let Some(record) = inner.remove(from) else {
            return Ok(SaveOutcome::Gone);
        };
        if let Some(user) = &record.user {
            inner.index(user, to);
        }
        inner.sessions.insert(to.clone(), record);
        inner.apply(to, changes);
        if changes.expires_at() <= now {
            inner.remove(to);
        }
        Ok(SaveOutcome::Applied)
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        Ok(inner.remove(key).is_some_and(|r| r.expires_at > now))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        let now = SystemTime::now();
        let inner = self.lock();
        let Some(keys) = inner.users.get(user) else {
            return Ok(Vec::new());
        };
        let mut sessions: Vec<SessionSummary> = keys
            .iter()
            .filter_map(|key| {
                inner.live(key, now).map(|r| SessionSummary {
                    key: key.clone(),
                    created_at: r.created_at,
                    expires_at: r.expires_at,
                })
            })
            .collect();
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        let now = SystemTime::now();
        let mut inner = self.lock_for_write(now);
        let keys: Vec<StorageKey> = inner
            .users
            .get(user)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        let mut deleted = 0;
        for key in keys {
            if inner.remove(&key).is_some_and(|r| r.expires_at > now) {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
