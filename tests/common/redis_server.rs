//! Real Redis servers for tests: standalone, Sentinel (1 primary, 1 replica, 3
//! sentinels) and Cluster (3 primaries), all on 127.0.0.1 and free ports.
//!
//! The servers are `redis-server` processes when `redis-server` and `redis-cli`
//! are installed, else containers of the `redis:7.0` image with host networking
//! (see [`containers`](super::containers); `UNSTUCK_TEST_SERVERS` forces either).
//! Both run the same arguments on the same ports, so nothing else differs;
//! `redis-cli` then runs inside a helper container.
//!
//! Every server process runs beside a tiny `sh` watchdog that kills it (by PID)
//! once the test process is gone, so servers kept in statics (which are never
//! dropped) or left behind by a panic die with the test binary; containers have
//! their own watchdog. Servers owned by one test are killed when dropped. Only
//! processes and containers started here are ever killed.
//!
//! `REDIS_URL`, when set, replaces the shared standalone server (not the
//! Sentinel and Cluster setups, nor servers that tests kill).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::containers::{self, Running, Source};

const INSTALL_HINT: &str = "the Redis tests need `redis-server` and `redis-cli` on PATH \
     (Debian/Ubuntu: `apt-get install redis-server redis-tools`)";

/// The shared standalone server's URL (`REDIS_URL` if set).
pub fn standalone_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return url;
    }
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start).url()
}

/// The shared Sentinel setup's `redis+sentinel://` URL.
/// The port of the standalone server, for checks that inspect it with
/// `redis-cli`.
pub fn standalone_port() -> u16 {
    standalone_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("this check needs a redis://host:port URL")
}

pub fn sentinel_url() -> String {
    static SETUP: OnceLock<SentinelSetup> = OnceLock::new();
    SETUP.get_or_init(SentinelSetup::start).url()
}

/// The shared Cluster's `redis+cluster://` URL.
pub fn cluster_url() -> String {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start).url()
}

/// A port nobody listens on now, whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found on 127.0.0.1");
}

fn temp_dir(role: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "unstuck-redis-{}-{}-{role}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("cannot create a temp dir");
    dir
}

/// Where this process's Redis servers come from (chosen once).
fn source() -> Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    *SOURCE.get_or_init(|| {
        let installed = || {
            ["redis-server", "redis-cli"].into_iter().all(|tool| {
                Command::new(tool)
                    .arg("--version")
                    .output()
                    .is_ok_and(|out| out.status.success())
            })
        };
        let source = containers::choose_source("Redis", installed, INSTALL_HINT);
        if source == Source::Binaries && !installed() {
            panic!("`redis-server` or `redis-cli` not found: {INSTALL_HINT}");
        }
        source
    })
}

/// The container `redis-cli` runs in when the servers are containers.
fn cli_container() -> &'static Running {
    static TOOLS: OnceLock<Running> = OnceLock::new();
    TOOLS.get_or_init(|| {
        Running::start(containers::request(
            containers::REDIS_IMAGE,
            &["sleep".to_owned(), "infinity".to_owned()],
        ))
    })
}

/// One `redis-server` (a data node or a sentinel): a process and its
/// watchdog, or a container.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    process: Option<(Child, Child)>,
    /// The container, kept while stopped so that a restart keeps its files.
    container: Option<Running>,
    container_up: bool,
}

impl RedisServer {
    /// A standalone server with no persistence on a free port.
    pub fn start() -> Self {
        Self::start_with("data", &[])
    }

    /// A server on a free port with extra arguments (e.g. `--replicaof`).
    pub fn start_with(role: &str, extra: &[&str]) -> Self {
        Self::start_on_free_port(|port| {
            let dir = temp_dir(role);
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect();
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            (dir, args)
        })
    }

    /// A sentinel on a free port monitoring `primary` under `name`.
    fn start_sentinel(primary: u16, name: &str) -> Self {
        Self::start_on_free_port(|port| {
            let dir = temp_dir("sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 3000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            (
                dir,
                vec![conf.to_str().unwrap().to_owned(), "--sentinel".to_owned()],
            )
        })
    }

    /// Starts a server made by `setup` (its directory and arguments for a
    /// port) on a free port. A free port can be taken by another test process
    /// between the check and the server's bind; the server then exits at once,
    /// and a PING would be answered by the other process's server. So a server
    /// counts as started only when the process answering is this one, and
    /// otherwise it is started again on another port.
    fn start_on_free_port(setup: impl Fn(u16) -> (PathBuf, Vec<String>)) -> Self {
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            let port = free_port();
            let (dir, args) = setup(port);
            let mut server = Self {
                port,
                dir,
                args,
                process: None,
                container: None,
                container_up: false,
            };
            if server.try_spawn() {
                return server;
            }
            // Dropping it removes its directory; its process has exited.
        }
        panic!("redis: {TRIES} free ports in a row were taken before the server bound them");
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis on port {} exited at start (port taken?); log: {}",
            self.port,
            self.dir.join("server.log").display()
        );
    }

    /// Starts the server and waits until it answers PING; `false` when the
    /// process exited first (its port was taken).
    fn try_spawn(&mut self) -> bool {
        assert!(
            self.process.is_none() && !self.container_up,
            "server already running"
        );
        match source() {
            Source::Binaries => self.spawn_process(),
            Source::Containers => self.spawn_container(),
        }
        let limit = Duration::from_secs(10);
        let failure = self.not_within(limit, "answer PING");
        let mut exited = false;
        poll_until(limit, &failure, || {
            exited = self
                .process
                .as_mut()
                .is_some_and(|(server, _)| server.try_wait().ok().flatten().is_some());
            exited || self.answers_as_itself()
        });
        if exited {
            self.kill();
        }
        !exited
    }

    /// Whether the server on this port answers, and is the process this
    /// handle started (for a container, whatever answers on its port).
    fn answers_as_itself(&self) -> bool {
        let Some((server, _)) = &self.process else {
            return self.cli(&["PING"]).is_some_and(|r| r.trim() == "PONG");
        };
        self.cli(&["INFO", "server"])
            .and_then(|info| info_field(&info, "process_id"))
            .is_some_and(|pid| pid.trim() == server.id().to_string())
    }

    /// Starts its container, or restarts it with its files. The server runs
    /// as root in the locally built image, as `redis` in the official one: the
    /// mounted directory (config, log, cluster state) is open to both.
    fn spawn_container(&mut self) {
        if let Some(container) = &self.container {
            container.restart();
        } else {
            make_world_writable(&self.dir);
            let log = self.dir.join("server.log");
            let mut cmd = vec!["redis-server".to_owned()];
            cmd.extend(self.args.iter().cloned());
            cmd.extend(["--logfile".to_owned(), log.to_str().unwrap().to_owned()]);
            let request = containers::request(containers::REDIS_IMAGE, &cmd);
            self.container = Some(Running::start(containers::with_dir(request, &self.dir)));
        }
        self.container_up = true;
    }

    fn spawn_process(&mut self) {
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let server = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): {INSTALL_HINT}"));
        // Kills the server by PID once this test process has gone, however it
        // ended. It also stops by itself once the server is gone.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null; do \
                   kill -0 \"$2\" 2>/dev/null || { kill -9 \"$1\" 2>/dev/null; exit 0; }; \
                   sleep 0.2; \
                 done",
            )
            .arg("watchdog")
            .arg(server.id().to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start the watchdog shell");
        self.process = Some((server, watchdog));
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some((mut server, mut watchdog)) = self.process.take() {
            let _ = server.kill();
            let _ = server.wait();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if self.container_up {
            if let Some(container) = &self.container {
                container.kill();
            }
            self.container_up = false;
        }
    }

    /// Starts it again on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Runs `redis-cli` against it; `None` if it could not connect or failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args)
    }

    /// Polls `ready` every 100 ms until it holds, panicking after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, ready: impl Fn(&Self) -> bool) {
        poll_until(limit, &self.not_within(limit, what), || ready(self));
    }

    /// The failure message of a wait for it to `what` within `limit`.
    fn not_within(&self, limit: Duration, what: &str) -> String {
        format!(
            "redis on port {} did not {what} within {limit:?}; log: {}",
            self.port,
            self.dir.join("server.log").display()
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        self.container = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `ready` every 100 ms until it holds, panicking with `failure` after
/// `limit`.
fn poll_until(limit: Duration, failure: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{failure}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `redis-cli -p port args…` with a timeout; stdout on success.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let mut full = vec!["-h", "127.0.0.1", "-p"];
    let port = port.to_string();
    full.push(&port);
    full.extend_from_slice(args);
    let (success, text) = redis_cli(5, &full)?;
    (success && !text.starts_with("Could not connect")).then_some(text)
}

/// `redis-cli args…` bounded by `seconds`, here or in the helper container:
/// whether it succeeded, and its standard output. `None` if it could not run.
fn redis_cli(seconds: u32, args: &[&str]) -> Option<(bool, String)> {
    // redis-cli 7.0 has no timeout option; coreutils' `timeout` bounds a call
    // to a server that stopped answering.
    let mut command = vec![seconds.to_string(), "redis-cli".to_owned()];
    command.extend(args.iter().map(|a| (*a).to_owned()));
    match source() {
        Source::Binaries => {
            let out = Command::new("timeout")
                .args(&command)
                .stdin(Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Some((out.status.success(), text))
        }
        Source::Containers => {
            command.insert(0, "timeout".to_owned());
            let (code, text) = cli_container().exec(&command)?;
            Some((code == 0, text))
        }
    }
}

/// Opens `dir` to every user, for servers that run as another user in their
/// container.
fn make_world_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::iter::once(dir.to_owned()).chain(
        std::fs::read_dir(dir)
            .expect("cannot list the temp dir")
            .map(|e| e.expect("cannot list the temp dir").path()),
    ) {
        let mode = if entry.is_dir() { 0o777 } else { 0o666 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))
            .expect("cannot open the temp dir to the container's user");
    }
}

/// Reads `field:value` lines of `INFO`/`CLUSTER INFO` output.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_owned)
}

/// One primary, one replica and three sentinels (quorum 2) that fail over one
/// second after the primary stops answering.
pub struct SentinelSetup {
    /// The initial primary.
    pub primary: RedisServer,
    /// The replica, promoted on failover.
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "unstuck";

impl SentinelSetup {
    /// Starts it and waits until replication and the sentinels are in place.
    pub fn start() -> Self {
        let primary = RedisServer::start();
        let primary_port = primary.port().to_string();
        let replica =
            RedisServer::start_with("replica", &["--replicaof", "127.0.0.1", &primary_port]);
        replica.wait_until(Duration::from_secs(15), "sync with the primary", |r| {
            r.cli(&["INFO", "replication"])
                .and_then(|i| info_field(&i, "master_link_status"))
                .is_some_and(|s| s == "up")
        });
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_sentinel(primary.port(), MASTER_NAME))
            .collect();
        for sentinel in &sentinels {
            // Failover needs a majority of sentinels that know each other and
            // the replica; discovery goes through hello messages every 2 s.
            sentinel.wait_until(Duration::from_secs(20), "discover its peers", |s| {
                let Some(state) = s.cli(&["SENTINEL", "MASTER", MASTER_NAME]) else {
                    return false;
                };
                let lines: Vec<&str> = state.lines().map(str::trim).collect();
                let value = |name: &str| {
                    lines
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .and_then(|kv| kv.get(1))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                value("num-other-sentinels") == Some(2) && value("num-slaves") == Some(1)
            });
        }
        Self {
            primary,
            replica,
            sentinels,
        }
    }

    /// The `redis+sentinel://` URL naming every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// Asks for a planned failover (`SENTINEL FAILOVER`), retrying while the
    /// sentinels refuse it (no good replica yet: after a previous failover the
    /// old primary must first be demoted and resynced, about 10-15 s).
    /// Returns when a sentinel accepted it.
    pub fn failover(&self, limit: Duration) -> Instant {
        let start = Instant::now();
        loop {
            for sentinel in &self.sentinels {
                let asked = Instant::now();
                let reply = sentinel.cli(&["SENTINEL", "FAILOVER", MASTER_NAME]);
                if reply.is_some_and(|r| r.trim() == "OK") {
                    return asked;
                }
            }
            assert!(
                start.elapsed() < limit,
                "no sentinel accepted SENTINEL FAILOVER within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether every sentinel names `port` as the primary.
    fn all_name_primary(&self, port: u16) -> bool {
        self.sentinels.iter().all(|s| {
            s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                .and_then(|r| r.lines().nth(1)?.trim().parse::<u16>().ok())
                == Some(port)
        })
    }

    /// Waits until `port` is the primary for every sentinel and is synced
    /// with a replica, so a further failover (or replica acks) can work.
    pub fn wait_settled(&self, port: u16, limit: Duration) {
        let start = Instant::now();
        loop {
            let agreed = self.all_name_primary(port);
            let replicated = cli(port, &["INFO", "replication"]).is_some_and(|info| {
                info_field(&info, "role").as_deref() == Some("master")
                    && info_field(&info, "slave0").is_some_and(|r| r.contains("state=online"))
            });
            if agreed && replicated {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "port {port} did not settle as the replicated primary within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every sentinel names `port` as the primary. The store
    /// follows a promotion as soon as the replica reports itself primary,
    /// which can be before the sentinels have all updated their view.
    pub fn wait_named_primary(&self, port: u16, limit: Duration) {
        let start = Instant::now();
        while !self.all_name_primary(port) {
            assert!(
                start.elapsed() < limit,
                "the sentinels did not all name port {port} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the node the sentinels currently call primary.
    pub fn current_primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }
}

/// Starts `count` cluster-enabled nodes and joins them with `redis-cli
/// --cluster create` (`replicas` per master), bounded at 60 s.
fn start_cluster_nodes(
    count: usize,
    replicas: u32,
    role: &str,
    node_timeout: Duration,
) -> Vec<RedisServer> {
    let timeout_ms = node_timeout.as_millis().to_string();
    let nodes: Vec<RedisServer> = (0..count)
        .map(|_| {
            RedisServer::start_with(
                role,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout_ms,
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let replicas = replicas.to_string();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
    let (success, out) = redis_cli(60, &args).expect("cannot run redis-cli --cluster create");
    assert!(success, "redis-cli --cluster create failed: {out}");
    nodes
}

/// Three cluster primaries holding all 16384 slots.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, joins them and waits for `cluster_state:ok` everywhere.
    pub fn start() -> Self {
        let nodes = start_cluster_nodes(3, 0, "cluster", Duration::from_millis(2000));
        for node in &nodes {
            node.wait_until(Duration::from_secs(20), "report cluster_state:ok", |n| {
                n.cli(&["CLUSTER", "INFO"])
                    .and_then(|i| info_field(&i, "cluster_state"))
                    .is_some_and(|s| s == "ok")
            });
        }
        Self { nodes }
    }

    /// The `redis+cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// Every key (matching `pattern`) and every value in a standalone Redis, as
/// text: for checks that something never reaches the store.
pub fn dump(port: u16, pattern: &str) -> Vec<(String, String)> {
    let keys = cli(port, &["--scan", "--pattern", pattern]).expect("scan failed");
    let mut entries = Vec::new();
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let kind = cli(port, &["TYPE", key]).unwrap_or_default();
        let value = match kind.trim() {
            "hash" => cli(port, &["HGETALL", key]),
            "zset" => cli(port, &["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            "string" => cli(port, &["GET", key]),
            other => Some(format!("<{other}>")),
        }
        .unwrap_or_default();
        entries.push((key.to_owned(), value));
    }
    entries
}

/// One line of `CLUSTER NODES`: a node as some node of the cluster sees it.
#[derive(Clone, Debug)]
pub struct ClusterNodeView {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The master's ID for a replica, `None` for a master.
    pub master: Option<String>,
    /// Slot ranges (inclusive) it serves, for a master.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNodeView {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Flagged as failing (`fail` or `fail?`).
    pub fn is_failing(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("fail"))
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// `CLUSTER NODES` as seen by the node on `port`; `None` if it does not answer.
pub fn cluster_nodes(port: u16) -> Option<Vec<ClusterNodeView>> {
    let text = cli(port, &["CLUSTER", "NODES"])?;
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        // `127.0.0.1:port@busport[,hostname]`
        let port = fields[1]
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()?;
        let slots = fields[8..]
            .iter()
            // Skip slots being migrated (`[slot->-id]`).
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        nodes.push(ClusterNodeView {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master: (fields[3] != "-").then(|| fields[3].to_owned()),
            slots,
        });
    }
    Some(nodes)
}

/// Three masters with one replica each, owned by one test (which fails nodes
/// over or kills them). A node is declared failing after `node_timeout`.
pub struct ReplicatedCluster {
    /// The six nodes, in creation order; `redis-cli --cluster create` picks
    /// which are masters.
    pub nodes: Vec<RedisServer>,
}

impl ReplicatedCluster {
    /// Starts six nodes, joins them with `--cluster-replicas 1` and waits
    /// until every node reports `cluster_state:ok`, sees all six nodes
    /// healthy, and every replica is in sync with its master.
    pub fn start(node_timeout: Duration) -> Self {
        let nodes = start_cluster_nodes(6, 1, "cluster-ha", node_timeout);
        let cluster = Self { nodes };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// The `redis+cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The node listening on `port`.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of any node that answers).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .find_map(|n| n.cli(&["CLUSTER", "KEYSLOT", key])?.trim().parse().ok())
            .expect("no cluster node answered CLUSTER KEYSLOT")
    }

    /// The master serving `slot` and its replica (ports), as the first node
    /// that answers sees them. `None` while that view has no such pair.
    pub fn shard_of(&self, slot: u16) -> Option<(u16, u16)> {
        let view = self.nodes.iter().find_map(|n| cluster_nodes(n.port()))?;
        let master = view
            .iter()
            .find(|n| n.is_master() && !n.is_failing() && n.serves(slot))?;
        let replica = view
            .iter()
            .find(|n| n.master.as_deref() == Some(&master.id) && !n.is_failing())?;
        Some((master.port, replica.port))
    }

    /// Whether every node answering on `ports` agrees that `master` serves
    /// `slot` and reports `cluster_state:ok`, and `master` itself says its
    /// role is master.
    fn agreed_master(&self, ports: &[u16], slot: u16, master: u16) -> bool {
        let role_ok = cli(master, &["ROLE"])
            .is_some_and(|r| r.lines().next().is_some_and(|l| l.trim() == "master"));
        role_ok
            && ports.iter().all(|port| {
                let state_ok = cli(*port, &["CLUSTER", "INFO"])
                    .and_then(|i| info_field(&i, "cluster_state"))
                    .is_some_and(|s| s == "ok");
                let owner = cluster_nodes(*port).and_then(|view| {
                    view.into_iter()
                        .find(|n| n.is_master() && !n.is_failing() && n.serves(slot))
                        .map(|n| n.port)
                });
                state_ok && owner == Some(master)
            })
    }

    /// Polls (every 50 ms) until every live node in `live` reports
    /// `cluster_state:ok` and names `master` as the server of `slot`, and
    /// `master` reports the role master. Returns when that held.
    pub fn wait_master(&self, live: &[u16], slot: u16, master: u16, limit: Duration) -> Instant {
        self.try_wait_master(live, slot, master, limit)
            .unwrap_or_else(|| {
                panic!(
                    "port {master} did not become the agreed master of slot {slot} within \
                     {limit:?}: {:?}",
                    cluster_nodes(master)
                )
            })
    }

    /// Like [`wait_master`](Self::wait_master), `None` after `limit`.
    pub fn try_wait_master(
        &self,
        live: &[u16],
        slot: u16,
        master: u16,
        limit: Duration,
    ) -> Option<Instant> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.agreed_master(live, slot, master) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Polls (every 100 ms) until every node answers, reports
    /// `cluster_state:ok`, sees six nodes none of them failing, and every
    /// replica has its link to its master up.
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let healthy = self.nodes.iter().all(|node| {
                let state_ok = node
                    .cli(&["CLUSTER", "INFO"])
                    .and_then(|i| info_field(&i, "cluster_state"))
                    .is_some_and(|s| s == "ok");
                let view_ok = cluster_nodes(node.port()).is_some_and(|view| {
                    view.len() == 6
                        && view.iter().all(|n| !n.is_failing())
                        && view.iter().filter(|n| n.is_master()).count() == 3
                });
                let replication = node.cli(&["INFO", "replication"]);
                let synced = replication.is_some_and(|info| {
                    info_field(&info, "role").as_deref() == Some("master")
                        || info_field(&info, "master_link_status").as_deref() == Some("up")
                });
                state_ok && view_ok && synced
            });
            if healthy {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the cluster did not become healthy within {limit:?}: {:?}",
                cluster_nodes(self.nodes[0].port())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asks the replica on `replica` for a coordinated manual failover
    /// (`CLUSTER FAILOVER`: the master pauses writes until the replica has
    /// caught up, then the replica takes over) of the shard serving `slot`,
    /// and waits until every node agrees. A manual failover that does not
    /// complete (Redis gives up after 5 s, e.g. on a starved machine) is asked
    /// for again, up to 3 times. Returns when the last request was accepted
    /// and when the promotion was agreed.
    pub fn manual_failover(&self, slot: u16, replica: u16, limit: Duration) -> (Instant, Instant) {
        let ports = self.ports();
        for _ in 0..3 {
            let asked = Instant::now();
            let reply = cli(replica, &["CLUSTER", "FAILOVER"]);
            assert_eq!(
                reply.as_deref().map(str::trim),
                Some("OK"),
                "CLUSTER FAILOVER refused on port {replica}"
            );
            if let Some(promoted) = self.try_wait_master(&ports, slot, replica, limit / 3) {
                return (asked, promoted);
            }
        }
        panic!(
            "CLUSTER FAILOVER on port {replica} did not complete in 3 tries within {limit:?}: {:?}",
            cluster_nodes(replica)
        );
    }

    /// Ports of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }
}
