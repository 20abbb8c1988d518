//! Sessions for tower and axum, kept in a shared store so that any instance can
//! serve any request.
//!
//! With sessions in one server's memory, a load balancer has to pin each user to
//! "their" server, and a crash logs all of that server's users out. `unstuck`
//! keeps sessions in a store every instance shares (Redis, PostgreSQL, or memory
//! for a single instance and tests), and does what the usual session crates get
//! wrong:
//!
//! - **No lost updates.** A request saves only the keys it set or removed, so
//!   concurrent requests on one session that touch different keys both persist.
//! - **No logout resurrection.** A save never recreates a session that was
//!   deleted or has expired.
//! - **Loading is lazy.** Routes that do not take a [`Session`] never touch the
//!   store; read-only requests write only to push the idle deadline back, at most
//!   once per refresh interval.
//! - **Secure defaults.** Cookies are signed (or encrypted) with rotating keys,
//!   `HttpOnly`, `Secure`, `SameSite=Lax`; IDs carry 256 bits from the OS CSPRNG;
//!   stores only ever see a hash of the ID; idle and absolute timeouts.
//! - **Log out everywhere.** Sessions can be indexed by user, listed and revoked.
//! - **Outages are visible.** A store that cannot be reached answers `503`, and a
//!   save that failed is never reported as a success.
//!
//! # Example
//! ```no_run
//! use axum::{Router, routing::get};
//! use unstuck::{Key, MemoryStore, Session, SessionLayer};
//!
//! async fn counter(session: Session) -> Result<String, unstuck::Error> {
//!     let n: u64 = session.get("count")?.unwrap_or(0) + 1;
//!     session.insert("count", &n)?;
//!     Ok(format!("{n} visits"))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let key = Key::derive_from(std::env::var("SESSION_SECRET")?.as_bytes())?;
//!     let app = Router::new()
//!         .route("/", get(counter))
//!         .layer(SessionLayer::new(MemoryStore::new()).with_keys([key]));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Pieces
//! - [`SessionLayer`]: the tower layer; configuration through `with_*` methods.
//! - [`Session`]: the axum extractor handlers use: typed `get`/`insert`/`remove`,
//!   [`cycle_id`](Session::cycle_id) at login, [`destroy`](Session::destroy) at
//!   logout, [`set_user`](Session::set_user) for the per-user index.
//! - [`SessionStore`]: the trait stores implement, built around [`ChangeSet`]s;
//!   [`MemoryStore`] is the embedded one.
//! - [`Key`]: cookie keys, derived from secrets; several rotate.
//! - [`SessionEvents`]: lifecycle events (created, rotated, destroyed, logged
//!   out everywhere, expired) for audit logs; [`metrics`]: counters and
//!   histograms (feature `metrics`); `tracing` spans for every load and save.
//! - [`SessionTransport`], [`TokenHeader`]: the session token in a header
//!   (`Authorization: Bearer` or a named one) for API and mobile clients.
//! - `store::tower_sessions` (features `tower-sessions`, `tower-sessions-014`):
//!   our stores under tower-sessions' layer (and so axum-login), and
//!   tower-sessions stores under ours.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// docs.rs builds with `--cfg docsrs`: feature-gated items get a badge there.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod commit;
mod config;
mod cookie;
mod deadline;
mod error;
mod events;
mod expiry;
mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id;
mod key;
mod layer;
pub mod metrics;
mod observe;
mod session;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
mod time;
mod transport;

pub use crate::cookie::CookieProtection;
pub use crate::error::{ConfigError, Error};
pub use crate::events::{
    DEFAULT_EVENT_QUEUE, SessionEvent, SessionEventKind, SessionEvents, SessionListener,
};
pub use crate::expiry::Expiry;
pub use crate::extract::SessionRejection;
pub use crate::id::{SessionId, StorageKey};
pub use crate::key::{Key, KeyError, MIN_SECRET_LEN};
pub use crate::layer::{ResponseFuture, SessionLayer, SessionService};
pub use crate::session::Session;
pub use crate::store::{
    CapPolicy, ChangeSet, Invalidations, MemoryStore, NearCache, NearCacheStats, Record,
    SaveOutcome, SessionCap, SessionStore, SessionSummary, StoreError, Trackable, TrackedSave,
    UserChange, Version,
};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use crate::store::{InvalidIdentifier, PostgresCleanup, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::store::{RedisChannel, RedisExpiryEvents, RedisStore};
pub use crate::transport::{SessionTransport, TokenHeader};
pub use ::cookie::SameSite;

/// Compiles the README's Rust examples, so the front page cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
