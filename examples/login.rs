//! Login, logout and "log out everywhere" on the memory store.
//!
//! ```sh
//! cargo run --example login
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/login -d alice
//! curl -c jar -b jar http://127.0.0.1:3000/           # hello, alice (1 session)
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/logout-everywhere
//! ```

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use unstuck::{MemoryStore, Session, SessionLayer};

async fn home(session: Session) -> Result<String, unstuck::Error> {
    Ok(match session.user() {
        Some(user) => {
            let devices = session.user_sessions().await?.len();
            format!("hello, {user} ({devices} session(s))\n")
        }
        None => "hello, stranger\n".to_owned(),
    })
}

async fn login(session: Session, user: String) -> (StatusCode, &'static str) {
    let user = user.trim().to_owned();
    if user.is_empty() {
        return (StatusCode::BAD_REQUEST, "send the user name as the body\n");
    }
    // A new ID whenever privileges change: a session ID an attacker planted
    // before login is worthless after it.
    session.cycle_id();
    session.set_user(user);
    (StatusCode::OK, "logged in\n")
}

async fn logout(session: Session) -> &'static str {
    session.destroy();
    "logged out\n"
}

async fn logout_everywhere(session: Session) -> Result<String, unstuck::Error> {
    let ended = session.destroy_user_sessions().await?;
    Ok(format!("ended {ended} session(s)\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Plain HTTP for curl; keep the default (Secure) in production.
    let sessions = SessionLayer::new(MemoryStore::new()).with_secure(false);
    let app = Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .layer(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
