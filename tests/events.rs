//! Lifecycle events: what the layer reports (created, rotated, destroyed,
//! logged out everywhere) and the expirations each store can tell about,
//! against the real stores.

mod common;

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use http::StatusCode;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use unstuck::{
    MemoryStore, Record, SessionEvent, SessionEventKind, SessionEvents, SessionId, SessionLayer,
    SessionStore, StorageKey,
};

use common::app::{Client, routes, shared_key};
use common::instrumented::{Instrumented, Mode};

/// How long any event may take to arrive on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// A hub whose events land in the returned receiver.
fn collected() -> (SessionEvents, UnboundedReceiver<SessionEvent>) {
    let (tx, rx) = unbounded_channel();
    let events = SessionEvents::new().with_listener(move |event: &SessionEvent| {
        let _ = tx.send(event.clone());
    });
    (events, rx)
}

async fn next(rx: &mut UnboundedReceiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("no event in time")
        .expect("the hub is alive")
}

/// Nothing more arrives: checked after a later event that is known to
/// follow, so no sleep is needed (events of one hub arrive in order).
fn nothing_queued(rx: &mut UnboundedReceiver<SessionEvent>) {
    if let Ok(event) = rx.try_recv() {
        panic!("unexpected event {event:?}");
    }
}

/// The shared test routes behind a layer that reports to `events`.
fn app(store: impl SessionStore, events: SessionEvents) -> Router {
    routes().layer(
        SessionLayer::new(store)
            .with_keys([shared_key()])
            .with_events(events),
    )
}

async fn key_of(app: &Router, client: &mut Client) -> StorageKey {
    let (status, body) = client.send(app, "GET", "/key", "").await;
    assert_eq!(status, StatusCode::OK);
    StorageKey::parse(&body).expect("a stored session")
}

/// The whole in-process lifecycle on `store`: each event once the store
/// confirmed it, with the right keys and user.
async fn lifecycle(store: impl SessionStore + Clone) {
    let (events, mut rx) = collected();
    let app = app(store.clone(), events);
    let mut browser = Client::default();
    let user = format!(
        "user-{}",
        &SessionId::generate().storage_key().as_str()[..8]
    );

    browser.send(&app, "GET", "/counter", "").await;
    let first = key_of(&app, &mut browser).await;
    let created = next(&mut rx).await;
    assert_eq!(
        created.kind,
        SessionEventKind::Created { key: first.clone() }
    );
    assert_eq!((created.user, created.store), (None, store.name()));
    // Reads write nothing and report nothing.
    browser.send(&app, "GET", "/key", "").await;

    browser.send(&app, "POST", "/login", &user).await;
    let second = key_of(&app, &mut browser).await;
    assert_ne!(first, second);
    let rotated = next(&mut rx).await;
    assert_eq!(
        rotated.kind,
        SessionEventKind::Rotated {
            from: first,
            to: second.clone()
        }
    );
    assert_eq!(rotated.user.as_deref(), Some(user.as_str()));

    browser.send(&app, "POST", "/logout", "").await;
    let destroyed = next(&mut rx).await;
    assert_eq!(destroyed.kind, SessionEventKind::Destroyed { key: second });
    assert_eq!(destroyed.user.as_deref(), Some(user.as_str()));

    // Two devices of one user, then "log out everywhere" from one of them.
    let (mut phone, mut laptop) = (Client::default(), Client::default());
    for device in [&mut phone, &mut laptop] {
        device.send(&app, "POST", "/login", &user).await;
        let created = next(&mut rx).await;
        assert!(matches!(created.kind, SessionEventKind::Created { .. }));
        assert_eq!(created.user.as_deref(), Some(user.as_str()));
    }
    let (status, body) = phone.send(&app, "POST", "/logout-everywhere", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "2"));
    let everywhere = next(&mut rx).await;
    assert_eq!(
        everywhere.kind,
        SessionEventKind::LoggedOutEverywhere { sessions: 2 }
    );
    assert_eq!(everywhere.user.as_deref(), Some(user.as_str()));
    // The phone's own session was among the two: its delete finds nothing,
    // so no Destroyed follows. A later create proves the queue is drained.
    laptop.send(&app, "GET", "/counter", "").await;
    assert!(matches!(
        next(&mut rx).await.kind,
        SessionEventKind::Created { .. }
    ));
    nothing_queued(&mut rx);
}

#[tokio::test]
async fn memory_reports_the_lifecycle_once_the_store_confirmed_it() {
    lifecycle(MemoryStore::new()).await;
}

#[tokio::test]
async fn a_failed_save_reports_nothing() {
    let store = Instrumented::new(MemoryStore::new());
    let (events, mut rx) = collected();
    let app = app(store.clone(), events);
    let mut browser = Client::default();
    store.set_mode(Mode::WritesFail);
    let (status, _) = browser.send(&app, "GET", "/counter", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    store.set_mode(Mode::Healthy);
    browser.send(&app, "GET", "/counter", "").await;
    let key = key_of(&app, &mut browser).await;
    // The first event is the second request's: the failed create emitted none.
    assert_eq!(next(&mut rx).await.kind, SessionEventKind::Created { key });
    nothing_queued(&mut rx);
}

fn record(user: &str, expires_at: SystemTime) -> Record {
    Record {
        data: [("v".to_owned(), "1".to_owned())].into(),
        user: Some(user.to_owned()),
        created_at: SystemTime::now(),
        expires_at,
    }
}

/// Waits (bounded) until the wall clock has passed `instant`.
async fn wait_past(instant: SystemTime) {
    let deadline = Instant::now() + PATIENCE;
    while SystemTime::now() <= instant {
        assert!(Instant::now() < deadline, "the clock does not move");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn memory_reports_what_its_sweep_expires_with_the_user() {
    let (events, mut rx) = collected();
    let store = MemoryStore::new().with_events(events);
    let key = SessionId::generate().storage_key();
    let live = SessionId::generate().storage_key();
    let soon = SystemTime::now() + Duration::from_millis(50);
    assert!(store.create(&key, &record("carol", soon)).await.unwrap());
    let later = SystemTime::now() + Duration::from_secs(600);
    assert!(store.create(&live, &record("carol", later)).await.unwrap());
    wait_past(soon).await;
    assert_eq!(store.delete_expired(), 1);
    let expired = next(&mut rx).await;
    assert_eq!(expired.kind, SessionEventKind::Expired { key });
    assert_eq!(
        (expired.user.as_deref(), expired.store),
        (Some("carol"), "memory")
    );
    // Only the expired one: a second sweep finds nothing more.
    assert_eq!(store.delete_expired(), 0);
    nothing_queued(&mut rx);
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::common::postgres_server;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_reports_the_lifecycle() {
        lifecycle(postgres_server::store().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_reports_what_its_cleanup_deletes_with_the_user() {
        let (events, mut rx) = collected();
        let table = format!("t_{}", postgres_server::random_tag());
        let store = postgres_server::store()
            .await
            .with_table(&table)
            .unwrap()
            .with_events(events);
        let key = SessionId::generate().storage_key();
        let live = SessionId::generate().storage_key();
        let soon = SystemTime::now() + Duration::from_millis(50);
        assert!(store.create(&key, &record("dave", soon)).await.unwrap());
        let later = SystemTime::now() + Duration::from_secs(600);
        assert!(store.create(&live, &record("dave", later)).await.unwrap());
        wait_past(soon).await;
        // Through the cleanup task, as applications run it.
        let cleanup = store.spawn_cleanup(Duration::from_millis(50), 100);
        let expired = next(&mut rx).await;
        cleanup.stop().await;
        assert_eq!(expired.kind, SessionEventKind::Expired { key });
        assert_eq!(
            (expired.user.as_deref(), expired.store),
            (Some("dave"), "postgres")
        );
        assert_eq!(store.delete_expired(100).await.unwrap(), 0);
        nothing_queued(&mut rx);
    }
}

#[cfg(feature = "redis")]
mod redis {
    use std::collections::HashSet;

    use super::*;
    use crate::common::redis_server::{self, RedisCluster, RedisServer, SentinelSetup};
    use unstuck::RedisStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reports_the_lifecycle() {
        let store = RedisStore::connect(&redis_server::standalone_url())
            .await
            .unwrap();
        lifecycle(store).await;
    }

    /// Creates sessions that expire at once until every one of a batch is
    /// reported (the subscriptions may still be opening for the first
    /// batches): each session expired must be reported, on every node.
    async fn expirations_are_reported(
        store: &RedisStore,
        rx: &mut UnboundedReceiver<SessionEvent>,
    ) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "expirations were never all reported"
            );
            let mut waiting = HashSet::new();
            for _ in 0..12 {
                let key = SessionId::generate().storage_key();
                let soon = SystemTime::now() + Duration::from_millis(200);
                assert!(store.create(&key, &record("erin", soon)).await.unwrap());
                waiting.insert(key);
            }
            let round = Instant::now() + Duration::from_secs(5);
            while !waiting.is_empty() {
                let left = round.saturating_duration_since(Instant::now());
                let Ok(Some(event)) = tokio::time::timeout(left, rx.recv()).await else {
                    break;
                };
                let SessionEventKind::Expired { key } = &event.kind else {
                    panic!("unexpected {event:?}");
                };
                // Redis no longer knows the user of an expired key.
                assert_eq!((event.user.as_deref(), event.store), (None, "redis"));
                waiting.remove(key);
            }
            if waiting.is_empty() {
                return started.elapsed();
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reports_expirations_from_keyspace_notifications() {
        let server = RedisServer::start_with("data", &["--notify-keyspace-events", "Ex"]);
        let (events, mut rx) = collected();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        let watch = store.spawn_expiry_events(events).unwrap();
        expirations_are_reported(&store, &mut rx).await;
        watch.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cluster_reports_expirations_from_every_primary() {
        let cluster = RedisCluster::start();
        for node in &cluster.nodes {
            node.cli(&["CONFIG", "SET", "notify-keyspace-events", "Ex"])
                .expect("config set");
        }
        let (events, mut rx) = collected();
        let store = RedisStore::connect(&cluster.url()).await.unwrap();
        let watch = store.spawn_expiry_events(events).unwrap();
        // Twelve keys over three primaries: a node without a subscription
        // would leave some unreported in every round.
        expirations_are_reported(&store, &mut rx).await;
        drop(watch);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_sentinel_reports_expirations_and_follows_a_failover() {
        let setup = SentinelSetup::start();
        for node in [&setup.primary, &setup.replica] {
            node.cli(&["CONFIG", "SET", "notify-keyspace-events", "Ex"])
                .expect("config set");
        }
        let (events, mut rx) = collected();
        let store = RedisStore::connect(&setup.url()).await.unwrap();
        let watch = store.spawn_expiry_events(events).unwrap();
        expirations_are_reported(&store, &mut rx).await;
        // After the switch, only the new primary expires keys (a replica
        // deletes them when its primary says so, and reports no expiry).
        let promoted = setup.replica.port();
        tokio::task::block_in_place(|| {
            setup.failover(Duration::from_secs(60));
            setup.wait_named_primary(promoted, Duration::from_secs(60));
        });
        let resumed = expirations_are_reported(&store, &mut rx).await;
        // Sentinel demotes the old primary about 10 s after the switch, which
        // also ends subscriptions there: reported while it is still primary
        // means the watcher followed the switch rather than that demotion.
        let role = redis_server::cli(setup.primary.port(), &["ROLE"]).unwrap_or_default();
        assert!(
            role.starts_with("master"),
            "expirations came back only after the old primary's demotion ({resumed:?})"
        );
        drop(watch);
    }

    #[tokio::test]
    async fn a_store_built_from_a_pool_cannot_report_expirations() {
        let pool = deadpool_redis::Config::from_url(redis_server::standalone_url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let (events, _rx) = collected();
        assert!(
            RedisStore::from_pool(pool)
                .spawn_expiry_events(events)
                .is_err()
        );
    }
}
