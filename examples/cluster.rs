//! One command, a whole cluster on loopback: N instances of the login app
//! (`examples/login.rs`, default 3) behind a round-robin balancer with no
//! affinity, all sharing one session store. Open the printed URL, log in, reload:
//! every reload may land on another instance, and all of them know you. Stop an
//! instance on the balancer's admin page (`/_cluster`) and watch the session
//! survive it.
//!
//! ```sh
//! cargo run --example cluster                 # then open http://127.0.0.1:3000/
//! curl -X POST http://127.0.0.1:3000/_cluster/2/stop    # or use the admin page
//! curl -X POST http://127.0.0.1:3000/_cluster/2/start
//! ```
//!
//! Sessions live in one in-process memory store by default; set `UNSTUCK_STORE`
//! (`redis://…`, `redis+sentinel://…/MASTER`, `redis+cluster://…`, `postgres://…`,
//! with `--features redis` or `--features postgres`) to share a real store, each
//! instance with its own connections (and its own near cache with
//! `UNSTUCK_NEAR_CACHE=1`). `UNSTUCK_LISTEN` is the balancer's address (default
//! `127.0.0.1:3000`), `UNSTUCK_INSTANCES` the number of instances (1 to 16), and
//! the other `UNSTUCK_*` variables are the login app's. The balancer speaks plain
//! HTTP, so cookies drop `Secure` unless `UNSTUCK_COOKIE_SECURE=1`.
//!
//! In production the balancer is nginx, HAProxy, Envoy or a cloud load balancer;
//! like this one, it needs no sticky sessions. Once listening it prints
//! `listening on ADDR` on stdout.

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use common::settings::{Keepalive, Settings, open_store};
use tokio::sync::oneshot;
use unstuck::{MemoryStore, SessionStore};

/// The largest request body the balancer forwards.
const MAX_BODY: usize = 1 << 20;
/// How long a stopping instance may take to finish its requests.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One instance of the app: a name, a fixed loopback address, and its server
/// while it runs.
struct Instance {
    name: String,
    addr: Mutex<SocketAddr>,
    running: tokio::sync::Mutex<Option<Running>>,
    served: AtomicU64,
}

struct Running {
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _keepalive: Keepalive,
}

struct Cluster {
    settings: Settings,
    /// The one store every instance shares when `UNSTUCK_STORE` is `memory`;
    /// otherwise each instance opens its own connections to the store.
    shared_memory: Option<Arc<dyn SessionStore>>,
    instances: Vec<Instance>,
    next: AtomicUsize,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts instance `index` (no-op when it runs), on the address it had before.
    async fn start(&self, index: usize) -> Result<(), String> {
        let instance = &self.instances[index];
        let mut running = instance.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let (store, keepalive) = match &self.shared_memory {
            Some(store) => (store.clone(), None),
            None => open_store(&self.settings).await?,
        };
        let addr = *instance.addr.lock().unwrap();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{}: cannot listen on {addr}: {e}", instance.name))?;
        *instance.addr.lock().unwrap() = listener.local_addr().map_err(|e| e.to_string())?;
        let app = common::login_app::router(&instance.name, self.settings.layer(store));
        let (stop, stopped) = oneshot::channel::<()>();
        let name = instance.name.clone();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("{name}: server failed: {e}");
            }
        });
        *running = Some(Running {
            stop,
            server,
            _keepalive: keepalive,
        });
        Ok(())
    }

    /// Stops instance `index` (no-op when it is stopped): it stops accepting
    /// connections at once, like a crashed process, and finishes what it had.
    async fn stop(&self, index: usize) {
        let Some(running) = self.instances[index].running.lock().await.take() else {
            return;
        };
        let _ = running.stop.send(());
        let mut server = running.server;
        if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
            server.abort();
        }
    }

    async fn is_running(&self, index: usize) -> bool {
        self.instances[index].running.lock().await.is_some()
    }
}

/// Headers that describe one hop, not the message: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn forwardable(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &header::HeaderValue)> {
    headers.iter().filter(|(name, _)| !hop_by_hop(name))
}

/// Round robin, no affinity: each request goes to the next instance; one that
/// refuses the connection is skipped (as nginx's `proxy_next_upstream error`).
async fn proxy(State(cluster): State<Arc<Cluster>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let count = cluster.instances.len();
    let first = cluster.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..count {
        let instance = &cluster.instances[(first + offset) % count];
        let addr = *instance.addr.lock().unwrap();
        let mut forward = cluster
            .http
            .request(parts.method.clone(), format!("http://{addr}{path}"))
            .body(body.clone());
        for (name, value) in forwardable(&parts.headers) {
            forward = forward.header(name, value);
        }
        if let Some(host) = parts.headers.get(header::HOST) {
            forward = forward.header("x-forwarded-host", host);
        }
        let answer = match forward.send().await {
            Ok(answer) => answer,
            // Not listening (stopped): nothing was sent, so try the next one.
            Err(e) if e.is_connect() => continue,
            Err(e) => {
                eprintln!("balancer: {} failed: {e}", instance.name);
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("{} failed\n", instance.name),
                )
                    .into_response();
            }
        };
        instance.served.fetch_add(1, Ordering::Relaxed);
        let status = answer.status();
        let mut headers = HeaderMap::new();
        for (name, value) in forwardable(answer.headers()) {
            headers.append(name.clone(), value.clone());
        }
        let Ok(bytes) = answer.bytes().await else {
            return (
                StatusCode::BAD_GATEWAY,
                "the instance broke off its answer\n",
            )
                .into_response();
        };
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.headers_mut().insert(
            "x-served-by",
            instance.name.parse().expect("instance names are ASCII"),
        );
        return response;
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(
            "<p>No instance is running. Start one on the \
             <a href=\"/_cluster\">cluster page</a>.</p>",
        ),
    )
        .into_response()
}

async fn admin_page(State(cluster): State<Arc<Cluster>>) -> Html<String> {
    let mut rows = String::new();
    for (index, instance) in cluster.instances.iter().enumerate() {
        let running = cluster.is_running(index).await;
        let (state, action, label) = if running {
            ("running", "stop", "Stop")
        } else {
            ("stopped", "start", "Start")
        };
        let _ = write!(
            rows,
            "<tr id=\"instance-{n}\" class=\"{state}\"><td>{name}</td><td>{addr}</td>\
             <td>{state}</td><td>{served}</td><td><form method=\"post\" \
             action=\"/_cluster/{n}/{action}\"><button type=\"submit\">{label}</button>\
             </form></td></tr>",
            n = index + 1,
            name = instance.name,
            addr = instance.addr.lock().unwrap(),
            served = instance.served.load(Ordering::Relaxed),
        );
    }
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>unstuck cluster</title><link rel=\"icon\" href=\"data:,\"></head>\
         <body style=\"font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto\">\
         <h1>Cluster</h1><p>A round-robin balancer, no affinity, in front of these \
         instances. Stop one while you are logged in <a href=\"/\" target=\"_blank\">in \
         the app</a>: your session lives in the shared store ({store}), not in an \
         instance.</p><table><tr><th>instance</th><th>address</th><th>state</th>\
         <th>requests</th><th></th></tr>{rows}</table></body></html>",
        store = if cluster.shared_memory.is_some() {
            "an in-process memory store"
        } else {
            "UNSTUCK_STORE"
        },
    ))
}

/// Refuses a cross-site POST to the admin actions (a page elsewhere stopping
/// instances): a browser's `Origin` must be this balancer's.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true; // curl and other non-browser clients
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|host| origin.to_str().ok() == Some(&format!("http://{host}")))
}

async fn admin_action(
    State(cluster): State<Arc<Cluster>>,
    Path((number, action)): Path<(usize, String)>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response();
    }
    let Some(index) = number
        .checked_sub(1)
        .filter(|i| *i < cluster.instances.len())
    else {
        return (StatusCode::NOT_FOUND, "no such instance\n").into_response();
    };
    match action.as_str() {
        "stop" => cluster.stop(index).await,
        "start" => {
            if let Err(problem) = cluster.start(index).await {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{problem}\n")).into_response();
            }
        }
        _ => return (StatusCode::NOT_FOUND, "use stop or start\n").into_response(),
    }
    Redirect::to("/_cluster").into_response()
}

async fn run() -> Result<(), String> {
    let mut settings = Settings::from_env()?;
    // The balancer speaks plain HTTP: a Secure cookie would need the browser to
    // make an exception for loopback.
    settings.secure = settings.flag("UNSTUCK_COOKIE_SECURE", false)?;
    settings.warn_about_dev_secret();
    let count = match settings.var("UNSTUCK_INSTANCES") {
        None => 3,
        Some(text) => match text.parse::<usize>() {
            Ok(n @ 1..=16) => n,
            _ => return Err(format!("UNSTUCK_INSTANCES must be 1 to 16, got {text:?}")),
        },
    };
    let shared_memory = (settings.store == "memory").then(|| {
        if settings.near_cache {
            eprintln!("warning: UNSTUCK_NEAR_CACHE=1 needs a Redis store; ignored");
        }
        Arc::new(MemoryStore::new()) as Arc<dyn SessionStore>
    });
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A fresh connection per request: a stopped instance is then a refused
        // connection, never a request lost on a stale pooled one.
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let cluster = Arc::new(Cluster {
        instances: (1..=count)
            .map(|n| Instance {
                name: format!("app-{n}"),
                addr: Mutex::new(SocketAddr::from(([127, 0, 0, 1], 0))),
                running: tokio::sync::Mutex::new(None),
                served: AtomicU64::new(0),
            })
            .collect(),
        settings,
        shared_memory,
        next: AtomicUsize::new(0),
        http,
    });
    for index in 0..count {
        cluster.start(index).await?;
    }
    let app = Router::new()
        .route("/_cluster", get(admin_page))
        .route("/_cluster/{number}/{action}", post(admin_action))
        .fallback(proxy)
        .with_state(cluster.clone());
    println!("listening on {address}");
    println!("{count} instances of the login app behind a round-robin balancer:");
    for instance in &cluster.instances {
        println!("  {} on {}", instance.name, instance.addr.lock().unwrap());
    }
    println!("open        http://{address}/");
    println!("stop/start  http://{address}/_cluster");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("balancer failed: {e}"))?;
    for index in 0..count {
        cluster.stop(index).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("cluster: {problem}");
        std::process::exit(2);
    }
}
