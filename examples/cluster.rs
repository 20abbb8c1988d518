//! Several stateless instances sharing sessions in Redis: run this twice on two
//! ports against one Redis (standalone, Sentinel or Cluster) and alternate.
//!
//! ```sh
//! cargo build --example cluster --features redis
//! export SESSION_SECRET=a-secret-every-instance-shares-32-bytes+
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3001 target/debug/examples/cluster &
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3002 target/debug/examples/cluster &
//! curl -c jar -b jar http://127.0.0.1:3001/   # 1 (from :3001)
//! curl -c jar -b jar http://127.0.0.1:3002/   # 2 (from :3002)
//! ```
//!
//! `REDIS_URL` may also be `redis+sentinel://s1:26379,s2:26379/mymaster` or
//! `redis+cluster://n1:7000,n2:7000`; `NEAR_CACHE=1` adds the near cache
//! (standalone and Sentinel).

#[cfg(feature = "redis")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use axum::Router;
    use axum::routing::get;
    use unstuck::{Key, NearCache, RedisStore, Session, SessionLayer};

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    // Instances behind one load balancer must share the key, or they reject
    // each other's cookies.
    let key = Key::derive_from(std::env::var("SESSION_SECRET")?.as_bytes())?;
    let store = RedisStore::connect(&url).await?;
    let store: std::sync::Arc<dyn unstuck::SessionStore> =
        if std::env::var("NEAR_CACHE").as_deref() == Ok("1") {
            std::sync::Arc::new(NearCache::new(store)?)
        } else {
            std::sync::Arc::new(store)
        };
    let me = format!("127.0.0.1:{port}");
    let app = Router::new()
        .route(
            "/",
            get(move |session: Session| {
                let me = me.clone();
                async move {
                    let n: u64 = session.get("count")?.unwrap_or(0) + 1;
                    session.insert("count", n)?;
                    Ok::<_, unstuck::Error>(format!("{n} (from {me})\n"))
                }
            }),
        )
        .layer(
            SessionLayer::from_arc(store)
                .with_keys([key])
                .with_secure(false),
        );
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("this example needs the redis feature: cargo run --example cluster --features redis");
    std::process::exit(2);
}
