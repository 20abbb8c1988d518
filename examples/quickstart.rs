//! The smallest useful setup: a per-visitor counter on the embedded memory store.
//!
//! ```sh
//! cargo run --example quickstart
//! curl -c jar -b jar http://127.0.0.1:3000/   # 1, then 2, 3, …
//! ```
//! (The cookie is `Secure` by default; this example turns that off so plain-HTTP
//! curl keeps it. Never do that in production.)

use axum::{Router, routing::get};
use unstuck::{MemoryStore, Session, SessionLayer};

async fn count(session: Session) -> Result<String, unstuck::Error> {
    let n: u64 = session.get("count")?.unwrap_or(0) + 1;
    session.insert("count", n)?;
    Ok(format!("{n}\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sessions = SessionLayer::new(MemoryStore::new()).with_secure(false);
    let app = Router::new().route("/", get(count)).layer(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
