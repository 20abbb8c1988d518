//! The load generator: keep-alive HTTP/1.1 connections, each a virtual user with
//! its own session, sending requests back to back until the deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::redis_server::RedisStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    ReadOnly,
    WriteEvery,
    NewSession,
    Mixed,
    /// Write every request on a session holding a padding value of this size
    /// besides the counter: one small key changes per request.
    WriteSized(Size),
}

/// Session sizes of the size sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    /// Bytes of the padding value (the session's other fields add a few dozen).
    pub fn padding(self) -> usize {
        match self {
            Self::Small => 100,
            Self::Medium => 4 * 1024,
            // Under the 64 KiB session limit every store enforces by default
            // (the padding plus the counter must fit).
            Self::Large => 60 * 1024,
        }
    }
}

impl Scenario {
    /// The scenarios of the chart.
    pub const MAIN: [Scenario; 4] = [Self::ReadOnly, Self::WriteEvery, Self::NewSession, Self::Mixed];

    /// Every scenario of the table: the main ones, then the session-size sweep.
    pub const ALL: [Scenario; 7] = [
        Self::ReadOnly,
        Self::WriteEvery,
        Self::NewSession,
        Self::Mixed,
        Self::WriteSized(Size::Small),
        Self::WriteSized(Size::Medium),
        Self::WriteSized(Size::Large),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::WriteEvery => "write every request",
            Self::NewSession => "new session per request",
            Self::Mixed => "mixed 90% read/10% write",
            Self::WriteSized(Size::Small) => "write, ~100 B session",
            Self::WriteSized(Size::Medium) => "write, ~4 KB session",
            Self::WriteSized(Size::Large) => "write, ~60 KB session",
        }
    }

    /// The path of the `n`th request of a virtual user.
    fn path(self, n: u64) -> &'static str {
        match self {
            Self::ReadOnly => "/read",
            Self::WriteEvery | Self::WriteSized(_) => "/write",
            Self::NewSession => "/new",
            Self::Mixed if n % 10 == 9 => "/write",
            Self::Mixed => "/read",
        }
    }

    /// Sets up a virtual user's session on `sender` before the clock starts;
    /// returns its cookie (none for a new session per request).
    async fn set_up(self, sender: &mut Sender) -> Option<String> {
        if self == Self::NewSession {
            return None;
        }
        let cookie = get(sender, "/write", None).await;
        if let Self::WriteSized(size) = self {
            let path = format!("/pad/{}", size.padding());
            // The padding write may rotate nothing, but keep any new cookie.
            return get(sender, &path, cookie.as_deref()).await.or(cookie);
        }
        cookie
    }
}

/// One measurement.
pub struct Measured {
    pub requests: u64,
    pub elapsed: Duration,
    /// Microseconds per request.
    pub latencies: Vec<u32>,
}

/// Everything measured for one row and scenario, over all rounds.
#[derive(Default)]
pub struct Totals {
    /// Commands clients sent Redis per request, from the accounting pass.
    pub round_trips: Option<f64>,
    requests: u64,
    elapsed: Duration,
    latencies: Vec<u32>,
    redis: RedisStats,
    sorted: bool,
}

impl Totals {
    pub fn add(&mut self, measured: Measured, redis: RedisStats) {
        self.requests += measured.requests;
        self.elapsed += measured.elapsed;
        self.latencies.extend(measured.latencies);
        self.redis.commands += redis.commands;
        self.redis.bytes += redis.bytes;
        self.redis.cpu_us += redis.cpu_us;
        self.sorted = false;
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
        f64::from(sorted[index]) / 1000.0
    }

    pub fn redis_commands_per_request(&self) -> f64 {
        self.redis.commands as f64 / self.requests.max(1) as f64
    }

    pub fn redis_bytes_per_request(&self) -> f64 {
        self.redis.bytes as f64 / self.requests.max(1) as f64
    }

    /// The share of the measured wall time Redis spent on the CPU (1.0 = one
    /// core busy all along: Redis runs commands on one thread).
    pub fn redis_cpu_share(&self) -> f64 {
        self.redis.cpu_us as f64 / (self.elapsed.as_secs_f64() * 1e6).max(1.0)
    }

    /// Redis CPU time (user + system, `INFO cpu`) per request, in µs.
    pub fn redis_cpu_us_per_request(&self) -> f64 {
        self.redis.cpu_us as f64 / self.requests.max(1) as f64
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(address: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http/1.1 handshake");
    tokio::spawn(connection);
    sender
}

/// Sends one GET; returns the `name=value` of any Set-Cookie.
async fn get(sender: &mut Sender, path: &str, cookie: Option<&str>) -> Option<String> {
    sender.ready().await.expect("connection ready");
    let mut request = Request::get(path).header("host", "bench");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .expect("response");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    response.into_body().collect().await.expect("body");
    set_cookie
}

/// Sends `requests` requests of `scenario` one after another on one connection
/// (its session set up first, outside the count when the scenario has one).
pub async fn sequential(address: SocketAddr, scenario: Scenario, requests: u64) -> SessionSetup {
    let mut sender = connect(address).await;
    let cookie = scenario.set_up(&mut sender).await;
    SessionSetup { sender, cookie, scenario, requests }
}

/// A virtual user ready to send its counted requests.
pub struct SessionSetup {
    sender: Sender,
    cookie: Option<String>,
    scenario: Scenario,
    requests: u64,
}

impl SessionSetup {
    pub async fn run(mut self) {
        for n in 0..self.requests {
            get(&mut self.sender, self.scenario.path(n), self.cookie.as_deref()).await;
        }
    }
}

/// Virtual users with their sessions set up, ready to be driven.
pub struct Prepared {
    users: Vec<(Sender, Option<String>)>,
    scenario: Scenario,
}

/// Sets up `connections` virtual users (their connections and sessions),
/// spread round-robin over `addresses` (app instances sharing one Redis), so
/// that what the set-up costs stays out of the measurement.
pub async fn prepare(addresses: &[SocketAddr], scenario: Scenario, connections: usize) -> Prepared {
    let mut users = Vec::with_capacity(connections);
    for user in 0..connections {
        let mut sender = connect(addresses[user % addresses.len()]).await;
        let cookie = scenario.set_up(&mut sender).await;
        users.push((sender, cookie));
    }
    Prepared { users, scenario }
}

impl Prepared {
    /// Sends requests back to back from every virtual user for `duration`.
    pub async fn drive(self, duration: Duration) -> Measured {
        let scenario = self.scenario;
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = self
            .users
            .into_iter()
            .map(|(mut sender, cookie)| {
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(16 * 1024);
                    let mut n = 0u64;
                    // Bounded by the deadline (and, as a backstop, a request count).
                    while Instant::now() < deadline && n < 50_000_000 {
                        let sent = Instant::now();
                        get(&mut sender, scenario.path(n), cookie.as_deref()).await;
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        n += 1;
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("virtual user"));
        }
        Measured {
            requests: latencies.len() as u64,
            elapsed: started.elapsed(),
            latencies,
        }
    }
}
