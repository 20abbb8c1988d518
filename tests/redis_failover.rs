//! [`RedisStore`] through a Sentinel failover on real servers. The test owns its
//! servers because it kills one.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use unstuck::{
    ChangeSet, Record, RedisStore, SaveOutcome, SessionId, SessionStore, StorageKey, StoreError,
};

use common::redis_server::SentinelSetup;

const SESSIONS: usize = 50;
/// Generous for 1 s down-after plus election on a loaded 2-core machine.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

fn now() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
}

fn record(i: usize) -> Record {
    let created_at = now();
    Record {
        data: [("n".to_owned(), i.to_string())].into(),
        user: Some(format!("user{}", i % 5)),
        created_at,
        expires_at: created_at + Duration::from_secs(600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_replica_acked_sessions_and_service_resumes() {
    let mut setup = SentinelSetup::start();
    let durable = RedisStore::connect(&setup.url())
        .await
        .unwrap()
        .with_replica_acks(1, Duration::from_millis(500));
    let plain = RedisStore::connect(&setup.url()).await.unwrap();

    let mut written: Vec<(StorageKey, Record)> = Vec::new();
    for i in 0..SESSIONS {
        let key = SessionId::generate().storage_key();
        let record = record(i);
        assert!(durable.create(&key, &record).await.unwrap());
        written.push((key, record));
    }
    let old_primary = setup.primary.port();

    setup.primary.kill();
    let killed = Instant::now();
    let mut unavailable = 0;
    loop {
        match plain.load(&written[0].0).await {
            Ok(found) => {
                assert_eq!(found.as_ref(), Some(&written[0].1), "acked session lost");
                break;
            }
            Err(StoreError::Unavailable(_)) if killed.elapsed() < FAILOVER_LIMIT => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!(
                "no service {:?} after the kill: {error:?}",
                killed.elapsed()
            ),
        }
    }
    let resumed = killed.elapsed();
    eprintln!(
        "sentinel failover: service resumed {resumed:?} after SIGKILL of the primary \
         ({unavailable} calls failed fast with Unavailable meanwhile)"
    );
    assert!(unavailable > 0, "the kill should have been noticed");
    tokio::task::block_in_place(|| setup.wait_named_primary(setup.replica.port(), FAILOVER_LIMIT));
    let new_primary = setup.current_primary_port();
    assert_eq!(new_primary, Some(setup.replica.port()));
    assert_ne!(new_primary, Some(old_primary));

    for (key, record) in &written {
        assert_eq!(plain.load(key).await.unwrap().as_ref(), Some(record));
    }
    let listed = plain.user_sessions("user0").await.unwrap();
    assert_eq!(listed.len(), SESSIONS / 5);

    // Writes go to the promoted replica.
    let (key, _) = &written[1];
    let mut changes = ChangeSet::new(now() + Duration::from_secs(600));
    changes.insert("after", "\"failover\"");
    assert_eq!(
        plain.save(key, &changes).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(
        plain.load(key).await.unwrap().unwrap().data["after"],
        "\"failover\""
    );
    // With its only replica promoted, nothing can acknowledge durable writes:
    // they fail rather than pretend.
    let error = durable
        .save(key, &ChangeSet::new(now() + Duration::from_secs(600)))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
}

/// The near cache follows a Sentinel failover: after the primary dies, its
/// tracking connections are reopened on the promoted replica, and a change
/// made there afterwards reaches the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_cache_follows_a_sentinel_failover() {
    let mut setup = SentinelSetup::start();
    let store = unstuck::NearCache::new(
        RedisStore::connect(&setup.url())
            .await
            .unwrap()
            .with_replica_acks(1, Duration::from_millis(500)),
    )
    .unwrap();
    let key = SessionId::generate().storage_key();
    assert!(store.create(&key, &record(7)).await.unwrap());
    assert_eq!(store.load(&key).await.unwrap().unwrap().data["n"], "7");
    assert_eq!(store.load(&key).await.unwrap().unwrap().data["n"], "7");
    assert!(store.stats().hits >= 1);

    setup.primary.kill();
    let killed = Instant::now();
    // Until the promotion, loads fail fast or (from the emptied cache) are
    // refused; none may serve a value from before the loss as current.
    let new_primary = loop {
        match setup.current_primary_port() {
            Some(port) if port == setup.replica.port() => break port,
            _ => {
                assert!(killed.elapsed() < FAILOVER_LIMIT, "no failover");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let redis_key = format!("unstuck:{{{}}}", key.as_str());
    let mut recovered = false;
    while killed.elapsed() < FAILOVER_LIMIT {
        if let Ok(Some(record)) = store.load(&key).await {
            assert_eq!(record.data["n"], "7", "the acked session survived");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "no service after the failover");
    // A change made directly on the new primary reaches the cache.
    common::redis_server::cli(new_primary, &["HSET", &redis_key, "d:n", "8"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.load(&key).await.unwrap().unwrap().data["n"] != "8" {
        assert!(
            Instant::now() < deadline,
            "the cache missed a change after failover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
