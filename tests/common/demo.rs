//! Runs `examples/demo.rs` as a real process and talks to it over HTTP, the way a
//! user with curl would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

/// A running demo server; killed (by PID, it is our child) when dropped.
pub struct Demo {
    child: Child,
    pub base: String,
}

/// The demo binary cargo built next to this test (`cargo test` builds examples).
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("demo");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --all-features`, which builds the examples",
        binary.display()
    );
    binary
}

impl Demo {
    /// Starts the demo with these extra environment variables (plain-HTTP cookies
    /// and a free port unless overridden) and waits until it listens.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(demo_binary());
        command
            .env("UNSTUCK_LISTEN", "127.0.0.1:0")
            .env("UNSTUCK_COOKIE_SECURE", "0")
            .env("RUST_LOG", "warn")
            .env(
                "UNSTUCK_SECRET",
                "a test secret that is long enough for a key",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start the demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the demo's first line");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let status = child.wait().expect("demo exit status");
                panic!("the demo did not start ({status}); it printed {line:?}")
            })
            .to_owned();
        Self {
            child,
            base: format!("http://{address}"),
        }
    }

    /// A client with no cookie yet.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the demo with `env` until it exits, returning its status and stderr.
pub fn run_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let output = Command::new(demo_binary())
        .env("UNSTUCK_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A browser-like client that keeps the session cookie by hand, so tests can
/// look at, tamper with and replay it.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    /// The `name=value` of the session cookie, as the client would send it.
    pub cookie: Option<String>,
}

/// What came back from one request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The raw `Set-Cookie` header, if any.
    pub set_cookie: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookie: None,
        }
    }

    /// The same cookie, sent to another instance.
    pub fn to(&self, base: &str) -> Self {
        Self {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&mut self, path: &str, body: Option<Value>) -> Reply {
        self.send(Method::POST, path, body).await
    }

    pub async fn put(&mut self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&mut self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// Sends a request and applies any `Set-Cookie` like a browser would.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let reply = self.send_keeping_cookie(method, path, body).await;
        if let Some(set) = &reply.set_cookie {
            let pair = set.split(';').next().unwrap().trim().to_owned();
            let removal = set.contains("Max-Age=0") || pair.ends_with('=');
            self.cookie = (!removal).then_some(pair);
        }
        reply
    }

    /// Sends a request without applying the `Set-Cookie` it gets.
    pub async fn send_keeping_cookie(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request to the demo");
        let status = response.status().as_u16();
        let set_cookie = response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            set_cookie,
        }
    }

    /// The session ID as it travels in the cookie (the part after the signature).
    pub fn session_id_text(&self) -> Option<String> {
        Some(super::app::id_text(self.cookie.as_ref()?).to_owned())
    }
}
