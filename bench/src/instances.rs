//! The instances sweep: 1, 2 and 3 app processes of one configuration on one
//! Redis, driven together, for total throughput and Redis CPU per request —
//! what one Redis (one Cluster shard) can carry before it needs Cluster.
//!
//! Each instance is this binary run again with `--serve CONFIGURATION --redis
//! URL`: it serves that configuration on a free loopback port, prints
//! `listening ADDRESS`, and exits when its standard input closes (when the
//! benchmark ends, however it ends).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::apps;
use crate::load::{self, Scenario, Totals};
use crate::redis_server::RedisServer;

/// How many app processes each step runs.
pub const COUNTS: [usize; 3] = [1, 2, 3];
/// The configurations swept (those that use Redis).
pub const ROWS: [&str; 3] = [apps::UNSTUCK_REDIS, apps::UNSTUCK_NEAR, apps::TOWER_SESSIONS_REDIS];
/// The scenarios swept.
pub const SCENARIOS: [Scenario; 2] = [Scenario::ReadOnly, Scenario::WriteEvery];

/// One app instance: a child process of this binary, killed (by PID) when
/// dropped.
struct Instance {
    child: Child,
    address: SocketAddr,
}

impl Instance {
    fn spawn(row: &str, redis_url: &str) -> Self {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut child = Command::new(exe)
            .args(["--serve", row, "--redis", redis_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start an app instance");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the instance's address");
        let address = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("the instance said {line:?} instead of its address"));
        Self { child, address }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serves `row` until standard input closes.
pub fn serve_child(row: &str, redis_url: &str) {
    let name = apps::ALL
        .into_iter()
        .find(|name| *name == row)
        .unwrap_or_else(|| panic!("no configuration named {row:?}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let served = apps::serve(name, apps::app(name, redis_url).await).await;
        println!("listening {}", served.address);
        // The parent holds our stdin: end with it.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .expect("stdin watcher");
    });
}

/// Runs the sweep: every (configuration, instance count) takes its turn in
/// each round (the order rotates), for each scenario. Returns the table.
pub async fn run(redis: &RedisServer, rounds: usize, connections: usize, duration: Duration) -> String {
    let max = COUNTS.iter().copied().max().unwrap_or(1);
    let instances: Vec<Vec<Instance>> = ROWS
        .iter()
        .map(|row| (0..max).map(|_| Instance::spawn(row, &redis.url())).collect())
        .collect();
    let combos: Vec<(usize, usize)> = (0..ROWS.len())
        .flat_map(|r| COUNTS.iter().map(move |count| (r, *count)))
        .collect();
    let mut totals: Vec<Vec<Totals>> = SCENARIOS
        .iter()
        .map(|_| combos.iter().map(|_| Totals::default()).collect())
        .collect();
    let steps = SCENARIOS.len() * rounds * combos.len();
    let mut step = 0;
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        for round in 0..rounds {
            for offset in 0..combos.len() {
                let c = (round + offset) % combos.len();
                let (r, count) = combos[c];
                let addresses: Vec<SocketAddr> = instances[r][..count].iter().map(|i| i.address).collect();
                step += 1;
                let users = load::prepare(&addresses, *scenario, connections).await;
                let before = redis.stats().await;
                let measured = users.drive(duration).await;
                let after = redis.stats().await;
                let stats = after.minus(&before);
                eprintln!(
                    "[instances {step:>3}/{steps}] {:<20} round {}/{rounds}  {:<28} x{count}  {:>9.0} req/s  \
                     {:>6.1} Redis CPU µs/req",
                    scenario.name(),
                    round + 1,
                    ROWS[r],
                    measured.requests as f64 / measured.elapsed.as_secs_f64(),
                    stats.cpu_us as f64 / measured.requests.max(1) as f64,
                );
                totals[s][c].add(measured, stats);
            }
        }
    }
    table(&combos, &totals)
}

fn table(combos: &[(usize, usize)], totals: &[Vec<Totals>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    out.push_str(
        "| scenario | configuration | app processes | req/s (all processes) | × one process | \
         Redis CPU µs/req | Redis CPU busy |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for (s, scenario) in SCENARIOS.iter().enumerate() {
        for (c, (r, count)) in combos.iter().enumerate() {
            let t = &totals[s][c];
            let single = combos
                .iter()
                .position(|(r1, n)| r1 == r && *n == 1)
                .map_or(f64::NAN, |one| t.rps() / totals[s][one].rps());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.0} % |",
                scenario.name(),
                ROWS[*r],
                count,
                t.rps(),
                single,
                t.redis_cpu_us_per_request(),
                t.redis_cpu_share() * 100.0,
            );
        }
    }
    out
}
