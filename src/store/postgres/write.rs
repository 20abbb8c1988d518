//! The store's writes beyond a plain statement: a save that tells a refusal
//! (size, format) from a session that is gone, and a login's admission under
//! its user's session cap.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::PostgresStore;
use super::codec::{millis, split_inserted, store_error, user_mode};
use crate::id::StorageKey;
use crate::store::{ChangeSet, STORED_FORMAT, SaveOutcome, SessionCap, StoreError, UserChange};

/// First half of the advisory lock a login takes while it is admitted under a
/// user's session cap (the second half is a hash of the user): "unca".
const CAP_LOCK_CLASS: i32 = 0x756e_6361;

/// How often a write whose refusal turned out to be a race (the row changed
/// between the write and the look at why) is tried again.
const WRITE_ATTEMPTS: usize = 3;

/// Why a write changed no row.
pub(super) enum Refusal {
    /// The session is gone.
    Gone,
    /// The row is now writable after all: a concurrent write changed it.
    Retry,
    /// Too large, or in a stored format this release does not write.
    Error(StoreError),
}

impl PostgresStore {
    /// Why a save or rotation of `key` with `changes` changed no row.
    pub(super) async fn refusal(
        &self,
        conn: &mut PgConnection,
        key: &StorageKey,
        changes: &ChangeSet,
        now: i64,
    ) -> Result<Refusal, StoreError> {
        let (keys, values) = split_inserted(changes);
        let removed: Vec<&str> = changes.removed().collect();
        let row = sqlx::query(self.inner.sql.refusal.sql())
            .bind(key.as_str())
            .bind(now)
            .bind(removed)
            .bind(keys)
            .bind(values)
            .fetch_optional(conn)
            .await
            .map_err(store_error)?;
        let Some(row) = row else {
            return Ok(Refusal::Gone);
        };
        let format: i32 = row.try_get("format").map_err(StoreError::backend)?;
        let size: i64 = row.try_get("size").map_err(StoreError::backend)?;
        Ok(if format != 1 {
            Refusal::Error(StoreError::UnsupportedFormat {
                found: u32::try_from(format).unwrap_or(u32::MAX),
                supported: STORED_FORMAT,
            })
        } else if changes.sets_values() && size > self.limit() {
            Refusal::Error(StoreError::TooLarge {
                size: usize::try_from(size).unwrap_or(usize::MAX),
                limit: self.max_session_bytes,
            })
        } else {
            Refusal::Retry
        })
    }

    /// Admits a session joining `user` under `cap`, in the caller's
    /// transaction: waits for the user's admission lock, counts their live
    /// sessions other than `joining`, and deletes the oldest or refuses.
    pub(super) async fn admit(
        &self,
        tx: &mut PgConnection,
        user: &str,
        cap: SessionCap,
        joining: &[&str],
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = &self.inner.sql;
        sqlx::query(sql.cap_lock.sql())
            .bind(CAP_LOCK_CLASS)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let held: Vec<String> = sqlx::query_scalar(sql.cap_held.sql())
            .bind(user)
            .bind(now)
            .bind(joining)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        let evict = cap.to_evict(held.len())?;
        if evict > 0 {
            sqlx::query(sql.cap_evict.sql())
                .bind(&held[..evict])
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Runs a save on `conn`, telling a refusal from a session that is gone.
    pub(super) async fn save_on(
        &self,
        conn: &mut PgConnection,
        key: &StorageKey,
        changes: &ChangeSet,
        now: i64,
    ) -> Result<SaveOutcome, StoreError> {
        let sql = &self.inner.sql;
        for _ in 0..WRITE_ATTEMPTS {
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
                    .bind(self.limit())
            };
            let result = query.execute(&mut *conn).await.map_err(store_error)?;
            if result.rows_affected() == 1 {
                return Ok(SaveOutcome::Applied);
            }
            if changes.is_touch_only() {
                return Ok(SaveOutcome::Gone);
            }
            match self.refusal(conn, key, changes, now).await? {
                Refusal::Gone => return Ok(SaveOutcome::Gone),
                Refusal::Error(error) => return Err(error),
                Refusal::Retry => {}
            }
        }
        Err(StoreError::backend(
            "the session kept changing under the save; try again",
        ))
    }
}

/// The user a change set attaches the session to under a cap, if any.
pub(super) fn capped_join(changes: &ChangeSet) -> Option<(&str, SessionCap)> {
    match (changes.user(), changes.user_cap()) {
        (UserChange::Set(user), Some(cap)) => Some((user.as_str(), cap)),
        _ => None,
    }
}
