//! Session IDs in a header (`UNSTUCK_SESSION_HEADER`), black-box through the
//! demo: what an API or mobile client sees.

mod common;

use std::time::Duration;

use common::demo::{Client as CookieClient, Demo, run_to_exit};
use reqwest::Method;
use serde_json::{Value, json};

/// The response header bearer tokens come back in.
const TOKEN_OUT: &str = "x-session-token";

/// An API client: keeps the token the server hands out, sends it back in a
/// header, and never stores cookies.
struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// `None` for `Authorization: Bearer`, else the header's name.
    named: Option<&'static str>,
    token: Option<String>,
    /// Sends the header even without a token (`Authorization: Bearer`, or
    /// the named header empty), as a client announces itself when the demo
    /// also serves cookies.
    announce: bool,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
    /// The token header of the response: `Some("")` asks to drop the token.
    token: Option<String>,
    set_cookie: Option<String>,
    cache_control: Option<String>,
}

impl ApiClient {
    fn new(demo: &Demo) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: demo.base.clone(),
            named: None,
            token: None,
            announce: false,
        }
    }

    fn out_header(&self) -> &'static str {
        self.named.unwrap_or(TOKEN_OUT)
    }

    /// Sends a request with `token` (not the kept one), keeping nothing.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        let value = match (self.named, token) {
            (None, Some(token)) => Some(format!("Bearer {token}")),
            (None, None) => self.announce.then(|| "Bearer".to_owned()),
            (Some(_), Some(token)) => Some(token.to_owned()),
            (Some(_), None) => self.announce.then(String::new),
        };
        if let Some(value) = value {
            request = request.header(self.named.unwrap_or("authorization"), value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to the demo");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let token = header(self.out_header());
        let set_cookie = header("set-cookie");
        let cache_control = header("cache-control");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            token,
            set_cookie,
            cache_control,
        }
    }

    /// Sends a request with the kept token and keeps what comes back.
    async fn send(&mut self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let reply = self
            .send_with(method, path, body, self.token.as_deref())
            .await;
        match reply.token.as_deref() {
            Some("") => self.token = None,
            Some(token) => self.token = Some(token.to_owned()),
            None => {}
        }
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, body: Option<Value>) -> Reply {
        self.send(Method::POST, path, body).await
    }
}

fn bearer_demo() -> Demo {
    Demo::start(&[("UNSTUCK_SESSION_HEADER", "bearer")])
}

#[tokio::test]
async fn bearer_tokens_carry_the_session_and_never_a_cookie() {
    let demo = bearer_demo();
    let mut client = ApiClient::new(&demo);
    let first = client.get("/counter").await;
    assert_eq!(first.body["count"], 1, "{first:?}");
    assert!(client.token.is_some(), "a new session hands out a token");
    assert_eq!(first.set_cookie, None, "header mode sets no cookie");
    assert_eq!(first.cache_control.as_deref(), Some("no-store"));
    for n in 2..=4 {
        let reply = client.get("/counter").await;
        assert_eq!(reply.body["count"], n, "{reply:?}");
        assert_eq!(reply.set_cookie, None);
    }
    // Another client without the token has a session of its own.
    let mut other = ApiClient::new(&demo);
    assert_eq!(other.get("/counter").await.body["count"], 1);
    assert_eq!(client.get("/peek").await.body["count"], 4);
}

#[tokio::test]
async fn login_hands_out_a_new_token_and_the_old_one_stops_working() {
    let demo = bearer_demo();
    let mut client = ApiClient::new(&demo);
    client.get("/counter").await;
    let before = client.token.clone().unwrap();
    let login = client.post("/login", Some(json!({"user": "alice"}))).await;
    assert_eq!(login.status, 200, "{login:?}");
    let after = client.token.clone().unwrap();
    assert_ne!(before, after, "login must cycle the ID");
    assert_eq!(client.get("/me").await.body["user"], "alice");
    assert_eq!(client.get("/peek").await.body["count"], 1, "data kept");
    let old = client
        .send_with(Method::GET, "/me", None, Some(&before))
        .await;
    assert_eq!(old.body["user"], Value::Null, "the pre-login token is dead");
}

#[tokio::test]
async fn logout_clears_the_token_and_ends_the_session() {
    let demo = bearer_demo();
    let mut client = ApiClient::new(&demo);
    client.post("/login", Some(json!({"user": "bob"}))).await;
    let token = client.token.clone().unwrap();
    let logout = client.post("/logout", None).await;
    assert_eq!(logout.status, 200, "{logout:?}");
    assert_eq!(
        logout.token.as_deref(),
        Some(""),
        "an empty token header tells the client to drop its token"
    );
    assert_eq!(logout.cache_control.as_deref(), Some("no-store"));
    assert_eq!(client.token, None);
    let replay = client
        .send_with(Method::GET, "/me", None, Some(&token))
        .await;
    assert_eq!(
        replay.body["user"],
        Value::Null,
        "no resurrection by replay"
    );
}

#[tokio::test]
async fn tampered_foreign_and_misplaced_tokens_start_a_new_session() {
    let demo = bearer_demo();
    let mut client = ApiClient::new(&demo);
    client.put_count_to(3).await;
    let good = client.token.clone().unwrap();
    let mut tampered = good.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign_demo = Demo::start(&[
        ("UNSTUCK_SESSION_HEADER", "bearer"),
        (
            "UNSTUCK_SECRET",
            "another secret that is long enough to sign other tokens",
        ),
    ]);
    let mut stranger = ApiClient::new(&foreign_demo);
    stranger.get("/counter").await;
    let foreign = stranger.token.clone().unwrap();
    let oversized = format!("{good}{}", "A".repeat(4000));
    for bad in [tampered.as_str(), &foreign, &oversized, "garbage", "a.b.c"] {
        let reply = client
            .send_with(Method::GET, "/counter", None, Some(bad))
            .await;
        assert_eq!(reply.status, 200, "{bad}: {reply:?}");
        assert_eq!(reply.body["count"], 1, "{bad} must mean no session");
        let fresh = reply.token.expect("a new session hands out a token");
        assert_ne!(fresh, good);
    }
    // A cookie holding the token is not read in header-only mode.
    let as_cookie = client.peek_carrying("cookie", &format!("id={good}")).await;
    assert_eq!(as_cookie["count"], Value::Null);
    // The good token still holds its session.
    assert_eq!(client.get("/peek").await.body["count"], 3);
}

impl ApiClient {
    async fn put_count_to(&mut self, n: u64) {
        for _ in 0..n {
            self.get("/counter").await;
        }
    }

    /// `GET /peek` carrying only the header given (not the client's own
    /// token), for what the demo makes of a token in the wrong place.
    async fn peek_carrying(&self, header: &str, value: &str) -> Value {
        self.http
            .get(format!("{}/peek", self.base))
            .header(header, value)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_named_header_carries_the_token_both_ways() {
    let demo = Demo::start(&[("UNSTUCK_SESSION_HEADER", "X-Auth-Token")]);
    let mut client = ApiClient::new(&demo);
    client.named = Some("x-auth-token");
    assert_eq!(client.get("/counter").await.body["count"], 1);
    let second = client.get("/counter").await;
    assert_eq!(second.body["count"], 2, "{second:?}");
    // A bearer token means nothing to a named-header demo.
    let token = client.token.clone().unwrap();
    let bearer = client
        .peek_carrying("authorization", &format!("Bearer {token}"))
        .await;
    assert_eq!(bearer["count"], Value::Null);
}

#[tokio::test]
async fn with_cookies_too_each_client_is_answered_the_way_it_came() {
    let demo = Demo::start(&[("UNSTUCK_SESSION_HEADER", "bearer,cookie")]);
    let mut browser = CookieClient::new(&demo.base);
    let first = browser.get("/counter").await;
    assert_eq!(first.body["count"], 1);
    assert!(first.set_cookie.is_some(), "browsers get the cookie");
    assert_eq!(browser.get("/counter").await.body["count"], 2);

    let mut api = ApiClient::new(&demo);
    api.announce = true;
    let first = api.get("/counter").await;
    assert_eq!(first.body["count"], 1, "{first:?}");
    assert_eq!(first.set_cookie, None, "header clients get no cookie");
    assert!(api.token.is_some());
    assert_eq!(api.get("/counter").await.body["count"], 2);

    // The browser's responses never show its session token to scripts.
    let reply = browser
        .send_keeping_cookie(Method::GET, "/counter", None)
        .await;
    assert_eq!(reply.body["count"], 3);
    let token_header = reqwest::Client::new()
        .get(format!("{}/counter", demo.base))
        .header("cookie", browser.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert!(token_header.headers().get(TOKEN_OUT).is_none());
}

#[test]
fn a_header_that_would_pass_for_a_cookie_is_a_startup_error() {
    for (value, message) in [
        ("cookie", "UNSTUCK_SESSION_HEADER"),
        ("Authorization", "UNSTUCK_SESSION_HEADER"),
        ("not a header", "UNSTUCK_SESSION_HEADER"),
    ] {
        let (status, stderr) = run_to_exit(&[("UNSTUCK_SESSION_HEADER", value)]);
        assert_eq!(status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(message), "{value}: {stderr}");
    }
}

/// With a near cache the token carries the session's version like the
/// cookie does, so the instance that serves the next request never answers
/// from a copy older than the client's own last write.
#[cfg(feature = "redis")]
#[tokio::test]
async fn with_a_near_cache_every_write_hands_out_a_token_with_its_version() {
    let url = common::redis_server::standalone_url();
    let env = [
        ("UNSTUCK_STORE", url.as_str()),
        ("UNSTUCK_NEAR_CACHE", "1"),
        ("UNSTUCK_SESSION_HEADER", "bearer"),
    ];
    let instances = [Demo::start(&env), Demo::start(&env)];
    let mut client = ApiClient::new(&instances[0]);
    let mut last_version = 0;
    for n in 1..=6u64 {
        client.base = instances[n as usize % 2].base.clone();
        let reply = client.get("/counter").await;
        assert_eq!(reply.body["count"], n, "{reply:?}");
        if n == 1 {
            continue; // a new session's token carries no version yet
        }
        let token = reply.token.expect("every write hands out a token");
        let version =
            common::app::version_in(&format!("id={token}")).expect("the token carries the version");
        assert!(version > last_version, "{version} after {last_version}");
        last_version = version;
    }
}
