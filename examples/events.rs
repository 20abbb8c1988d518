//! Lifecycle events into an audit log, and metrics on a Prometheus scrape
//! endpoint served by the app itself.
//!
//! ```sh
//! cargo run --example events --features metrics
//! curl -c jar -b jar localhost:3000/visit
//! curl -c jar -b jar -X POST localhost:3000/login -d alice
//! curl -c jar -b jar -X POST localhost:3000/logout
//! curl localhost:3000/metrics
//! ```
//!
//! The audit lines (`target: audit`) name sessions by their storage key, a
//! hash of the ID that is no use as a cookie. Without the `metrics` feature
//! the events still flow and `/metrics` stays empty.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusBuilder;
use unstuck::{
    Key, MemoryStore, Session, SessionEvent, SessionEventKind, SessionEvents, SessionLayer,
};

/// The audit log: one line per event, never a session ID.
fn audit(event: &SessionEvent) {
    let user = event.user.as_deref().unwrap_or("-");
    match &event.kind {
        SessionEventKind::Created { key } => tracing::info!(target: "audit", %key, user, "created"),
        SessionEventKind::Rotated { from, to } => {
            tracing::info!(target: "audit", %from, %to, user, "rotated (login)");
        }
        SessionEventKind::Destroyed { key } => {
            tracing::info!(target: "audit", %key, user, "destroyed (logout)");
        }
        SessionEventKind::LoggedOutEverywhere { sessions } => {
            tracing::info!(target: "audit", sessions, user, "logged out everywhere");
        }
        SessionEventKind::Expired { key } => tracing::info!(target: "audit", %key, user, "expired"),
        other => tracing::info!(target: "audit", ?other, user, "session event"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "audit=info,unstuck=debug".into()),
        )
        .init();

    // Any `metrics` exporter works; this one renders the scrape text on demand.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let events = SessionEvents::new().with_listener(audit);
    // The store reports what its sweep expires; the layer everything else.
    let store = MemoryStore::new().with_events(events.clone());
    let key = Key::derive_from(b"an example secret of at least thirty-two bytes")?;
    let sessions = SessionLayer::new(store)
        .with_keys([key])
        .with_secure(false)
        .with_events(events);

    let app = Router::new()
        .route(
            "/visit",
            get(|session: Session| async move {
                let n: u64 = session.get("visits")?.unwrap_or(0) + 1;
                session.insert("visits", n)?;
                Ok::<_, unstuck::Error>(format!("{n} visits\n"))
            }),
        )
        .route(
            "/login",
            post(|session: Session, user: String| async move {
                session.cycle_id();
                session.set_user(user);
                "logged in\n"
            }),
        )
        .route(
            "/logout",
            post(|session: Session| async move {
                session.destroy();
                "logged out\n"
            }),
        )
        .layer(sessions)
        // Outside the session layer: scraping costs the store nothing.
        .route("/metrics", get(move || async move { prometheus.render() }));

    let addr = std::env::var("UNSTUCK_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
