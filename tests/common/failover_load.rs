//! Write load and probes for failover tests: sessions whose counters are
//! incremented through several store instances while a test fails Redis over,
//! and probes that time the failover from outside the store.
//!
//! Every loop here is bounded in count and in time; every wait is a condition
//! polled until a deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use deadpool_redis::redis;
use unstuck::{ChangeSet, Record, RedisStore, SaveOutcome, SessionId, SessionStore, StorageKey};

/// No load task runs longer than this, whatever the test does.
const TASK_LIMIT: Duration = Duration::from_secs(300);
/// Nor makes more increments than this.
const TASK_MAX_ITERATIONS: u64 = 1_000_000;
/// Pause between increments: keeps the load from starving the servers of a
/// 2-core machine while still writing hundreds of times per second.
const PACE: Duration = Duration::from_millis(1);
/// Pause after a failed call.
const BACKOFF: Duration = Duration::from_millis(5);

fn now() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap())
}

fn lifetime() -> SystemTime {
    now() + Duration::from_secs(3600)
}

/// What one session's writer saw.
#[derive(Default)]
pub struct Tally {
    /// Increments acknowledged (saves that returned `Applied`).
    pub acked: AtomicU64,
    /// The count the latest acknowledged save wrote.
    pub last_acked: AtomicU64,
    /// Loads that returned less than `last_acked`: acknowledged writes gone.
    pub regressions: AtomicU64,
    /// Sum over regressions of how far the count went back.
    pub lost: AtomicU64,
    /// Loads that found no session at all, or saves answered `Gone`.
    pub missing: AtomicU64,
    /// Calls that failed (unavailable, not replicated, …).
    pub errors: AtomicU64,
    /// When each acknowledged save returned.
    pub ack_times: Mutex<Vec<Instant>>,
    /// When regressions were seen.
    pub regression_times: Mutex<Vec<Instant>>,
}

/// Sessions incremented in a loop, one task per session, each task going
/// through the stores in turn (as a client behind a load balancer would).
pub struct CounterLoad {
    pub keys: Vec<StorageKey>,
    pub tallies: Vec<Arc<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CounterLoad {
    /// Creates `sessions` sessions (count 0) through the first store and
    /// starts incrementing them.
    pub async fn start(stores: &[RedisStore], sessions: usize) -> Self {
        let keys = (0..sessions)
            .map(|_| SessionId::generate().storage_key())
            .collect();
        Self::start_keys(stores, keys).await
    }

    /// Like [`start`](Self::start), on sessions with the given storage keys
    /// (e.g. chosen to spread over the shards of a Cluster).
    pub async fn start_keys(stores: &[RedisStore], chosen: Vec<StorageKey>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut keys = Vec::new();
        let mut tallies = Vec::new();
        let mut tasks = Vec::new();
        for (i, key) in chosen.into_iter().enumerate() {
            let created_at = now();
            let record = Record {
                data: [("count".to_owned(), "0".to_owned())].into(),
                user: None,
                created_at,
                expires_at: lifetime(),
            };
            assert!(stores[0].create(&key, &record).await.unwrap());
            let tally = Arc::new(Tally::default());
            let stores = stores.to_vec();
            let (task_key, task_tally, task_stop) = (key.clone(), tally.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                increment(stores, i, task_key, task_tally, task_stop).await;
            }));
            keys.push(key);
            tallies.push(tally);
        }
        Self {
            keys,
            tallies,
            stop,
            tasks,
        }
    }

    /// Acknowledged increments so far, per session.
    pub fn acked(&self) -> Vec<u64> {
        self.tallies
            .iter()
            .map(|t| t.acked.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every session has `more` acknowledged increments beyond
    /// `from` (a snapshot of [`acked`](Self::acked)); returns when it happened.
    pub async fn wait_progress(&self, from: &[u64], more: u64, limit: Duration) -> Instant {
        let start = Instant::now();
        loop {
            let now = self.acked();
            if now.iter().zip(from).all(|(n, f)| *n >= f + more) {
                return Instant::now();
            }
            assert!(
                start.elapsed() < limit,
                "the load did not make progress within {limit:?}: acked {now:?}, from {from:?}; {}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Acknowledged increments that returned within `[from, to]`.
    pub fn acked_between(&self, from: Instant, to: Instant) -> u64 {
        self.tallies
            .iter()
            .map(|t| {
                let times = t.ack_times.lock().unwrap();
                times.iter().filter(|at| **at >= from && **at <= to).count() as u64
            })
            .sum()
    }

    /// Per session: acknowledged increments within `[from, to]`, and the
    /// increments lost so far.
    pub fn per_session(&self, from: Instant, to: Instant) -> Vec<(u64, u64)> {
        self.tallies
            .iter()
            .map(|t| {
                let times = t.ack_times.lock().unwrap();
                let acked = times.iter().filter(|at| **at >= from && **at <= to).count();
                (acked as u64, t.lost.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// The longest time any session went without an acknowledged increment
    /// within `[from, to]`: how long writes failed, for the worst session.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        self.gaps(from, to).into_iter().max().unwrap_or_default()
    }

    /// Per session: the longest time without an acknowledged increment within
    /// `[from, to]`.
    pub fn gaps(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.tallies
            .iter()
            .map(|t| {
                let times = t.ack_times.lock().unwrap();
                let mut previous = from;
                let mut longest = Duration::ZERO;
                for at in times.iter().filter(|at| **at >= from && **at <= to) {
                    longest = longest.max(at.saturating_duration_since(previous));
                    previous = *at;
                }
                longest.max(to.saturating_duration_since(previous))
            })
            .collect()
    }

    pub fn total(&self, field: impl Fn(&Tally) -> &AtomicU64) -> u64 {
        self.tallies
            .iter()
            .map(|t| field(t).load(Ordering::Relaxed))
            .sum()
    }

    /// The latest regression, if any.
    pub fn last_regression(&self) -> Option<Instant> {
        self.tallies
            .iter()
            .filter_map(|t| t.regression_times.lock().unwrap().last().copied())
            .max()
    }

    pub fn summary(&self) -> String {
        format!(
            "acked {}, errors {}, regressions {} (lost {}), missing {}",
            self.total(|t| &t.acked),
            self.total(|t| &t.errors),
            self.total(|t| &t.regressions),
            self.total(|t| &t.lost),
            self.total(|t| &t.missing),
        )
    }

    /// Stops the writers and waits for them.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a load task did not stop")
                .expect("a load task panicked");
        }
    }

    /// Every session, read through `store`, holds at least its last
    /// acknowledged count. Retries while the store is unavailable.
    pub async fn assert_nothing_acked_lost(&self, store: &RedisStore, limit: Duration) {
        for (key, tally) in self.keys.iter().zip(&self.tallies) {
            let start = Instant::now();
            let record = loop {
                match store.load(key).await {
                    Ok(record) => break record,
                    Err(error) => {
                        assert!(start.elapsed() < limit, "no read within {limit:?}: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let record = record.expect("a session was lost");
            let count: u64 = record.data["count"].parse().unwrap();
            let last = tally.last_acked.load(Ordering::Relaxed);
            assert!(
                count >= last,
                "a session holds {count} but {last} was acknowledged"
            );
        }
    }
}

impl Drop for CounterLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn increment(
    stores: Vec<RedisStore>,
    first: usize,
    key: StorageKey,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let started = Instant::now();
    for i in 0..TASK_MAX_ITERATIONS {
        if stop.load(Ordering::Relaxed) || started.elapsed() > TASK_LIMIT {
            return;
        }
        let store = &stores[(first + i as usize) % stores.len()];
        let count: u64 = match store.load(&key).await {
            Ok(Some(record)) => record.data["count"].parse().unwrap(),
            Ok(None) => {
                tally.missing.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let last = tally.last_acked.load(Ordering::Relaxed);
        if count < last {
            tally.regressions.fetch_add(1, Ordering::Relaxed);
            tally.lost.fetch_add(last - count, Ordering::Relaxed);
            tally.regression_times.lock().unwrap().push(Instant::now());
        }
        let mut changes = ChangeSet::new(lifetime());
        changes.insert("count", (count + 1).to_string());
        match store.save(&key, &changes).await {
            Ok(SaveOutcome::Applied) => {
                tally.last_acked.store(count + 1, Ordering::Relaxed);
                tally.acked.fetch_add(1, Ordering::Relaxed);
                tally.ack_times.lock().unwrap().push(Instant::now());
            }
            Ok(SaveOutcome::Gone) => {
                tally.missing.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

/// A multiplexed connection to a node on 127.0.0.1, for probes.
pub async fn probe_connection(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// How many `EVALSHA` calls a node has served: the store writes with
/// `EVALSHA`, while replication does not replay it on replicas, so a rise on
/// a replica-turned-primary is a store's write landing there.
pub async fn evalsha_calls(conn: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .ok()?;
    let stats = HashMap::<&str, &str>::from_iter(
        info.lines()
            .filter_map(|line| line.trim().strip_prefix("cmdstat_")?.split_once(':')),
    );
    Some(
        stats
            .get("evalsha")
            .and_then(|s| s.split(',').find_map(|kv| kv.strip_prefix("calls=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

async fn is_primary(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let role: Option<Vec<redis::Value>> = redis::cmd("ROLE").query_async(conn).await.ok();
    role.and_then(|r| r.into_iter().next())
        .and_then(|v| redis::from_redis_value::<String>(v).ok())
        .is_some_and(|r| r == "master")
}

/// Times a Sentinel failover from outside the store: when the sentinels first
/// named the new primary, and when a store's write first landed on it.
pub struct SwitchProbe {
    /// When a sentinel first named the new primary.
    pub switched: tokio::task::JoinHandle<Instant>,
    /// When the new primary first reported the role `master`, and when a
    /// store's write first landed on it.
    pub landed: tokio::task::JoinHandle<(Instant, Instant)>,
}

impl SwitchProbe {
    /// Starts watching for `new_primary` (a port) before the failover is
    /// asked for. Both probes poll every 5 ms and give up after `limit`.
    pub async fn start(sentinels: &[u16], master: &str, new_primary: u16, limit: Duration) -> Self {
        let mut sentinel_conns = Vec::new();
        for port in sentinels {
            sentinel_conns.push(probe_connection(*port).await);
        }
        let master = master.to_owned();
        let switched = tokio::spawn(async move {
            let start = Instant::now();
            loop {
                for conn in &mut sentinel_conns {
                    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(&master)
                        .query_async(conn)
                        .await
                        .ok()
                        .flatten();
                    if addr.is_some_and(|(_, port)| port == new_primary) {
                        return Instant::now();
                    }
                }
                assert!(start.elapsed() < limit, "the sentinels never switched");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let mut node = probe_connection(new_primary).await;
        let baseline = evalsha_calls(&mut node).await.unwrap();
        let landed = tokio::spawn(async move {
            let start = Instant::now();
            let mut promoted = None;
            loop {
                if promoted.is_none() && is_primary(&mut node).await {
                    promoted = Some(Instant::now());
                }
                match evalsha_calls(&mut node).await {
                    Some(calls) if calls > baseline => {
                        let landed = Instant::now();
                        return (promoted.unwrap_or(landed), landed);
                    }
                    Some(_) => {}
                    // Sentinel kills normal clients of the replica it promotes.
                    None => node = probe_connection(new_primary).await,
                }
                assert!(
                    start.elapsed() < limit,
                    "no store write landed on the new primary (port {new_primary}) within {limit:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self { switched, landed }
    }
}
