//! tower-sessions' own `SessionManagerLayer`, 0.15 and 0.14, on our stores
//! against real servers: one suite, instantiated for every (version, store).
//!
//! The suite drives an axum app in process (no sockets) and checks what a
//! tower-sessions user relies on, plus our promises: the store holds only a hash
//! of the ID, a save after a delete does not bring the session back.
#![cfg(all(feature = "tower-sessions", feature = "tower-sessions-014"))]

mod common;

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// What a response told the client.
struct Reply {
    status: StatusCode,
    /// The whole `Set-Cookie` header, if any.
    set_cookie: Option<String>,
    body: String,
}

impl Reply {
    /// The `name=value` part of the cookie set.
    fn cookie(&self) -> String {
        let set = self.set_cookie.as_deref().expect("no cookie set");
        set.split(';').next().unwrap().to_owned()
    }
}

async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>, body: &str) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        set_cookie,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Polls `done` until it holds, failing after `limit`.
async fn eventually<F: Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The suite for one tower-sessions version: `$ts` is its crate, `$ours` our
/// module for it (for `storage_key`). Every check is a generic function over
/// the store, so each store instantiates the same code.
macro_rules! tower_sessions_suite {
    ($ts:ident, $ours:ident) => {
        use std::str::FromStr as _;
        use std::sync::Arc;
        use std::time::{Duration, SystemTime};

        use axum::Router;
        use axum::extract::Extension;
        use axum::routing::{get, post};
        use http::StatusCode;
        use tokio::sync::Notify;
        use unstuck::store::tower_sessions::$ours::storage_key;
        use $ts::cookie::time;
        use $ts::session::Id;
        use $ts::{Expiry, Session, SessionManagerLayer};

        use crate::{eventually, send};

        /// Both traits: theirs for the layer, ours to look inside.
        pub trait Store: $ts::SessionStore + unstuck::SessionStore + Clone {}
        impl<S: $ts::SessionStore + unstuck::SessionStore + Clone> Store for S {}

        /// Lets a test hold a request inside its handler.
        #[derive(Default)]
        struct Gate {
            entered: Notify,
            release: Notify,
        }

        async fn counter(session: Session) -> String {
            let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
            session.insert("n", n).await.unwrap();
            n.to_string()
        }
        async fn peek(session: Session) -> String {
            let n: Option<u64> = session.get("n").await.unwrap();
            serde_json::to_string(&n).unwrap()
        }
        async fn login(session: Session, user: String) -> &'static str {
            session.cycle_id().await.unwrap();
            session.insert("user", user).await.unwrap();
            "ok"
        }
        async fn me(session: Session) -> String {
            let user: Option<String> = session.get("user").await.unwrap();
            serde_json::to_string(&user).unwrap()
        }
        async fn flush(session: Session) -> &'static str {
            session.flush().await.unwrap();
            "ok"
        }
        /// Changes the session, then waits for the test before finishing (and
        /// so before the layer saves).
        async fn slow(session: Session, Extension(gate): Extension<Arc<Gate>>) -> &'static str {
            session.insert("late", true).await.unwrap();
            gate.entered.notify_one();
            gate.release.notified().await;
            "ok"
        }

        fn app_with<S: Store>(store: S, expiry: Expiry, gate: Arc<Gate>) -> Router {
            Router::new()
                .route("/counter", get(counter))
                .route("/peek", get(peek))
                .route("/login", post(login))
                .route("/me", get(me))
                .route("/flush", post(flush))
                .route("/slow", post(slow))
                .layer(Extension(gate))
                .layer(
                    SessionManagerLayer::new(store)
                        .with_secure(false)
                        .with_expiry(expiry),
                )
        }

        fn app<S: Store>(store: S) -> Router {
            let expiry = Expiry::OnInactivity(time::Duration::minutes(10));
            app_with(store, expiry, Arc::default())
        }

        /// The session ID a `id=value` cookie carries.
        fn id_of(cookie: &str) -> Id {
            let (name, value) = cookie.split_once('=').expect("name=value");
            assert_eq!(name, "id", "tower-sessions' default cookie name");
            Id::from_str(value).expect("a tower-sessions ID")
        }

        async fn stored<S: Store>(store: &S, cookie: &str) -> Option<unstuck::Record> {
            unstuck::SessionStore::load(store, &storage_key(&id_of(cookie)))
                .await
                .unwrap()
        }

        pub async fn counter_persists_under_a_hash_of_the_id<S: Store>(store: S) {
            let app = app(store.clone());
            let first = send(&app, "GET", "/counter", None, "").await;
            assert_eq!((first.status, first.body.as_str()), (StatusCode::OK, "1"));
            let cookie = first.cookie();
            for n in 2..=3 {
                let reply = send(&app, "GET", "/counter", Some(&cookie), "").await;
                assert_eq!(reply.body, n.to_string());
            }
            let record = stored(&store, &cookie)
                .await
                .expect("kept under the hashed ID");
            let id_text = cookie.split_once('=').unwrap().1;
            assert!(
                record.data.values().all(|v| !v.contains(id_text)),
                "the record must not carry the ID"
            );
            let stored_n = record.data.values().any(|v| v.contains(r#""n":3"#));
            assert!(stored_n, "data: {:?}", record.data);
        }

        pub async fn two_instances_share_one_session<S: Store>(store: S) {
            let (a, b) = (app(store.clone()), app(store.clone()));
            let cookie = send(&a, "GET", "/counter", None, "").await.cookie();
            for (i, instance) in [&b, &a, &b, &b].into_iter().enumerate() {
                let reply = send(instance, "GET", "/counter", Some(&cookie), "").await;
                assert_eq!(reply.body, (i + 2).to_string(), "request {i}");
            }
        }

        pub async fn cycle_id_keeps_the_data_under_a_new_id_and_ends_the_old_one<S: Store>(
            store: S,
        ) {
            let app = app(store.clone());
            let old = send(&app, "GET", "/counter", None, "").await.cookie();
            let reply = send(&app, "POST", "/login", Some(&old), "ann").await;
            assert_eq!(reply.status, StatusCode::OK);
            let new = reply.cookie();
            assert_ne!(id_of(&new), id_of(&old));
            assert_eq!(stored(&store, &old).await, None, "old ID still stored");
            assert_eq!(
                send(&app, "GET", "/me", Some(&new), "").await.body,
                r#""ann""#
            );
            assert_eq!(
                send(&app, "GET", "/counter", Some(&new), "").await.body,
                "2"
            );
            assert_eq!(
                send(&app, "GET", "/peek", Some(&old), "").await.body,
                "null"
            );
        }

        pub async fn flush_deletes_the_session_and_removes_the_cookie<S: Store>(store: S) {
            let app = app(store.clone());
            let cookie = send(&app, "GET", "/counter", None, "").await.cookie();
            assert!(stored(&store, &cookie).await.is_some());
            let reply = send(&app, "POST", "/flush", Some(&cookie), "").await;
            assert_eq!(reply.status, StatusCode::OK);
            let removal = reply.set_cookie.expect("a removal cookie");
            assert!(removal.contains("Max-Age=0"), "{removal}");
            assert_eq!(stored(&store, &cookie).await, None);
            assert_eq!(
                send(&app, "GET", "/peek", Some(&cookie), "").await.body,
                "null"
            );
        }

        pub async fn an_idle_session_expires_in_the_store<S: Store>(store: S) {
            // Long enough that the first check cannot miss it on a loaded machine.
            let idle = Duration::from_secs(4);
            let expiry = Expiry::OnInactivity(time::Duration::try_from(idle).unwrap());
            let app = app_with(store.clone(), expiry, Arc::default());
            let before = SystemTime::now();
            let cookie = send(&app, "GET", "/counter", None, "").await.cookie();
            let record = stored(&store, &cookie).await.expect("live at first");
            assert!(
                record.expires_at > before && record.expires_at <= SystemTime::now() + idle,
                "expiry_date not kept"
            );
            eventually(Duration::from_secs(30), "session expired", || async {
                stored(&store, &cookie).await.is_none()
            })
            .await;
            assert_eq!(
                send(&app, "GET", "/peek", Some(&cookie), "").await.body,
                "null"
            );
        }

        pub async fn a_save_finishing_after_a_flush_does_not_resurrect<S: Store>(store: S) {
            let gate = Arc::new(Gate::default());
            let expiry = Expiry::OnInactivity(time::Duration::minutes(10));
            let app = app_with(store.clone(), expiry, gate.clone());
            let cookie = send(&app, "GET", "/counter", None, "").await.cookie();

            let slow = tokio::spawn({
                let (app, cookie) = (app.clone(), cookie.clone());
                async move { send(&app, "POST", "/slow", Some(&cookie), "").await }
            });
            gate.entered.notified().await;
            let flushed = send(&app, "POST", "/flush", Some(&cookie), "").await;
            assert_eq!(flushed.status, StatusCode::OK);
            gate.release.notify_one();
            let slow = slow.await.unwrap();

            assert_eq!(
                slow.status,
                StatusCode::OK,
                "a save of a gone session is no error"
            );
            assert_eq!(stored(&store, &cookie).await, None, "the session came back");
            assert_eq!(
                send(&app, "GET", "/peek", Some(&cookie), "").await.body,
                "null"
            );
        }

        pub async fn sessions_of_both_layers_share_one_store_without_clashing<S: Store>(store: S) {
            let theirs = app(store.clone());
            let ours = crate::common::app::app(store.clone());
            let their_cookie = send(&theirs, "GET", "/counter", None, "").await.cookie();
            let our_cookie = send(&ours, "GET", "/counter", None, "").await.cookie();
            for n in 2..=3 {
                let reply = send(&theirs, "GET", "/counter", Some(&their_cookie), "").await;
                assert_eq!(reply.body, n.to_string(), "their layer");
                let reply = send(&ours, "GET", "/counter", Some(&our_cookie), "").await;
                assert_eq!(reply.body, n.to_string(), "our layer");
            }
            // Each layer takes the other's cookie for no session at all.
            let peek = send(&theirs, "GET", "/peek", Some(&our_cookie), "").await;
            assert_eq!(peek.body, "null");
            let fresh = send(&ours, "GET", "/counter", Some(&their_cookie), "").await;
            assert_eq!(fresh.body, "1");
            assert!(stored(&store, &their_cookie).await.is_some());
        }

        pub async fn concurrent_logins_each_get_their_own_session<S: Store>(store: S) {
            const USERS: usize = 8;
            let (a, b) = (app(store.clone()), app(store.clone()));
            let mut anonymous = Vec::new();
            for _ in 0..USERS {
                anonymous.push(send(&a, "GET", "/counter", None, "").await.cookie());
            }
            let logins = anonymous.iter().enumerate().map(|(i, cookie)| {
                let app = if i % 2 == 0 { a.clone() } else { b.clone() };
                let cookie = cookie.clone();
                tokio::spawn(async move {
                    send(&app, "POST", "/login", Some(&cookie), &format!("user{i}")).await
                })
            });
            let mut fresh = Vec::new();
            for login in logins.collect::<Vec<_>>() {
                let reply = login.await.unwrap();
                assert_eq!(reply.status, StatusCode::OK);
                fresh.push(reply.cookie());
            }
            for (i, (old, new)) in anonymous.iter().zip(&fresh).enumerate() {
                let other = if i % 2 == 0 { &b } else { &a };
                assert_eq!(
                    send(other, "GET", "/me", Some(new), "").await.body,
                    format!(r#""user{i}""#)
                );
                assert_eq!(
                    send(other, "GET", "/counter", Some(new), "").await.body,
                    "2"
                );
                assert_eq!(
                    stored(&store, old).await,
                    None,
                    "user{i}'s old ID still stored"
                );
            }
            let mut ids: Vec<i128> = fresh.iter().map(|c| id_of(c).0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), USERS, "two logins share an ID");
        }
    };
}

mod v015 {
    tower_sessions_suite!(tower_sessions, v015);
}

mod v014 {
    tower_sessions_suite!(tower_sessions_014, v014);
}

/// One `#[tokio::test]` per check of the suite, for both versions, on the store
/// `$make` builds (it may `.await`).
macro_rules! on_store {
    ($make:expr) => {
        on_store!(@each $make;
            counter_persists_under_a_hash_of_the_id,
            two_instances_share_one_session,
            cycle_id_keeps_the_data_under_a_new_id_and_ends_the_old_one,
            flush_deletes_the_session_and_removes_the_cookie,
            an_idle_session_expires_in_the_store,
            a_save_finishing_after_a_flush_does_not_resurrect,
            sessions_of_both_layers_share_one_store_without_clashing,
            concurrent_logins_each_get_their_own_session
        );
    };
    (@each $make:expr; $($check:ident),+) => {
        mod v015 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    crate::v015::$check($make).await;
                }
            )+
        }
        mod v014 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    crate::v014::$check($make).await;
                }
            )+
        }
    };
}

mod memory {
    on_store!(unstuck::MemoryStore::new());
}

#[cfg(feature = "redis")]
mod redis_standalone {
    on_store!(
        unstuck::RedisStore::connect(&crate::common::redis_server::standalone_url())
            .await
            .unwrap()
    );
}

#[cfg(feature = "redis")]
mod redis_sentinel {
    on_store!(
        unstuck::RedisStore::connect(&crate::common::redis_server::sentinel_url())
            .await
            .unwrap()
    );
}

#[cfg(feature = "redis")]
mod redis_cluster {
    on_store!(
        unstuck::RedisStore::connect(&crate::common::redis_server::cluster_url())
            .await
            .unwrap()
    );
}

#[cfg(feature = "postgres")]
mod postgres {
    on_store!(crate::common::postgres_server::store().await);
}

/// Redis as an operator sees it: no key or value holds a tower-sessions ID.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_tower_sessions_id_in_keys_or_values() {
    use common::redis_server::{dump, standalone_port, standalone_url};
    use std::str::FromStr as _;
    let store = unstuck::RedisStore::connect(&standalone_url())
        .await
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            axum::routing::get(|session: tower_sessions::Session| async move {
                session.insert("k", "v").await.unwrap();
            }),
        )
        .layer(tower_sessions::SessionManagerLayer::new(store.clone()));
    let reply = send(&app, "GET", "/", None, "").await;
    let cookie = reply.cookie();
    let id = cookie.split_once('=').unwrap().1;
    let entries = dump(standalone_port(), "*");
    assert!(!entries.is_empty(), "nothing in Redis");
    for (key, value) in entries {
        assert!(
            !key.contains(id) && !value.contains(id),
            "{key} holds the ID"
        );
    }
    let key = unstuck::store::tower_sessions::v015::storage_key(
        &tower_sessions::session::Id::from_str(id).unwrap(),
    );
    assert!(
        unstuck::SessionStore::load(&store, &key)
            .await
            .unwrap()
            .is_some()
    );
}

/// `ExpiredDeletion` on PostgreSQL, both versions: expired rows go, live ones
/// stay.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_expired_deletion_removes_only_expired_rows() {
    use common::postgres_server::{self, qualified_table, random_tag, shared};
    use sqlx::AssertSqlSafe;
    use unstuck::{Record, SessionId, SessionStore as _};

    let table_name = format!("t_{}", random_tag());
    let store = postgres_server::store()
        .await
        .with_table(&table_name)
        .unwrap();
    store.migrate().await.unwrap();
    let table = qualified_table(&shared().schema, &table_name);
    async fn rows(store: &unstuck::PostgresStore, table: &str) -> i64 {
        let query = format!("SELECT count(*) FROM {table}");
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(query))
            .fetch_one(store.pool())
            .await
            .unwrap()
    }
    async fn fill(store: &unstuck::PostgresStore, live: usize, expired: usize) {
        let now = SystemTime::now();
        for i in 0..live + expired {
            let expires_at = if i < live {
                now + Duration::from_secs(600)
            } else {
                now - Duration::from_secs(1)
            };
            let record = Record {
                data: Default::default(),
                user: None,
                created_at: now - Duration::from_secs(2),
                expires_at,
            };
            let key = SessionId::generate().storage_key();
            assert!(store.create(&key, &record).await.unwrap());
        }
    }
    fill(&store, 2, 5).await;
    assert_eq!(rows(&store, &table).await, 7);
    tower_sessions::ExpiredDeletion::delete_expired(&store)
        .await
        .unwrap();
    assert_eq!(rows(&store, &table).await, 2);
    fill(&store, 0, 3).await;
    tower_sessions_014::ExpiredDeletion::delete_expired(&store)
        .await
        .unwrap();
    assert_eq!(rows(&store, &table).await, 2);
}
