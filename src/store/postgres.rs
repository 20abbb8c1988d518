//! [`PostgresStore`]: sessions in a PostgreSQL table, shared by every instance.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;

use super::{
    ChangeSet, Data, Record, SaveOutcome, SessionStore, SessionSummary, StoreError, UserChange,
};
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
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    inner: Arc<Inner>,
}

struct Inner {
    schema: Option<String>,
    table: String,
    sql: Statements,
    /// Set once the schema objects are known to exist, so that only the first
    /// call of each store pays for the `CREATE ... IF NOT EXISTS` round trips.
    ready: OnceCell<()>,
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
        }
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

    /// Deletes up to `batch_size` expired rows and returns how many it deleted.
    ///
    /// Rows that another caller is deleting at the same moment are skipped
    /// (`FOR UPDATE SKIP LOCKED`), so any number of instances can run this at
    /// once without waiting on each other or deleting a row twice. Keep batches
    /// small (hundreds to a few thousands) so each statement is short.
    ///
    /// # Errors
    /// When the database cannot be reached or the delete fails.
    pub async fn delete_expired(&self, batch_size: u32) -> Result<u64, StoreError> {
        let sql = self.ready().await?;
        let result = sqlx::query(sql.delete_expired.sql())
            .bind(millis(SystemTime::now()))
            .bind(i64::from(batch_size))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(result.rows_affected())
    }

    /// Starts a task that deletes expired rows every `interval`, in batches of
    /// `batch_size` (see [`delete_expired`](Self::delete_expired)), and returns its
    /// handle.
    ///
    /// The task runs until the handle is dropped or
    /// [`stop`](PostgresCleanup::stop)ped. Each run deletes batches until one
    /// comes back short, so a backlog is worked off at once (up to 1000 batches
    /// per run; the rest waits for the next run). Errors are logged with
    /// `tracing` and retried at the next run. The first run starts immediately.
    ///
    /// Run it on one instance, or on all of them: concurrent runs skip each
    /// other's rows instead of blocking. On all instances, a longer interval
    /// (such as the number of instances times the interval you want) keeps the
    /// total load the same.
    ///
    /// # Panics
    /// If `interval` is zero, or when called outside a Tokio runtime.
    pub fn spawn_cleanup(&self, interval: Duration, batch_size: u32) -> PostgresCleanup {
        assert!(!interval.is_zero(), "cleanup interval must not be zero");
        let batch_size = batch_size.max(1);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(cleanup_loop(self.clone(), interval, batch_size, stopped));
        PostgresCleanup {
            stop: Some(stop),
            task,
        }
    }
}

async fn cleanup_loop(
    store: PostgresStore,
    interval: Duration,
    batch_size: u32,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        let mut deleted = 0u64;
        for _ in 0..MAX_BATCHES_PER_RUN {
            match store.delete_expired(batch_size).await {
                Ok(n) => {
                    deleted += n;
                    if n < u64::from(batch_size) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "deleting expired sessions failed; retrying at the next run");
                    break;
                }
            }
            // A stop (or a dropped handle) takes effect between batches, so a
            // batch in flight always completes.
            if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return;
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "deleted expired sessions");
        }
    }
}

/// The handle of the cleanup task started by [`PostgresStore::spawn_cleanup`].
///
/// Dropping it stops the task after the batch in flight, if any;
/// [`stop`](Self::stop) does the same and waits for it, and
/// [`abort`](Self::abort) cancels it at once.
#[derive(Debug)]
#[must_use = "the cleanup task stops when its handle is dropped"]
pub struct PostgresCleanup {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl PostgresCleanup {
    /// Stops the task after the batch in flight, if any, and waits until it has
    /// stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The task only ends by returning or by being aborted; neither is an
        // error worth reporting to someone shutting it down.
        let _ = (&mut self.task).await;
    }

    /// Cancels the task at once, even in the middle of a batch (the batch's
    /// statement is then rolled back or completed by the server; no row is half
    /// deleted).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// True once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// A schema or table name that [`PostgresStore`] refuses: only ASCII letters,
/// digits and `_`, not starting with a digit, 1 to 48 characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid PostgreSQL identifier {0:?}: use 1 to 48 ASCII letters, digits or underscores, not starting with a digit"
)]
pub struct InvalidIdentifier(String);

fn checked_identifier(name: &str) -> Result<String, InvalidIdentifier> {
    let mut bytes = name.bytes();
    let valid = name.len() <= MAX_IDENTIFIER_LEN
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(InvalidIdentifier(name.to_owned()))
    }
}

/// Quotes a name [`checked_identifier`] accepted. Quoting keeps names that
/// happen to be keywords (`user`, `order`) usable and keeps their case.
fn quoted(name: &str) -> String {
    debug_assert!(checked_identifier(name).is_ok());
    format!("\"{name}\"")
}

impl Inner {
    fn new(schema: Option<String>, table: String) -> Self {
        Self {
            sql: Statements::new(schema.as_deref(), &table),
            schema,
            table,
            ready: OnceCell::new(),
        }
    }

    fn qualified_name(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

/// A statement built once per store from checked identifiers.
#[derive(Clone)]
struct Sql(Arc<str>);

impl Sql {
    fn sql(&self) -> AssertSqlSafe<Arc<str>> {
        // Only identifiers that passed `checked_identifier` are interpolated;
        // every value is a bind parameter.
        AssertSqlSafe(self.0.clone())
    }
}

/// Every statement the store runs, with the table name filled in.
struct Statements {
    migrate: Vec<Arc<str>>,
    load: Sql,
    create: Sql,
    save: Sql,
    touch: Sql,
    clear_expired_key: Sql,
    rotate: Sql,
    delete: Sql,
    user_sessions: Sql,
    delete_user_sessions: Sql,
    delete_expired: Sql,
}

/// `user_id` after a change set, given its mode (`$mode`: 0 keep, 1 set, 2
/// clear) and the new user (`$user`); `current` is the column as it is now.
fn user_expr(current: &str, mode: &str, user: &str) -> String {
    format!("CASE {mode}::int WHEN 0 THEN {current} WHEN 1 THEN {user}::text ELSE NULL END")
}

/// A `jsonb` object built from parallel arrays of keys and JSON texts. Each value
/// is cast on its own, so malformed JSON fails the statement instead of being
/// spliced into a neighbouring value.
fn object_expr(keys: &str, values: &str) -> String {
    format!(
        "(SELECT coalesce(jsonb_object_agg(x.k, x.v::jsonb), '{{}}'::jsonb) \
         FROM unnest({keys}::text[], {values}::text[]) AS x(k, v))"
    )
}

impl Statements {
    fn new(schema: Option<&str>, table: &str) -> Self {
        let t = match schema {
            Some(schema) => format!("{}.{}", quoted(schema), quoted(table)),
            None => quoted(table),
        };
        let user_index = quoted(&format!("{table}_user_idx"));
        let expiry_index = quoted(&format!("{table}_expiry_idx"));
        let sql = |text: String| Sql(text.into());

        let mut migrate: Vec<Arc<str>> = Vec::new();
        if let Some(schema) = schema {
            migrate.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quoted(schema)).into());
        }
        migrate.push(
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 storage_key text PRIMARY KEY, \
                 data jsonb NOT NULL, \
                 user_id text, \
                 created_at_ms bigint NOT NULL, \
                 expires_at_ms bigint NOT NULL)"
            )
            .into(),
        );
        migrate.push(
            format!(
                "CREATE INDEX IF NOT EXISTS {user_index} ON {t} (user_id) WHERE user_id IS NOT NULL"
            )
            .into(),
        );
        migrate.push(
            format!("CREATE INDEX IF NOT EXISTS {expiry_index} ON {t} (expires_at_ms)").into(),
        );

        Self {
            migrate,
            // Keys and values come back as two arrays aggregated in one pass, so
            // they stay in step.
            load: sql(format!(
                "SELECT s.user_id, s.created_at_ms, s.expires_at_ms, d.keys, d.vals \
                 FROM {t} AS s CROSS JOIN LATERAL \
                 (SELECT array_agg(e.key) AS keys, array_agg(e.value::text) AS vals \
                  FROM jsonb_each(s.data) AS e) AS d \
                 WHERE s.storage_key = $1 AND s.expires_at_ms > $2"
            )),
            // Takes the key when it is free or holds an expired row; a live row
            // makes the conditional update match nothing.
            create: sql(format!(
                "INSERT INTO {t} AS s (storage_key, data, user_id, created_at_ms, expires_at_ms) \
                 VALUES ($1, {data}, $4, $5, $6) \
                 ON CONFLICT (storage_key) DO UPDATE SET \
                 data = excluded.data, user_id = excluded.user_id, \
                 created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms \
                 WHERE s.expires_at_ms <= $7",
                data = object_expr("$2", "$3"),
            )),
            // One statement, applied to the row as it is when the row lock is
            // granted: concurrent saves merge instead of overwriting each other.
            save: sql(format!(
                "UPDATE {t} SET \
                 data = (data - $2::text[]) || {data}, \
                 user_id = {user}, \
                 expires_at_ms = $7 \
                 WHERE storage_key = $1 AND expires_at_ms > $8",
                data = object_expr("$3", "$4"),
                user = user_expr("user_id", "$5", "$6"),
            )),
            touch: sql(format!(
                "UPDATE {t} SET expires_at_ms = $2 WHERE storage_key = $1 AND expires_at_ms > $3"
            )),
            clear_expired_key: sql(format!(
                "DELETE FROM {t} WHERE storage_key = $1 AND expires_at_ms <= $2"
            )),
            // A plain insert: a live row at the new key is a unique violation,
            // which rolls the move back.
            rotate: sql(format!(
                "WITH old AS (\
                 DELETE FROM {t} WHERE storage_key = $1 AND expires_at_ms > $2 \
                 RETURNING data, user_id, created_at_ms) \
                 INSERT INTO {t} (storage_key, data, user_id, created_at_ms, expires_at_ms) \
                 SELECT $3, (old.data - $4::text[]) || {data}, {user}, old.created_at_ms, $9 \
                 FROM old",
                data = object_expr("$5", "$6"),
                user = user_expr("old.user_id", "$7", "$8"),
            )),
            delete: sql(format!(
                "DELETE FROM {t} WHERE storage_key = $1 RETURNING expires_at_ms > $2"
            )),
            user_sessions: sql(format!(
                "SELECT storage_key, created_at_ms, expires_at_ms FROM {t} \
                 WHERE user_id = $1 AND expires_at_ms > $2 \
                 ORDER BY created_at_ms, storage_key"
            )),
            delete_user_sessions: sql(format!(
                "WITH d AS (DELETE FROM {t} WHERE user_id = $1 RETURNING expires_at_ms) \
                 SELECT count(*) FILTER (WHERE expires_at_ms > $2) FROM d"
            )),
            // SKIP LOCKED lets concurrent cleaners share the work; FOR UPDATE
            // rechecks the expiry against a concurrent refresh.
            delete_expired: sql(format!(
                "DELETE FROM {t} WHERE storage_key IN (\
                 SELECT storage_key FROM {t} WHERE expires_at_ms <= $1 \
                 LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 AND expires_at_ms <= $1"
            )),
        }
    }
}

/// Maps sqlx errors onto the two kinds the layer tells apart: "try again later"
/// (answered with 503) and everything else.
fn store_error(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: server shutting down, crashed
            // or starting; 57014: statement timeout or cancel; 53300: too many
            // connections.
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "57014" | "53300")
        }),
        _ => false,
    };
    if unavailable {
        tracing::warn!(%error, "postgres session store unavailable");
        StoreError::unavailable(error)
    } else {
        tracing::error!(%error, "postgres session store error");
        StoreError::backend(error)
    }
}

/// Unix time in milliseconds, the precision the table keeps.
fn millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_millis(ms: i64) -> Result<SystemTime, StoreError> {
    let offset = Duration::from_millis(ms.unsigned_abs());
    let time = if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.ok_or_else(|| StoreError::backend(format!("timestamp out of range: {ms} ms")))
}

/// Removes the whitespace `jsonb` puts after `,` and `:` when printing, so values
/// come back as the compact text serde_json writes. Whitespace inside strings
/// is kept; numbers are copied as printed, so no precision is lost.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

fn user_mode(change: &UserChange) -> (i32, Option<&str>) {
    match change {
        UserChange::Keep => (0, None),
        UserChange::Set(user) => (1, Some(user.as_str())),
        UserChange::Clear => (2, None),
    }
}

fn split_inserted(changes: &ChangeSet) -> (Vec<&str>, Vec<&str>) {
    changes.inserted().unzip()
}

fn record_from_row(row: &PgRow) -> Result<Record, sqlx::Error> {
    let keys: Option<Vec<String>> = row.try_get("keys")?;
    let values: Option<Vec<String>> = row.try_get("vals")?;
    let data: Data = keys
        .unwrap_or_default()
        .into_iter()
        .zip(values.unwrap_or_default())
        .map(|(key, value)| (key, compact_json(&value)))
        .collect();
    Ok(Record {
        data,
        user: row.try_get("user_id")?,
        created_at: from_millis(row.try_get("created_at_ms")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        expires_at: from_millis(row.try_get("expires_at_ms")?)
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
    })
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        let sql = self.ready().await?;
        let row = sqlx::query(sql.load.sql())
            .bind(key.as_str())
            .bind(millis(SystemTime::now()))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref()
            .map(record_from_row)
            .transpose()
            .map_err(StoreError::backend)
    }

    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
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
        let sql = self.ready().await?;
        let now = millis(SystemTime::now());
        let query = if changes.is_touch_only() {
            sqlx::query(sql.touch.sql())
                .bind(key.as_str())
                .bind(millis(changes.expires_at()))
                .bind(now)
        } else {
            let (keys, values) = split_inserted(changes);
            let removed: Vec<&str> = changes.removed().collect();
            let (mode, user) = user_mode(changes.user());
            sqlx::query(sql.save.sql())
                .bind(key.as_str())
                .bind(removed)
                .bind(keys)
                .bind(values)
                .bind(mode)
                .bind(user)
                .bind(millis(changes.expires_at()))
                .bind(now)
        };
        let result = query.execute(&self.pool).await.map_err(store_error)?;
        Ok(if result.rows_affected() == 1 {
            SaveOutcome::Applied
        } else {
            SaveOutcome::Gone
        })
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
        tx.commit().await.map_err(store_error)?;
        Ok(if moved.rows_affected() == 1 {
            SaveOutcome::Applied
        } else {
            SaveOutcome::Gone
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_drops_jsonb_spacing_but_not_spaces_in_strings() {
        assert_eq!(
            compact_json(r#"{"a b": [1, 2, {"c": null}], "d": "x, y: \"z\" \\"}"#),
            r#"{"a b":[1,2,{"c":null}],"d":"x, y: \"z\" \\"}"#
        );
        assert_eq!(
            compact_json("12345678901234567890123.5"),
            "12345678901234567890123.5"
        );
        assert_eq!(compact_json(r#""""#), r#""""#);
    }

    #[test]
    fn identifiers_outside_the_safe_set_are_refused() {
        for bad in [
            "",
            "1table",
            "my-table",
            "t\"; DROP TABLE x; --",
            "schéma",
            &"a".repeat(49),
        ] {
            assert!(checked_identifier(bad).is_err(), "{bad:?}");
        }
        for good in ["sessions", "_t", "Web_Sessions2", &"a".repeat(48)] {
            assert_eq!(checked_identifier(good).as_deref(), Ok(good));
        }
    }

    #[test]
    fn millis_round_trip_at_millisecond_precision() {
        for ms in [0, 1, 1_700_000_000_123, -1_500] {
            assert_eq!(millis(from_millis(ms).unwrap()), ms);
        }
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_999);
        assert_eq!(millis(t), 1_700_000_000_123);
    }
}
