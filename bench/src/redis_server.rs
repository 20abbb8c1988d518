//! A throwaway `redis-server` for the benchmark, and its statistics.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

/// What Redis did between two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisStats {
    pub commands: u64,
    pub bytes: u64,
    /// CPU time Redis used (user + system), in µs.
    pub cpu_us: u64,
    /// Time Redis spent executing `EVALSHA` calls (scripts included), in µs
    /// (`INFO commandstats`).
    pub script_us: u64,
}

impl RedisStats {
    pub fn minus(&self, earlier: &Self) -> Self {
        Self {
            commands: self.commands.saturating_sub(earlier.commands),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            cpu_us: self.cpu_us.saturating_sub(earlier.cpu_us),
            script_us: self.script_us.saturating_sub(earlier.script_us),
        }
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("unstuck-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with `apt-get install redis-server`")
            });
        let server = Self {
            child,
            port,
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn stats(&self) -> RedisStats {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the bench redis");
        let commandstats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await
            .expect("INFO commandstats");
        let stats: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut connection)
            .await
            .expect("INFO stats");
        let cpu: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut connection)
            .await
            .expect("INFO cpu");
        // Seconds with µs precision ("used_cpu_sys:1.234567").
        let cpu_us = ["used_cpu_sys", "used_cpu_user"]
            .iter()
            .filter_map(|name| {
                cpu.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
            })
            .map(|seconds| (seconds * 1e6).round() as u64)
            .sum();
        let commands = commandstats
            .lines()
            .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
            .filter_map(|line| field(line.split_once(':')?.1, "calls"))
            .sum();
        let bytes = ["total_net_input_bytes", "total_net_output_bytes"]
            .iter()
            .filter_map(|name| {
                stats
                    .lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
            })
            .sum();
        let script_us = commandstats
            .lines()
            .find_map(|line| field(line.strip_prefix("cmdstat_evalsha:")?, "usec"))
            .unwrap_or(0);
        RedisStats { commands, bytes, cpu_us, script_us }
    }
}

fn field(list: &str, name: &str) -> Option<u64> {
    list.split(',').find_map(|kv| {
        let (key, value) = kv.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

/// Counts the commands clients send Redis while `work` runs, with `MONITOR`
/// (which shows script-internal commands separately, as `[0 lua]`): the round
/// trips a request costs, not the commands a script runs inside Redis.
pub async fn client_commands_during<F: std::future::Future<Output = ()>>(
    server: &RedisServer,
    work: F,
) -> u64 {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli monitor (install redis-tools)");
    let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
    // MONITOR answers OK once it is live.
    while let Some(line) = lines.next_line().await.expect("monitor output") {
        if line.trim() == "OK" {
            break;
        }
    }
    work.await;
    // A marker command tells us when everything before it has been printed.
    let mut marker = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("ECHO").arg("unstuck-bench-marker").query_async(&mut marker).await.unwrap();
    let mut count = 0;
    while let Some(line) = lines.next_line().await.expect("monitor output") {
        if line.contains("unstuck-bench-marker") {
            break;
        }
        if !line.contains("[0 lua]") {
            count += 1;
        }
    }
    let _ = monitor.kill().await;
    count
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
