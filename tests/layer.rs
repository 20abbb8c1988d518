//! What the layer does with its store and its cookies, in process.

mod common;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use unstuck::{CookieProtection, Key, MemoryStore, Session, SessionLayer};

use common::instrumented::{Instrumented, Mode};

async fn read(session: Session) -> Result<String, unstuck::Error> {
    Ok(session
        .get::<u64>("n")?
        .map_or("none".to_owned(), |n| n.to_string()))
}

async fn write(session: Session) -> Result<String, unstuck::Error> {
    let n: u64 = session.get("n")?.unwrap_or(0) + 1;
    session.insert("n", n)?;
    Ok(n.to_string())
}

async fn health() -> &'static str {
    "ok"
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/read", get(read))
        .route("/write", get(write))
        .route(
            "/poison",
            get(|session: Session| async move {
                session.insert("n", "not a number")?;
                session.insert("other", 7)?;
                Ok::<_, unstuck::Error>("poisoned")
            }),
        )
        .route(
            "/other",
            get(|session: Session| async move {
                Ok::<_, unstuck::Error>(session.get::<u64>("other")?.unwrap().to_string())
            }),
        )
        .route(
            "/destroy-then-flash",
            get(|session: Session| async move {
                session.destroy();
                session.insert("flash", "bye")?;
                Ok::<_, unstuck::Error>("ok")
            }),
        )
        .layer(layer)
}

struct Reply {
    status: StatusCode,
    body: String,
    set_cookie: Option<String>,
}

async fn call(app: &Router, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
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
        body: String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
    }
}

fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A router on an instrumented memory store, and a cookie for a session holding n=1.
async fn with_session(
    layer: impl FnOnce(SessionLayer) -> SessionLayer,
) -> (Router, Instrumented<MemoryStore>, String) {
    let store = Instrumented::new(MemoryStore::new());
    let app = router(layer(SessionLayer::new(store.clone())));
    let created = call(&app, "/write", None).await;
    let cookie = pair(&created.set_cookie.expect("new session cookie"));
    (app, store, cookie)
}

#[tokio::test]
async fn routes_without_the_extractor_never_touch_the_store() {
    let (app, store, cookie) = with_session(|l| l).await;
    let (reads, writes) = (store.reads(), store.writes());
    for _ in 0..5 {
        assert_eq!(
            call(&app, "/health", Some(&cookie)).await.status,
            StatusCode::OK
        );
    }
    store.set_mode(Mode::Down);
    assert_eq!(
        call(&app, "/health", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert_eq!((store.reads(), store.writes()), (reads, writes));
}

#[tokio::test]
async fn read_only_requests_do_not_write() {
    let (app, store, cookie) = with_session(|l| l).await;
    let writes = store.writes();
    for _ in 0..10 {
        let reply = call(&app, "/read", Some(&cookie)).await;
        assert_eq!(reply.body, "1");
        assert_eq!(reply.set_cookie, None);
    }
    assert_eq!(store.writes(), writes);
}

#[tokio::test]
async fn idle_refresh_writes_at_most_once_per_interval() {
    let (app, store, cookie) = with_session(|l| {
        l.with_idle_timeout(Duration::from_secs(60))
            .with_idle_refresh_interval(Duration::from_millis(400))
    })
    .await;
    let writes = store.writes();
    call(&app, "/read", Some(&cookie)).await;
    assert_eq!(store.writes(), writes, "fresh session refreshed at once");
    tokio::time::sleep(Duration::from_millis(450)).await;
    call(&app, "/read", Some(&cookie)).await;
    call(&app, "/read", Some(&cookie)).await;
    call(&app, "/read", Some(&cookie)).await;
    assert_eq!(store.writes(), writes + 1, "one refresh for three reads");
}

#[tokio::test]
async fn doubtful_cookies_cause_no_store_lookup() {
    let (app, store, cookie) = with_session(|l| l).await;
    let reads = store.reads();
    let value = cookie.strip_prefix("id=").unwrap();
    // A signature with its first character changed (to one it did not have:
    // "A" in front of an "A…" signature would change nothing).
    let other = if value.starts_with('A') { 'B' } else { 'A' };
    for bad in [
        format!("id={}", &value[44..]),
        format!("id={other}{}", &value[1..]),
        format!("{cookie}; {cookie}"),
        "id=garbage".to_owned(),
    ] {
        assert_eq!(call(&app, "/read", Some(&bad)).await.body, "none", "{bad}");
    }
    assert_eq!(store.reads(), reads);
}

#[tokio::test]
async fn store_outage_is_a_503_and_the_service_recovers_by_itself() {
    let (app, store, cookie) = with_session(|l| l).await;
    store.set_mode(Mode::Down);
    let reply = call(&app, "/read", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.body.contains("unavailable"), "{}", reply.body);
    assert_eq!(
        call(&app, "/health", Some(&cookie)).await.status,
        StatusCode::OK
    );
    store.set_mode(Mode::Healthy);
    assert_eq!(call(&app, "/write", Some(&cookie)).await.body, "2");
}

#[tokio::test]
async fn a_hung_store_answers_503_within_the_store_timeout() {
    let (app, store, cookie) =
        with_session(|l| l.with_store_timeout(Duration::from_millis(200))).await;
    store.set_mode(Mode::Hung);
    let started = Instant::now();
    let reply = call(&app, "/read", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_failed_save_is_not_reported_as_success() {
    let (app, store, cookie) = with_session(|l| l).await;
    store.set_mode(Mode::WritesFail);
    let reply = call(&app, "/write", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.set_cookie, None);
    let fresh = call(&app, "/write", None).await;
    assert_eq!(
        fresh.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a new session that was not stored"
    );
    assert_eq!(
        fresh.set_cookie, None,
        "no cookie for a session that does not exist"
    );
    store.set_mode(Mode::Healthy);
    assert_eq!(call(&app, "/read", Some(&cookie)).await.body, "1");
}

#[tokio::test]
async fn a_value_that_no_longer_decodes_is_an_error_for_that_key_only() {
    let (app, _store, cookie) = with_session(|l| l).await;
    assert_eq!(
        call(&app, "/poison", Some(&cookie)).await.status,
        StatusCode::OK
    );
    let reply = call(&app, "/read", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(call(&app, "/other", Some(&cookie)).await.body, "7");
}

#[tokio::test]
async fn persistent_cookies_carry_max_age_and_follow_refreshes() {
    let (app, _store, cookie) = with_session(|l| {
        l.with_persistent_cookie(true)
            .with_idle_timeout(Duration::from_secs(600))
            .with_idle_refresh_interval(Duration::from_millis(300))
    })
    .await;
    let created = call(&app, "/write", Some(&cookie))
        .await
        .set_cookie
        .unwrap();
    let max_age: u64 = created
        .split("Max-Age=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("a persistent cookie has Max-Age");
    assert!((590..=600).contains(&max_age), "{created}");
    assert_eq!(call(&app, "/read", Some(&cookie)).await.set_cookie, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let refreshed = call(&app, "/read", Some(&cookie)).await.set_cookie;
    assert!(
        refreshed.is_some_and(|c| c.contains("Max-Age=")),
        "refresh re-sends the cookie"
    );
}

#[tokio::test]
async fn private_cookies_work_end_to_end() {
    let (app, _store, cookie) =
        with_session(|l| l.with_protection(CookieProtection::Private)).await;
    assert_eq!(call(&app, "/write", Some(&cookie)).await.body, "2");
    let signed_app = router(SessionLayer::new(MemoryStore::new()));
    assert_eq!(call(&signed_app, "/read", Some(&cookie)).await.body, "none");
}

#[tokio::test]
async fn key_rotation_keeps_sessions_of_the_previous_key() {
    let store = MemoryStore::new();
    let old = Key::derive_from(&[1; 32]).unwrap();
    let new = Key::derive_from(&[2; 32]).unwrap();
    let before = router(SessionLayer::new(store.clone()).with_keys([old.clone()]));
    let after = router(SessionLayer::new(store.clone()).with_keys([new.clone(), old]));
    let retired = router(SessionLayer::new(store.clone()).with_keys([new]));
    let cookie = pair(&call(&before, "/write", None).await.set_cookie.unwrap());
    assert_eq!(call(&after, "/write", Some(&cookie)).await.body, "2");
    assert_eq!(call(&retired, "/read", Some(&cookie)).await.body, "none");
    let fresh = pair(&call(&after, "/write", None).await.set_cookie.unwrap());
    assert_eq!(call(&retired, "/read", Some(&fresh)).await.body, "1");
}

#[tokio::test]
async fn destroy_then_insert_starts_a_fresh_session() {
    let (app, _store, cookie) = with_session(|l| l).await;
    let reply = call(&app, "/destroy-then-flash", Some(&cookie)).await;
    let fresh = pair(&reply.set_cookie.expect("a new cookie for the new session"));
    assert_ne!(fresh, cookie);
    assert!(fresh.len() > 10, "not a removal: {fresh}");
    assert_eq!(
        call(&app, "/read", Some(&cookie)).await.body,
        "none",
        "old session gone"
    );
    assert_eq!(
        call(&app, "/read", Some(&fresh)).await.body,
        "none",
        "fresh session has no n"
    );
}

#[tokio::test]
async fn the_extractor_without_the_layer_is_a_clear_500() {
    let app = Router::new().route("/read", get(read));
    let reply = call(&app, "/read", None).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("layer"), "{}", reply.body);
}

#[test]
fn contradictory_cookie_settings_fail_when_the_layer_is_applied() {
    let host_without_secure = SessionLayer::new(MemoryStore::new())
        .with_name("__Host-id")
        .with_secure(false);
    let host_with_path = SessionLayer::new(MemoryStore::new())
        .with_name("__Host-id")
        .with_path("/app");
    let no_keys = SessionLayer::new(MemoryStore::new()).with_keys([]);
    for layer in [host_without_secure, host_with_path, no_keys] {
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Router::<()>::new().route("/", get(health)).layer(layer)
        }));
        assert!(applied.is_err());
    }
    let fine = SessionLayer::new(MemoryStore::new()).with_name("__Host-id");
    let _ = Router::<()>::new().route("/", get(health)).layer(fine);
}

#[test]
fn configuration_problems_are_typed_errors_found_by_validate() {
    use unstuck::ConfigError;
    let base = || SessionLayer::new(MemoryStore::new());
    assert_eq!(base().with_keys([]).validate(), Err(ConfigError::NoKeys));
    assert!(matches!(
        base().with_name("__Host-id").with_path("/app").validate(),
        Err(ConfigError::Cookie(_))
    ));
    assert!(matches!(
        base().with_idle_timeout(Duration::ZERO).validate(),
        Err(ConfigError::Zero(_))
    ));
    assert!(matches!(
        base().with_store_timeout(Duration::ZERO).validate(),
        Err(ConfigError::Zero(_))
    ));
    assert!(matches!(
        base()
            .with_idle_timeout(Duration::from_secs(60))
            .with_idle_refresh_interval(Duration::from_secs(60))
            .validate(),
        Err(ConfigError::Timeouts(_))
    ));
    assert!(base().validated().is_ok());
}

#[tokio::test]
async fn the_refresh_interval_does_not_depend_on_the_order_of_settings() {
    // Interval first, idle timeout second: the interval set must survive.
    let (app, store, cookie) = with_session(|layer| {
        layer
            .with_idle_refresh_interval(Duration::ZERO)
            .with_idle_timeout(Duration::from_secs(3600))
    })
    .await;
    let writes = store.writes();
    tokio::time::sleep(Duration::from_millis(5)).await;
    call(&app, "/read", Some(&cookie)).await;
    assert_eq!(
        store.writes(),
        writes + 1,
        "a zero interval refreshes on every read that gains time"
    );
}

#[tokio::test]
async fn take_reads_a_value_once() {
    async fn set_flash(session: Session) -> Result<&'static str, unstuck::Error> {
        session.insert("flash", "saved!")?;
        Ok("ok")
    }
    async fn show_flash(session: Session) -> Result<String, unstuck::Error> {
        let modified_before = session.is_modified();
        let flash: Option<String> = session.take("flash")?;
        Ok(format!(
            "{}|{modified_before}|{}",
            flash.unwrap_or_default(),
            session.is_modified()
        ))
    }
    let app = Router::new()
        .route("/set", get(set_flash))
        .route("/show", get(show_flash))
        .layer(SessionLayer::new(MemoryStore::new()).with_keys([Key::generate()]));
    let created = call(&app, "/set", None).await;
    let cookie = pair(&created.set_cookie.expect("new session cookie"));
    assert_eq!(
        call(&app, "/show", Some(&cookie)).await.body,
        "saved!|false|true"
    );
    assert_eq!(
        call(&app, "/show", Some(&cookie)).await.body,
        "|false|false"
    );
}

#[tokio::test]
async fn a_remembered_session_outlives_the_layers_timeouts_with_a_persistent_cookie() {
    async fn remember(session: Session) -> Result<&'static str, unstuck::Error> {
        session.insert("n", 1)?;
        session.set_lifetime(Duration::from_secs(3600), Duration::from_secs(7200));
        Ok("ok")
    }
    async fn keys(session: Session) -> String {
        let mut keys = session.keys();
        keys.sort();
        format!("{keys:?}")
    }
    let layer = SessionLayer::new(MemoryStore::new())
        .with_keys([Key::generate()])
        .with_idle_timeout(Duration::from_secs(1))
        .with_absolute_timeout(Duration::from_secs(2));
    let app = Router::new()
        .route("/remember", get(remember))
        .route("/write", get(write))
        .route("/read", get(read))
        .route("/keys", get(keys))
        .layer(layer);

    let remembered = call(&app, "/remember", None).await;
    let set_cookie = remembered.set_cookie.expect("new session cookie");
    let max_age: u64 = set_cookie
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age="))
        .expect("a remembered session's cookie persists")
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&max_age), "{set_cookie}");
    let remembered = pair(&set_cookie);
    let ordinary = pair(&call(&app, "/write", None).await.set_cookie.unwrap());
    assert!(
        !call(&app, "/write", None)
            .await
            .set_cookie
            .unwrap()
            .contains("Max-Age"),
        "other sessions keep the layer's browser-session cookie"
    );

    // Past the layer's absolute timeout (2 s): the ordinary session is over,
    // the remembered one lives on.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&app, "/read", Some(&ordinary)).await.body, "none");
    assert_eq!(call(&app, "/read", Some(&remembered)).await.body, "1");
    // Its lifetime is the layer's business, not a key the handler sees.
    assert_eq!(
        call(&app, "/keys", Some(&remembered)).await.body,
        r#"["n"]"#
    );
}
