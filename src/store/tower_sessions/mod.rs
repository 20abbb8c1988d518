//! tower-sessions interop, both ways.
//!
//! # Our stores under tower-sessions' layer
//! With the feature `tower-sessions` (tower-sessions 0.15) or `tower-sessions-014`
//! (tower-sessions 0.14, what axum-login 0.18 uses), [`MemoryStore`](crate::MemoryStore),
//! [`RedisStore`](crate::RedisStore) (standalone, Sentinel, Cluster) and
//! [`PostgresStore`](crate::PostgresStore) implement `tower_sessions::SessionStore`,
//! so an app on tower-sessions changes one line to get them:
//!
//! ```no_run
//! # #[cfg(feature = "tower-sessions")] {
//! use tower_sessions::SessionManagerLayer;
//!
//! let store = unstuck::MemoryStore::new(); // or RedisStore::connect(url).await?, …
//! let layer = SessionManagerLayer::new(store);
//! # let _ = layer;
//! # }
//! ```
//!
//! Any other [`SessionStore`](crate::SessionStore) of ours, including a run-time
//! choice kept as `Arc<dyn SessionStore>`, gets there through [`ForTowerSessions`].
//!
//! What their store operations do here:
//! - **IDs are never stored.** A tower-sessions session ID is hashed (SHA-256 of a
//!   domain tag and the ID) into a [`StorageKey`](crate::StorageKey), exactly as our own
//!   IDs are, so a dump of Redis or of the sessions table gives no usable cookie.
//!   `v015::storage_key` / `v014::storage_key` compute it, for example to look a
//!   session up or delete it by hand.
//! - **`create` never overwrites.** It stores the record only if the key is free;
//!   if the ID is taken it draws a new ID and tries again (tower-sessions leaves
//!   collision handling to the store and reads the ID back from the record).
//! - **`save` never resurrects.** It replaces the data and expiry of a *live*
//!   session only. A save of a session that was deleted (a logout, `flush`,
//!   `cycle_id`) or has expired writes nothing and succeeds, like redis-store's
//!   `SET XX`: a logout stays a logout even when a slow request finishes after it.
//! - **`delete` deletes**, and `load` never returns an expired session.
//! - **Expiry** is their record's `expiry_date`, enforced by our store (Redis
//!   expires the key, PostgreSQL and memory hide and later sweep the row).
//!   `PostgresStore` also implements tower-sessions' `ExpiredDeletion`, so
//!   `store.clone().continuously_delete_expired(period)` works as it did with
//!   tower-sessions-sqlx-store (or use `PostgresStore::spawn_cleanup`).
//!
//! ## Last writer wins under their layer
//! tower-sessions hands the store the *whole* record at the end of each request.
//! Two concurrent requests on one session therefore overwrite each other: the one
//! that finishes last wins, and changes the other made are lost. (Each save is
//! still atomic: the whole data map is kept under one key of our record, so a save
//! is never half applied.) Our own [`SessionLayer`](crate::SessionLayer) saves
//! only the keys a request changed, so concurrent requests that touch different
//! keys both persist: move to it when that matters (see `docs/MIGRATING.md`).
//!
//! ## Sharing a store with our layer
//! Sessions of their layer and of ours live side by side in one store, with one
//! layout: the same prefix (Redis) or table (PostgreSQL), the same expiry and
//! cleanup. They cannot clash: their keys hash a tagged 16-byte ID, ours a bare
//! 32-byte one, and each layer reads only its own cookies. A tower-sessions
//! session is one of our records whose data holds a single key,
//! `tower_sessions.data`, with their whole data map as a JSON object. tower-sessions
//! 0.14 and 0.15 use the same layout and keys, so upgrading from one to the other
//! keeps every session. Both layers call their cookie `id` by default: if both
//! serve one site, give one of them another name.
//!
//! # Their stores under our layer
//! [`TowerSessionsBackend`] (feature `tower-sessions`) wraps any tower-sessions 0.15
//! store so it can back our [`SessionLayer`](crate::SessionLayer), with the limits
//! its documentation states.

#[cfg(feature = "tower-sessions")]
mod adapter;
mod record;
/// The tower-sessions record codec, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) use super::record::{DATA_KEY, parts};
}
#[cfg(feature = "tower-sessions-014")]
pub mod v014;
#[cfg(feature = "tower-sessions")]
pub mod v015;

#[cfg(feature = "tower-sessions")]
pub use self::adapter::{TowerSessionsBackend, UserIndexUnsupported};

/// Any of our stores, as a `tower_sessions::SessionStore` (0.15 and 0.14, by
/// feature).
///
/// [`MemoryStore`](crate::MemoryStore), [`RedisStore`](crate::RedisStore) and
/// [`PostgresStore`](crate::PostgresStore) implement tower-sessions' trait
/// themselves; this wrapper is for the rest, such as a store chosen at run time
/// and kept as `Arc<dyn SessionStore>`, or your own implementation of our trait.
/// The behaviour is the one described in the [module docs](self).
///
/// # Examples
/// ```no_run
/// # #[cfg(feature = "tower-sessions")] {
/// use std::sync::Arc;
/// use tower_sessions::SessionManagerLayer;
/// use unstuck::store::tower_sessions::ForTowerSessions;
/// use unstuck::{MemoryStore, SessionStore};
///
/// let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
/// let layer = SessionManagerLayer::new(ForTowerSessions::new(store));
/// # let _ = layer;
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ForTowerSessions<S>(S);

impl<S> ForTowerSessions<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> Self {
        Self(store)
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.0
    }

    /// Unwraps the store.
    pub fn into_inner(self) -> S {
        self.0
    }
}

/// How often `create` draws a new ID when the one it was given is taken. With
/// 128 random bits one retry is already astronomically rare; more than a few
/// means the random number generator is broken, which is worth an error.
const CREATE_ATTEMPTS: usize = 4;

/// Rows one `ExpiredDeletion::delete_expired` batch deletes on PostgreSQL.
#[cfg(feature = "postgres")]
const CLEANUP_BATCH: u32 = 1000;
/// Batches one `ExpiredDeletion::delete_expired` call deletes at most, so a call
/// ends even while sessions expire faster than it deletes them.
#[cfg(feature = "postgres")]
const CLEANUP_BATCHES: usize = 1000;

/// Implements one tower-sessions version's `SessionStore` for our stores.
/// Invoked once per version (`v015.rs`, `v014.rs`): the two traits are the same
/// text in two crates, so one body serves both.
macro_rules! impl_tower_sessions_store {
    ($core:ident, $version:literal; $($(#[$attr:meta])* $store:ty),+ $(,)?) => {
        use ::async_trait::async_trait;
        use ::$core::session::{Id, Record as TheirRecord};
        use ::$core::session_store::{self as their, SessionStore as TheirStore};

        use $crate::id::StorageKey;
        use $crate::store::tower_sessions::{CREATE_ATTEMPTS, ForTowerSessions, record};
        use $crate::store::{SaveOutcome, SessionStore, StoreError};

        #[doc = concat!("The [`StorageKey`] under which our stores keep the tower-sessions ",
            $version, " session with ID `id`: a hash, never the ID itself.")]
        ///
        /// Use it to reach such a session with our store API, for example to
        /// delete it from an admin tool.
        pub fn storage_key(id: &Id) -> StorageKey {
            record::storage_key(id.0)
        }

        fn backend(error: StoreError) -> their::Error {
            their::Error::Backend(error.to_string())
        }

        fn encode(error: serde_json::Error) -> their::Error {
            their::Error::Encode(error.to_string())
        }

        async fn create_record<S: SessionStore + ?Sized>(
            store: &S,
            their_record: &mut TheirRecord,
        ) -> their::Result<()> {
            let ours = record::new_record(&their_record.data, their_record.expiry_date)
                .map_err(encode)?;
            for _ in 0..CREATE_ATTEMPTS {
                let key = record::storage_key(their_record.id.0);
                if store.create(&key, &ours).await.map_err(backend)? {
                    return Ok(());
                }
                ::tracing::warn!("tower-sessions session ID already taken; drawing another");
                their_record.id = Id::default();
            }
            Err(their::Error::Backend(format!(
                "no free session ID after {CREATE_ATTEMPTS} attempts"
            )))
        }

        async fn save_record<S: SessionStore + ?Sized>(
            store: &S,
            their_record: &TheirRecord,
        ) -> their::Result<()> {
            let changes = record::replacement(&their_record.data, their_record.expiry_date)
                .map_err(encode)?;
            let key = record::storage_key(their_record.id.0);
            match store.save(&key, &changes).await.map_err(backend)? {
                SaveOutcome::Applied => {}
                SaveOutcome::Gone => ::tracing::debug!(
                    session = %key,
                    "tower-sessions save of a session that was deleted or expired: not recreated"
                ),
            }
            Ok(())
        }

        async fn load_record<S: SessionStore + ?Sized>(
            store: &S,
            id: &Id,
        ) -> their::Result<Option<TheirRecord>> {
            let Some(ours) = store.load(&record::storage_key(id.0)).await.map_err(backend)? else {
                return Ok(None);
            };
            let (data, expiry_date) =
                record::parts(&ours).map_err(|e| their::Error::Decode(e.to_string()))?;
            Ok(Some(TheirRecord { id: *id, data, expiry_date }))
        }

        async fn delete_record<S: SessionStore + ?Sized>(store: &S, id: &Id) -> their::Result<()> {
            store.delete(&record::storage_key(id.0)).await.map_err(backend)?;
            Ok(())
        }

        $(
            $(#[$attr])*
            #[async_trait]
            impl TheirStore for $store {
                async fn create(&self, record: &mut TheirRecord) -> their::Result<()> {
                    create_record(self, record).await
                }
                async fn save(&self, record: &TheirRecord) -> their::Result<()> {
                    save_record(self, record).await
                }
                async fn load(&self, id: &Id) -> their::Result<Option<TheirRecord>> {
                    load_record(self, id).await
                }
                async fn delete(&self, id: &Id) -> their::Result<()> {
                    delete_record(self, id).await
                }
            }
        )+

        /// Deletes expired rows in batches until a batch comes back short (at
        /// most 1000 batches of 1000 rows per call), so tower-sessions' `continuously_delete_expired`
        /// works as with tower-sessions-sqlx-store. Call it as
        /// `ExpiredDeletion::delete_expired(&store)`: `store.delete_expired(n)`
        /// is [`PostgresStore::delete_expired`](crate::PostgresStore::delete_expired),
        /// one batch. [`PostgresStore::spawn_cleanup`](crate::PostgresStore::spawn_cleanup)
        /// does the same in the background.
        #[cfg(feature = "postgres")]
        #[async_trait]
        impl ::$core::session_store::ExpiredDeletion for $crate::PostgresStore {
            async fn delete_expired(&self) -> their::Result<()> {
                use $crate::store::tower_sessions::{CLEANUP_BATCH, CLEANUP_BATCHES};
                for _ in 0..CLEANUP_BATCHES {
                    let deleted = $crate::PostgresStore::delete_expired(self, CLEANUP_BATCH)
                        .await
                        .map_err(backend)?;
                    if deleted < u64::from(CLEANUP_BATCH) {
                        break;
                    }
                }
                Ok(())
            }
        }

        #[async_trait]
        impl<S: SessionStore> TheirStore for ForTowerSessions<S> {
            async fn create(&self, record: &mut TheirRecord) -> their::Result<()> {
                create_record(&self.0, record).await
            }
            async fn save(&self, record: &TheirRecord) -> their::Result<()> {
                save_record(&self.0, record).await
            }
            async fn load(&self, id: &Id) -> their::Result<Option<TheirRecord>> {
                load_record(&self.0, id).await
            }
            async fn delete(&self, id: &Id) -> their::Result<()> {
                delete_record(&self.0, id).await
            }
        }
    };
}
pub(crate) use impl_tower_sessions_store;
