//! A small server-rendered login app: log in with any user name, see which
//! instance served the page, the session's contents and age, and every session
//! of the user, with "end this session", "log out" and "log out of all devices".
//! Forms are CSRF-safe (`SameSite=Lax` plus a per-session token on every POST).
//!
//! ```sh
//! UNSTUCK_COOKIE_SECURE=0 cargo run --example login   # then open http://127.0.0.1:3000/
//! ```
//!
//! It takes the demo's variables (see `examples/demo.rs`): `UNSTUCK_LISTEN`,
//! `UNSTUCK_STORE` (`memory`, `redis://…`, `redis+sentinel://…/MASTER`,
//! `redis+cluster://…`, `postgres://…`; build with `--features redis` or
//! `--features postgres`), `UNSTUCK_INSTANCE`, `UNSTUCK_SECRET`,
//! `UNSTUCK_COOKIE_SECURE`, `UNSTUCK_NEAR_CACHE`, `UNSTUCK_IDLE_SECS`,
//! `UNSTUCK_ABSOLUTE_SECS`. Run several against one Redis or PostgreSQL with the
//! same `UNSTUCK_SECRET` behind any balancer (or use `examples/cluster.rs`).
//!
//! Once listening it prints `listening on ADDR` on stdout.

#[path = "common/mod.rs"]
mod common;

use common::settings::{Settings, open_store};

async fn run() -> Result<(), String> {
    let settings = Settings::from_env()?;
    settings.warn_about_dev_secret();
    let (store, _keepalive) = open_store(&settings).await?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let instance = settings
        .instance
        .clone()
        .unwrap_or_else(|| address.to_string());
    let app = common::login_app::router(&instance, settings.layer(store));
    println!("listening on {address}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server failed: {e}"))
}

#[tokio::main]
async fn main() {
    if let Err(problem) = run().await {
        eprintln!("login: {problem}");
        std::process::exit(2);
    }
}
