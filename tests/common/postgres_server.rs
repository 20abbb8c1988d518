//! PostgreSQL for tests: `DATABASE_URL` when set, otherwise throwaway clusters
//! made with `initdb` and `pg_ctl` on free ports of 127.0.0.1.
//!
//! Every cluster started here is stopped when its [`PgServer`] is dropped, and a
//! watchdog shell also stops it (and removes its directory) once the test process
//! is gone, so clusters held in statics or abandoned by a crash do not outlive
//! the test run. Only clusters started here are ever stopped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use unstuck::{PostgresStore, SessionId};

/// Where the PostgreSQL server binaries are looked for before `PATH`.
const PG_BIN_DIRS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];
/// The unprivileged account clusters run as: `initdb` and `pg_ctl` refuse root.
const PG_USER: &str = "postgres";
/// How long the watchdog keeps a cluster alive at most, in half seconds (8 hours):
/// a bound in case the process ID is reused by a long-lived process.
const WATCHDOG_MAX_POLLS: u32 = 8 * 3600 * 2;

/// A PostgreSQL cluster this process started. Dropping it stops the cluster and
/// deletes its files.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    pg_ctl: PathBuf,
    port: u16,
}

impl PgServer {
    /// Creates and starts a fresh cluster (trust authentication, superuser
    /// `postgres`, durability off for speed).
    ///
    /// # Panics
    /// When `initdb` is not installed, or the cluster does not come up.
    pub fn start() -> Self {
        let initdb = find_binary("initdb");
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
            dir,
            pg_ctl,
            port: free_port(),
        };
        server.spawn_watchdog();
        run_as_postgres(
            Command::new(&initdb)
                .arg("-D")
                .arg(server.data_dir())
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
                .current_dir(&server.dir),
            "initdb",
        );
        server.start_again();
        server
    }

    /// Starts the cluster after [`stop`](Self::stop); waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={dir} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300",
            port = self.port,
            dir = self.dir.display(),
        );
        let started = run_as_postgres_status(
            Command::new(&self.pg_ctl)
                .arg("start")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "-o"])
                .arg(options)
                .current_dir(&self.dir),
        );
        if !started {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
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
        let _ = run_as_postgres_status(
            Command::new(&self.pg_ctl)
                .arg("stop")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60"])
                .current_dir(&self.dir),
        );
    }

    /// A connection URL for the `postgres` database as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Stops the cluster and removes its directory once this process has exited,
    /// however it exits. The watchdog runs in the background of a shell that
    /// exits at once, so it is not a child of ours (no zombie, nothing to wait
    /// for) and outlives this process.
    fn spawn_watchdog(&self) {
        let script = r#"(
            i=0
            while kill -0 "$1" 2>/dev/null && [ "$i" -lt "$2" ]; do
                sleep 0.5
                i=$((i + 1))
            done
            if [ -f "$4/postmaster.pid" ]; then
                if [ "$6" = root ]; then
                    runuser -u postgres -- "$3" stop -D "$4" -m immediate -w -t 30
                else
                    "$3" stop -D "$4" -m immediate -w -t 30
                fi
            fi
            rm -rf -- "$5"
        ) </dev/null >/dev/null 2>&1 &"#;
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("unstuck-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(WATCHDOG_MAX_POLLS.to_string())
            .arg(&self.pg_ctl)
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(if is_root() { "root" } else { "user" })
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("could not spawn the PostgreSQL watchdog");
        assert!(status.success(), "PostgreSQL watchdog failed to start");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_with("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
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

fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    PG_BIN_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found (looked in {PG_BIN_DIRS:?} and PATH). Install PostgreSQL \
                 (`apt-get install postgresql`) or set DATABASE_URL to a database the tests may use."
            )
        })
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
