//! The Redis near cache against real servers: the conformance suite with the
//! cache on, coherence across instances, round trips saved, and what happens
//! when tracking is lost.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use unstuck::{
    ChangeSet, NearCache, Record, RedisStore, SaveOutcome, SessionId, SessionStore, StorageKey,
};

use common::demo::Demo;
use common::redis_server::{RedisServer, cluster_url};

mod standalone {
    crate::common::conformance::store_conformance!(
        unstuck::RedisStore::connect(&crate::common::redis_server::standalone_url())
            .await
            .unwrap()
            .with_near_cache(unstuck::NearCache::new())
            .unwrap()
    );
}

mod sentinel {
    crate::common::conformance::store_conformance!(
        unstuck::RedisStore::connect(&crate::common::redis_server::sentinel_url())
            .await
            .unwrap()
            .with_near_cache(unstuck::NearCache::new())
            .unwrap()
    );
}

const LONG: Duration = Duration::from_secs(600);

async fn cached(server: &RedisServer, settings: NearCache) -> RedisStore {
    RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_near_cache(settings)
        .unwrap()
}

async fn new_session(store: &RedisStore) -> StorageKey {
    let now = SystemTime::now();
    let key = SessionId::generate().storage_key();
    let record = Record {
        data: [("count".to_owned(), "0".to_owned())].into(),
        user: None,
        created_at: now,
        expires_at: now + LONG,
    };
    assert!(store.create(&key, &record).await.unwrap());
    key
}

async fn count(store: &RedisStore, key: &StorageKey) -> u64 {
    let record = store.load(key).await.unwrap().expect("live session");
    record.data["count"].parse().unwrap()
}

async fn set_count(store: &RedisStore, key: &StorageKey, n: u64) {
    let mut changes = ChangeSet::new(SystemTime::now() + LONG);
    changes.insert("count", n.to_string());
    assert_eq!(
        store.save(key, &changes).await.unwrap(),
        SaveOutcome::Applied
    );
}

/// Calls of one command since the server started.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:")))
        .and_then(|stats| stats.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_instance_are_seen_by_the_next_read_on_another() {
    const ROUNDS: u64 = 1000;
    let server = RedisServer::start();
    let a = cached(&server, NearCache::new()).await;
    let b = cached(&server, NearCache::new()).await;
    let key = new_session(&a).await;
    let mut stale = 0;
    for n in 1..=ROUNDS {
        let (writer, reader) = if n % 2 == 1 { (&a, &b) } else { (&b, &a) };
        assert_eq!(count(writer, &key).await, n - 1, "writer saw a stale value");
        set_count(writer, &key, n).await;
        assert_eq!(count(writer, &key).await, n, "read-your-writes");
        // The time a client needs to hear of the write and ask the other
        // instance (generously short: a loopback HTTP round trip is longer).
        // Redis sends the invalidation just after its reply to the writer, so a
        // read issued within microseconds of the reply could still beat it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        if count(reader, &key).await != n {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "stale reads in {ROUNDS} alternations");
    let (sa, sb) = (a.near_cache_stats().unwrap(), b.near_cache_stats().unwrap());
    assert!(
        sa.hits + sb.hits >= ROUNDS,
        "the cache served too little to prove anything: {sa:?} {sb:?}"
    );
    assert!(
        sa.invalidations + sb.invalidations >= ROUNDS - 1,
        "{sa:?} {sb:?}"
    );
}

#[tokio::test]
async fn cached_reads_and_write_requests_cost_one_round_trip_at_most() {
    let server = RedisServer::start();
    let store = cached(&server, NearCache::new()).await;
    let key = new_session(&store).await;
    count(&store, &key).await;
    // The first save loads the script into Redis (EVALSHA, SCRIPT LOAD,
    // EVALSHA): once per server, not per request.
    set_count(&store, &key, 0).await;
    let (hgetall, evalsha) = (calls(&server, "hgetall"), calls(&server, "evalsha"));
    for n in 1..=50 {
        // A read-only request, then a write request (load + save).
        count(&store, &key).await;
        assert_eq!(count(&store, &key).await, n - 1);
        set_count(&store, &key, n).await;
    }
    assert_eq!(
        calls(&server, "evalsha"),
        evalsha + 50,
        "one script call per save"
    );
    assert_eq!(
        calls(&server, "hgetall"),
        hgetall,
        "cached loads went to Redis"
    );
}

#[tokio::test]
async fn saves_of_a_logged_in_session_cost_one_round_trip() {
    let server = RedisServer::start();
    let store = cached(&server, NearCache::new()).await;
    let now = SystemTime::now();
    let key = SessionId::generate().storage_key();
    let record = Record {
        data: [("count".to_owned(), "0".to_owned())].into(),
        user: Some("carol".to_owned()),
        created_at: now,
        expires_at: now + LONG,
    };
    assert!(store.create(&key, &record).await.unwrap());
    count(&store, &key).await;
    set_count(&store, &key, 0).await;
    let (evalsha, zadd) = (calls(&server, "evalsha"), calls(&server, "zadd"));
    for n in 1..=30 {
        assert_eq!(count(&store, &key).await, n - 1);
        set_count(&store, &key, n).await;
    }
    assert_eq!(
        calls(&server, "evalsha"),
        evalsha + 30,
        "one script call per save"
    );
    assert_eq!(
        calls(&server, "zadd"),
        zadd,
        "the index entry was re-scored needlessly"
    );
    let listed = store.user_sessions("carol").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
}

#[tokio::test]
async fn a_change_by_another_client_invalidates_the_cached_session() {
    let server = RedisServer::start();
    let store = cached(&server, NearCache::new()).await;
    let key = new_session(&store).await;
    assert_eq!(count(&store, &key).await, 0);
    assert_eq!(count(&store, &key).await, 0);
    let redis_key = format!("unstuck:{{{}}}", key.as_str());
    server.cli(&["HSET", &redis_key, "d:count", "41"]).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while count(&store, &key).await != 41 {
        assert!(Instant::now() < deadline, "the invalidation never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.cli(&["DEL", &redis_key]).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while store.load(&key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a deleted session stayed cached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_tracking_connection_empties_the_cache() {
    let server = RedisServer::start();
    let store = cached(&server, NearCache::new()).await;
    let key = new_session(&store).await;
    assert_eq!(count(&store, &key).await, 0);
    assert_eq!(count(&store, &key).await, 0);
    assert!(store.near_cache_stats().unwrap().entries >= 1);
    // Disconnect the tracking connection (every normal client; the
    // subscriber that receives invalidations is not one), then change the
    // session: Redis no longer tells this process anything about it.
    let flushes = store.near_cache_stats().unwrap().flushes;
    server
        .cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while store.near_cache_stats().unwrap().flushes == flushes {
        assert!(
            Instant::now() < deadline,
            "the lost connection went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let redis_key = format!("unstuck:{{{}}}", key.as_str());
    server.cli(&["HSET", &redis_key, "d:count", "7"]).unwrap();
    assert_eq!(count(&store, &key).await, 7, "a stale session was served");
    // Tracking works again on the new connection.
    server.cli(&["HSET", &redis_key, "d:count", "8"]).unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    while count(&store, &key).await != 8 {
        assert!(
            Instant::now() < deadline,
            "no invalidation after reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.near_cache_stats().unwrap().flushes >= 1);
    // The old invalidation subscriber was closed, not leaked.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let subscribers = server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap();
        if subscribers.lines().filter(|l| !l.trim().is_empty()).count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers left behind:\n{subscribers}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn entries_are_served_no_longer_than_the_max_age() {
    let server = RedisServer::start();
    let store = cached(
        &server,
        NearCache::new().with_max_age(Duration::from_millis(300)),
    )
    .await;
    let key = new_session(&store).await;
    count(&store, &key).await;
    let hgetall = calls(&server, "hgetall");
    count(&store, &key).await;
    assert_eq!(calls(&server, "hgetall"), hgetall);
    tokio::time::sleep(Duration::from_millis(400)).await;
    count(&store, &key).await;
    assert_eq!(
        calls(&server, "hgetall"),
        hgetall + 1,
        "an old entry was served"
    );
}

#[tokio::test]
async fn the_cache_holds_at_most_max_entries() {
    let server = RedisServer::start();
    let store = cached(&server, NearCache::new().with_max_entries(5)).await;
    for _ in 0..20 {
        let key = new_session(&store).await;
        count(&store, &key).await;
        count(&store, &key).await;
    }
    let stats = store.near_cache_stats().unwrap();
    assert!(stats.entries <= 5, "{stats:?}");
    assert!(stats.hits >= 1, "{stats:?}");
}

#[tokio::test]
async fn the_near_cache_is_refused_where_it_cannot_be_kept_coherent() {
    let error = RedisStore::connect(&cluster_url())
        .await
        .unwrap()
        .with_near_cache(NearCache::new())
        .unwrap_err();
    assert!(error.to_string().contains("Cluster"), "{error}");
    let server = RedisServer::start();
    let pool = deadpool_redis::Config::from_url(server.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    assert!(
        RedisStore::from_pool(pool)
            .with_near_cache(NearCache::new())
            .is_err()
    );
}

#[tokio::test]
async fn demo_instances_with_near_caches_never_serve_a_stale_counter() {
    const REQUESTS: u64 = 300;
    let server = RedisServer::start();
    let url = server.url();
    let env = [("UNSTUCK_STORE", url.as_str()), ("UNSTUCK_NEAR_CACHE", "1")];
    let a = Demo::start(&env);
    let b = Demo::start(&env);
    let mut client = a.client();
    for n in 1..=REQUESTS {
        client.base = if n % 2 == 0 {
            b.base.clone()
        } else {
            a.base.clone()
        };
        let reply = client.get("/counter").await;
        assert_eq!(
            reply.body["count"], n,
            "stale read at request {n}: {reply:?}"
        );
        let peek = client.get("/peek").await;
        assert_eq!(peek.body["count"], n);
    }
    // One load from Redis per counter request (the other instance had just
    // written), none for the peeks.
    let from_loads = calls(&server, "hgetall");
    assert!(
        from_loads <= REQUESTS + 5,
        "{from_loads} loads went to Redis out of {}",
        2 * REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_through_the_cache_leave_it_equal_to_redis() {
    const ROUNDS: usize = 20;
    const WRITERS: usize = 16;
    let server = RedisServer::start();
    let cached = std::sync::Arc::new(cached(&server, NearCache::new()).await);
    let plain = RedisStore::connect(&server.url()).await.unwrap();
    let key = new_session(&cached).await;
    for round in 0..ROUNDS {
        // Cached at the current version, then raced by this instance's own saves
        // (same key "last", different keys "k…"), whose replies come back in any
        // order.
        cached.load(&key).await.unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let store = cached.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let mut changes = ChangeSet::new(SystemTime::now() + LONG);
                    changes
                        .insert("last", format!("{round}-{i}"))
                        .insert(format!("k{i}"), round.to_string());
                    store.save(&key, &changes).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), SaveOutcome::Applied);
        }
        let truth = plain.load(&key).await.unwrap().unwrap();
        let seen = cached.load(&key).await.unwrap().unwrap();
        assert_eq!(
            seen.data, truth.data,
            "round {round}: the cache disagrees with Redis"
        );
    }
    assert!(cached.near_cache_stats().unwrap().hits > 0);
}
