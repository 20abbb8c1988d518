//! The store conformance suite: one set of checks of the whole
//! [`SessionStore`] contract, run unchanged against every store of this crate,
//! and published (feature `test-util`) so that people who write their own
//! store can run it too. A store is done when
//! [`store_conformance!`](crate::store_conformance) passes on it.
//!
//! Each check takes a fresh store and uses fresh random keys and user names, so
//! tests may share a store's server. Checks panic (like assertions) when the
//! store breaks the contract. The expiry checks wait about a second of real
//! time. The size checks expect the store's default limit,
//! [`DEFAULT_MAX_SESSION_BYTES`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod limits;

pub use self::limits::*;
use crate::store::DEFAULT_MAX_SESSION_BYTES;
use crate::{ChangeSet, Record, SaveOutcome, SessionId, SessionStore, StorageKey, UserChange};

/// Now, truncated to milliseconds: the precision every store must keep.
fn now() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn key() -> StorageKey {
    SessionId::generate().storage_key()
}

/// A user name no other test uses, with characters that stores must not trip on.
fn user(name: &str) -> String {
    let tag = SessionId::generate().storage_key();
    format!("{name}:{{ü ser}}/{}", &tag.as_str()[..10])
}

fn json(value: serde_json::Value) -> String {
    value.to_string()
}

fn record(data: &[(&str, serde_json::Value)], user: Option<&str>, ttl: Duration) -> Record {
    let created_at = now();
    Record {
        data: data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json(v.clone())))
            .collect(),
        user: user.map(str::to_owned),
        created_at,
        expires_at: created_at + ttl,
    }
}

const LONG: Duration = Duration::from_secs(600);
/// Long enough for a save to land on a slow CI machine, short enough to wait out.
const SHORT: Duration = Duration::from_millis(700);

async fn created(store: &impl SessionStore, record: &Record) -> StorageKey {
    let key = key();
    assert!(
        store.create(&key, record).await.unwrap(),
        "fresh key refused"
    );
    key
}

async fn load(store: &impl SessionStore, key: &StorageKey) -> Option<Record> {
    store.load(key).await.unwrap()
}

async fn data(store: &impl SessionStore, key: &StorageKey) -> HashMap<String, String> {
    load(store, key).await.expect("session should be live").data
}

async fn listed(store: &impl SessionStore, user: &str) -> Vec<StorageKey> {
    let mut keys: Vec<StorageKey> = store
        .user_sessions(user)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    keys.sort();
    keys
}

fn sorted(mut keys: Vec<StorageKey>) -> Vec<StorageKey> {
    keys.sort();
    keys
}

/// Contract check: load of an unknown key is none.
pub async fn load_of_an_unknown_key_is_none(store: impl SessionStore) {
    assert_eq!(load(&store, &key()).await, None);
}

/// Contract check: create then load returns the record verbatim.
pub async fn create_then_load_returns_the_record_verbatim(store: impl SessionStore) {
    let big = "x".repeat(DEFAULT_MAX_SESSION_BYTES - 1000);
    let original = record(
        &[
            ("count", serde_json::json!(1)),
            ("", serde_json::json!("empty key")),
            (
                "with:colon{tag}",
                serde_json::json!({"nested": [1, 2, {"a": null}]}),
            ),
            ("ünïcödé ✓", serde_json::json!("välue ✓")),
            ("big", serde_json::json!(big)),
        ],
        Some(&user("alice")),
        LONG,
    );
    let key = created(&store, &original).await;
    assert_eq!(load(&store, &key).await, Some(original));
}

/// Contract check: create refuses a key that is taken.
pub async fn create_refuses_a_key_that_is_taken(store: impl SessionStore) {
    let first = record(&[("who", serde_json::json!("first"))], None, LONG);
    let key = created(&store, &first).await;
    let second = record(&[("who", serde_json::json!("second"))], None, LONG);
    assert!(!store.create(&key, &second).await.unwrap());
    assert_eq!(load(&store, &key).await, Some(first));
}

/// Contract check: create may reuse the key of an expired session.
pub async fn create_may_reuse_the_key_of_an_expired_session(store: impl SessionStore) {
    let key = created(
        &store,
        &record(&[("old", serde_json::json!(1))], None, SHORT),
    )
    .await;
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let fresh = record(&[("new", serde_json::json!(2))], None, LONG);
    assert!(store.create(&key, &fresh).await.unwrap());
    assert_eq!(load(&store, &key).await, Some(fresh));
}

/// Contract check: saves from concurrent requests merge their deltas.
pub async fn saves_from_concurrent_requests_merge_their_deltas(store: impl SessionStore) {
    let key = created(&store, &record(&[("a", serde_json::json!(0))], None, LONG)).await;
    // Two requests loaded the same record; each saves only what it changed.
    let mut first = ChangeSet::new(now() + LONG);
    first.insert("x", json(serde_json::json!("from first")));
    let mut second = ChangeSet::new(now() + LONG);
    second.insert("y", json(serde_json::json!("from second")));
    assert_eq!(
        store.save(&key, &first).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(
        store.save(&key, &second).await.unwrap(),
        SaveOutcome::Applied
    );
    let data = data(&store, &key).await;
    assert_eq!(data["a"], "0");
    assert_eq!(data["x"], "\"from first\"");
    assert_eq!(data["y"], "\"from second\"");
}

/// Contract check: save removes removed keys and keeps the rest.
pub async fn save_removes_removed_keys_and_keeps_the_rest(store: impl SessionStore) {
    let original = record(
        &[
            ("keep", serde_json::json!(1)),
            ("drop", serde_json::json!(2)),
        ],
        None,
        LONG,
    );
    let key = created(&store, &original).await;
    let mut changes = ChangeSet::new(now() + LONG);
    changes.remove("drop").remove("never-there");
    changes.insert("new", "3");
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        SaveOutcome::Applied
    );
    let data = data(&store, &key).await;
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(data["keep"], "1");
    assert_eq!(data["new"], "3");
}

/// Contract check: save of an unknown session is gone and creates nothing.
pub async fn save_of_an_unknown_session_is_gone_and_creates_nothing(store: impl SessionStore) {
    let key = key();
    let mut changes = ChangeSet::new(now() + LONG);
    changes
        .insert("x", "1")
        .set_user(UserChange::Set(user("ghost")));
    assert_eq!(store.save(&key, &changes).await.unwrap(), SaveOutcome::Gone);
    assert_eq!(load(&store, &key).await, None);
}

/// Contract check: save after delete is gone and does not resurrect.
pub async fn save_after_delete_is_gone_and_does_not_resurrect(store: impl SessionStore) {
    let alice = user("alice");
    let key = created(
        &store,
        &record(&[("a", serde_json::json!(1))], Some(&alice), LONG),
    )
    .await;
    assert!(store.delete(&key).await.unwrap());
    // A slow request that loaded the session before logout now saves.
    let mut late = ChangeSet::new(now() + LONG);
    late.insert("b", "2");
    assert_eq!(store.save(&key, &late).await.unwrap(), SaveOutcome::Gone);
    assert_eq!(load(&store, &key).await, None);
    assert!(listed(&store, &alice).await.is_empty());
}

/// Contract check: save after expiry is gone and does not resurrect.
pub async fn save_after_expiry_is_gone_and_does_not_resurrect(store: impl SessionStore) {
    let key = created(&store, &record(&[("a", serde_json::json!(1))], None, SHORT)).await;
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let mut late = ChangeSet::new(now() + LONG);
    late.insert("b", "2");
    assert_eq!(store.save(&key, &late).await.unwrap(), SaveOutcome::Gone);
    assert_eq!(load(&store, &key).await, None);
}

/// Contract check: load after expiry is none.
pub async fn load_after_expiry_is_none(store: impl SessionStore) {
    let key = created(&store, &record(&[("a", serde_json::json!(1))], None, SHORT)).await;
    assert!(load(&store, &key).await.is_some());
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    assert_eq!(load(&store, &key).await, None);
}

/// Contract check: touch only save moves the expiry.
pub async fn touch_only_save_moves_the_expiry(store: impl SessionStore) {
    let key = created(&store, &record(&[("a", serde_json::json!(1))], None, SHORT)).await;
    let later = now() + LONG;
    let touch = ChangeSet::new(later);
    assert!(touch.is_touch_only());
    assert_eq!(
        store.save(&key, &touch).await.unwrap(),
        SaveOutcome::Applied
    );
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    let record = load(&store, &key).await.expect("refreshed session expired");
    assert_eq!(record.expires_at, later);
    assert_eq!(record.data["a"], "1");
}

/// Contract check: delete reports whether a live session was deleted.
pub async fn delete_reports_whether_a_live_session_was_deleted(store: impl SessionStore) {
    let key = created(&store, &record(&[], None, LONG)).await;
    assert!(store.delete(&key).await.unwrap());
    assert!(!store.delete(&key).await.unwrap());
    assert!(!store.delete(&self::key()).await.unwrap());
    assert_eq!(load(&store, &key).await, None);
}

/// Contract check: rotate moves data and changes and frees the old key.
pub async fn rotate_moves_data_and_changes_and_frees_the_old_key(store: impl SessionStore) {
    let alice = user("alice");
    let original = record(&[("cart", serde_json::json!([1, 2]))], None, LONG);
    let old = created(&store, &original).await;
    let new = key();
    let expires_at = now() + LONG + Duration::from_secs(1);
    let mut login = ChangeSet::new(expires_at);
    login
        .insert("flash", "\"welcome\"")
        .set_user(UserChange::Set(alice.clone()));
    assert_eq!(
        store.rotate(&old, &new, &login).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(load(&store, &old).await, None);
    let moved = load(&store, &new).await.expect("rotated session missing");
    assert_eq!(moved.data["cart"], "[1,2]");
    assert_eq!(moved.data["flash"], "\"welcome\"");
    assert_eq!(moved.user.as_deref(), Some(alice.as_str()));
    assert_eq!(moved.created_at, original.created_at);
    assert_eq!(moved.expires_at, expires_at);
    assert_eq!(listed(&store, &alice).await, vec![new]);
}

/// Contract check: rotate of a gone session is gone and creates nothing.
pub async fn rotate_of_a_gone_session_is_gone_and_creates_nothing(store: impl SessionStore) {
    let old = created(&store, &record(&[], None, LONG)).await;
    assert!(store.delete(&old).await.unwrap());
    let new = key();
    let changes = ChangeSet::new(now() + LONG);
    assert_eq!(
        store.rotate(&old, &new, &changes).await.unwrap(),
        SaveOutcome::Gone
    );
    assert_eq!(load(&store, &new).await, None);
    assert_eq!(
        store.rotate(&key(), &new, &changes).await.unwrap(),
        SaveOutcome::Gone
    );
    assert_eq!(load(&store, &new).await, None);
}

/// Contract check: save to the old key after rotation is gone.
pub async fn save_to_the_old_key_after_rotation_is_gone(store: impl SessionStore) {
    let old = created(&store, &record(&[("a", serde_json::json!(1))], None, LONG)).await;
    let new = key();
    assert_eq!(
        store
            .rotate(&old, &new, &ChangeSet::new(now() + LONG))
            .await
            .unwrap(),
        SaveOutcome::Applied
    );
    let mut stale = ChangeSet::new(now() + LONG);
    stale.insert("b", "2");
    assert_eq!(store.save(&old, &stale).await.unwrap(), SaveOutcome::Gone);
    assert_eq!(load(&store, &old).await, None);
    assert!(!data(&store, &new).await.contains_key("b"));
}

/// Contract check: user sessions lists only that users live sessions.
pub async fn user_sessions_lists_only_that_users_live_sessions(store: impl SessionStore) {
    let alice = user("alice");
    let bob = user("bob");
    let a1 = created(&store, &record(&[], Some(&alice), LONG)).await;
    let a2 = created(&store, &record(&[], Some(&alice), LONG)).await;
    let b1 = created(&store, &record(&[], Some(&bob), LONG)).await;
    created(&store, &record(&[], None, LONG)).await;
    assert_eq!(listed(&store, &alice).await, sorted(vec![a1.clone(), a2]));
    assert_eq!(listed(&store, &bob).await, vec![b1]);
    assert!(listed(&store, &user("nobody")).await.is_empty());
    let summary = store
        .user_sessions(&alice)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.key == a1)
        .unwrap();
    let original = load(&store, &a1).await.unwrap();
    assert_eq!(summary.created_at, original.created_at);
    assert_eq!(summary.expires_at, original.expires_at);
}

/// Contract check: user index forgets deleted rotated and expired sessions.
pub async fn user_index_forgets_deleted_rotated_and_expired_sessions(store: impl SessionStore) {
    let alice = user("alice");
    let deleted = created(&store, &record(&[], Some(&alice), LONG)).await;
    let rotated = created(&store, &record(&[], Some(&alice), LONG)).await;
    let expiring = created(&store, &record(&[], Some(&alice), SHORT)).await;
    let kept = created(&store, &record(&[], Some(&alice), LONG)).await;
    assert!(store.delete(&deleted).await.unwrap());
    let new = key();
    assert_eq!(
        store
            .rotate(&rotated, &new, &ChangeSet::new(now() + LONG))
            .await
            .unwrap(),
        SaveOutcome::Applied
    );
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
    assert_eq!(listed(&store, &alice).await, sorted(vec![kept, new]));
    assert_eq!(load(&store, &expiring).await, None);
}

/// Contract check: user change moves the session between users.
pub async fn user_change_moves_the_session_between_users(store: impl SessionStore) {
    let alice = user("alice");
    let bob = user("bob");
    let key = created(&store, &record(&[], Some(&alice), LONG)).await;
    let mut to_bob = ChangeSet::new(now() + LONG);
    to_bob.set_user(UserChange::Set(bob.clone()));
    assert_eq!(
        store.save(&key, &to_bob).await.unwrap(),
        SaveOutcome::Applied
    );
    assert!(listed(&store, &alice).await.is_empty());
    assert_eq!(listed(&store, &bob).await, vec![key.clone()]);
    assert_eq!(load(&store, &key).await.unwrap().user, Some(bob.clone()));
    let mut anonymous = ChangeSet::new(now() + LONG);
    anonymous.set_user(UserChange::Clear);
    assert_eq!(
        store.save(&key, &anonymous).await.unwrap(),
        SaveOutcome::Applied
    );
    assert!(listed(&store, &bob).await.is_empty());
    assert_eq!(load(&store, &key).await.unwrap().user, None);
}

/// Contract check: delete user sessions deletes all of them and nothing else.
pub async fn delete_user_sessions_deletes_all_of_them_and_nothing_else(store: impl SessionStore) {
    let alice = user("alice");
    let bob = user("bob");
    let mut mine = Vec::new();
    for _ in 0..3 {
        let owned = record(&[("x", serde_json::json!(1))], Some(&alice), LONG);
        mine.push(created(&store, &owned).await);
    }
    let bobs = created(&store, &record(&[], Some(&bob), LONG)).await;
    let anonymous = created(&store, &record(&[], None, LONG)).await;
    assert_eq!(store.delete_user_sessions(&alice).await.unwrap(), 3);
    for key in &mine {
        assert_eq!(load(&store, key).await, None);
    }
    assert!(listed(&store, &alice).await.is_empty());
    assert!(load(&store, &bobs).await.is_some());
    assert!(load(&store, &anonymous).await.is_some());
    assert_eq!(store.delete_user_sessions(&alice).await.unwrap(), 0);
    // A request that was in flight during "log out everywhere" cannot bring a
    // session back.
    let mut late = ChangeSet::new(now() + LONG);
    late.insert("y", "2");
    assert_eq!(
        store.save(&mine[0], &late).await.unwrap(),
        SaveOutcome::Gone
    );
}

/// Contract check: many concurrent saves on one session all persist.
pub async fn many_concurrent_saves_on_one_session_all_persist(store: impl SessionStore) {
    const WRITERS: usize = 32;
    let store = Arc::new(store);
    let key = created(&*store, &record(&[], None, LONG)).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let mut changes = ChangeSet::new(now() + LONG);
                changes.insert(format!("k{i}"), i.to_string());
                store.save(&key, &changes).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), SaveOutcome::Applied);
    }
    let data = data(&*store, &key).await;
    assert_eq!(data.len(), WRITERS, "lost updates: {data:?}");
    for i in 0..WRITERS {
        assert_eq!(data[&format!("k{i}")], i.to_string());
    }
}

/// Expands to one `#[tokio::test]` per contract check of
/// [`test_util`](crate::test_util), each calling the check with a store made by
/// `$make` (evaluated afresh for each test; it may `.await`).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features (as a dev-dependency), and `unstuck` with `test-util`.
///
/// ```ignore
/// // tests/my_store.rs
/// unstuck::store_conformance!(my_crate::MyStore::connect().await.unwrap());
/// ```
///
/// `store_conformance!(@tests $make; check_a, check_b)` runs only the named
/// checks (for a store that, say, keeps no user index).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@tests $make;
            load_of_an_unknown_key_is_none,
            create_then_load_returns_the_record_verbatim,
            create_refuses_a_key_that_is_taken,
            create_may_reuse_the_key_of_an_expired_session,
            saves_from_concurrent_requests_merge_their_deltas,
            save_removes_removed_keys_and_keeps_the_rest,
            save_of_an_unknown_session_is_gone_and_creates_nothing,
            save_after_delete_is_gone_and_does_not_resurrect,
            save_after_expiry_is_gone_and_does_not_resurrect,
            load_after_expiry_is_none,
            touch_only_save_moves_the_expiry,
            delete_reports_whether_a_live_session_was_deleted,
            rotate_moves_data_and_changes_and_frees_the_old_key,
            rotate_of_a_gone_session_is_gone_and_creates_nothing,
            save_to_the_old_key_after_rotation_is_gone,
            user_sessions_lists_only_that_users_live_sessions,
            user_index_forgets_deleted_rotated_and_expired_sessions,
            user_change_moves_the_session_between_users,
            delete_user_sessions_deletes_all_of_them_and_nothing_else,
            many_concurrent_saves_on_one_session_all_persist,
            writes_over_the_size_limit_are_refused_and_change_nothing,
            concurrent_saves_never_take_a_session_past_the_size_limit,
            logins_beyond_the_user_cap_evict_the_oldest_sessions,
            logins_beyond_a_refusing_cap_are_refused_and_change_nothing,
            racing_logins_never_pass_the_user_cap
        );
    };
    (@tests $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let store = $make;
                $crate::test_util::$check(store).await;
            }
        )+
    };
}
