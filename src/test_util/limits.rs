//! Contract checks of the limits: record size (also against concurrent
//! saves) and the per-user session cap (also against racing logins).

use std::sync::Arc;
use std::time::Duration;

use super::{LONG, created, data, json, key, listed, load, now, record, sorted, user};
use crate::store::{DEFAULT_MAX_SESSION_BYTES, StoreError};
use crate::{CapPolicy, ChangeSet, Record, SaveOutcome, SessionCap, SessionStore, UserChange};

/// A JSON string whose entry under `key` counts exactly `bytes` bytes.
fn sized(key: &str, bytes: usize) -> String {
    let text = "s".repeat(bytes - key.len() - 2);
    json(serde_json::json!(text))
}

fn assert_too_large<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::TooLarge { size, limit }) => {
            assert!(size > limit, "{what}: {size} > {limit}");
            assert_eq!(limit, DEFAULT_MAX_SESSION_BYTES, "{what}");
        }
        other => panic!("{what}: expected TooLarge, got {other:?}"),
    }
}

/// Contract check: create, save and rotate refuse a record over the size
/// limit, write nothing, and leave the session as it was; removals and
/// touches of an oversized change are never refused.
pub async fn writes_over_the_size_limit_are_refused_and_change_nothing(store: impl SessionStore) {
    const LIMIT: usize = DEFAULT_MAX_SESSION_BYTES;
    let mut at_limit = record(&[], None, LONG);
    at_limit.data.insert("a".into(), sized("a", LIMIT));
    let full = created(&store, &at_limit).await;
    assert_eq!(load(&store, &full).await, Some(at_limit.clone()));

    let mut over = record(&[], None, LONG);
    over.data.insert("a".into(), sized("a", LIMIT + 1));
    let refused = key();
    assert_too_large(store.create(&refused, &over).await, "create");
    assert_eq!(load(&store, &refused).await, None, "a refused create wrote");

    let half = record(&[("a", serde_json::json!(1))], None, LONG);
    let key = created(&store, &half).await;
    let mut grow = ChangeSet::new(now() + LONG);
    grow.insert("b", "2").insert("big", sized("big", LIMIT));
    assert_too_large(store.save(&key, &grow).await, "save");
    assert_eq!(load(&store, &key).await, Some(half.clone()), "save wrote");

    let new = self::key();
    assert_too_large(store.rotate(&key, &new, &grow).await, "rotate");
    assert_eq!(load(&store, &new).await, None, "a refused rotation wrote");
    assert_eq!(load(&store, &key).await, Some(half), "rotation lost it");

    // Replacing a value counts the new one instead of the old one.
    let mut replace = ChangeSet::new(now() + LONG);
    replace.insert("a", sized("a", LIMIT));
    assert_eq!(
        store.save(&key, &replace).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(data(&store, &key).await["a"], sized("a", LIMIT));
    // Touches and removals are never refused, whatever the size.
    assert_eq!(
        store
            .save(&full, &ChangeSet::new(now() + LONG))
            .await
            .unwrap(),
        SaveOutcome::Applied
    );
    let mut shrink = ChangeSet::new(now() + LONG);
    shrink.remove("a");
    assert_eq!(
        store.save(&full, &shrink).await.unwrap(),
        SaveOutcome::Applied
    );
    assert!(data(&store, &full).await.is_empty());
}

/// Contract check: concurrent saves that each fit but together would not are
/// judged one at a time against the record as it is: the session never
/// passes the limit and every refused save wrote nothing.
pub async fn concurrent_saves_never_take_a_session_past_the_size_limit(store: impl SessionStore) {
    const WRITERS: usize = 8;
    // Each value takes a quarter of the limit: three fit beside the first key.
    let quarter = DEFAULT_MAX_SESSION_BYTES / 4;
    let store = Arc::new(store);
    let key = created(&*store, &record(&[("a", serde_json::json!(1))], None, LONG)).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let name = format!("k{i}");
                let mut changes = ChangeSet::new(now() + LONG);
                changes.insert(name.clone(), sized(&name, quarter));
                (name, store.save(&key, &changes).await)
            })
        })
        .collect();
    let mut applied = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (name, Ok(SaveOutcome::Applied)) => applied.push(name),
            (_, other) => assert_too_large(other, "a concurrent save"),
        }
    }
    assert_eq!(applied.len(), 3, "{applied:?}");
    let mut held: Vec<String> = data(&*store, &key).await.into_keys().collect();
    held.sort();
    applied.push("a".into());
    applied.sort();
    assert_eq!(
        held, applied,
        "exactly the applied saves are in the session"
    );
}

fn cap(max: u32, policy: CapPolicy) -> Option<SessionCap> {
    Some(SessionCap::new(
        std::num::NonZeroU32::new(max).unwrap(),
        policy,
    ))
}

/// A login of the session at `key` as `user` under `cap`.
fn login(user: &str, cap: Option<SessionCap>) -> ChangeSet {
    let mut changes = ChangeSet::new(now() + LONG);
    changes
        .set_user(UserChange::Set(user.to_owned()))
        .cap_user_sessions(cap);
    changes
}

/// A record created `age` before the others, so "oldest" means the same to
/// every store.
fn aged(user: &str, age: u64) -> Record {
    let mut r = record(&[], Some(user), LONG);
    r.created_at -= Duration::from_secs(age);
    r.expires_at -= Duration::from_secs(age);
    r
}

/// Contract check: a login beyond the user's cap ends their oldest sessions
/// (by save and by rotation), and a session already counted is not counted
/// twice.
pub async fn logins_beyond_the_user_cap_evict_the_oldest_sessions(store: impl SessionStore) {
    let alice = user("alice");
    let evict = cap(2, CapPolicy::EvictOldest);
    let oldest = created(&store, &aged(&alice, 30)).await;
    let older = created(&store, &aged(&alice, 20)).await;
    let other = created(&store, &record(&[], Some(&user("bob")), LONG)).await;
    // Setting the user a session already has evicts nothing.
    assert_eq!(
        store.save(&older, &login(&alice, evict)).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(
        listed(&store, &alice).await,
        sorted(vec![oldest.clone(), older.clone()])
    );

    let by_save = created(&store, &record(&[("x", serde_json::json!(1))], None, LONG)).await;
    assert_eq!(
        store.save(&by_save, &login(&alice, evict)).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(
        load(&store, &oldest).await,
        None,
        "the oldest session lives on"
    );
    assert_eq!(
        listed(&store, &alice).await,
        sorted(vec![older.clone(), by_save.clone()])
    );

    let anonymous = created(&store, &record(&[], None, LONG)).await;
    let by_rotation = key();
    assert_eq!(
        store
            .rotate(&anonymous, &by_rotation, &login(&alice, evict))
            .await
            .unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(load(&store, &older).await, None);
    assert_eq!(
        listed(&store, &alice).await,
        sorted(vec![by_save, by_rotation])
    );
    assert!(
        load(&store, &other).await.is_some(),
        "another user's session ended"
    );
}

/// Contract check: with the refusing policy, a login beyond the cap fails
/// with [`StoreError::TooManySessions`] and changes nothing.
pub async fn logins_beyond_a_refusing_cap_are_refused_and_change_nothing(store: impl SessionStore) {
    let alice = user("alice");
    let refuse = cap(1, CapPolicy::Refuse);
    let first = created(&store, &record(&[], Some(&alice), LONG)).await;
    let second = record(&[("x", serde_json::json!(1))], None, LONG);
    let key = created(&store, &second).await;
    let refused = store.save(&key, &login(&alice, refuse)).await;
    assert!(
        matches!(refused, Err(StoreError::TooManySessions { max: 1 })),
        "{refused:?}"
    );
    let to = self::key();
    let refused = store.rotate(&key, &to, &login(&alice, refuse)).await;
    assert!(
        matches!(refused, Err(StoreError::TooManySessions { max: 1 })),
        "{refused:?}"
    );
    assert_eq!(
        load(&store, &key).await,
        Some(second),
        "the refused session changed"
    );
    assert_eq!(load(&store, &to).await, None);
    assert_eq!(listed(&store, &alice).await, vec![first.clone()]);
    // Once the first session ends, the login goes through; a login refused
    // for its size first leaves nothing behind that would count against the
    // cap.
    assert!(store.delete(&first).await.unwrap());
    let other = created(&store, &record(&[], None, LONG)).await;
    let mut oversized = login(&alice, refuse);
    oversized.insert("big", sized("big", DEFAULT_MAX_SESSION_BYTES + 1));
    assert_too_large(store.save(&other, &oversized).await, "an oversized login");
    assert_eq!(
        store.save(&key, &login(&alice, refuse)).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(listed(&store, &alice).await, vec![key]);
}

/// Contract check: many simultaneous logins of one user (saves and rotations
/// on concurrent connections) never leave more live sessions than the cap;
/// with eviction exactly the cap survive, with refusal exactly the cap get in.
pub async fn racing_logins_never_pass_the_user_cap(store: impl SessionStore) {
    const LOGINS: usize = 12;
    const MAX: u32 = 2;
    let store = Arc::new(store);
    for policy in [CapPolicy::EvictOldest, CapPolicy::Refuse] {
        for _round in 0..3 {
            let alice = user("alice");
            let mut sessions = Vec::new();
            for _ in 0..LOGINS {
                sessions.push(created(&*store, &record(&[], None, LONG)).await);
            }
            let tasks: Vec<_> = sessions
                .into_iter()
                .enumerate()
                .map(|(i, from)| {
                    let (store, alice) = (store.clone(), alice.clone());
                    tokio::spawn(async move {
                        let changes = login(&alice, cap(MAX, policy));
                        if i % 2 == 0 {
                            (from.clone(), store.save(&from, &changes).await)
                        } else {
                            let to = key();
                            (to.clone(), store.rotate(&from, &to, &changes).await)
                        }
                    })
                })
                .collect();
            let mut admitted = 0;
            let mut keys = Vec::new();
            for task in tasks {
                let (key, outcome) = task.await.unwrap();
                match outcome {
                    Ok(SaveOutcome::Applied) => admitted += 1,
                    // Evicted by a racing login before it finished.
                    Ok(SaveOutcome::Gone) => {}
                    Err(StoreError::TooManySessions { .. }) if policy == CapPolicy::Refuse => {}
                    Err(error) => panic!("{policy:?}: {error}"),
                }
                keys.push(key);
            }
            let mut live = 0;
            for key in &keys {
                if load(&*store, key)
                    .await
                    .is_some_and(|r| r.user.as_ref() == Some(&alice))
                {
                    live += 1;
                }
            }
            assert_eq!(live, MAX as usize, "{policy:?}: live sessions of the user");
            assert_eq!(
                listed(&*store, &alice).await.len(),
                MAX as usize,
                "{policy:?}"
            );
            if policy == CapPolicy::Refuse {
                assert_eq!(admitted, MAX as usize, "refused logins got in");
            }
        }
    }
}
