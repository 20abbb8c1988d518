//! [`RedisStore`] on a Redis Cluster with replicas (3 masters, 3 replicas)
//! through failovers under write load, on real servers: a coordinated manual
//! failover (`CLUSTER FAILOVER` on a replica) and the crash (`kill -9`) of a
//! master. Every session must continue its count: no acknowledged increment
//! ever goes back, no session goes missing, and service resumes by itself.
//!
//! Each test owns its cluster (it fails nodes over) and the tests of this file
//! run one at a time, so they measure the failover rather than the machine.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use unstuck::{RedisStore, SessionId, SessionStore, StorageKey};

use common::failover_load::{CounterLoad, evalsha_calls, probe_connection};
use common::redis_server::{ReplicatedCluster, cluster_nodes};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a node may stay unreachable before the others declare it failing
/// (`cluster-node-timeout`): small, so a crash is failed over in seconds.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Sessions per shard: every shard, the failed-over one included, has writers.
const SESSIONS_PER_SHARD: usize = 3;
/// Cluster setup, a promotion, or a node's rejoin, on a loaded machine.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
/// From the promotion to the first store write on the new master. The store
/// should follow within a second or two (it is printed); generous for a
/// loaded machine.
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);
/// The longest any session may go without an acknowledged write across a
/// manual failover (printed; a second or two when idle).
const MANUAL_OUTAGE_LIMIT: Duration = Duration::from_secs(10);

fn redis_key(key: &StorageKey) -> String {
    format!("unstuck:{{{}}}", key.as_str())
}

/// Session keys, `SESSIONS_PER_SHARD` on each master, and the slot of each.
fn spread_keys(cluster: &ReplicatedCluster) -> (Vec<StorageKey>, Vec<u16>) {
    let view = cluster_nodes(cluster.nodes[0].port()).expect("no CLUSTER NODES");
    let masters: Vec<_> = view.iter().filter(|n| n.is_master()).collect();
    assert_eq!(masters.len(), 3, "{view:?}");
    let mut per_master = vec![0; masters.len()];
    let (mut keys, mut slots) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        if per_master.iter().all(|n| *n == SESSIONS_PER_SHARD) {
            break;
        }
        let key = SessionId::generate().storage_key();
        let slot = cluster.keyslot(&redis_key(&key));
        let owner = masters.iter().position(|m| m.serves(slot)).unwrap();
        if per_master[owner] < SESSIONS_PER_SHARD {
            per_master[owner] += 1;
            keys.push(key);
            slots.push(slot);
        }
    }
    assert!(per_master.iter().all(|n| *n == SESSIONS_PER_SHARD));
    (keys, slots)
}

async fn stores(cluster: &ReplicatedCluster, acks: bool) -> [RedisStore; 2] {
    // `RUST_LOG=unstuck=debug` shows what the stores did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let connect = || async {
        let store = RedisStore::connect(&cluster.url()).await.unwrap();
        if acks {
            store.with_replica_acks(1, Duration::from_millis(500))
        } else {
            store
        }
    };
    [connect().await, connect().await]
}

/// Watches `port` (a replica about to be promoted) for the first store write
/// on it: the store writes with `EVALSHA`, which replication does not replay
/// on replicas, so a rise is a store's own write landing there.
async fn landed_probe(port: u16) -> tokio::task::JoinHandle<Instant> {
    let mut conn = probe_connection(port).await;
    let baseline = evalsha_calls(&mut conn).await.unwrap();
    tokio::spawn(async move {
        let start = Instant::now();
        loop {
            match evalsha_calls(&mut conn).await {
                Some(calls) if calls > baseline => return Instant::now(),
                Some(_) => {}
                None => conn = probe_connection(port).await,
            }
            assert!(
                start.elapsed() < SETTLE_LIMIT,
                "no store write landed on port {port} within {SETTLE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn assert_every_session_continues(load: &CounterLoad) {
    assert_eq!(
        load.total(|t| &t.regressions),
        0,
        "an acknowledged increment was lost: {}",
        load.summary()
    );
    assert_eq!(
        load.total(|t| &t.missing),
        0,
        "a session went missing: {}",
        load.summary()
    );
}

/// `CLUSTER FAILOVER` on a replica, there and back (A→B→A), under load
/// through two stores and without replica acks: the old master pauses writes
/// until its replica has caught up, so nothing acknowledged may be lost, and
/// the stores must move to the new master by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failovers_keep_every_session() {
    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::block_in_place(|| ReplicatedCluster::start(NODE_TIMEOUT));
    let stores = stores(&cluster, false).await;
    let (keys, slots) = tokio::task::block_in_place(|| spread_keys(&cluster));
    let sessions = keys.len();
    let mut load = CounterLoad::start_keys(&stores, keys).await;
    load.wait_progress(&vec![0; sessions], 20, SETTLE_LIMIT)
        .await;

    let slot = slots[0];
    for round in 1..=2 {
        let (master, replica) = cluster.shard_of(slot).expect("no master/replica pair");
        let landed = landed_probe(replica).await;
        let (asked, promoted) =
            tokio::task::block_in_place(|| cluster.manual_failover(slot, replica, SETTLE_LIMIT));
        let landed = landed.await.unwrap();
        let resumed = load.wait_progress(&load.acked(), 20, SETTLE_LIMIT).await;
        let outage = load.longest_gap(asked, resumed);
        eprintln!(
            "round {round}: CLUSTER FAILOVER {master} -> {replica}: promotion agreed by every \
             node {:?} after the request, first store write on the new master {:?} after \
             the request; longest time a session went without an acknowledged write: \
             {outage:?}; {}",
            promoted.saturating_duration_since(asked),
            landed.saturating_duration_since(asked),
            load.summary()
        );
        assert_every_session_continues(&load);
        assert!(
            landed.saturating_duration_since(promoted) <= FOLLOW_LIMIT,
            "the stores took {:?} after the promotion to write on the new master",
            landed.saturating_duration_since(promoted)
        );
        assert!(
            outage <= MANUAL_OUTAGE_LIMIT,
            "a session went {outage:?} without an acknowledged write"
        );
        // The old master rejoins as a synced replica before the next round.
        tokio::task::block_in_place(|| cluster.wait_healthy(SETTLE_LIMIT));
    }
    load.stop().await;
    assert_every_session_continues(&load);
    for store in &stores {
        load.assert_nothing_acked_lost(store, SETTLE_LIMIT).await;
    }
}

/// `kill -9` of a master with a replica, under load through two stores that
/// wait for one replica ack per write: after the replica's promotion, and
/// once the crashed node is back as its replica, every session continues its
/// count. Writes the dead master took but its replica never confirmed were
/// never acknowledged, so nothing acknowledged may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_master_loses_no_acknowledged_write_with_replica_acks() {
    let _serial = SERIAL.lock().await;
    let mut cluster = tokio::task::block_in_place(|| ReplicatedCluster::start(NODE_TIMEOUT));
    let stores = stores(&cluster, true).await;
    let (keys, slots) = tokio::task::block_in_place(|| spread_keys(&cluster));
    let sessions = keys.len();
    let mut load = CounterLoad::start_keys(&stores, keys).await;
    load.wait_progress(&vec![0; sessions], 20, SETTLE_LIMIT)
        .await;

    let slot = slots[0];
    let (master, replica) = cluster.shard_of(slot).expect("no master/replica pair");
    let affected: Vec<bool> = slots
        .iter()
        .map(|s| cluster.shard_of(*s).is_some_and(|(m, _)| m == master))
        .collect();
    let live: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|p| *p != master)
        .collect();
    let landed = landed_probe(replica).await;
    let killed = Instant::now();
    cluster.node_mut(master).kill();
    let promoted =
        tokio::task::block_in_place(|| cluster.wait_master(&live, slot, replica, SETTLE_LIMIT));
    let landed = landed.await.unwrap();
    // The new master has no replica: with acks its writes fail until the
    // crashed node is back (it rejoins as a replica of the new master).
    let restarted = Instant::now();
    let rejoined = tokio::task::block_in_place(|| {
        let node = cluster.node_mut(master);
        node.restart();
        cluster.wait_healthy(SETTLE_LIMIT);
        Instant::now()
    });
    let resumed = load.wait_progress(&load.acked(), 20, SETTLE_LIMIT).await;
    let gaps = load.gaps(killed, resumed);
    let worst = |on_crashed_shard: bool| {
        gaps.iter()
            .zip(&affected)
            .filter(|(_, a)| **a == on_crashed_shard)
            .map(|(g, _)| *g)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "kill -9 of master {master}: replica {replica} promoted (agreed by every live node) \
         {:?} after the kill, first store write on it {:?} after the kill; the crashed node \
         restarted {:?} after the kill and rejoined as a synced replica {:?} after its restart; \
         longest time without an acknowledged write: {:?} on the crashed shard (replica acks \
         wait for the rejoin), {:?} on the other shards; {}",
        promoted.saturating_duration_since(killed),
        landed.saturating_duration_since(killed),
        restarted.saturating_duration_since(killed),
        rejoined.saturating_duration_since(restarted),
        worst(true),
        worst(false),
        load.summary()
    );
    assert_every_session_continues(&load);
    assert!(
        landed.saturating_duration_since(promoted) <= FOLLOW_LIMIT,
        "the stores took {:?} after the promotion to write on the new master",
        landed.saturating_duration_since(promoted)
    );
    load.stop().await;
    assert_every_session_continues(&load);
    for store in &stores {
        load.assert_nothing_acked_lost(store, SETTLE_LIMIT).await;
    }
}

/// Near caches on both instances through a `CLUSTER FAILOVER` of one shard,
/// while one client writes on one instance and reads on the other, on a
/// session of every shard: no read is ever older than the client's own last
/// write, every write reaches the other instance's cache within a bound, the
/// caches notice the failover (they empty), and tracking resumes on the
/// promoted master (a change made directly there reaches the cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_follow_a_manual_failover_without_a_stale_read() {
    use std::sync::Arc;

    use common::cache_rounds::{self, Cached};
    use common::redis_server::cli;

    let _serial = SERIAL.lock().await;
    let cluster = tokio::task::block_in_place(|| ReplicatedCluster::start(NODE_TIMEOUT));
    let stores = stores(&cluster, false).await;
    let [a, b]: [Arc<Cached>; 2] =
        stores.map(|store| Arc::new(unstuck::NearCache::new(store).unwrap()));
    let (keys, slots) = tokio::task::block_in_place(|| spread_keys(&cluster));
    // One session per shard, the first on the shard that fails over.
    let (keys, slots): (Vec<StorageKey>, Vec<u16>) = keys
        .into_iter()
        .zip(slots)
        .step_by(SESSIONS_PER_SHARD)
        .unzip();
    for key in &keys {
        cache_rounds::new_session(&*a, key).await;
    }
    // A third instance holds the failing-over shard's session in its cache
    // and sends nothing more until the failover is over: its cache must
    // notice by itself. (The demoted master may still pass on invalidations
    // for writes it replicates from the new one, but not for writes made
    // before it resynced, so the cache must not count on that.)
    let idle: Cached =
        unstuck::NearCache::new(RedisStore::connect(&cluster.url()).await.unwrap()).unwrap();
    idle.load(&keys[0]).await.unwrap().expect("live session");
    let mut rounds = cache_rounds::start(a.clone(), b.clone(), keys.clone(), FOLLOW_LIMIT);
    rounds.wait_more(20, SETTLE_LIMIT).await;

    let slot = slots[0];
    let (master, replica) = cluster.shard_of(slot).expect("no master/replica pair");
    let flushes = (a.stats().flushes, b.stats().flushes, idle.stats().flushes);
    let (asked, promoted) =
        tokio::task::block_in_place(|| cluster.manual_failover(slot, replica, SETTLE_LIMIT));
    let noticed = loop {
        if idle.stats().flushes > flushes.2 {
            break Instant::now();
        }
        assert!(
            promoted.elapsed() < FOLLOW_LIMIT,
            "an idle cache did not notice the failover: {:?}",
            idle.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    rounds.wait_more(20, SETTLE_LIMIT).await;
    let followed = Instant::now();
    let report = rounds.stop().await;
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!(
        "CLUSTER FAILOVER {master} -> {replica}: promotion agreed {:?} after the request; an \
         idle cache emptied itself {:?} after the promotion; 20 rounds on every shard done \
         {:?} after it; {} rounds, {} store errors retried, longest write-to-other-cache \
         window {:?}; a {sa:?}; b {sb:?}",
        promoted.saturating_duration_since(asked),
        noticed.saturating_duration_since(promoted),
        followed.saturating_duration_since(promoted),
        report.rounds,
        report.errors,
        report.longest_window
    );
    let current = idle.load(&keys[0]).await.unwrap().expect("live session");
    assert_eq!(current.data["count"], report.rounds.to_string());
    assert!(
        sa.flushes > flushes.0 && sb.flushes > flushes.1,
        "a cache did not notice the failover: a {sa:?}, b {sb:?}"
    );
    // Tracking resumed on the promoted master: b holds the session again,
    // and a change made directly on the new master reaches it.
    let key = &keys[0];
    let redis_key = redis_key(key);
    let before = b.load(key).await.unwrap().expect("live session");
    assert_eq!(before.data["count"], report.rounds.to_string());
    let hits = b.stats().hits;
    b.load(key).await.unwrap();
    assert!(b.stats().hits > hits, "the session is not cached again");
    cli(replica, &["HSET", &redis_key, "d:count", "-1"]).unwrap();
    let deadline = Instant::now() + FOLLOW_LIMIT;
    loop {
        let record = b.load(key).await.unwrap().expect("live session");
        if record.data["count"] == "-1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no invalidation from the promoted master"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
