//! [`RedisStore`] against real servers: the conformance suite on standalone,
//! Sentinel and Cluster, and Redis-specific behaviour through the axum layer.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use unstuck::{Record, RedisStore, SessionId, SessionStore, StoreError};

use common::app::{Client, app as instance};
use common::redis_server::{self, RedisServer};
use common::stored_format::{assert_newer_format_refused, refused_as_newer};

mod standalone {
    crate::common::conformance::store_conformance!(
        unstuck::RedisStore::connect(&crate::common::redis_server::standalone_url())
            .await
            .unwrap()
    );
}

mod sentinel {
    crate::common::conformance::store_conformance!(
        unstuck::RedisStore::connect(&crate::common::redis_server::sentinel_url())
            .await
            .unwrap()
    );
}

mod cluster {
    crate::common::conformance::store_conformance!(
        unstuck::RedisStore::connect(&crate::common::redis_server::cluster_url())
            .await
            .unwrap()
    );
}

/// Now, at the millisecond precision the store keeps.
fn now() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
}

/// A prefix no other test uses, so a test can inspect "its" keys.
fn unique_prefix() -> String {
    format!(
        "t{}:",
        &SessionId::generate().storage_key().as_str()[..12].replace(['-', '_'], "x")
    )
}

async fn store_with_prefix(prefix: &str) -> RedisStore {
    RedisStore::connect(&redis_server::standalone_url())
        .await
        .unwrap()
        .with_prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_serve_one_session_alternately() {
    let prefix = unique_prefix();
    let a = instance(store_with_prefix(&prefix).await);
    let b = instance(store_with_prefix(&prefix).await);
    let mut client = Client::default();
    for (i, app) in [&a, &b, &a, &b, &b, &a].into_iter().enumerate() {
        let (status, body) = client.send(app, "GET", "/counter", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, (i + 1).to_string(), "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_changing_different_keys_all_persist() {
    const REQUESTS: usize = 16;
    let prefix = unique_prefix();
    let a = instance(store_with_prefix(&prefix).await);
    let b = instance(store_with_prefix(&prefix).await);
    let mut client = Client::default();
    client.send(&a, "GET", "/counter", "").await;
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let app = if i % 2 == 0 { a.clone() } else { b.clone() };
            let mut client = client.clone();
            tokio::spawn(async move {
                let (status, _) = client
                    .send(&app, "PUT", &format!("/kv/k{i}"), &format!("v{i}"))
                    .await;
                status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let (_, body) = client.send(&b, "GET", "/session", "").await;
    let data: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(data["count"], 1, "{data}");
    for i in 0..REQUESTS {
        assert_eq!(
            data[format!("k{i}")],
            format!("v{i}"),
            "lost update: {data}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_id_or_user_name_reaches_redis() {
    let prefix = unique_prefix();
    let app = instance(store_with_prefix(&prefix).await);
    let mut client = Client::default();
    client.send(&app, "GET", "/counter", "").await;
    let anonymous_id = client.session_id();
    let user = "alice@example.com";
    let (status, _) = client.send(&app, "POST", "/login", user).await;
    assert_eq!(status, StatusCode::OK);
    let id = client.session_id();
    assert_ne!(id, anonymous_id, "login must rotate the ID");
    client.send(&app, "PUT", "/kv/note", "hello").await;

    let port = redis_server::standalone_port();
    let dump = redis_server::dump(port, &format!("{prefix}*"));
    let kinds: Vec<&str> = dump.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        dump.len(),
        2,
        "expected one session and one user index: {kinds:?}"
    );
    for (key, value) in &dump {
        for secret in [&id, &anonymous_id] {
            assert!(!key.contains(secret.as_str()), "session ID in key {key}");
            assert!(!value.contains(secret.as_str()), "session ID in {key}");
        }
        assert!(!key.contains(user), "user name in key {key}");
    }
    assert!(
        dump.iter().any(|(_, v)| v.contains("hello")),
        "the session data should be there: {dump:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_index_expires_one_lifetime_after_its_latest_session() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix).await;
    let now = now();
    for ttl in [Duration::from_secs(60), Duration::from_secs(300)] {
        let record = Record {
            data: Default::default(),
            user: Some("bob".into()),
            created_at: now,
            expires_at: now + ttl,
        };
        assert!(
            store
                .create(&SessionId::generate().storage_key(), &record)
                .await
                .unwrap()
        );
    }
    let port = redis_server::standalone_port();
    let dump = redis_server::dump(port, &format!("{prefix}user:*"));
    assert_eq!(dump.len(), 1);
    let ttl_ms: u64 = redis_server::cli(port, &["PTTL", &dump[0].0])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Without a TTL an index outlives its sessions and grows forever. Entries
    // are scored a lifetime past their session's expiry (so that sliding
    // expiry rarely has to re-score them): the latest session expires in
    // 300 s, so the index goes 600 s from now.
    assert!(
        (590_000..=600_000).contains(&ttl_ms),
        "index TTL {ttl_ms} ms should be one lifetime past the latest session (600 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_when_too_few_replicas_acknowledge_them() {
    // The shared standalone server has no replica, so no write can be acked.
    let store = RedisStore::connect(&redis_server::standalone_url())
        .await
        .unwrap()
        .with_replica_acks(1, Duration::from_millis(100));
    let now = now();
    let record = Record {
        data: Default::default(),
        user: None,
        created_at: now,
        expires_at: now + Duration::from_secs(60),
    };
    let start = Instant::now();
    let error = store
        .create(&SessionId::generate().storage_key(), &record)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(error.to_string().contains("replica"), "{error}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_is_unavailable_quickly() {
    let port = redis_server::free_port();
    let start = Instant::now();
    let error = RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_refused_without_echoing_them() {
    for url in [
        "http://secret@host",
        "redis+sentinel://127.0.0.1:1",
        "redis+cluster://user:secret@127.0.0.1:1",
    ] {
        let error = RedisStore::connect(url).await.unwrap_err();
        assert!(matches!(error, StoreError::Config(_)), "{url}: {error:?}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_and_the_same_store_recovers_after_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let key = SessionId::generate().storage_key();
    let now = now();
    let record = Record {
        data: [("a".to_owned(), "1".to_owned())].into(),
        user: None,
        created_at: now,
        expires_at: now + Duration::from_secs(60),
    };
    assert!(store.create(&key, &record).await.unwrap());

    server.kill();
    for _ in 0..3 {
        let start = Instant::now();
        let error = store.load(&key).await.unwrap_err();
        let took = start.elapsed();
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
        assert!(took < Duration::from_millis(2500), "took {took:?}");
    }

    server.restart();
    let start = Instant::now();
    loop {
        match store.create(&key, &record).await {
            Ok(created) => {
                // No persistence in tests: the restarted server is empty.
                assert!(created);
                break;
            }
            Err(StoreError::Unavailable(_)) if start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("store did not recover: {error:?}"),
        }
    }
    assert_eq!(store.load(&key).await.unwrap(), Some(record));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outliving_its_index_score_is_rescored_and_stays_listed() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix).await;
    let user = format!("dana-{prefix}");
    let key = SessionId::generate().storage_key();
    let now = now();
    // Indexed to expire a second from now (half a second of life, plus as
    // long again)...
    let record = Record {
        data: Default::default(),
        user: Some(user.clone()),
        created_at: now,
        expires_at: now + Duration::from_millis(500),
    };
    assert!(store.create(&key, &record).await.unwrap());
    // ...then kept alive far longer by a save.
    let changes = unstuck::ChangeSet::new(now + Duration::from_secs(600));
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        unstuck::SaveOutcome::Applied
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed = store.user_sessions(&user).await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the index entry was trimmed under a live session"
    );
    assert_eq!(store.delete_user_sessions(&user).await.unwrap(), 1);
}

// ------------------------------------------------------ stored format, sizes

fn millis(at: SystemTime) -> String {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

fn cli(args: &[&str]) -> String {
    redis_server::cli(redis_server::standalone_port(), args).expect("redis-cli failed")
}

/// Writes, with redis-cli, a session exactly as releases up to this one's
/// predecessor wrote it (their create script: metadata, data, `m:v` 1, the
/// expiry, and the user index entry), and returns its storage key.
fn write_todays_format(prefix: &str, user: &str, data: &[(&str, &str)]) -> unstuck::StorageKey {
    use base64::Engine as _;
    use sha2::Digest as _;
    let key = SessionId::generate().storage_key();
    let hash = format!("{prefix}{{{}}}", key.as_str());
    let created = now();
    let expires = created + Duration::from_secs(600);
    let score = millis(expires + Duration::from_secs(600));
    let (created, expires) = (millis(created), millis(expires));
    let mut hset = vec!["HSET", &hash, "m:created", &created, "m:expires", &expires];
    hset.extend(["m:user", user, "m:iscore", &score]);
    let fields: Vec<String> = data.iter().map(|(k, _)| format!("d:{k}")).collect();
    for ((_, json), field) in data.iter().zip(&fields) {
        hset.extend([field.as_str(), json]);
    }
    hset.extend(["m:v", "1"]);
    cli(&hset);
    cli(&["PEXPIREAT", &hash, &expires]);
    let user_hash = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(user.as_bytes()));
    cli(&[
        "ZADD",
        &format!("{prefix}user:{{{user_hash}}}"),
        &score,
        key.as_str(),
    ]);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_todays_format_written_raw_loads_saves_and_gets_its_size_counted() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix).await;
    let cart = r#"{"items":[1,2]}"#;
    let key = write_todays_format(&prefix, "alice", &[("count", "3"), ("cart", cart)]);
    let record = store
        .load(&key)
        .await
        .unwrap()
        .expect("the old record loads");
    assert_eq!(record.data.len(), 2);
    assert_eq!(
        (record.data["count"].as_str(), record.data["cart"].as_str()),
        ("3", cart)
    );
    assert_eq!(record.user.as_deref(), Some("alice"));
    let listed = store.user_sessions("alice").await.unwrap();
    assert_eq!(listed.iter().map(|s| &s.key).collect::<Vec<_>>(), [&key]);

    // Its first save counts the size from the fields, once, and stamps it.
    let mut changes = unstuck::ChangeSet::new(record.expires_at);
    changes.insert("note", "\"hi\"");
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        unstuck::SaveOutcome::Applied
    );
    let hash = format!("{prefix}{{{}}}", key.as_str());
    let size = "count".len() + 1 + "cart".len() + cart.len() + "note".len() + 4;
    assert_eq!(cli(&["HGET", &hash, "m:sz"]).trim(), format!("2:{size}"));
    assert!(
        cli(&["HGET", &hash, "m:fmt"]).trim().is_empty(),
        "format 1 is not written"
    );

    // A writer that does not count (an older release, during a rollback)
    // leaves a stale count; it is noticed by its version and recounted, so
    // the limit still holds.
    let big = format!("\"{}\"", "x".repeat(60_000));
    cli(&["HSET", &hash, "d:big", &big]);
    cli(&["HINCRBY", &hash, "m:v", "1"]);
    let mut more = unstuck::ChangeSet::new(record.expires_at);
    more.insert("more", format!("\"{}\"", "y".repeat(6_000)));
    let refused = store.save(&key, &more).await;
    assert!(
        matches!(refused, Err(StoreError::TooLarge { .. })),
        "{refused:?}"
    );
    assert!(
        !store
            .load(&key)
            .await
            .unwrap()
            .unwrap()
            .data
            .contains_key("more")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_a_newer_format_is_refused_and_left_as_it_is() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix).await;
    let key = write_todays_format(&prefix, "bob", &[("count", "3")]);
    let hash = format!("{prefix}{{{}}}", key.as_str());
    cli(&["HSET", &hash, "m:fmt", "2"]);
    let before = cli(&["HGETALL", &hash]);
    assert_newer_format_refused(&store, &key).await;
    // A save that only moves the expiry is refused too.
    assert!(refused_as_newer(
        store.save(&key, &unstuck::ChangeSet::new(now())).await
    ));
    assert_eq!(
        cli(&["HGETALL", &hash]),
        before,
        "the newer record was changed"
    );
    // Logging out still works on it.
    assert!(store.delete(&key).await.unwrap());
}

/// The save script reads the changed fields' old values with `HMGET`s of at
/// most 1000 fields and writes values with `HSET`s of at most 1000
/// arguments (the first one also carrying the metadata): a save across
/// several such chunks must count every old value it replaces or removes, and
/// write every value, or `m:sz` drifts from the session and the limit with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_of_thousands_of_keys_keeps_every_value_and_the_exact_size() {
    let prefix = unique_prefix();
    let store = store_with_prefix(&prefix).await;
    let key = SessionId::generate().storage_key();
    let expires_at = now() + Duration::from_secs(600);
    // Values of varying length, so a field matched to the wrong old value
    // changes the count.
    let json = |i: usize, salt: usize| format!("\"{}\"", "v".repeat((i * 7 + salt) % 13 + 1));
    let record = Record {
        data: (0..1500).map(|i| (format!("k{i}"), json(i, 0))).collect(),
        user: None,
        created_at: now(),
        expires_at,
    };
    assert!(store.create(&key, &record).await.unwrap());
    let mut changes = unstuck::ChangeSet::new(expires_at);
    for i in 0..1200 {
        changes.insert(format!("k{i}"), json(i, 5));
    }
    for i in 1200..1500 {
        changes.remove(format!("k{i}"));
    }
    for i in 1500..1900 {
        changes.insert(format!("k{i}"), json(i, 3));
    }
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        unstuck::SaveOutcome::Applied
    );
    let loaded = store.load(&key).await.unwrap().expect("the session lives");
    let mut expected = record.clone();
    changes.apply_to(&mut expected);
    assert_eq!(loaded.data, expected.data);
    let size: usize = expected.data.iter().map(|(k, v)| k.len() + v.len()).sum();
    let hash = format!("{prefix}{{{}}}", key.as_str());
    assert_eq!(cli(&["HGET", &hash, "m:sz"]).trim(), format!("2:{size}"));
    assert_eq!(cli(&["HGET", &hash, "m:v"]).trim(), "2");
}
