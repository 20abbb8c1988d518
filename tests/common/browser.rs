//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; nothing is downloaded), and the example processes the
//! browser tests talk to.
//!
//! Everything is started on free 127.0.0.1 ports and stopped by PID: the
//! chromedriver we start, and the Chromium processes it started for us.

use std::collections::HashSet;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long any one browser condition may take, on a machine busy with other
/// work (a page load on an idle one takes milliseconds).
pub const PATIENCE: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "the browser tests need Debian's Chromium and ChromeDriver: \
     `sudo apt-get install chromium chromium-driver` (scripts/test installs them), \
     or point UNSTUCK_CHROMIUM / UNSTUCK_CHROMEDRIVER at the binaries";

/// Finds a program: the environment variable's path, else `name` on `PATH`.
fn program(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{variable}={} is not a file: {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: {INSTALL_HINT}"))
}

/// Waits until `probe` gives a value, polling every 50 ms, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on 127.0.0.1 (free when asked; the caller retries if it is
/// taken by the time it binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Every process below `pid`, found through /proc (children of children too).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut seen = HashSet::from([pid]);
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if seen.insert(child) {
                    found.push(child);
                    queue.push(child);
                }
            }
        }
    }
    found
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

/// A chromedriver process and the browsers it runs for one test.
pub struct ChromeDriver {
    child: Child,
    url: String,
    chromium: PathBuf,
    browsers: Vec<Client>,
    profiles: Vec<PathBuf>,
}

impl ChromeDriver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub async fn start() -> Self {
        let chromium = program("UNSTUCK_CHROMIUM", "chromium");
        let chromedriver = program("UNSTUCK_CHROMEDRIVER", "chromedriver");
        let mut last_failure = String::new();
        // A port that was free a moment ago can be taken by someone else: a
        // bounded number of attempts, each on a new port.
        for _attempt in 0..3 {
            let port = free_port();
            let mut child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));
            let url = format!("http://127.0.0.1:{port}");
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let deadline = Instant::now() + PATIENCE;
            let ready = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_failure = format!("chromedriver exited with {status}");
                    break false;
                }
                let status = http.get(format!("{url}/status")).send().await;
                if let Ok(status) = status {
                    let body: serde_json::Value = status.json().await.unwrap_or_default();
                    if body["value"]["ready"] == json!(true) {
                        break true;
                    }
                }
                if Instant::now() >= deadline {
                    last_failure = format!("chromedriver was not ready within {PATIENCE:?}");
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if ready {
                return Self {
                    child,
                    url,
                    chromium,
                    browsers: Vec::new(),
                    profiles: Vec::new(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("cannot start chromedriver: {last_failure}");
    }

    /// A new headless browser with its own fresh profile (so its own cookies:
    /// another "device").
    pub async fn browser(&mut self) -> Client {
        let profile = std::env::temp_dir().join(format!(
            "unstuck-browser-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create a browser profile directory");
        self.profiles.push(profile.clone());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--window-size=900,820",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver cannot start Chromium: {e}"));
        self.browsers.push(client.clone());
        client
    }

    /// Runs `test` with `count` browsers, then closes them and chromedriver
    /// whether it passed or not, and reports its panic if it failed.
    pub async fn run<F, Fut>(count: usize, test: F)
    where
        F: FnOnce(Vec<Client>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut driver = Self::start().await;
        let mut browsers = Vec::new();
        for _ in 0..count {
            browsers.push(driver.browser().await);
        }
        let outcome = tokio::spawn(test(browsers)).await;
        driver.shutdown().await;
        if let Err(failure) = outcome {
            std::panic::resume_unwind(failure.into_panic());
        }
    }

    /// Closes every browser (bounded), then stops chromedriver.
    async fn shutdown(&mut self) {
        for browser in std::mem::take(&mut self.browsers) {
            let _ = tokio::time::timeout(Duration::from_secs(10), browser.close()).await;
        }
        self.kill();
    }

    /// Kills chromedriver and whatever it started that is still running.
    fn kill(&mut self) {
        let leftovers = descendants(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in leftovers {
            kill_pid(pid);
        }
        for profile in self.profiles.drain(..) {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for an element, then returns it.
pub async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| {
            panic!("no `{css}` on the page within {PATIENCE:?}: {e}");
        })
}

/// The text of `css` once the page has one.
pub async fn text(browser: &Client, css: &str) -> String {
    element(browser, css)
        .await
        .text()
        .await
        .unwrap_or_else(|e| panic!("text of `{css}`: {e}"))
}

/// How many elements match `css` right now.
pub async fn count(browser: &Client, css: &str) -> usize {
    browser
        .find_all(Locator::Css(css))
        .await
        .map_or(0, |found| found.len())
}

/// Where test output goes: `target/browser-tests/` (next to the test binaries).
pub fn output_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("test binaries live in target/<profile>/deps");
    let dir = target.join("browser-tests");
    std::fs::create_dir_all(&dir).expect("create target/browser-tests");
    dir
}

/// An example binary cargo built next to this test (`cargo test` builds examples).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test --all-features`, which builds the examples",
        binary.display()
    );
    binary
}

/// A running example server (`cluster` or `login`), killed by PID when dropped.
pub struct ExampleServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl ExampleServer {
    /// Starts `examples/NAME.rs` on a free port with these extra variables and
    /// waits until it prints `listening on ADDR`.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(example_binary(name))
            .env("UNSTUCK_LISTEN", "127.0.0.1:0")
            .env("UNSTUCK_COOKIE_SECURE", "0")
            .env(
                "UNSTUCK_SECRET",
                "a browser-test secret that is long enough for a key",
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} example: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let Some(address) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
            let status = child.wait().expect("exit status");
            panic!("the {name} example did not start ({status}); it printed {line:?}");
        };
        // Keep reading what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while stdout.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Self {
            child,
            base: format!("http://{address}"),
        }
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
