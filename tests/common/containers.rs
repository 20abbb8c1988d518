//! Test servers in Docker containers, through testcontainers, for machines
//! with a Docker engine but no `redis-server` or PostgreSQL binaries.
//!
//! Every container uses host networking, so a server in one is reached at
//! 127.0.0.1 on the port it was given, exactly like a local process (Sentinel
//! and Cluster need nothing else). The images are the official `redis:7.0` and
//! `postgres:15` (pulled by the engine if it can), or the same tags built
//! locally by `scripts/with-docker` where no registry is reachable.
//!
//! A container owned by a test is removed when dropped. Containers held in
//! statics are never dropped, so each container also gets a watchdog shell that
//! removes it (`docker rm -f`) once the test process has gone, however it ended.
//! Only containers started here are ever removed.
//!
//! testcontainers' blocking API runs its own Tokio runtime, which cannot be
//! entered from a Tokio test; every call goes through [`off_runtime`].

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::core::{ExecCommand, Mount};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, ContainerRequest, GenericImage, ImageExt};

/// The Redis image and tag (7.x: RESP3 and client-side caching).
pub const REDIS_IMAGE: (&str, &str) = ("redis", "7.0");
/// The PostgreSQL image and tag.
pub const POSTGRES_IMAGE: (&str, &str) = ("postgres", "15");

/// How to get a Docker engine, for failure messages.
pub const DOCKER_HINT: &str = "install Docker (Debian/Ubuntu: `apt-get install docker.io`, \
     then start it), or run the tests under `scripts/with-docker` (as root: it starts a \
     private engine and builds the images from local binaries)";

/// Where the test servers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Processes of binaries installed on this machine.
    Binaries,
    /// Docker containers.
    Containers,
}

/// Chooses the source of `what` (e.g. "Redis") as [`decide_source`] does,
/// with `UNSTUCK_TEST_SERVERS` and the Docker engine of this machine.
///
/// # Panics
/// When there is no way to get the servers, saying how to get one.
pub fn choose_source(
    what: &str,
    binaries_found: impl FnOnce() -> bool,
    install_hint: &str,
) -> Source {
    let forced = match std::env::var("UNSTUCK_TEST_SERVERS") {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => panic!("UNSTUCK_TEST_SERVERS: {e}"),
    };
    decide_source(
        forced.as_deref(),
        what,
        binaries_found,
        engine_answers,
        install_hint,
    )
    .unwrap_or_else(|why| panic!("{why}"))
}

/// Where the servers for `what` come from: `forced` (`binaries` or
/// `containers`, the value of `UNSTUCK_TEST_SERVERS`) when set; else the local
/// binaries when `binaries_found`; else containers when `engine` answers.
///
/// # Errors
/// When containers are forced and no engine answers, when neither binaries
/// nor an engine are there (naming how to get either), or when `forced` is
/// something else.
pub fn decide_source(
    forced: Option<&str>,
    what: &str,
    binaries_found: impl FnOnce() -> bool,
    engine: impl FnOnce() -> Result<(), String>,
    install_hint: &str,
) -> Result<Source, String> {
    match forced {
        Some("binaries") => Ok(Source::Binaries),
        Some("containers") => match engine() {
            Ok(()) => Ok(Source::Containers),
            Err(why) => Err(format!(
                "UNSTUCK_TEST_SERVERS=containers, but no Docker engine answers ({why}): \
                 {DOCKER_HINT}"
            )),
        },
        None | Some("") => {
            if binaries_found() {
                return Ok(Source::Binaries);
            }
            engine().map(|()| Source::Containers).map_err(|why| {
                format!(
                    "no {what} servers for the tests: {install_hint}; or {DOCKER_HINT} \
                     (no Docker engine answers: {why})"
                )
            })
        }
        Some(other) => Err(format!(
            "UNSTUCK_TEST_SERVERS={other:?}: expected `binaries` or `containers`"
        )),
    }
}

/// Whether a Docker engine answers `docker version` (checked once). The
/// `docker` CLI is needed anyway: the watchdogs remove containers with it.
pub fn engine_answers() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run the `docker` CLI: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
            }
        })
        .clone()
}

/// Runs `f` on a thread of its own: testcontainers' blocking calls start a
/// runtime, which panics inside a Tokio test's runtime.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A request for `image` on the host's network running `cmd`.
pub fn request(image: (&str, &str), cmd: &[String]) -> ContainerRequest<GenericImage> {
    GenericImage::new(image.0, image.1)
        .with_network("host")
        .with_label("unstuck-test-pid", std::process::id().to_string())
        .with_cmd(cmd.to_vec())
}

/// `request` with `dir` of the host mounted at the same path, so paths in
/// arguments (config files, `--dir`, log files) mean the same inside.
pub fn with_dir(
    request: ContainerRequest<GenericImage>,
    dir: &std::path::Path,
) -> ContainerRequest<GenericImage> {
    let path = dir.to_str().expect("temp dir path is not UTF-8").to_owned();
    request.with_mount(Mount::bind_mount(path.clone(), path))
}

/// A container this process started, and its watchdog.
pub struct Running {
    /// Boxed: testcontainers' handle is large (~900 bytes).
    container: Option<Box<Container<GenericImage>>>,
    id: String,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("id", &self.id).finish()
    }
}

impl Running {
    /// Starts a container from `request` (the engine pulls the image if it is
    /// not there and it can) and its watchdog.
    ///
    /// # Panics
    /// When the container does not start, with the engine's reason.
    pub fn start(request: ContainerRequest<GenericImage>) -> Self {
        let description = format!("{request:?}");
        let container = off_runtime(move || request.start())
            .unwrap_or_else(|e| panic!("cannot start a test container ({e}): {description}"));
        let id = container.id().to_owned();
        spawn_watchdog(&id);
        Self {
            container: Some(Box::new(container)),
            id,
        }
    }

    fn container(&self) -> &Container<GenericImage> {
        self.container.as_ref().expect("container already removed")
    }

    /// Its ID, for messages (`docker logs ID`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs `cmd` in it and returns its exit code and standard output; `None`
    /// when the exec could not run (e.g. the container is stopped).
    pub fn exec(&self, cmd: &[String]) -> Option<(i64, String)> {
        let container = self.container();
        off_runtime(|| {
            let mut exec = container.exec(ExecCommand::new(cmd.to_vec())).ok()?;
            let stdout = exec.stdout_to_vec().ok()?;
            // The exit code is known once the output has ended; poll briefly
            // in case the engine has not recorded it yet.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(code) = exec.exit_code().ok()? {
                    return Some((code, String::from_utf8_lossy(&stdout).into_owned()));
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    /// Kills it at once (SIGKILL after a zero grace period), as a crash would.
    pub fn kill(&self) {
        let container = self.container();
        if let Err(e) = off_runtime(|| container.stop_with_timeout(Some(0))) {
            panic!("cannot kill container {}: {e}", self.id);
        }
    }

    /// Starts it again after [`kill`](Self::kill) or after its main process
    /// ended: same command, same mounts, same files.
    pub fn restart(&self) {
        let container = self.container();
        if let Err(e) = off_runtime(|| container.start()) {
            panic!("cannot restart container {}: {e}", self.id);
        }
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        let container = self.container();
        off_runtime(|| container.is_running()).unwrap_or(false)
    }

    /// Polls every 50 ms until it has stopped, panicking after `limit`.
    pub fn wait_stopped(&self, limit: Duration) {
        let start = Instant::now();
        while self.is_running() {
            assert!(
                start.elapsed() < limit,
                "container {} did not stop within {limit:?}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Removes it (testcontainers forces removal on drop); its watchdog
        // finds nothing left to remove.
        if let Some(container) = self.container.take() {
            off_runtime(move || drop(container));
        }
    }
}

/// Removes container `id` once this process has gone, however it ended.
fn spawn_watchdog(id: &str) {
    super::watchdog::after_exit(
        "unstuck-container-watchdog",
        r#"docker rm -f -v "$1""#,
        &[id.as_ref()],
    );
}
