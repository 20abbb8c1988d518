//! Our stores as `tower_sessions::SessionStore` of tower-sessions 0.14
//! (`tower-sessions-core` 0.14, what axum-login 0.18 uses). See the
//! [parent module](super) for what each operation does.
//!
//! # Examples
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_sessions_014::{Session, SessionManagerLayer};
//!
//! async fn counter(session: Session) -> String {
//!     let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
//!     session.insert("n", n).await.unwrap();
//!     n.to_string()
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = unstuck::MemoryStore::new(); // or RedisStore / PostgresStore
//! let app: Router = Router::new()
//!     .route("/", get(counter))
//!     .layer(SessionManagerLayer::new(store));
//! # Ok(()) }
//! ```

super::impl_tower_sessions_store!(
    tower_sessions_core_014, "0.14";
    crate::MemoryStore,
    #[cfg(feature = "redis")]
    crate::RedisStore,
    #[cfg(feature = "postgres")]
    crate::PostgresStore,
);
