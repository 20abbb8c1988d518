//! [`PostgresStore`]: sessions in a PostgreSQL table, shared by every instance.

mod cleanup;
mod codec;
mod sql;
mod write;
/// The decoders a load runs on a row's timestamps and `jsonb` text, for the
/// fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    use std::time::SystemTime;

    use crate::store::StoreError;

    pub(crate) fn compact_json(text: &str) -> String {
        super::codec::compact_json(text)
    }

    pub(crate) fn from_millis(ms: i64) -> Result<SystemTime, StoreError> {
        super::codec::from_millis(ms)
    }
}

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::OnceCell;

pub use self::cleanup::PostgresCleanup;
use self::codec::{
    check_format, from_millis, millis, record_from_row, split_inserted, store_error, user_mode,
};
pub use self::sql::InvalidIdentifier;
use self::sql::{Statements, checked_identifier};
use self::write::{Refusal, capped_join};
use super::{
    ChangeSet, DEFAULT_MAX_SESSION_BYTES, Record, SaveOutcome, SessionStore, SessionSummary,
    StoreError, data_bytes,
};
use crate::events::SessionEvents;
use crate::id::StorageKey;

/// The table [`PostgresStore`] uses unless told otherwise.
pub const DEFAULT_TABLE: &str = "unstuck_sessions";

/// How long [`PostgresStore::connect`]'s pool waits for a connection (including
/// opening one) before the call fails with [`StoreError::Unavailable`].
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Index names are `<table>_user_idx` and `<table>_expiry_idx`; PostgreSQL cuts
/// identifiers at 63 bytes, so table names stay short enough for both to fit.
const MAX_IDENTIFIER_LEN: usize = 48;

/// Caps one cleanup run so that a huge backlog is worked off over several runs
/// instead of holding a connection for minutes.
const MAX_BATCHES_PER_RUN: u32 = 1000;

/// First half of the advisory lock taken while creating schema objects (the
/// second half is a hash of the schema name): "unst" in ASCII.
const MIGRATION_LOCK_CLASS: i32 = 0x756e_7374;

/// Sessions in a PostgreSQL table, so that every instance of an application
/// sees every session.
///
/// Each session is one row, keyed by its [`StorageKey`] (a hash of the session
/// ID; the ID itself never reaches the database). Values are kept in a `jsonb`
/// object, so a save sends only the keys a request set or removed and merges
/// them into whatever the row holds in one `UPDATE`: concurrent requests that
/// change different keys all persist. Saves only touch live rows, so a session
/// that was deleted or has expired is never brought back.
///
/// The table (by default `unstuck_sessions`, in the connection's
/// `search_path`) and its indexes are created on first use, or explicitly with
/// [`migrate`](Self::migrate):
///
/// | column | type | |
/// |---|---|---|
/// | `storage_key` | `text primary key` | the [`StorageKey`] |
/// | `data` | `jsonb` | session values: key → JSON value |
/// | `user_id` | `text`, indexed | the session's user, for "log out everywhere" |
/// | `created_at_ms` | `bigint` | Unix time in milliseconds |
/// | `expires_at_ms` | `bigint`, indexed | Unix time in milliseconds |
/// | `format` | `smallint` | stored format; `NULL` means 1 |
///
/// A session holds at most 64 KiB of keys and values unless
/// [`with_max_session_bytes`](Self::with_max_session_bytes) says otherwise.
/// Values count as `jsonb` prints them, so objects and arrays count a byte
/// more per `,` and `:` than their compact JSON; each write checks the limit
/// against the row as it is when the row is locked, so concurrent saves
/// cannot pass it together. Tables created by earlier releases gain the
/// `format` column on first use (a catalog-only change); their rows are
/// format 1. Rows marked with a later format are neither read nor changed.
///
/// Under a [`SessionCap`], a login takes a transaction-scoped advisory lock
/// on its user, counts the user's live sessions, and deletes the oldest (by
/// creation) or refuses, in the transaction that writes the session: logins
/// of one user queue on that lock across every instance.
///
/// Expired rows are invisible at once. They stay in the table until deleted:
/// run [`spawn_cleanup`](Self::spawn_cleanup) (or
/// [`delete_expired`](Self::delete_expired) from your own scheduler).
///
/// Expiry is judged by the clock of the instance making the call, the same clock
/// that computed the deadline; keep instance clocks in sync (NTP).
///
/// Values are stored as `jsonb`, which normalizes JSON: loads return compact
/// JSON text that decodes to the same value, with object keys in `jsonb`'s order
/// rather than the order they were written in. `jsonb` cannot hold the character
/// U+0000 in a string; a save containing one fails with
/// [`StoreError::Backend`].
///
/// Cloning is cheap; clones share the pool.
///
/// # Examples
/// ```no_run
/// use std::time::Duration;
/// use unstuck::{Key, PostgresStore, SessionLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@db.internal/app")
///     .await?
///     .with_table("web_sessions")?;
/// // Optional: the store creates its table on first use anyway.
/// store.migrate().await?;
/// // Delete expired rows every 5 minutes, 1000 at a time, until `cleanup` is dropped.
/// let cleanup = store.spawn_cleanup(Duration::from_secs(300), 1000);
/// let key = Key::derive_from(std::env::var("SESSION_SECRET")?.as_bytes())?;
/// let layer = SessionLayer::new(store).with_keys([key]);
/// # let _ = (layer, cleanup);
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    inner: Arc<Inner>,
    /// Where the cleanup reports the sessions it deletes.
    events: Option<SessionEvents>,
    max_session_bytes: usize,
}

struct Inner {
    pub(super) schema: Option<String>,
    pub(super) table: String,
    pub(super) sql: Statements,
    /// Set once the schema objects are known to exist, so that only the first
    /// call of each store pays for the `CREATE ... IF NOT EXISTS` round trips.
    pub(super) ready: OnceCell<()>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.schema)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`)
    /// with a pool of up to 10 connections, opening the first one now so that a
    /// wrong URL or password shows at startup.
    ///
    /// Each call checks its pooled connection with a ping before using it, so
    /// connections broken by a database restart are replaced instead of failing
    /// a request.
    ///
    /// The pool gives up on a connection after 2 seconds, so when the database is
    /// down calls fail fast with [`StoreError::Unavailable`] instead of piling up;
    /// they succeed again as soon as it is back, with no need to rebuild the
    /// store. For other pool settings, build a [`PgPool`] yourself and use
    /// [`from_pool`](Self::from_pool).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when `url` is not a valid connection URL;
    /// [`StoreError::Unavailable`] when the database cannot be reached;
    /// [`StoreError::Backend`] when it refuses the connection (bad password,
    /// unknown database).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::backend)?;
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(Self::from_pool(pool))
    }

    /// A store on an existing pool, using the table `unstuck_sessions`.
    ///
    /// The pool's `acquire_timeout` bounds how long a call waits when the
    /// database is unreachable; keep it short (a few seconds).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            inner: Arc::new(Inner::new(None, DEFAULT_TABLE.to_owned())),
            events: None,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
        }
    }

    /// The most bytes of keys and values one session may hold (default 64
    /// KiB); writes that would pass it fail with [`StoreError::TooLarge`]
    /// and write nothing.
    pub fn with_max_session_bytes(mut self, bytes: usize) -> Self {
        self.max_session_bytes = bytes;
        self
    }

    fn limit(&self) -> i64 {
        i64::try_from(self.max_session_bytes).unwrap_or(i64::MAX)
    }

    /// Keeps sessions in `table` instead of `unstuck_sessions`.
    ///
    /// Names are limited to ASCII letters, digits and `_`, not starting with a
    /// digit, at most 48 characters; they are used case-sensitively (quoted).
    ///
    /// # Errors
    /// When `table` is not such a name.
    pub fn with_table(self, table: &str) -> Result<Self, InvalidIdentifier> {
        let table = checked_identifier(table)?;
        let schema = self.inner.schema.clone();
        Ok(self.rebuilt(schema, table))
    }

    /// Keeps the table in `schema` instead of the connection's `search_path`.
    /// The schema is created if missing (which needs the `CREATE` privilege on
    /// the database).
    ///
    /// # Errors
    /// When `schema` is not a name as described in [`with_table`](Self::with_table).
    pub fn with_schema(self, schema: &str) -> Result<Self, InvalidIdentifier> {
        let schema = checked_identifier(schema)?;
        let table = self.inner.table.clone();
        Ok(self.rebuilt(Some(schema), table))
    }

    fn rebuilt(self, schema: Option<String>, table: String) -> Self {
        Self {
            pool: self.pool,
            inner: Arc::new(Inner::new(schema, table)),
            events: self.events,
            max_session_bytes: self.max_session_bytes,
        }
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the schema (if one was set), the table and its indexes, unless
    /// they exist.
    ///
    /// The store does this by itself on first use, so calling it is optional;
    /// call it at startup to surface missing privileges early, or grant them only
    /// to a migration step. Safe to run from many instances at once: they
    /// serialize on an advisory lock.
    ///
    /// # Errors
    /// When the database cannot be reached or refuses the statements.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.create_schema_objects().await?;
        // Losing a race with the first call setting it is fine: both did the work.
        let _ = self.inner.ready.set(());
        Ok(())
    }

    async fn create_schema_objects(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Concurrent `CREATE ... IF NOT EXISTS` of the same schema or table can
        // fail with a unique violation in the catalog when instances start
        // together; a lock per schema serializes them.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(MIGRATION_LOCK_CLASS)
            .bind(self.inner.schema.as_deref().unwrap_or(""))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        for statement in &self.inner.sql.migrate {
            sqlx::query(AssertSqlSafe(statement.clone()))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        tracing::debug!(table = %self.inner.qualified_name(), "session table ready");
        Ok(())
    }

    async fn ready(&self) -> Result<&Statements, StoreError> {
        self.inner
            .ready
            .get_or_try_init(|| self.create_schema_objects())
            .await?;
        Ok(&self.inner.sql)
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let sql = self.ready().await?;
        let row = sqlx::query(sql.load.sql())
            .bind(key.as_str())
            .bind(millis(SystemTime::now()))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        check_format(&row)?;
        record_from_row(&row).map(Some).map_err(StoreError::backend)
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        let size = data_bytes(&record.data);
        if size > self.max_session_bytes {
            return Err(StoreError::TooLarge {
                size,
                limit: self.max_session_bytes,
            });
        }
        let sql = self.ready().await?;
        let (keys, values): (Vec<&str>, Vec<&str>) = record
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unzip();
        let result = sqlx::query(sql.create.sql())
            .bind(key.as_str())
            .bind(keys)
            .bind(values)
            .bind(record.user.as_deref())
            .bind(millis(record.created_at))
            .bind(millis(record.expires_at))
            .bind(millis(SystemTime::now()))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        self.ready().await?;
        let now = millis(SystemTime::now());
        let Some((user, cap)) = capped_join(changes) else {
            let mut conn = self.pool.acquire().await.map_err(store_error)?;
            return self.save_on(&mut conn, key, changes, now).await;
        };
        // A login under a cap: admission and save in one transaction, so a
        // refused save also undoes the evictions.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        self.admit(&mut tx, user, cap, &[key.as_str()], now).await?;
        let outcome = self.save_on(&mut tx, key, changes, now).await?;
        if outcome == SaveOutcome::Applied {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(outcome)
    }

    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        let sql = self.ready().await?;
        let now = millis(SystemTime::now());
        let (keys, values) = split_inserted(changes);
        let removed: Vec<&str> = changes.removed().collect();
        let (mode, user) = user_mode(changes.user());
        // Dropping the transaction on any error rolls it back, so the session is
        // either fully moved or left where it was.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query(sql.clear_expired_key.sql())
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if let Some((user, cap)) = capped_join(changes) {
            self.admit(&mut tx, user, cap, &[from.as_str(), to.as_str()], now)
                .await?;
        }
        let moved = sqlx::query(sql.rotate.sql())
            .bind(from.as_str())
            .bind(now)
            .bind(to.as_str())
            .bind(removed)
            .bind(keys)
            .bind(values)
            .bind(mode)
            .bind(user)
            .bind(millis(changes.expires_at()))
            .bind(self.limit())
            .execute(&mut *tx)
            .await
            .map_err(|error| {
                if error
                    .as_database_error()
                    .is_some_and(|db| db.is_unique_violation())
                {
                    StoreError::KeyTaken
                } else {
                    store_error(error)
                }
            })?;
        if moved.rows_affected() == 0 {
            // Rolled back with the transaction: nothing moved, nobody evicted.
            return match self.refusal(&mut tx, from, changes, now).await? {
                Refusal::Error(error) => Err(error),
                // Changed under the rotation: the caller sees it as gone
                // rather than retrying a login blind.
                Refusal::Gone | Refusal::Retry => Ok(SaveOutcome::Gone),
            };
        }
        tx.commit().await.map_err(store_error)?;
        Ok(SaveOutcome::Applied)
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        let sql = self.ready().await?;
        let live: Option<bool> = sqlx::query_scalar(sql.delete.sql())
            .bind(key.as_str())
            .bind(millis(SystemTime::now()))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(live == Some(true))
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        let sql = self.ready().await?;
        let rows = sqlx::query(sql.user_sessions.sql())
            .bind(user)
            .bind(millis(SystemTime::now()))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("storage_key").map_err(StoreError::backend)?;
                let key = StorageKey::parse(&text)
                    .ok_or_else(|| StoreError::backend("malformed storage key in session table"))?;
                Ok(SessionSummary {
                    key,
                    created_at: from_millis(
                        row.try_get("created_at_ms").map_err(StoreError::backend)?,
                    )?,
                    expires_at: from_millis(
                        row.try_get("expires_at_ms").map_err(StoreError::backend)?,
                    )?,
                })
            })
            .collect()
    }

    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        let sql = self.ready().await?;
        let live: i64 = sqlx::query_scalar(sql.delete_user_sessions.sql())
            .bind(user)
            .bind(millis(SystemTime::now()))
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(u64::try_from(live).unwrap_or(0))
    }
}
