//! The [`Session`] handle: typed access, delta tracking, and the save at the end of
//! a request.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::commit::{self, Pending, Step, Stored};
use crate::config::Config;
use crate::deadline;
use crate::error::Error;
use crate::events::SessionEventKind;
use crate::expiry::{Expiry, Timeouts};
use crate::id::{SessionId, StorageKey};
use crate::metrics::LoadOutcome;
use crate::observe::{self, Watch};
use crate::store::{
    ChangeSet, Data, Record, SaveOutcome, SessionStore, SessionSummary, StoreError, UserChange,
    Version, data_bytes, entry_bytes,
};
use crate::transport::Handout;

/// How many fresh IDs a new session tries before giving up. With 256-bit IDs a
/// second try never happens in practice; the loop exists so that a store that
/// reports a taken key is handled rather than overwritten.
const CREATE_ATTEMPTS: usize = 3;

/// The current request's session.
///
/// Take it as an extractor in any handler behind a
/// [`SessionLayer`](crate::SessionLayer). The session is loaded when the extractor
/// runs; after that `get`, `insert` and `remove` are plain in-memory operations.
/// The layer records which keys the request set or removed and, once the
/// response is ready, hands the store only those changes, so concurrent requests
/// changing different keys do not overwrite each other.
///
/// Cloning is cheap; clones share one state. Changes made after the response
/// has been produced are not saved.
///
/// # Examples
/// ```
/// use unstuck::Session;
///
/// async fn counter(session: Session) -> Result<String, unstuck::Error> {
///     let n: u64 = session.get("count")?.unwrap_or(0) + 1;
///     session.insert("count", &n)?;
///     Ok(n.to_string())
/// }
/// # let _ = counter;
/// ```
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn SessionStore>,
    config: Arc<Config>,
    state: Mutex<State>,
}

struct State {
    /// `None` for a session that is not in the store (yet).
    stored: Option<Stored>,
    data: Data,
    user: Option<String>,
    /// What this request changed. Its expiry is filled in when saving.
    changes: ChangeSet,
    /// Move the session to a new ID when saving.
    cycle: bool,
    /// A session this request destroyed, to delete when saving.
    ended: Option<StorageKey>,
    /// Its user, for the event.
    ended_user: Option<String>,
    /// This session's own lifetime, if it has one ("remember me").
    lifetime: Option<Lifetime>,
    /// Set once the layer has saved the request's changes.
    committed: bool,
}

/// The data key under which a session keeps its own lifetime. Handlers never
/// see it: it is taken out of the data when the session loads.
const LIFETIME_KEY: &str = "__unstuck.lifetime";

/// A session's own idle and absolute timeouts, set by
/// [`Session::set_lifetime`], kept with the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Lifetime {
    idle_secs: u64,
    absolute_secs: u64,
}

impl Lifetime {
    /// How it is kept in the session's data.
    fn json(self) -> String {
        serde_json::to_string(&self).expect("two numbers serialize")
    }

    /// The timeouts that apply to a session with this lifetime (or the
    /// layer's, without one).
    fn timeouts(lifetime: Option<Self>, layer: &Timeouts) -> Timeouts {
        match lifetime {
            None => *layer,
            Some(own) => Timeouts::new(
                Duration::from_secs(own.idle_secs),
                Duration::from_secs(own.absolute_secs),
            ),
        }
    }
}

impl State {
    fn new() -> Self {
        Self {
            stored: None,
            data: Data::new(),
            user: None,
            changes: ChangeSet::new(SystemTime::UNIX_EPOCH),
            cycle: false,
            ended: None,
            ended_user: None,
            lifetime: None,
            committed: false,
        }
    }

    fn loaded(id: SessionId, key: StorageKey, seen: Option<Version>, mut record: Record) -> Self {
        let lifetime = record
            .data
            .remove(LIFETIME_KEY)
            .and_then(|json| serde_json::from_str(&json).ok());
        Self {
            stored: Some(Stored {
                id,
                key,
                created_at: record.created_at,
                expires_at: record.expires_at,
                seen,
            }),
            data: record.data,
            user: record.user,
            lifetime,
            ..Self::new()
        }
    }

    /// Forgets the session: what remains is a new, empty one.
    fn end(&mut self) {
        if let Some(stored) = self.stored.take() {
            self.ended = Some(stored.key);
            self.ended_user = self.user.clone();
        }
        self.data.clear();
        self.user = None;
        self.changes = ChangeSet::new(SystemTime::UNIX_EPOCH);
        self.cycle = false;
        self.lifetime = None;
    }

    fn timeouts(&self, layer: &Timeouts) -> Timeouts {
        Lifetime::timeouts(self.lifetime, layer)
    }

    /// The session's size as the store counts it: its data, and its lifetime
    /// (kept with the data).
    fn bytes(&self) -> usize {
        let lifetime = self
            .lifetime
            .map_or(0, |lifetime| entry_bytes(LIFETIME_KEY, &lifetime.json()));
        data_bytes(&self.data) + lifetime
    }
}

/// A save planned at the end of a request, for [`Session::commit`].
pub(crate) struct Planned {
    plan: commit::Plan,
    /// The session has a lifetime of its own (its cookie persists).
    remembered: bool,
    users: Users,
    watch: Watch,
}

/// The users a save's events name: the session's, and the destroyed one's.
struct Users {
    current: Option<String>,
    ended: Option<String>,
}

/// How saving a session failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request changed a session that another request ended meanwhile; the
    /// changes were not saved (saves never resurrect a session).
    #[error("the session ended before this request's changes could be saved")]
    Gone,
}

impl CommitError {
    /// What the response becomes: the handler's changes were not saved, and
    /// reporting success for a lost write would be a lie.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Store(error) => error.status(),
            Self::Gone => http::StatusCode::CONFLICT,
        }
    }
}

impl Session {
    fn new(store: Arc<dyn SessionStore>, config: Arc<Config>, state: State) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                config,
                state: Mutex::new(state),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation under this lock is a handful of map operations that
        // leave the state consistent even if a panic interrupts the caller.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads the session the cookie points to (at least at the version the
    /// client last wrote, if it says), or starts a new one.
    pub(crate) async fn load(
        store: Arc<dyn SessionStore>,
        config: Arc<Config>,
        from_cookie: Option<(SessionId, Option<Version>)>,
    ) -> Result<Self, StoreError> {
        let Some((id, seen)) = from_cookie else {
            observe::no_session(&*store);
            return Ok(Self::new(store, config, State::new()));
        };
        let key = id.storage_key();
        let watch = Watch::load(&*store, &config, &key);
        let record = watch
            .run(bounded(
                &config,
                store.load_at_least(&key, seen.unwrap_or(Version::ZERO)),
            ))
            .await
            .inspect_err(|error| watch.failed(error))?;
        let now = SystemTime::now();
        let state = match record {
            Some(record) if record.expires_at > now => {
                let state = State::loaded(id, key, seen, record);
                let created_at = state.stored.as_ref().map(|s| s.created_at);
                let deadline = created_at
                    .map(|created| state.timeouts(&config.timeouts).absolute_deadline(created));
                if deadline.is_some_and(|deadline| deadline > now) {
                    state
                } else {
                    State::new()
                }
            }
            _ => State::new(),
        };
        watch.loaded(if state.stored.is_some() {
            LoadOutcome::Hit
        } else {
            LoadOutcome::Miss
        });
        Ok(Self::new(store, config, state))
    }

    /// Reads `key` as a `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the stored value does not decode as `T`; other keys
    /// are unaffected.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let state = self.state();
        let Some(json) = state.data.get(key) else {
            return Ok(None);
        };
        serde_json::from_str(json)
            .map(Some)
            .map_err(|source| Error::Decode {
                key: key.to_owned(),
                source,
            })
    }

    /// Sets `key` to `value` (anything serde can serialize, by value or by
    /// reference). Only keys a request sets or removes are written back; setting a
    /// key to the value it already holds writes nothing.
    ///
    /// # Errors
    /// [`Error::Encode`] when `value` cannot be serialized to JSON;
    /// [`Error::ValueTooLarge`] or [`Error::TooLarge`] when the value, or the
    /// session with it, would pass the layer's size limits. On error the
    /// session is unchanged.
    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), Error> {
        let json = serde_json::to_string(&value).map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })?;
        let limits = &self.shared.config.limits;
        let size = entry_bytes(key, &json);
        if size > limits.value_bytes {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                size,
                limit: limits.value_bytes,
            });
        }
        let mut state = self.state();
        let held = state.data.get(key);
        if held.is_some_and(|held| same_json(held, &json)) {
            return Ok(());
        }
        let after = state.bytes() - held.map_or(0, |held| entry_bytes(key, held)) + size;
        if after > limits.session_bytes {
            return Err(Error::TooLarge {
                key: key.to_owned(),
                size: after,
                limit: limits.session_bytes,
            });
        }
        state.changes.insert(key, json.clone());
        state.data.insert(key.to_owned(), json);
        Ok(())
    }

    /// Reads `key` as a `T` and removes it: a value meant to be seen once,
    /// such as a flash message shown after a redirect.
    ///
    /// # Errors
    /// [`Error::Decode`] when the stored value does not decode as `T`; the value
    /// is then left in place.
    ///
    /// # Examples
    /// ```
    /// use unstuck::Session;
    ///
    /// async fn page(session: Session) -> Result<String, unstuck::Error> {
    ///     let notice: Option<String> = session.take("flash")?;
    ///     Ok(notice.unwrap_or_default())
    /// }
    /// # let _ = page;
    /// ```
    pub fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        let value = self.get(key)?;
        if value.is_some() {
            self.remove(key);
        }
        Ok(value)
    }

    /// True when the request changed the session in a way that will be
    /// written: a key set to a new value or removed, a user change, a cycled
    /// ID, or a destroyed session. (An idle refresh alone does not count.)
    pub fn is_modified(&self) -> bool {
        let state = self.state();
        !state.changes.is_touch_only() || state.cycle || state.ended.is_some()
    }

    /// Gives this session a lifetime of its own ("remember me"): it expires
    /// after `idle` without use, and at the latest `absolute` after it was
    /// created, instead of after the layer's timeouts; and its cookie persists
    /// across browser restarts (`Max-Age`). The lifetime is kept with the
    /// session, so every instance applies it. Pair it with
    /// [`cycle_id`](Self::cycle_id) at login.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use unstuck::Session;
    ///
    /// async fn login(session: Session) -> &'static str {
    ///     session.cycle_id();
    ///     session.set_user("alice");
    ///     let month = Duration::from_secs(30 * 24 * 3600);
    ///     session.set_lifetime(month, month);
    ///     "welcome back, for a month"
    /// }
    /// # let _ = login;
    /// ```
    pub fn set_lifetime(&self, idle: Duration, absolute: Duration) {
        let lifetime = Lifetime {
            idle_secs: idle.as_secs().max(1),
            absolute_secs: absolute.as_secs().max(1),
        };
        let mut state = self.state();
        if state.lifetime == Some(lifetime) {
            return;
        }
        state.changes.insert(LIFETIME_KEY, lifetime.json());
        state.lifetime = Some(lifetime);
    }

    /// Puts the session back on the layer's timeouts and cookie (undoes
    /// [`set_lifetime`](Self::set_lifetime)).
    pub fn reset_lifetime(&self) {
        let mut state = self.state();
        if state.lifetime.take().is_some() {
            state.changes.remove(LIFETIME_KEY);
        }
    }

    /// Removes `key`; returns whether it was present.
    pub fn remove(&self, key: &str) -> bool {
        let mut state = self.state();
        let present = state.data.remove(key).is_some();
        if present {
            state.changes.remove(key);
        }
        present
    }

    /// Removes every key the session holds.
    pub fn clear(&self) {
        let mut state = self.state();
        let keys: Vec<String> = state.data.drain().map(|(k, _)| k).collect();
        for key in keys {
            state.changes.remove(key);
        }
    }

    /// The session's keys, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.state().data.keys().cloned().collect()
    }

    /// True when the session holds no keys.
    pub fn is_empty(&self) -> bool {
        self.state().data.is_empty()
    }

    /// True when the session is not in the store: the request came without a
    /// (live) session, or destroyed it. A new session is stored, and its cookie
    /// sent, only once something is inserted or a user is set.
    pub fn is_new(&self) -> bool {
        self.state().stored.is_none()
    }

    /// Gives the session a new ID when the response is saved, keeping its data;
    /// the old ID stops working. Call it at login, and whenever privileges change,
    /// to defeat session fixation.
    pub fn cycle_id(&self) {
        let mut state = self.state();
        if state.stored.is_some() {
            state.cycle = true;
        }
    }

    /// Ends the session: it is deleted from the store and the cookie removed when
    /// the response is saved. The handle then holds a new, empty session, so a
    /// value inserted afterwards (a "you have been logged out" notice, say) starts
    /// a fresh session with a fresh ID.
    pub fn destroy(&self) {
        self.state().end();
    }

    /// Records the user this session belongs to, indexing it for
    /// [`user_sessions`](Self::user_sessions) and
    /// [`destroy_user_sessions`](Self::destroy_user_sessions). Pair it with
    /// [`cycle_id`](Self::cycle_id) at login.
    pub fn set_user(&self, user: impl Into<String>) {
        let user = user.into();
        let mut state = self.state();
        if state.user.as_ref() != Some(&user) {
            state.changes.set_user(UserChange::Set(user.clone()));
            state.user = Some(user);
        }
    }

    /// Detaches the session from its user.
    pub fn clear_user(&self) {
        let mut state = self.state();
        if state.user.take().is_some() {
            state.changes.set_user(UserChange::Clear);
        }
    }

    /// The user this session belongs to, if any.
    pub fn user(&self) -> Option<String> {
        self.state().user.clone()
    }

    /// The session's lifetime, or `None` for a session not yet stored.
    pub fn expiry(&self) -> Option<Expiry> {
        let state = self.state();
        let stored = state.stored.as_ref()?;
        Some(Expiry {
            created_at: stored.created_at,
            expires_at: stored.expires_at,
            absolute_deadline: state
                .timeouts(&self.shared.config.timeouts)
                .absolute_deadline(stored.created_at),
        })
    }

    /// The store key of this session (a hash of its ID), or `None` for a session
    /// not yet stored. Compare it with [`SessionSummary::key`] to mark the
    /// current session in a list of the user's sessions.
    pub fn storage_key(&self) -> Option<StorageKey> {
        self.state().stored.as_ref().map(|s| s.key.clone())
    }

    /// Lists the live sessions of this session's user (empty without a user).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn user_sessions(&self) -> Result<Vec<SessionSummary>, Error> {
        let Some(user) = self.user() else {
            return Ok(Vec::new());
        };
        let store = &*self.shared.store;
        Ok(bounded(&self.shared.config, store.user_sessions(&user))
            .await
            .inspect_err(|error| observe::store_error(store, "user_sessions", error))?)
    }

    /// Logs this session's user out everywhere: deletes every session of the
    /// user, this one included, and removes this one's cookie. Returns how many
    /// sessions were deleted (0 without a user).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn destroy_user_sessions(&self) -> Result<u64, Error> {
        let Some(user) = self.user() else {
            return Ok(0);
        };
        let store = &*self.shared.store;
        let deleted = bounded(&self.shared.config, store.delete_user_sessions(&user))
            .await
            .inspect_err(|error| observe::store_error(store, "delete_user_sessions", error))?;
        observe::emit(
            &self.shared.config,
            store,
            SessionEventKind::LoggedOutEverywhere { sessions: deleted },
            Some(user),
        );
        self.destroy();
        Ok(deleted)
    }

    /// Takes what the request left to save at `now`, once; `None` when it
    /// left nothing.
    fn take_pending(&self, now: SystemTime) -> Option<Pending> {
        let mut state = self.state();
        if state.committed {
            return None;
        }
        state.committed = true;
        if state.ended.is_none()
            && let Some(stored) = &state.stored
            && commit::writes_nothing(
                stored,
                &state.changes,
                state.cycle,
                &state.timeouts(&self.shared.config.timeouts),
                now,
            )
        {
            return None;
        }
        let mut data = if state.stored.is_none() {
            std::mem::take(&mut state.data)
        } else {
            Data::new()
        };
        if state.stored.is_none()
            && let Some(lifetime) = state.lifetime
        {
            data.insert(LIFETIME_KEY.to_owned(), lifetime.json());
        }
        let cap = self.shared.config.limits.session_cap();
        state.changes.cap_user_sessions(cap);
        Some(Pending {
            stored: state.stored.clone(),
            ended: state.ended.take(),
            ended_user: state.ended_user.take(),
            changes: std::mem::replace(&mut state.changes, ChangeSet::new(SystemTime::UNIX_EPOCH)),
            cycle: state.cycle,
            data,
            user: state.user.clone(),
            lifetime: state.lifetime.is_some(),
            timeouts: state.timeouts(&self.shared.config.timeouts),
        })
    }

    /// Decides what saving the request's changes takes ([`commit::plan`]),
    /// once, after the handler: `None` when there is nothing to write (most
    /// reads), so such a request pays for no save at all.
    pub(crate) fn plan_commit(&self) -> Option<Planned> {
        let now = SystemTime::now();
        let mut pending = self.take_pending(now)?;
        let remembered = pending.lifetime;
        let users = Users {
            current: pending.user.clone(),
            ended: pending.ended_user.take(),
        };
        let plan = commit::plan(pending, now);
        let step = plan.label()?;
        let watch = Watch::save(&*self.shared.store, &self.shared.config, step, plan.key());
        Some(Planned {
            plan,
            remembered,
            users,
            watch,
        })
    }

    /// Carries out a save [`plan_commit`](Self::plan_commit) planned.
    /// Returns the token to hand out (or clear), if any.
    pub(crate) async fn commit(self, planned: Planned) -> Result<Option<Handout>, CommitError> {
        let Planned {
            plan,
            remembered,
            users,
            watch,
        } = planned;
        // One deadline for all of the save's store calls.
        let saved = watch
            .run(deadline::within(
                self.shared.config.store_timeout,
                self.execute(plan, remembered, &users, &watch),
            ))
            .await;
        match &saved {
            Ok(_) => watch.saved(false),
            Err(CommitError::Gone) => watch.saved(true),
            Err(CommitError::Store(error)) => watch.failed(error),
        }
        saved
    }

    /// Carries out a plan: the store calls and the token to hand out.
    async fn execute(
        &self,
        plan: commit::Plan,
        remembered: bool,
        users: &Users,
        watch: &Watch,
    ) -> Result<Option<Handout>, CommitError> {
        let config = &self.shared.config;
        let store = &*self.shared.store;
        // A session with a lifetime of its own keeps its cookie across
        // browser restarts.
        let persistent = config.cookie.persistent || remembered;
        let issue =
            |id: &SessionId, version: Option<Version>, expires_at: SystemTime| Handout::Issue {
                id: id.clone(),
                version,
                expires_at,
                persistent,
            };

        // Events go out only for what the store confirmed.
        let emit = |kind, user: &Option<String>| observe::emit(config, store, kind, user.clone());

        let mut handout = None;
        if let Some(key) = &plan.delete {
            if store.delete(key).await? {
                let key = key.clone();
                emit(SessionEventKind::Destroyed { key }, &users.ended);
            }
            handout = Some(Handout::Clear);
        }
        match plan.step {
            Step::Nothing => Ok(handout),
            Step::Create(mut record) => {
                // A new session that joins a capped user is created without
                // its user, then attached to it by a save, which the store
                // admits under the cap.
                let capped = config.limits.session_cap();
                let join = match capped {
                    Some(_) => record.user.take(),
                    None => None,
                };
                for _ in 0..CREATE_ATTEMPTS {
                    let id = SessionId::generate();
                    let key = id.storage_key();
                    if !store.create(&key, &record).await? {
                        continue;
                    }
                    if let Some(user) = join {
                        let mut changes = ChangeSet::new(record.expires_at);
                        changes
                            .set_user(UserChange::Set(user.clone()))
                            .cap_user_sessions(capped);
                        let joined = store.save(&key, &changes).await;
                        if !matches!(joined, Ok(SaveOutcome::Applied)) {
                            // Refused, evicted meanwhile, or failed: the
                            // anonymous copy must not outlive the login.
                            let _ = store.delete(&key).await;
                            return Err(match joined {
                                Err(error) => error.into(),
                                Ok(_) => CommitError::Gone,
                            });
                        }
                        record.user = Some(user);
                    }
                    watch.session(config, &key);
                    emit(SessionEventKind::Created { key }, &record.user);
                    return Ok(Some(issue(&id, None, record.expires_at)));
                }
                Err(StoreError::backend("no free session ID after several attempts").into())
            }
            Step::Rotate(stored, changes) => {
                let id = SessionId::generate();
                let key = id.storage_key();
                match store.rotate(&stored.key, &key, &changes).await? {
                    // A fresh key: no copy of it is cached anywhere, so its
                    // first load needs no version to compare against.
                    SaveOutcome::Applied => {
                        watch.session(config, &key);
                        let from = stored.key.clone();
                        emit(SessionEventKind::Rotated { from, to: key }, &users.current);
                        Ok(Some(issue(&id, None, changes.expires_at())))
                    }
                    SaveOutcome::Gone => Err(CommitError::Gone),
                }
            }
            Step::Save(stored, changes) => {
                match store.save_versioned(&stored.key, &changes).await? {
                    // A store that reports versions may answer later loads
                    // from a copy that lags: the cookie tells it which version
                    // this client must at least see next.
                    (SaveOutcome::Applied, Some(version)) => {
                        Ok(Some(issue(&stored.id, Some(version), changes.expires_at())))
                    }
                    (SaveOutcome::Applied, None) => Ok(
                        persistent.then(|| issue(&stored.id, stored.seen, changes.expires_at()))
                    ),
                    (SaveOutcome::Gone, _) => Err(CommitError::Gone),
                }
            }
            Step::Touch(stored, changes) => {
                match store.save(&stored.key, &changes).await? {
                    // Only the expiry moved, so the client needs no newer
                    // version than the one its cookie already carries.
                    SaveOutcome::Applied => Ok(
                        persistent.then(|| issue(&stored.id, stored.seen, changes.expires_at()))
                    ),
                    // Only the idle deadline was to move, and the session ended
                    // anyway: nothing the request did is lost.
                    SaveOutcome::Gone => {
                        watch.found_gone();
                        Ok(None)
                    }
                }
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Session")
            .field("new", &state.stored.is_none())
            .field("keys", &state.data.len())
            .field("user", &state.user)
            .finish_non_exhaustive()
    }
}

/// Whether two JSON texts hold the same value. Stores may hand text back in
/// another form than it was written (PostgreSQL's `jsonb` reorders object keys
/// and drops spaces), and re-inserting an unchanged value must not count as a
/// change; comparing text first keeps the common case cheap.
fn same_json(held: &str, new: &str) -> bool {
    held == new
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(held),
                serde_json::from_str::<serde_json::Value>(new),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// Runs one store call as the request's store work, under the layer's store
/// timeout (see [`deadline`](crate::deadline)).
pub(crate) async fn bounded<T>(
    config: &Config,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    deadline::within(config.store_timeout, call).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn limited(session_bytes: usize, value_bytes: usize) -> Session {
        let mut config = Config::default();
        config.limits.session_bytes = session_bytes;
        config.limits.value_bytes = value_bytes;
        Session::new(Arc::new(MemoryStore::new()), Arc::new(config), State::new())
    }

    #[test]
    fn inserts_past_the_size_limits_are_refused_and_change_nothing() {
        let session = limited(40, 20);
        session.insert("a", "0123456789").unwrap(); // 1 + 12 bytes
        assert!(matches!(
            session.insert("b", "x".repeat(18)),
            Err(Error::ValueTooLarge {
                size: 21,
                limit: 20,
                ..
            })
        ));
        session.insert("b", "x".repeat(14)).unwrap(); // 1 + 16: 30 in all
        let refused = session.insert("c", "x".repeat(8));
        assert!(
            matches!(&refused, Err(Error::TooLarge { size: 41, limit: 40, key }) if key == "c"),
            "{refused:?}"
        );
        assert_eq!(
            refused.unwrap_err().status(),
            http::StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(session.get::<String>("c").unwrap(), None);
        assert_eq!(session.keys().len(), 2);
        // Replacing a value counts the new one instead of the old.
        session.insert("b", "y".repeat(16)).unwrap(); // 1 + 18: 32 in all
        let pending = session.take_pending(SystemTime::now()).unwrap();
        let keys: Vec<&str> = pending.data.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 2, "only accepted inserts are saved: {keys:?}");
    }

    #[test]
    fn a_session_s_own_lifetime_counts_toward_its_size() {
        let own = Lifetime {
            idle_secs: 60,
            absolute_secs: 60,
        };
        let lifetime = entry_bytes(LIFETIME_KEY, &own.json());
        let session = limited(lifetime + 2, 100);
        session.set_lifetime(Duration::from_secs(60), Duration::from_secs(60));
        assert!(matches!(
            session.insert("a", 12),
            Err(Error::TooLarge { .. })
        ));
        session.insert("a", 1).unwrap();
    }

    #[test]
    fn zero_limits_are_configuration_errors() {
        use crate::{CapPolicy, ConfigError, SessionLayer};
        let layer = || SessionLayer::new(MemoryStore::new());
        for bad in [
            layer().with_max_session_bytes(0),
            layer().with_max_value_bytes(0),
            layer().with_max_sessions_per_user(0, CapPolicy::EvictOldest),
        ] {
            assert!(matches!(bad.validate(), Err(ConfigError::ZeroLimit(_))));
        }
        assert!(
            layer()
                .with_max_sessions_per_user(3, CapPolicy::Refuse)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn json_texts_compare_by_value() {
        assert!(same_json(
            r#"{"b":1,"a":[1,2]}"#,
            r#"{"a": [1, 2], "b": 1}"#
        ));
        assert!(!same_json(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(!same_json("1", "\"1\""));
        assert!(same_json("not json", "not json"));
        assert!(!same_json("not json", "null"));
    }
}
