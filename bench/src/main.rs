//! Load benchmark: what sessions cost per request, for unstuck and for
//! tower-sessions, measured in one run on one machine.
//!
//! ```sh
//! cargo run --release --manifest-path bench/Cargo.toml -- [--seconds 2] [--rounds 5] [--connections 32]
//! ```
//!
//! `--scenario TEXT` and `--row TEXT` restrict a run to matching scenarios and
//! configurations (for profiling); such a run prints req/s only, skips the
//! instances sweep and leaves the saved results alone. `--instances no` skips
//! the instances sweep of a full run.
//!
//! `--profile N` (with `--scenario`; `--row` then names one row exactly) sends
//! only N requests per scenario and row, one after another after a warm-up,
//! and prints Redis's work per request. It is made for instruction counts
//! (`valgrind --tool=callgrind`), which do not depend on the machine's load:
//! two runs with different N give the instructions of one request without
//! the start-up.
//!
//! Besides the four main scenarios, the table has a session-size sweep (a
//! write request on sessions of ~100 B, 4 KB and 60 KB (under the default 64 KiB limit), one small key changed
//! each time), and every row reports Redis CPU µs per request (`INFO cpu`). A
//! second table, the instances sweep ([`instances`]), runs 1, 2 and 3 app
//! processes of each Redis configuration on the one Redis.
//!
//! It starts its own `redis-server` on a free loopback port, serves every
//! configuration ("row") from this process on its own port, and drives them with
//! keep-alive HTTP/1.1 connections. Rows take turns round by round (the order
//! rotates each round) so that drift on the machine hits them alike. Redis
//! commands and bytes per request come from `INFO commandstats` / `INFO stats`
//! deltas around each measurement.
//!
//! Output: a Markdown table on stdout (also written to `bench/results.md`) and a
//! chart, `bench/results.svg`.

mod apps;
mod chart;
mod instances;
mod load;
mod redis_server;

use std::fmt::Write as _;
use std::time::Duration;

use load::{Scenario, Totals};

struct Options {
    seconds: f64,
    rounds: usize,
    connections: usize,
    /// Only scenarios / configurations whose name contains this (for profiling).
    only_scenario: Option<String>,
    only_row: Option<String>,
    /// Whether to run the instances sweep after the main table.
    instances: bool,
    /// `--profile N`: N sequential requests per scenario and row, nothing else.
    profile: Option<u64>,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            seconds: 2.0,
            rounds: 5,
            connections: 32,
            only_scenario: None,
            only_row: None,
            instances: true,
            profile: None,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1).map(String::as_str).unwrap_or_default();
            match args[i].as_str() {
                "--seconds" => options.seconds = value.parse().expect("--seconds takes a number"),
                "--rounds" => options.rounds = value.parse().expect("--rounds takes a whole number"),
                "--connections" => {
                    options.connections = value.parse().expect("--connections takes a whole number")
                }
                "--scenario" => options.only_scenario = Some(value.to_owned()),
                "--row" => options.only_row = Some(value.to_owned()),
                "--instances" => options.instances = value != "no",
                "--profile" => options.profile = Some(value.parse().expect("--profile takes a whole number")),
                other => panic!("unknown argument {other:?}; see the module docs"),
            }
            i += 2;
        }
        options
    }
}

fn main() {
    // An app instance of the instances sweep: `--serve CONFIGURATION --redis URL`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [serve, row, redis, url] = args.as_slice()
        && serve == "--serve"
        && redis == "--redis"
    {
        instances::serve_child(row, url);
        return;
    }
    let options = Options::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let redis = redis_server::RedisServer::start();
    let mut rows = apps::start(&redis.url()).await;
    if let Some(only) = &options.only_row {
        rows.retain(|row| row.name.contains(only.as_str()) && (options.profile.is_none() || row.name == only));
    }
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| options.only_scenario.as_ref().is_none_or(|only| s.name().contains(only.as_str())))
        .collect();
    let mut totals: Vec<Vec<Totals>> = scenarios
        .iter()
        .map(|_| rows.iter().map(|_| Totals::default()).collect())
        .collect();
    if let Some(requests) = options.profile {
        for scenario in &scenarios {
            for row in &rows {
                load::sequential(row.address, *scenario, 20).await.run().await;
                let user = load::sequential(row.address, *scenario, requests).await;
                let before = redis.stats().await;
                user.run().await;
                let spent = redis.stats().await.minus(&before);
                let per = |n: u64| n as f64 / requests as f64;
                eprintln!(
                    "[profile] {:<26} {:<28} {requests} requests; per request: Redis {:.2} commands, {:.0} bytes, {:.1} µs CPU, {:.2} µs in EVALSHA",
                    scenario.name(),
                    row.name,
                    per(spent.commands),
                    per(spent.bytes),
                    per(spent.cpu_us),
                    per(spent.script_us),
                );
            }
        }
        return;
    }
    // Accounting pass: exact commands per request, outside the timed rounds
    // (MONITOR slows Redis down).
    const COUNTED: u64 = 200;
    for (s, scenario) in scenarios.iter().enumerate() {
        for (r, row) in rows.iter().enumerate() {
            if !row.uses_redis {
                totals[s][r].round_trips = Some(0.0);
                continue;
            }
            // Warm-up: scripts loaded, connections open, caches filled.
            load::sequential(row.address, *scenario, 20).await.run().await;
            let user = load::sequential(row.address, *scenario, COUNTED).await;
            let commands = redis_server::client_commands_during(&redis, user.run()).await;
            totals[s][r].round_trips = Some(commands as f64 / COUNTED as f64);
            eprintln!(
                "[count] {:<26} {:<22} {:.2} Redis commands per request",
                scenario.name(),
                row.name,
                commands as f64 / COUNTED as f64
            );
        }
    }
    let steps = scenarios.len() * options.rounds * rows.len();
    let mut step = 0;
    let duration = Duration::from_secs_f64(options.seconds);
    for (s, scenario) in scenarios.iter().enumerate() {
        for round in 0..options.rounds {
            for offset in 0..rows.len() {
                let r = (round + offset) % rows.len();
                step += 1;
                let row = &rows[r];
                let users = load::prepare(&[row.address], *scenario, options.connections).await;
                let before = redis.stats().await;
                let measured = users.drive(duration).await;
                let after = redis.stats().await;
                eprintln!(
                    "[{step:>3}/{steps}] {:<22} round {}/{}  {:<26} {:>9.0} req/s",
                    scenario.name(),
                    round + 1,
                    options.rounds,
                    row.name,
                    measured.requests as f64 / measured.elapsed.as_secs_f64()
                );
                totals[s][r].add(measured, after.minus(&before));
            }
        }
    }
    if options.only_row.is_some() || options.only_scenario.is_some() {
        // A partial run is for profiling; it does not overwrite the results.
        for (s, scenario) in scenarios.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                println!("{} / {}: {:.0} req/s", scenario.name(), row.name, totals[s][r].rps());
            }
        }
        return;
    }
    let mut table = table(&rows, &totals);
    if options.instances {
        let sweep = instances::run(&redis, options.rounds, options.connections, duration).await;
        table.push_str("\nInstances sweep (app processes on one Redis):\n\n");
        table.push_str(&sweep);
    }
    println!("{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(dir.join("results.md"), &table).expect("write bench/results.md");
    chart::draw(&dir.join("results.svg"), &rows, &totals).expect("write bench/results.svg");
    eprintln!("wrote bench/results.md and bench/results.svg");
}

fn table(rows: &[apps::Row], totals: &[Vec<Totals>]) -> String {
    let ceiling = rows.iter().position(|r| r.name == apps::NO_SESSIONS);
    let anchor = rows.iter().position(|r| r.name == apps::TOWER_SESSIONS_REDIS);
    let mut out = String::new();
    out.push_str("| scenario | configuration | req/s | × no sessions | × tower-sessions+Redis | p50 ms | p99 ms | Redis round trips/req | Redis cmds/req (incl. inside scripts) | Redis bytes/req | Redis CPU µs/req |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (s, scenario) in Scenario::ALL.iter().enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let t = &totals[s][r];
            let ratio = |other: Option<usize>| {
                other.map_or("–".to_owned(), |o| format!("{:.2}", t.rps() / totals[s][o].rps()))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} |",
                scenario.name(),
                row.name,
                t.rps(),
                ratio(ceiling),
                ratio(anchor),
                t.percentile_ms(0.50),
                t.percentile_ms(0.99),
                t.round_trips.unwrap_or(f64::NAN),
                t.redis_commands_per_request(),
                t.redis_bytes_per_request(),
                t.redis_cpu_us_per_request(),
            );
        }
    }
    out
}
