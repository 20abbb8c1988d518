//! `examples/axum_login.rs` (axum-login 0.18 on tower-sessions 0.14 on our
//! `RedisStore`) against real Redis: several instances sharing one store, and
//! a Sentinel failover under it.
#![cfg(all(feature = "redis", feature = "tower-sessions-014"))]

mod common;

#[allow(dead_code)]
#[path = "../examples/axum_login.rs"]
mod example;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use unstuck::RedisStore;

use common::redis_server::{self, SentinelSetup};

/// A browser: keeps the one session cookie the app sets, drops it when the app
/// removes it.
#[derive(Clone, Default)]
struct Browser {
    cookie: Option<String>,
}

impl Browser {
    async fn send(
        &mut self,
        app: &Router,
        method: &str,
        uri: &str,
        json: &str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if !json.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(json.to_owned())).unwrap())
            .await
            .unwrap();
        if let Some(set) = response.headers().get(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            self.cookie =
                (!set.contains("Max-Age=0")).then(|| set.split(';').next().unwrap().to_owned());
        }
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn login(&mut self, app: &Router, user: &str, password: &str) -> StatusCode {
        let body = format!(r#"{{"username":"{user}","password":"{password}"}}"#);
        self.send(app, "POST", "/login", &body).await.0
    }
}

async fn instance(url: &str) -> Router {
    example::app(RedisStore::connect(url).await.unwrap(), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protected_route_needs_a_login_and_a_wrong_password_gets_none() {
    let app = instance(&redis_server::standalone_url()).await;
    let mut browser = Browser::default();
    assert_eq!(
        browser.send(&app, "GET", "/protected", "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        browser.login(&app, "ferris", "wrong").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        browser.cookie, None,
        "a failed login must not start a session"
    );
    assert_eq!(
        browser.send(&app, "GET", "/protected", "").await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// The flow the issue asks for: log in on one instance, be logged in on the
/// other; log out on one, be logged out on both.
async fn login_and_logout_are_shared_by_two_instances(url: &str) {
    let (a, b) = (instance(url).await, instance(url).await);
    let mut browser = Browser::default();
    assert_eq!(
        browser.login(&a, "ferris", "hunter42").await,
        StatusCode::OK
    );
    let logged_in = browser.clone();
    assert_eq!(
        browser.send(&b, "GET", "/protected", "").await,
        (StatusCode::OK, "hello, ferris".to_owned())
    );
    assert_eq!(browser.send(&a, "GET", "/me", "").await.1, r#""ferris""#);

    assert_eq!(
        browser.send(&b, "POST", "/logout", "").await.0,
        StatusCode::OK
    );
    assert_eq!(browser.cookie, None, "logout removes the cookie");
    // Even a client that kept the cookie is logged out, on both instances.
    let mut replay = logged_in;
    for app in [&a, &b] {
        assert_eq!(
            replay.send(app, "GET", "/protected", "").await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(replay.send(app, "GET", "/me", "").await.1, "null");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_login_and_logout_are_shared_by_two_instances() {
    login_and_logout_are_shared_by_two_instances(&redis_server::standalone_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_login_and_logout_are_shared_by_two_instances() {
    login_and_logout_are_shared_by_two_instances(&redis_server::sentinel_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_login_and_logout_are_shared_by_two_instances() {
    login_and_logout_are_shared_by_two_instances(&redis_server::cluster_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_a_login_under_a_hash_of_the_id_until_logout() {
    use axum_login::tower_sessions::session::Id;
    use std::str::FromStr as _;
    use unstuck::SessionStore as _;
    use unstuck::store::tower_sessions::v014::storage_key;

    let store = RedisStore::connect(&redis_server::standalone_url())
        .await
        .unwrap();
    let app = example::app(store.clone(), false);
    let mut browser = Browser::default();
    assert_eq!(
        browser.login(&app, "ferris", "hunter42").await,
        StatusCode::OK
    );
    let cookie = browser.cookie.clone().unwrap();
    let id_text = cookie.strip_prefix("id=").expect("tower-sessions' cookie");
    let key = storage_key(&Id::from_str(id_text).unwrap());
    let record = store.load(&key).await.unwrap().expect("login not stored");
    let data = record.data.values().cloned().collect::<String>();
    assert!(data.contains("ferris"), "{data}");
    assert!(!data.contains(id_text), "the record carries the session ID");

    assert_eq!(
        browser.send(&app, "POST", "/logout", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        store.load(&key).await.unwrap(),
        None,
        "logout left the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_on_two_instances_stay_apart() {
    const BROWSERS: usize = 8;
    let url = redis_server::standalone_url();
    let (a, b) = (instance(&url).await, instance(&url).await);
    let logins = (0..BROWSERS).map(|i| {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let mut browser = Browser::default();
            let (user, password) = if i % 3 == 0 {
                ("corro", "unsafe-ly")
            } else {
                ("ferris", "hunter42")
            };
            assert_eq!(browser.login(&app, user, password).await, StatusCode::OK);
            (browser, user)
        })
    });
    let mut sessions = Vec::new();
    for login in logins.collect::<Vec<_>>() {
        sessions.push(login.await.unwrap());
    }
    for (i, (browser, user)) in sessions.iter_mut().enumerate() {
        let other = if i % 2 == 0 { &b } else { &a };
        assert_eq!(
            browser.send(other, "GET", "/me", "").await.1,
            format!(r#""{user}""#)
        );
    }
    let mut cookies: Vec<_> = sessions
        .iter()
        .map(|(b, _)| b.cookie.clone().unwrap())
        .collect();
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), BROWSERS, "two logins share a session");
}

/// Generous for 1 s down-after plus election on a loaded 2-core machine.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Sends until the answer is not a server error (the store is unreachable
/// while the sentinels elect a new primary), within [`FAILOVER_LIMIT`].
async fn once_served(
    browser: &mut Browser,
    app: &Router,
    method: &str,
    uri: &str,
) -> (StatusCode, String) {
    let deadline = Instant::now() + FAILOVER_LIMIT;
    loop {
        let reply = browser.send(app, method, uri, "").await;
        if !reply.0.is_server_error() {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {uri}: still {} after {FAILOVER_LIMIT:?}",
            reply.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_survives_a_sentinel_failover_and_logout_works_after_it() {
    let mut setup = SentinelSetup::start();
    let (a, b) = (instance(&setup.url()).await, instance(&setup.url()).await);
    let mut browser = Browser::default();
    assert_eq!(
        browser.login(&a, "ferris", "hunter42").await,
        StatusCode::OK
    );
    // The login is on the replica before the primary dies.
    let acked = redis_server::cli(setup.primary.port(), &["WAIT", "1", "5000"]);
    assert_eq!(
        acked.as_deref().map(str::trim),
        Some("1"),
        "login not replicated"
    );
    let logged_in = browser.clone();

    setup.primary.kill();
    assert_eq!(
        once_served(&mut browser, &b, "GET", "/protected").await,
        (StatusCode::OK, "hello, ferris".to_owned()),
        "the login was lost in the failover"
    );
    // The store follows the promotion as soon as the replica reports itself
    // primary, which can be before every sentinel names it: wait for them.
    let deadline = Instant::now() + FAILOVER_LIMIT;
    while setup.current_primary_port() != Some(setup.replica.port()) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never named the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(
        once_served(&mut browser, &a, "POST", "/logout").await.0,
        StatusCode::OK
    );
    let mut replay = logged_in;
    for app in [&a, &b] {
        assert_eq!(
            once_served(&mut replay, app, "GET", "/protected").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}
