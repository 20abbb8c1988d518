//! [`PostgresStore`] against real PostgreSQL: the conformance suite, expiry
//! cleanup, outages, and the layer on top with several instances.
//!
//! Uses `DATABASE_URL` when set; otherwise starts throwaway clusters (see
//! `common::postgres_server`).
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool};
use unstuck::{
    ChangeSet, PostgresStore, Record, SaveOutcome, SessionId, SessionStore, StorageKey, StoreError,
};

use common::app::{app, id_text, send};
use common::postgres_server::{self, PgServer, random_tag, shared};
use common::stored_format::assert_newer_format_refused;

common::conformance::store_conformance!(postgres_server::store().await);

const LONG: Duration = Duration::from_secs(600);

fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

fn new_key() -> StorageKey {
    SessionId::generate().storage_key()
}

/// A record that is live for ten minutes, or expired a second ago.
fn record(expired: bool) -> Record {
    let now = now_ms();
    Record {
        data: [("v".to_owned(), "1".to_owned())].into(),
        user: None,
        created_at: now - Duration::from_secs(2),
        expires_at: if expired {
            now - Duration::from_secs(1)
        } else {
            now + LONG
        },
    }
}

/// A store on a table of its own, so row counts belong to one test.
async fn store_with_own_table() -> (PostgresStore, String) {
    let table = format!("t_{}", random_tag());
    let store = postgres_server::store()
        .await
        .with_table(&table)
        .expect("table name");
    store.migrate().await.expect("migrate");
    (
        store,
        postgres_server::qualified_table(&shared().schema, &table),
    )
}

async fn count(pool: &PgPool, table: &str, filter: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE {filter}"
    )))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn fill(store: &PostgresStore, live: usize, expired: usize) {
    for _ in 0..live {
        assert!(store.create(&new_key(), &record(false)).await.unwrap());
    }
    for _ in 0..expired {
        assert!(store.create(&new_key(), &record(true)).await.unwrap());
    }
}

/// Polls `condition` every 50 ms for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- expiry cleanup

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_expired_deletes_only_expired_rows_in_bounded_batches() {
    let (store, table) = store_with_own_table().await;
    fill(&store, 3, 25).await;
    assert_eq!(store.delete_expired(10).await.unwrap(), 10);
    assert_eq!(store.delete_expired(10).await.unwrap(), 10);
    assert_eq!(store.delete_expired(10).await.unwrap(), 5);
    assert_eq!(store.delete_expired(10).await.unwrap(), 0);
    assert_eq!(count(store.pool(), &table, "true").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cleaners_share_the_work_without_blocking_or_double_counting() {
    let (store, table) = store_with_own_table().await;
    fill(&store, 2, 200).await;
    let cleaners: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut total = 0;
                // Bounded: 200 rows in batches of 5 need at most 40 full batches.
                for _ in 0..100 {
                    let n = store.delete_expired(5).await.unwrap();
                    total += n;
                    if n == 0 {
                        break;
                    }
                }
                total
            })
        })
        .collect();
    let mut total = 0;
    for cleaner in cleaners {
        total += cleaner.await.unwrap();
    }
    assert_eq!(total, 200);
    assert_eq!(count(store.pool(), &table, "true").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_task_deletes_expired_rows_and_stops_when_stopped() {
    let (store, table) = store_with_own_table().await;
    fill(&store, 3, 20).await;
    let cleanup = store.spawn_cleanup(Duration::from_millis(100), 7);
    let pool = store.pool().clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&pool, &table, "true").await == 3
        })
        .await,
        "expired rows were not cleaned up"
    );
    // Rows that expire later are picked up by later runs.
    fill(&store, 0, 4).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&pool, &table, "true").await == 3
        })
        .await,
        "the task did not keep running"
    );
    cleanup.stop().await;
    fill(&store, 0, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&pool, &table, "true").await,
        8,
        "stopped task still deletes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_task_stops_when_its_handle_is_dropped() {
    let (store, table) = store_with_own_table().await;
    fill(&store, 1, 3).await;
    let cleanup = store.spawn_cleanup(Duration::from_millis(100), 100);
    let pool = store.pool().clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&pool, &table, "true").await == 1
        })
        .await
    );
    drop(cleanup);
    tokio::time::sleep(Duration::from_millis(200)).await;
    fill(&store, 0, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&pool, &table, "true").await,
        6,
        "dropped task still deletes"
    );
}

// ---------------------------------------------------------------- schema, values

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_safe_from_many_instances_at_once() {
    let table = format!("m_{}", random_tag());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let store = postgres_server::store().await.with_table(&table).unwrap();
            store.migrate().await.unwrap();
            store.migrate().await.unwrap();
            store
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(task.await.unwrap());
    }
    let key = new_key();
    assert!(stores[0].create(&key, &record(false)).await.unwrap());
    assert!(stores[3].load(&key).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_is_created_on_first_use_without_migrate() {
    let table = format!("lazy_{}", random_tag());
    let store = postgres_server::store().await.with_table(&table).unwrap();
    let key = new_key();
    assert!(store.create(&key, &record(false)).await.unwrap());
    let n = count(
        store.pool(),
        &postgres_server::qualified_table(&shared().schema, &table),
        "true",
    )
    .await;
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_table_and_schema_names_are_refused() {
    let store = postgres_server::store().await;
    for bad in ["x\"; DROP TABLE y; --", "with space", "1st", "", "ß"] {
        assert!(store.clone().with_table(bad).is_err(), "{bad:?}");
        assert!(store.clone().with_schema(bad).is_err(), "{bad:?}");
    }
    // Keywords are fine: names are always quoted.
    let store = store.with_table("user").unwrap();
    store.migrate().await.unwrap();
    assert!(store.load(&new_key()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_come_back_as_compact_equivalent_json_with_numbers_exact() {
    let store = postgres_server::store().await;
    let key = new_key();
    assert!(store.create(&key, &record(false)).await.unwrap());
    let mut changes = ChangeSet::new(now_ms() + LONG);
    changes
        .insert("obj", r#"{ "b" : 1 , "a": [1, 2.50, "x, y: z"] }"#)
        .insert("big", "123456789012345678901234567890.000001");
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        SaveOutcome::Applied
    );
    let data = store.load(&key).await.unwrap().unwrap().data;
    assert_eq!(data["obj"], r#"{"a":[1,2.50,"x, y: z"],"b":1}"#);
    assert_eq!(data["big"], "123456789012345678901234567890.000001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_jsonb_cannot_hold_fail_the_save_and_change_nothing() {
    let store = postgres_server::store().await;
    let key = new_key();
    assert!(store.create(&key, &record(false)).await.unwrap());
    for bad in [r#""nul \u0000 inside""#, "not json", "1, \"other\": 2"] {
        let mut changes = ChangeSet::new(now_ms() + LONG);
        changes.insert("good", "true").insert("bad", bad);
        let error = store.save(&key, &changes).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Backend(_)),
            "{bad:?}: {error:?}"
        );
    }
    let data = store.load(&key).await.unwrap().unwrap().data;
    assert_eq!(data.len(), 1, "{data:?}");
}

// ---------------------------------------------------------------- outages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unreachable_database_fails_fast_with_unavailable() {
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        postgres_server::free_port()
    );
    let started = Instant::now();
    let error = PostgresStore::connect(&url).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_with_unavailable_and_recovers_without_rebuilding_the_store() {
    let server = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let store = PostgresStore::connect(&server.url()).await.unwrap();
    let app = app(store.clone());
    let (status, cookie, _) = send(&app, "PUT", "/kv/a", None, "1").await;
    assert_eq!(status, StatusCode::OK);
    let cookie = cookie.expect("no session cookie");
    let key = new_key();
    assert!(store.create(&key, &record(false)).await.unwrap());

    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();

    let started = Instant::now();
    let error = store.load(&key).await.unwrap_err();
    let load_took = started.elapsed();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        load_took < Duration::from_secs(4),
        "load took {load_took:?}"
    );
    let started = Instant::now();
    let error = store
        .save(&key, &ChangeSet::new(now_ms() + LONG))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let save_took = started.elapsed();
    let (status, _, _) = send(&app, "GET", "/kv/a", Some(&cookie), "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = send(&app, "GET", "/health", Some(&cookie), "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "routes without sessions must not care"
    );
    eprintln!("outage: load failed after {load_took:?}, save after {save_took:?}");

    let server = tokio::task::spawn_blocking(move || {
        server.start_again();
        server
    })
    .await
    .unwrap();

    let started = Instant::now();
    assert!(store.load(&key).await.unwrap().is_some());
    eprintln!("recovery: first load took {:?}", started.elapsed());
    let (status, _, body) = send(&app, "GET", "/kv/a", Some(&cookie), "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    drop(store);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
}

// ---------------------------------------------------------------- through the layer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_changing_different_keys_all_persist() {
    const REQUESTS: usize = 24;
    let app = app(postgres_server::store().await);
    let (status, cookie, _) = send(&app, "PUT", "/kv/start", None, "0").await;
    assert_eq!(status, StatusCode::OK);
    let cookie = Arc::new(cookie.expect("no session cookie"));
    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let app = app.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move {
                send(
                    &app,
                    "PUT",
                    &format!("/kv/k{i}"),
                    Some(&cookie),
                    &i.to_string(),
                )
                .await
                .0
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    let (_, _, body) = send(&app, "GET", "/session", Some(&cookie), "").await;
    let data: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(data.len(), REQUESTS + 1, "lost updates: {data:?}");
    for i in 0..REQUESTS {
        assert_eq!(data[&format!("k{i}")], serde_json::json!(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_their_own_stores_serve_one_session() {
    let a = app(postgres_server::store().await);
    let b = app(postgres_server::store().await);

    let (_, cookie, _) = send(&a, "PUT", "/kv/a", None, "1").await;
    let cookie = cookie.expect("no session cookie");
    assert_eq!(send(&b, "GET", "/kv/a", Some(&cookie), "").await.2, "1");
    assert_eq!(
        send(&b, "PUT", "/kv/b", Some(&cookie), "2").await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&a, "GET", "/session", Some(&cookie), "").await.2,
        r#"{"a":1,"b":2}"#
    );

    // Alternate instances on every request: each sees the other's last write.
    for n in 0..10 {
        let (here, there) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            send(here, "GET", "/kv/n", Some(&cookie), "").await.2,
            if n == 0 {
                String::new()
            } else {
                (n - 1).to_string()
            }
        );
        assert_eq!(
            send(here, "PUT", "/kv/n", Some(&cookie), &n.to_string())
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            send(there, "GET", "/kv/n", Some(&cookie), "").await.2,
            n.to_string()
        );
    }

    // Login on one instance rotates the ID for both.
    let (status, rotated, _) = send(&b, "POST", "/login", Some(&cookie), "alice").await;
    assert_eq!(status, StatusCode::OK);
    let rotated = rotated.expect("login did not set a new cookie");
    assert_ne!(id_text(&rotated), id_text(&cookie));
    assert_eq!(send(&a, "GET", "/kv/a", Some(&rotated), "").await.2, "1");
    assert_eq!(
        send(&a, "GET", "/kv/a", Some(&cookie), "").await.0,
        StatusCode::NOT_FOUND
    );

    // Logout on one instance ends it on both.
    assert_eq!(
        send(&a, "POST", "/logout", Some(&rotated), "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&b, "GET", "/kv/a", Some(&rotated), "").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_never_appear_in_the_table() {
    let table = format!("ids_{}", random_tag());
    let store = postgres_server::store().await.with_table(&table).unwrap();
    let pool = store.pool().clone();
    let app = app(store);
    let mut ids = Vec::new();
    let mut live = Vec::new();
    for i in 0..5 {
        let (_, cookie, _) = send(&app, "PUT", "/kv/x", None, &i.to_string()).await;
        let cookie = cookie.expect("no session cookie");
        ids.push(id_text(&cookie).to_owned());
        let (_, rotated, _) =
            send(&app, "POST", "/login", Some(&cookie), &format!("user{i}")).await;
        let rotated = rotated.expect("login did not set a new cookie");
        ids.push(id_text(&rotated).to_owned());
        live.push(id_text(&rotated).to_owned());
    }
    let dump: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {} AS t",
        postgres_server::qualified_table(&shared().schema, &table)
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    for id in &ids {
        assert!(
            !dump.contains(id.as_str()),
            "session ID found in the table:\n{dump}"
        );
    }
    // The rows are there, filed under the hash of each live ID.
    for id in &live {
        let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(URL_SAFE_NO_PAD.decode(id).unwrap()));
        assert!(dump.contains(&hash), "no row for a live session:\n{dump}");
    }
    assert_eq!(dump.lines().count(), live.len());
}

/// `jsonb` hands objects back with its own key order and spacing; putting the
/// same struct into the session on the next request must not count as a
/// change (it used to write on every request).
#[tokio::test]
async fn re_inserting_an_unchanged_object_writes_nothing() {
    let store = common::instrumented::Instrumented::new(postgres_server::store().await);
    let app = app(store.clone());
    let profile = r#"{"zeta":1,"alpha":[1,2],"middle":{"b":true,"a":null}}"#;
    let (status, cookie, _) = send(&app, "PUT", "/kv/profile", None, profile).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = cookie.expect("no session cookie");
    let (_, _, stored) = send(&app, "GET", "/kv/profile", Some(&cookie), "").await;
    assert_ne!(stored, profile, "jsonb should have reordered the keys");
    let writes = store.writes();
    for _ in 0..3 {
        let (status, _, _) = send(&app, "PUT", "/kv/profile", Some(&cookie), profile).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        store.writes(),
        writes,
        "an unchanged value was written again"
    );
    let changed = r#"{"zeta":2,"alpha":[1,2],"middle":{"b":true,"a":null}}"#;
    send(&app, "PUT", "/kv/profile", Some(&cookie), changed).await;
    assert_eq!(
        store.writes(),
        writes + 1,
        "a changed value must be written"
    );
}

// ------------------------------------------------------ stored format

/// A table as releases before stored formats created it, holding one row
/// exactly as they wrote it; returns the store on it (which brings the table
/// up to date on first use), the qualified table name and the row's key.
async fn table_in_todays_format() -> (PostgresStore, String, StorageKey) {
    let table_name = format!("t_{}", random_tag());
    let store = postgres_server::store().await;
    // Creates the test schema (under the store's lock against racing tests).
    store.migrate().await.unwrap();
    let store = store.with_table(&table_name).expect("table name");
    let table = postgres_server::qualified_table(&shared().schema, &table_name);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (storage_key text PRIMARY KEY, data jsonb NOT NULL, \
         user_id text, created_at_ms bigint NOT NULL, expires_at_ms bigint NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let key = new_key();
    let created = now_ms();
    let millis =
        |at: SystemTime| i64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (storage_key, data, user_id, created_at_ms, expires_at_ms) \
         VALUES ($1, '{{\"count\": 3, \"cart\": {{\"items\": [1, 2]}}}}'::jsonb, 'alice', $2, $3)"
    )))
    .bind(key.as_str())
    .bind(millis(created))
    .bind(millis(created + LONG))
    .execute(store.pool())
    .await
    .unwrap();
    (store, table, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_in_todays_format_written_raw_loads_and_saves_after_the_upgrade() {
    let (store, table, key) = table_in_todays_format().await;
    let record = store.load(&key).await.unwrap().expect("the old row loads");
    assert_eq!(record.data["count"], "3");
    assert_eq!(record.data["cart"], r#"{"items":[1,2]}"#);
    assert_eq!(record.user.as_deref(), Some("alice"));
    assert_eq!(store.user_sessions("alice").await.unwrap().len(), 1);
    let mut changes = ChangeSet::new(now_ms() + LONG);
    changes.insert("note", "\"hi\"");
    assert_eq!(
        store.save(&key, &changes).await.unwrap(),
        SaveOutcome::Applied
    );
    assert_eq!(store.load(&key).await.unwrap().unwrap().data.len(), 3);
    assert_eq!(
        count(store.pool(), &table, "format IS NULL").await,
        1,
        "format 1 is not written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_in_a_newer_format_is_refused_and_left_as_it_is() {
    let (store, table, key) = table_in_todays_format().await;
    store.migrate().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("UPDATE {table} SET format = 2")))
        .execute(store.pool())
        .await
        .unwrap();
    let snapshot = format!("SELECT row_to_json(t)::text FROM {table} AS t");
    let before: String = sqlx::query_scalar(AssertSqlSafe(snapshot.clone()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_newer_format_refused(&store, &key).await;
    let after: String = sqlx::query_scalar(AssertSqlSafe(snapshot))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(after, before, "the newer row was changed");
    assert!(store.delete(&key).await.unwrap(), "logging out still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_an_up_to_date_table_does_not_wait_for_its_readers() {
    let name = format!("t_{}", random_tag());
    let store = postgres_server::store().await.with_table(&name).unwrap();
    store.migrate().await.unwrap();
    let table = postgres_server::qualified_table(&shared().schema, &name);
    // What every load holds while it runs: it conflicts only with the
    // exclusive lock an `ALTER TABLE` takes.
    let mut reader = store.pool().begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE {table} IN ACCESS SHARE MODE"
    )))
    .execute(&mut *reader)
    .await
    .unwrap();
    // Another instance starting up migrates the same table.
    let starting = postgres_server::store().await.with_table(&name).unwrap();
    let migrated = tokio::time::timeout(Duration::from_secs(10), starting.migrate()).await;
    reader.rollback().await.unwrap();
    migrated
        .expect("migrate waited for a reader: it locked the table exclusively")
        .unwrap();
}
