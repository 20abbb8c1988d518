//! PostgreSQL for tests: `DATABASE_URL` when set, otherwise throwaway clusters
//! on free ports of 127.0.0.1: made with `initdb` and `pg_ctl` when PostgreSQL is
//! installed, else containers of the `postgres:15` image with host networking
//! (see [`containers`](super::containers); `UNSTUCK_TEST_SERVERS` forces either).
//!
//! Every cluster started here is stopped when its [`PgServer`] is dropped, and a
//! watchdog shell also stops it (and removes its directory, or its container)
//! once the test process is gone, so clusters held in statics or abandoned by a
//! crash do not outlive the test run. Only clusters started here are ever
//! stopped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testcontainers::ImageExt;
use unstuck::{PostgresStore, SessionId};

use super::containers::{self, Running, Source};

/// Where the PostgreSQL server binaries are looked for before `PATH`.
const PG_BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];
/// The unprivileged account clusters run as: `initdb` and `pg_ctl` refuse root.
const PG_USER: &str = "postgres";

/// What to tell someone who has no PostgreSQL for the tests.
const INSTALL_HINT: &str = "install PostgreSQL (`apt-get install postgresql`) or set \
     DATABASE_URL to a database the tests may use";
/// The server settings of every cluster: loopback only, durability off for speed.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=300",
];

/// A PostgreSQL cluster this process started. Dropping it stops the cluster and
/// deletes its files.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    how: Runs,
}

/// A cluster of local binaries, or a container.
#[derive(Debug)]
enum Runs {
    Binaries { dir: PathBuf, pg_ctl: PathBuf },
    Container(Running),
}

/// Where this process's PostgreSQL servers come from (chosen once).
fn source() -> Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    *SOURCE.get_or_init(|| {
        containers::choose_source(
            "PostgreSQL",
            || find_binary("initdb").is_some(),
            INSTALL_HINT,
        )
    })
}

impl PgServer {
    /// Creates and starts a fresh cluster (trust authentication, superuser
    /// `postgres`, durability off for speed).
    ///
    /// # Panics
    /// When there is no PostgreSQL to start, or the cluster does not come up.
    pub fn start() -> Self {
        match source() {
            Source::Binaries => Self::start_binaries(),
            Source::Containers => Self::start_container(),
        }
    }

    /// A container of the `postgres` image as user `postgres`, which
    /// initialises its data directory on first start.
    fn start_container() -> Self {
        let port = free_port();
        let mut cmd = vec!["postgres".to_owned(), "-p".to_owned(), port.to_string()];
        for setting in SETTINGS {
            cmd.extend(["-c".to_owned(), (*setting).to_owned()]);
        }
        let request = containers::request(containers::POSTGRES_IMAGE, &cmd)
            .with_user("postgres")
            .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust");
        let server = Self {
            port,
            how: Runs::Container(Running::start(request)),
        };
        server.wait_ready();
        server
    }

    /// Polls `pg_isready` over TCP every 100 ms until the server accepts
    /// connections (the official image's first start runs a temporary server
    /// without TCP, then the real one), panicking after 60 s.
    fn wait_ready(&self) {
        let Runs::Container(container) = &self.how else {
            return;
        };
        let port = self.port.to_string();
        let ready = [
            "pg_isready",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
        ]
        .map(str::to_owned);
        let start = Instant::now();
        while container.exec(&ready).is_none_or(|(code, _)| code != 0) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not accept connections on port {port} within 60 s; \
                 see `docker logs {}`",
                container.id()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_binaries() -> Self {
        let initdb = find_binary("initdb").unwrap_or_else(|| {
            panic!("`initdb` not found in {PG_BIN_DIRS:?} or PATH: {INSTALL_HINT}")
        });
        let pg_ctl = initdb.with_file_name("pg_ctl");
        assert!(
            pg_ctl.exists(),
            "{} not found next to initdb",
            pg_ctl.display()
        );

        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "unstuck-pg-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_tag()
        ));
        // Created by the postgres user so that it owns the directory.
        run_as_postgres(
            Command::new("mkdir").arg("-m").arg("700").arg(&dir),
            "mkdir",
        );
        let server = Self {
            port: free_port(),
            how: Runs::Binaries {
                dir: dir.clone(),
                pg_ctl,
            },
        };
        server.spawn_watchdog();
        run_as_postgres(
            Command::new(&initdb)
                .arg("-D")
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .current_dir(&dir),
            "initdb",
        );
        server.start_again();
        server
    }

    /// Starts the cluster after [`stop`](Self::stop); waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let (dir, pg_ctl) = match &self.how {
            Runs::Binaries { dir, pg_ctl } => (dir, pg_ctl),
            Runs::Container(container) => {
                container.restart();
                self.wait_ready();
                return;
            }
        };
        let mut options = format!(
            "-p {port} -c unix_socket_directories={dir}",
            port = self.port,
            dir = dir.display(),
        );
        for setting in SETTINGS {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let log_file = dir.join("server.log");
        let started = run_as_postgres_status(
            Command::new(pg_ctl)
                .arg("start")
                .arg("-D")
                .arg(dir.join("data"))
                .arg("-l")
                .arg(&log_file)
                .args(["-w", "-t", "60", "-o"])
                .arg(options)
                .current_dir(dir),
        );
        if !started {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            panic!(
                "PostgreSQL did not start on port {}; log:\n{log}",
                self.port
            );
        }
    }

    /// Stops the cluster (`-m fast`: connections are cut at once, and what was
    /// committed survives even with `synchronous_commit=off`) and waits until it
    /// is down.
    pub fn stop(&self) {
        self.stop_with("fast");
    }

    fn stop_with(&self, mode: &str) {
        match &self.how {
            Runs::Binaries { dir, pg_ctl } => {
                let _ = run_as_postgres_status(
                    Command::new(pg_ctl)
                        .arg("stop")
                        .arg("-D")
                        .arg(dir.join("data"))
                        .args(["-m", mode, "-w", "-t", "60"])
                        .current_dir(dir),
                );
            }
            Runs::Container(container) => {
                // The server is the container's first process: SIGINT is
                // `-m fast`, SIGQUIT `-m immediate`; it exits, and so does the
                // container (`docker stop` would send SIGTERM, a smart shutdown
                // that waits for every client to leave).
                let signal = if mode == "immediate" { "-QUIT" } else { "-INT" };
                let kill = ["sh", "-c", &format!("kill {signal} 1")].map(str::to_owned);
                if container.is_running() {
                    let _ = container.exec(&kill);
                    container.wait_stopped(Duration::from_secs(60));
                }
            }
        }
    }

    /// A connection URL for the `postgres` database as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the cluster and removes its directory once this process has exited,
    /// however it exits.
    fn spawn_watchdog(&self) {
        let Runs::Binaries { dir, pg_ctl } = &self.how else {
            return;
        };
        let data = dir.join("data");
        let user: &std::ffi::OsStr = if is_root() {
            "root".as_ref()
        } else {
            "user".as_ref()
        };
        super::watchdog::after_exit(
            "unstuck-pg-watchdog",
            r#"if [ -f "$2/postmaster.pid" ]; then
                if [ "$4" = root ]; then
                    runuser -u postgres -- "$1" stop -D "$2" -m immediate -w -t 30
                else
                    "$1" stop -D "$2" -m immediate -w -t 30
                fi
            fi
            rm -rf -- "$3""#,
            &[pg_ctl.as_ref(), data.as_ref(), dir.as_ref(), user],
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        match &self.how {
            Runs::Binaries { dir, .. } => {
                self.stop_with("immediate");
                let _ = std::fs::remove_dir_all(dir);
            }
            // Removing the container (when `Running` drops) kills the server.
            Runs::Container(_) => {}
        }
    }
}

/// The database shared by the tests of one test binary, and a schema of its own
/// in it (so test binaries sharing `DATABASE_URL` do not see each other's rows).
#[derive(Debug)]
pub struct SharedDb {
    /// Kept alive for the whole process; the watchdog stops it at exit.
    _server: Option<PgServer>,
    /// Where to connect.
    pub url: String,
    /// The schema this test binary uses.
    pub schema: String,
}

/// The shared database, started on first use.
pub fn shared() -> &'static SharedDb {
    static SHARED: OnceLock<SharedDb> = OnceLock::new();
    SHARED.get_or_init(|| {
        let schema = format!("unstuck_test_{}", random_tag());
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => SharedDb {
                _server: None,
                url,
                schema,
            },
            _ => {
                let server = PgServer::start();
                SharedDb {
                    url: server.url(),
                    _server: Some(server),
                    schema,
                }
            }
        }
    })
}

/// A store on the shared database, in this binary's schema, default table.
pub async fn store() -> PostgresStore {
    let db = shared();
    PostgresStore::connect(&db.url)
        .await
        .expect("cannot connect to the test database")
        .with_schema(&db.schema)
        .expect("test schema name")
}

/// Lower-case letters and digits from the OS random generator.
pub fn random_tag() -> String {
    SessionId::generate()
        .storage_key()
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect()
}

/// A port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
        .port()
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    PG_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn as_postgres(command: &mut Command) -> Command {
    // initdb and pg_ctl refuse to run as root; as another user, run them directly.
    let mut wrapped = if is_root() {
        let mut runuser = Command::new("runuser");
        runuser
            .args(["-u", PG_USER, "--"])
            .arg(command.get_program());
        runuser
    } else {
        Command::new(command.get_program())
    };
    wrapped.args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    } else {
        wrapped.current_dir("/");
    }
    wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    wrapped
}

fn run_as_postgres(command: &mut Command, what: &str) {
    let output = as_postgres(command)
        .output()
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_as_postgres_status(command: &mut Command) -> bool {
    // The server inherits no pipe of ours (pg_ctl sends its output to the log
    // file), so waiting for output cannot hang on the daemon.
    let mut command = as_postgres(command);
    command.stderr(Stdio::null());
    command.status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// For tests that read the table directly.
pub fn qualified_table(schema: &str, table: &str) -> String {
    format!("\"{schema}\".\"{table}\"")
}
