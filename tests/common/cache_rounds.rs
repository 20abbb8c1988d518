//! Near-cache checks while a Redis Cluster changes beneath two instances:
//! one client's write/read rounds that never accept a stale read, and moving
//! a hash slot between masters step by step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use unstuck::{ChangeSet, NearCache, RedisStore, SaveOutcome, SessionStore, StorageKey, Version};

use super::redis_server::{cli, cluster_nodes};

pub type Cached = NearCache<RedisStore>;

const LONG: Duration = Duration::from_secs(600);

/// What the rounds saw.
#[derive(Debug, Default)]
pub struct RoundsReport {
    /// Rounds completed (every key written and read once per round).
    pub rounds: u64,
    /// Store calls that failed and were retried (a failover's brief outage).
    pub errors: u64,
    /// The longest time a write on `a` took to reach `b`'s cache.
    pub longest_window: Duration,
}

/// Rounds running in the background until stopped.
pub struct Rounds {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<RoundsReport>>,
}

/// Starts the rounds. Each round, for every key (a session counting in
/// `count`, created at 0): `a` sets the count to the next value; `b`, which
/// holds the previous value in its cache, must serve the new one once the
/// invalidation arrives, within `limit` (what other clients see); then both
/// must serve it to the writer, who asks for at least its save's version
/// (what the cookie carries). A store error is retried for up to `limit`;
/// any read older than the writer's own last write panics at once.
pub fn start(a: Arc<Cached>, b: Arc<Cached>, keys: Vec<StorageKey>, limit: Duration) -> Rounds {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (done, stop) = (done.clone(), stop.clone());
        async move {
            let mut report = RoundsReport::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                for key in &keys {
                    round(&a, &b, key, n, limit, &mut report).await;
                }
                report.rounds = n;
                done.store(n, Ordering::Relaxed);
            }
            report
        }
    });
    Rounds {
        done,
        stop,
        task: Some(task),
    }
}

impl Rounds {
    /// Rounds completed so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` rounds have completed from now, panicking after
    /// `limit` (or if the rounds failed).
    pub async fn wait_more(&mut self, more: u64, limit: Duration) {
        let target = self.done() + more;
        let start = Instant::now();
        while self.done() < target {
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                // Only a panic ends the rounds before `stop`: raise it here.
                let task = self.task.take().expect("checked");
                if let Err(error) = task.await {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
            assert!(
                start.elapsed() < limit,
                "{more} rounds did not complete within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the rounds and returns what they saw; a panic in them is raised
    /// here.
    pub async fn stop(mut self) -> RoundsReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take().expect("the rounds already ended").await {
            Ok(report) => report,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

async fn round(
    a: &Cached,
    b: &Cached,
    key: &StorageKey,
    n: u64,
    limit: Duration,
    report: &mut RoundsReport,
) {
    let seen = retry(limit, report, || set_count(a, key, n)).await;
    let written = Instant::now();
    loop {
        let value = retry(limit, report, || count(b, key, Version::ZERO)).await;
        if value == n {
            break;
        }
        assert_eq!(value, n - 1, "round {n}: b served a count from the past");
        assert!(
            written.elapsed() < limit,
            "round {n}: the write never reached the other instance's cache within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report.longest_window = report.longest_window.max(written.elapsed());
    for (name, store) in [("b", b), ("a", a)] {
        let value = retry(limit, report, || count(store, key, seen)).await;
        assert_eq!(
            value, n,
            "round {n}: {name} served the client a session older than its own last write"
        );
    }
}

/// Runs `call` until it succeeds, for at most `limit`.
async fn retry<T, F: Future<Output = Result<T, unstuck::StoreError>>>(
    limit: Duration,
    report: &mut RoundsReport,
    call: impl Fn() -> F,
) -> T {
    let start = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) => {
                report.errors += 1;
                assert!(
                    start.elapsed() < limit,
                    "the store failed for longer than {limit:?}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Creates a session counting from 0.
pub async fn new_session(store: &impl SessionStore, key: &StorageKey) {
    let now = SystemTime::now();
    let record = unstuck::Record {
        data: [("count".to_owned(), "0".to_owned())].into(),
        user: None,
        created_at: now,
        expires_at: now + LONG,
    };
    assert!(store.create(key, &record).await.unwrap());
}

async fn count(
    store: &impl SessionStore,
    key: &StorageKey,
    seen: Version,
) -> Result<u64, unstuck::StoreError> {
    let record = store.load_at_least(key, seen).await?.expect("live session");
    Ok(record.data["count"].parse().unwrap())
}

async fn set_count(
    store: &impl SessionStore,
    key: &StorageKey,
    n: u64,
) -> Result<Version, unstuck::StoreError> {
    let mut changes = ChangeSet::new(SystemTime::now() + LONG);
    changes.insert("count", n.to_string());
    let (outcome, version) = store.save_versioned(key, &changes).await?;
    assert_eq!(outcome, SaveOutcome::Applied);
    Ok(version.expect("a near cache reports the version of each save"))
}

/// The Redis key of a session (default prefix).
pub fn redis_key(key: &StorageKey) -> String {
    format!("unstuck:{{{}}}", key.as_str())
}

/// The port of the master serving `slot`, as the node on `port` sees it.
pub fn slot_owner(port: u16, slot: u16) -> Option<u16> {
    cluster_nodes(port)?
        .into_iter()
        .find(|n| n.is_master() && !n.is_failing() && n.serves(slot))
        .map(|n| n.port)
}

/// Moves one hash slot from one master to another the way `redis-cli
/// --cluster reshard` does, one step at a time so that tests can act between
/// the steps: [`open`](Self::open) marks the slot importing/migrating,
/// [`move_keys`](Self::move_keys) moves its keys (`MIGRATE`), and
/// [`finish`](Self::finish) gives the slot to the target.
pub struct SlotMove {
    pub slot: u16,
    pub from: u16,
    pub to: u16,
    from_id: String,
    to_id: String,
}

fn ok(port: u16, args: &[&str]) {
    let reply = cli(port, args);
    assert_eq!(
        reply.as_deref().map(str::trim),
        Some("OK"),
        "{args:?} on port {port}"
    );
}

impl SlotMove {
    pub fn new(slot: u16, from: u16, to: u16) -> Self {
        let view = cluster_nodes(from).expect("no CLUSTER NODES");
        let id = |port: u16| {
            view.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .unwrap_or_else(|| panic!("no node on port {port}"))
        };
        Self {
            slot,
            from,
            to,
            from_id: id(from),
            to_id: id(to),
        }
    }

    /// `IMPORTING` on the target, then `MIGRATING` on the source.
    pub fn open(&self) {
        let slot = self.slot.to_string();
        ok(
            self.to,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &self.from_id],
        );
        ok(
            self.from,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &self.to_id],
        );
    }

    /// `MIGRATE`s every key of the slot to the target; returns how many.
    pub fn move_keys(&self) -> usize {
        let slot = self.slot.to_string();
        let keys = cli(self.from, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
            .expect("CLUSTER GETKEYSINSLOT failed");
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            return 0;
        }
        let port = self.to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        ok(self.from, &args);
        keys.len()
    }

    /// Gives the slot to the target, telling the target, the source and
    /// then every other node in `ports`.
    pub fn finish(&self, ports: &[u16]) {
        let slot = self.slot.to_string();
        let mut order = vec![self.to, self.from];
        order.extend(ports.iter().filter(|p| **p != self.to && **p != self.from));
        for port in order {
            ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &self.to_id]);
        }
    }
}
