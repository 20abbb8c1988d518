//! [`TowerSessionsBackend`]: tower-sessions 0.15 stores behind our
//! `SessionStore` trait and our `SessionLayer`.
//!
//! The conformance suite runs on it except for the per-user index, which
//! tower-sessions stores do not have (those calls must fail, checked below).
#![cfg(feature = "tower-sessions")]

mod common;

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use unstuck::store::tower_sessions::{TowerSessionsBackend, UserIndexUnsupported};
use unstuck::{ChangeSet, Record, SaveOutcome, SessionId, SessionStore, StoreError, UserChange};

use common::app::{Client, app};

/// Every contract check but those of the user index.
macro_rules! backend_conformance {
    ($make:expr) => {
        crate::common::conformance::store_conformance!(@tests $make;
            load_of_an_unknown_key_is_none,
            create_then_load_returns_the_record_verbatim,
            create_refuses_a_key_that_is_taken,
            create_may_reuse_the_key_of_an_expired_session,
            saves_from_concurrent_requests_merge_their_deltas,
            save_removes_removed_keys_and_keeps_the_rest,
            save_of_an_unknown_session_is_gone_and_creates_nothing,
            save_after_expiry_is_gone_and_does_not_resurrect,
            load_after_expiry_is_none,
            touch_only_save_moves_the_expiry,
            delete_reports_whether_a_live_session_was_deleted,
            rotate_of_a_gone_session_is_gone_and_creates_nothing,
            save_to_the_old_key_after_rotation_is_gone,
            many_concurrent_saves_on_one_session_all_persist,
            writes_over_the_size_limit_are_refused_and_change_nothing,
            concurrent_saves_never_take_a_session_past_the_size_limit
        );

        /// The suite's version ends by asking the user index; this one does not.
        #[tokio::test]
        async fn save_after_delete_is_gone_and_does_not_resurrect() {
            crate::save_after_delete_is_gone_and_does_not_resurrect($make).await;
        }

        /// The suite's version ends by asking the user index; this one does not.
        #[tokio::test]
        async fn rotate_moves_data_user_and_changes_and_frees_the_old_key() {
            crate::rotate_moves_data_user_and_changes_and_frees_the_old_key($make).await;
        }
    };
}

fn record(data: &[(&str, &str)], user: Option<&str>) -> Record {
    let created_at = SystemTime::UNIX_EPOCH
        + Duration::from_millis(
            u64::try_from(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
        );
    Record {
        data: data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        user: user.map(str::to_owned),
        created_at,
        expires_at: created_at + LONG,
    }
}

const LONG: Duration = Duration::from_secs(600);

async fn save_after_delete_is_gone_and_does_not_resurrect(store: impl SessionStore) {
    let key = SessionId::generate().storage_key();
    assert!(
        store
            .create(&key, &record(&[("a", "1")], Some("ann")))
            .await
            .unwrap()
    );
    assert!(store.delete(&key).await.unwrap());
    // A slow request that loaded the session before logout now saves.
    let mut late = ChangeSet::new(SystemTime::now() + LONG);
    late.insert("b", "2");
    assert_eq!(store.save(&key, &late).await.unwrap(), SaveOutcome::Gone);
    assert_eq!(store.load(&key).await.unwrap(), None);
}

async fn rotate_moves_data_user_and_changes_and_frees_the_old_key(store: impl SessionStore) {
    let original = record(&[("cart", "[1,2]")], None);
    let (old, new) = (
        SessionId::generate().storage_key(),
        SessionId::generate().storage_key(),
    );
    assert!(store.create(&old, &original).await.unwrap());
    let expires_at = original.expires_at + Duration::from_secs(1);
    let mut login = ChangeSet::new(expires_at);
    login
        .insert("flash", "\"welcome\"")
        .set_user(UserChange::Set("ann".to_owned()));
    assert_eq!(
        store.rotate(&old, &new, &login).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(store.load(&old).await.unwrap(), None);
    let moved = store
        .load(&new)
        .await
        .unwrap()
        .expect("rotated session missing");
    assert_eq!(moved.data["cart"], "[1,2]");
    assert_eq!(moved.data["flash"], "\"welcome\"");
    assert_eq!(moved.user.as_deref(), Some("ann"));
    assert_eq!(moved.created_at, original.created_at);
    assert_eq!(moved.expires_at, expires_at);
}

/// On tower-sessions' own `MemoryStore`.
mod on_their_memory_store {
    backend_conformance!(unstuck::store::tower_sessions::TowerSessionsBackend::new(
        tower_sessions::MemoryStore::default()
    ));
}

/// On a store reached over the network: our `RedisStore` seen through its
/// tower-sessions face, as a third-party tower-sessions store would be.
#[cfg(feature = "redis")]
mod on_redis_through_tower_sessions {
    // The outer backend enforces the size limit; the Redis store inside holds
    // its record wrapped twice, so it gets room for the wrapping.
    backend_conformance!(unstuck::store::tower_sessions::TowerSessionsBackend::new(
        unstuck::store::tower_sessions::ForTowerSessions::new(
            unstuck::RedisStore::connect(&crate::common::redis_server::standalone_url())
                .await
                .unwrap()
                .with_max_session_bytes(2 * unstuck::store::DEFAULT_MAX_SESSION_BYTES)
        )
    ));
}

fn is_user_index_unsupported(error: &StoreError) -> bool {
    matches!(error, StoreError::Backend(_))
        && error
            .source()
            .is_some_and(|source| source.downcast_ref::<UserIndexUnsupported>().is_some())
}

#[tokio::test]
async fn user_index_calls_fail_with_user_index_unsupported_not_an_empty_answer() {
    let store = TowerSessionsBackend::new(tower_sessions::MemoryStore::default());
    let listed = store.user_sessions("ann").await.unwrap_err();
    assert!(is_user_index_unsupported(&listed), "{listed:?}");
    let deleted = store.delete_user_sessions("ann").await.unwrap_err();
    assert!(is_user_index_unsupported(&deleted), "{deleted:?}");
}

#[tokio::test]
async fn a_login_under_a_session_cap_fails_rather_than_pass_an_unkept_cap() {
    let store = TowerSessionsBackend::new(tower_sessions::MemoryStore::default());
    let key = SessionId::generate().storage_key();
    assert!(
        store
            .create(&key, &record(&[("a", "1")], None))
            .await
            .unwrap()
    );
    let cap = unstuck::SessionCap::new(
        std::num::NonZeroU32::new(1).unwrap(),
        unstuck::CapPolicy::EvictOldest,
    );
    let mut login = ChangeSet::new(SystemTime::now() + Duration::from_secs(60));
    login
        .set_user(UserChange::Set("ann".into()))
        .cap_user_sessions(Some(cap));
    let refused = store.save(&key, &login).await.unwrap_err();
    assert!(is_user_index_unsupported(&refused), "{refused:?}");
    assert_eq!(store.load(&key).await.unwrap().unwrap().user, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_layer_on_a_tower_sessions_store_serves_two_instances() {
    let store = TowerSessionsBackend::new(tower_sessions::MemoryStore::default());
    let (a, b) = (app(store.clone()), app(store.clone()));
    let mut client = Client::default();
    for (i, instance) in [&a, &b, &a, &b].into_iter().enumerate() {
        let (status, body) = client.send(instance, "GET", "/counter", "").await;
        assert_eq!((status, body), (StatusCode::OK, (i + 1).to_string()));
    }
    let before = client.session_id();
    let (status, _) = client.send(&a, "POST", "/login", "ann").await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(client.session_id(), before, "login must cycle the ID");
    let (_, body) = client.send(&b, "GET", "/counter", "").await;
    assert_eq!(body, "5", "data survives the ID change");

    let (status, _) = client.send(&b, "POST", "/logout", "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = client.send(&a, "GET", "/counter", "").await;
    assert_eq!(body, "1", "a logged-out session starts afresh");
}
