//! Runs N requests of one scenario through one configuration's app in this
//! process (no sockets between client and app), for instruction counts that do
//! not depend on the machine's load:
//!
//! ```sh
//! cargo build --release --manifest-path bench/Cargo.toml --example per_request
//! REDIS_URL=redis://127.0.0.1:6379 valgrind --tool=callgrind \
//!     bench/target/release/examples/per_request "unstuck + memory" read 2000
//! ```
//!
//! Run it twice with different N and divide the difference in instructions by
//! the difference in N: setup cancels out, leaving the cost of one request
//! (the app's, plus the Redis client's for Redis rows; Redis itself runs in
//! its own process). Scenarios: `read` (a session with a counter is read),
//! `write` (it is incremented), `new` (a request without a cookie starts one).
//! Configurations are the benchmark's ([`apps::ALL`]).

#[allow(dead_code)]
#[path = "../src/apps.rs"]
mod apps;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::Request;
use tower::ServiceExt;

async fn call(app: &Router, path: &str, cookie: Option<&str>) -> Option<String> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    response.into_body().collect().await.unwrap();
    set_cookie
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [row, scenario, n] = args.as_slice() else {
        panic!("usage: per_request CONFIGURATION read|write|new N");
    };
    let n: usize = n.parse().expect("N is a whole number");
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = apps::app(row, &redis_url).await;
        let mut cookie = call(&app, "/write", None).await;
        // Warm up: the near cache holds the session after its first read.
        for _ in 0..3 {
            call(&app, "/read", cookie.as_deref()).await;
        }
        let path = match scenario.as_str() {
            "read" => "/read",
            "write" => "/write",
            "new" => {
                cookie = None;
                "/new"
            }
            other => panic!("no scenario {other:?}"),
        };
        for _ in 0..n {
            let set = call(&app, path, cookie.as_deref()).await;
            if scenario == "write" && set.is_some() {
                cookie = set;
            }
        }
    });
}
