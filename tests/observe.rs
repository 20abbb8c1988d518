//! Observability: the metrics the layer records (feature `metrics`) and the
//! logs it writes, which never carry a session ID, cookie value or storage key.
//!
//! Each test runs on a current-thread runtime inside a thread-local metrics
//! recorder (or tracing subscriber), so tests in this binary do not see each
//! other's numbers or lines.

mod common;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use tokio::sync::Notify;
use unstuck::{MemoryStore, SessionLayer, SessionStore};

use common::app::{Client, id_text, routes, shared_key};

fn block_on<T>(work: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(work)
}

/// Holds a request between loading and saving its session until released,
/// so another request can end the session in between.
#[derive(Clone, Default)]
struct Gate {
    loaded: Arc<Notify>,
    release: Arc<Notify>,
}

/// The shared test routes (`common::app::routes`), and `/gated-write` and
/// `/gated-read`, which wait at `gate`.
fn app(
    store: impl SessionStore,
    layer: impl FnOnce(SessionLayer) -> SessionLayer,
) -> (Router, Gate) {
    let gate = Gate::default();
    let (w, r) = (gate.clone(), gate.clone());
    let router = routes()
        .route(
            "/gated-write",
            get(move |session: unstuck::Session| async move {
                session.insert("late", 1)?;
                w.loaded.notify_one();
                w.release.notified().await;
                Ok::<_, unstuck::Error>("late")
            }),
        )
        .route(
            "/gated-read",
            get(move |_session: unstuck::Session| async move {
                r.loaded.notify_one();
                r.release.notified().await;
                "read"
            }),
        )
        .layer(layer(SessionLayer::new(store).with_keys([shared_key()])));
    (router, gate)
}

/// Runs a gated request against a logout of the same session in between;
/// returns the gated request's status.
async fn race_logout(app: &Router, gate: &Gate, client: &Client, gated: &str) -> StatusCode {
    let (mut slow, mut logout) = (client.clone(), client.clone());
    let (status, ()) = tokio::join!(async { slow.send(app, "GET", gated, "").await.0 }, async {
        gate.loaded.notified().await;
        let (status, _) = logout.send(app, "POST", "/logout", "").await;
        assert_eq!(status, StatusCode::OK);
        gate.release.notify_one();
    });
    status
}

#[cfg(feature = "metrics")]
mod metrics {
    use std::time::Duration;

    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::common::instrumented::{Instrumented, Mode};

    /// Every metric recorded, taken once (a snapshot resets what it reads).
    type Recorded = Vec<(CompositeKey, DebugValue)>;

    /// What was recorded for `name` with exactly these labels (sorted).
    fn value<'a>(
        recorded: &'a Recorded,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a DebugValue> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        recorded.iter().find_map(|(key, value)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (key.name() == name && labels == wanted).then_some(value)
        })
    }

    fn counter(snapshotter: &Recorded, name: &str, labels: &[(&str, &str)]) -> u64 {
        match value(snapshotter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn samples(snapshotter: &Recorded, name: &str, labels: &[(&str, &str)]) -> usize {
        match value(snapshotter, name, labels) {
            Some(DebugValue::Histogram(samples)) => samples.len(),
            None => 0,
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// Runs `work` with a recorder of its own; returns what it recorded.
    fn recorded(work: impl Future<Output = ()>) -> Recorded {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || block_on(work));
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key, value))
            .collect()
    }

    #[test]
    fn loads_saves_conflicts_and_events_are_counted_by_outcome() {
        let s = recorded(async {
            let (app, gate) = app(MemoryStore::new(), |layer| {
                // Every read touches, so a read can find its session gone.
                layer.with_idle_refresh_interval(Duration::ZERO)
            });
            let mut browser = Client::default();
            browser.send(&app, "GET", "/counter", "").await; // none, created
            browser.send(&app, "GET", "/counter", "").await; // hit, saved
            let stale = browser.clone();
            browser.send(&app, "POST", "/logout", "").await; // hit, destroyed
            let mut stale2 = stale.clone();
            stale2.send(&app, "GET", "/key", "").await; // miss

            let mut writer = Client::default();
            writer.send(&app, "GET", "/counter", "").await; // none, created
            let status = race_logout(&app, &gate, &writer, "/gated-write").await;
            assert_eq!(status, StatusCode::CONFLICT);

            let mut reader = Client::default();
            reader.send(&app, "GET", "/counter", "").await; // none, created
            let status = race_logout(&app, &gate, &reader, "/gated-read").await;
            assert_eq!(status, StatusCode::OK, "a lost touch loses nothing");
        });
        let m = |outcome| [("store", "memory"), ("outcome", outcome)];
        assert_eq!(counter(&s, "unstuck_loads_total", &m("none")), 3);
        // 1 counter, 1 logout, 2 gated, 2 racing logouts (the touch's session
        // was there when loaded).
        assert_eq!(counter(&s, "unstuck_loads_total", &m("hit")), 6);
        assert_eq!(counter(&s, "unstuck_loads_total", &m("miss")), 1);
        assert_eq!(samples(&s, "unstuck_load_duration_seconds", &m("hit")), 6);
        assert_eq!(samples(&s, "unstuck_load_duration_seconds", &m("none")), 0);
        // 3 creates, 1 save, 3 logouts (the gated reads' touches load first).
        assert_eq!(counter(&s, "unstuck_saves_total", &m("applied")), 7);
        assert_eq!(counter(&s, "unstuck_saves_total", &m("conflict")), 1);
        assert_eq!(counter(&s, "unstuck_saves_total", &m("gone")), 1);
        assert_eq!(
            samples(&s, "unstuck_save_duration_seconds", &m("conflict")),
            1
        );
        let e = |event| [("store", "memory"), ("event", event)];
        assert_eq!(counter(&s, "unstuck_events_total", &e("created")), 3);
        assert_eq!(counter(&s, "unstuck_events_total", &e("destroyed")), 3);
    }

    #[test]
    fn store_failures_and_timeouts_are_counted_by_kind() {
        let s = recorded(async {
            let store = Instrumented::new(MemoryStore::new());
            let (app, _) = app(store.clone(), |layer| {
                layer.with_store_timeout(Duration::from_millis(200))
            });
            let mut browser = Client::default();
            browser.send(&app, "GET", "/counter", "").await;
            store.set_mode(Mode::Down);
            let (status, _) = browser.send(&app, "GET", "/counter", "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            store.set_mode(Mode::Hung);
            let (status, _) = browser.send(&app, "GET", "/counter", "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            store.set_mode(Mode::WritesFail);
            let (status, _) = browser.send(&app, "GET", "/counter", "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        });
        let err = |operation, kind| {
            [
                ("store", "custom"),
                ("operation", operation),
                ("kind", kind),
            ]
        };
        assert_eq!(
            counter(
                &s,
                "unstuck_store_errors_total",
                &err("load", "unavailable")
            ),
            1
        );
        assert_eq!(
            counter(&s, "unstuck_store_errors_total", &err("load", "timeout")),
            1
        );
        assert_eq!(
            counter(
                &s,
                "unstuck_store_errors_total",
                &err("save", "unavailable")
            ),
            1
        );
        let timeouts = [("store", "custom"), ("operation", "load")];
        assert_eq!(counter(&s, "unstuck_store_timeouts_total", &timeouts), 1);
        let m = |outcome| [("store", "custom"), ("outcome", outcome)];
        assert_eq!(counter(&s, "unstuck_loads_total", &m("error")), 2);
        assert_eq!(counter(&s, "unstuck_saves_total", &m("error")), 1);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_near_cache_hits_and_store_errors_are_counted() {
        use crate::common::redis_server::RedisServer;
        use unstuck::{NearCache, RedisStore};

        let mut server = RedisServer::start();
        let url = server.url();
        let s = recorded(async {
            let store = NearCache::new(RedisStore::connect(&url).await.unwrap()).unwrap();
            let (app, _) = app(store, |layer| layer);
            let mut browser = Client::default();
            browser.send(&app, "GET", "/counter", "").await; // created
            browser.send(&app, "GET", "/key", "").await; // miss: not cached yet
            browser.send(&app, "GET", "/key", "").await; // hit
            server.kill();
            let (status, _) = browser.send(&app, "GET", "/counter", "").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        });
        let redis = [("store", "redis")];
        assert!(counter(&s, "unstuck_near_cache_hits_total", &redis) >= 1);
        assert!(counter(&s, "unstuck_near_cache_misses_total", &redis) >= 1);
        // The last load may be answered from the cache before the outage
        // is noticed; its save cannot be.
        let hit = [("store", "redis"), ("outcome", "hit")];
        assert!(counter(&s, "unstuck_loads_total", &hit) >= 2);
        let failed = [("store", "redis"), ("outcome", "error")];
        assert!(
            counter(&s, "unstuck_loads_total", &failed)
                + counter(&s, "unstuck_saves_total", &failed)
                >= 1
        );
        let errors: u64 = ["load", "save"]
            .iter()
            .map(|op| {
                counter(
                    &s,
                    "unstuck_store_errors_total",
                    &[
                        ("store", "redis"),
                        ("operation", op),
                        ("kind", "unavailable"),
                    ],
                )
            })
            .sum();
        assert!(errors >= 1, "the outage is counted as unavailable");
    }
}

mod logs {
    use std::io::Write;
    use std::sync::Mutex;

    use tracing_subscriber::fmt::format::FmtSpan;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Everything logged at any level while `work` runs, with span fields.
    fn logged(work: impl Future<Output = Vec<String>>) -> (String, Vec<String>) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let secrets = tracing::subscriber::with_default(subscriber, || block_on(work));
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (text, secrets)
    }

    /// A full login/logout flow, a conflict and an outage; returns every
    /// cookie value, session ID and storage key it saw.
    async fn flow(app: &Router, gate: &Gate) -> Vec<String> {
        let mut secrets = Vec::new();
        let mut note = |client: &Client, key: &str| {
            if let Some(cookie) = &client.cookie {
                secrets.push(cookie.split_once('=').unwrap().1.to_owned());
                secrets.push(id_text(cookie).to_owned());
            }
            if !key.is_empty() {
                secrets.push(key.to_owned());
            }
        };
        let (mut browser, mut phone) = (Client::default(), Client::default());
        browser.send(app, "GET", "/counter", "").await;
        note(
            &browser,
            &browser.clone().send(app, "GET", "/key", "").await.1,
        );
        browser.send(app, "POST", "/login", "alice").await;
        note(
            &browser,
            &browser.clone().send(app, "GET", "/key", "").await.1,
        );
        phone.send(app, "POST", "/login", "alice").await;
        note(&phone, &phone.clone().send(app, "GET", "/key", "").await.1);
        let status = race_logout(app, gate, &phone, "/gated-write").await;
        assert_eq!(status, StatusCode::CONFLICT);
        phone.send(app, "POST", "/login", "alice").await;
        note(&phone, &phone.clone().send(app, "GET", "/key", "").await.1);
        browser.send(app, "POST", "/logout-everywhere", "").await;
        browser.send(app, "GET", "/counter", "").await;
        note(
            &browser,
            &browser.clone().send(app, "GET", "/key", "").await.1,
        );
        browser.send(app, "POST", "/logout", "").await;
        secrets
    }

    fn check(text: &str, secrets: &[String]) {
        assert!(secrets.len() >= 12, "the flow saw its sessions");
        for span in ["unstuck.load", "unstuck.save"] {
            assert!(text.contains(span), "no {span} span in:\n{text}");
        }
        assert!(text.contains("outcome=\"conflict\""), "{text}");
        // Sessions are named by their 16-hex-digit correlation tag.
        let tagged = text
            .split("session=")
            .skip(1)
            .filter(|rest| {
                rest.trim_start_matches('"')
                    .get(..16)
                    .is_some_and(|tag| tag.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .count();
        assert!(tagged >= 10, "spans carry correlation tags:\n{text}");
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} logged in:\n{text}"
            );
        }
    }

    #[test]
    fn a_login_logout_flow_logs_no_id_cookie_or_storage_key_on_memory() {
        let (text, secrets) = logged(async {
            let (app, gate) = app(MemoryStore::new(), |layer| layer);
            flow(&app, &gate).await
        });
        check(&text, &secrets);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_login_logout_flow_logs_no_id_cookie_or_storage_key_on_redis() {
        let url = crate::common::redis_server::standalone_url();
        let (text, secrets) = logged(async {
            let store = unstuck::RedisStore::connect(&url).await.unwrap();
            let (app, gate) = app(store, |layer| layer);
            flow(&app, &gate).await
        });
        check(&text, &secrets);
    }
}
