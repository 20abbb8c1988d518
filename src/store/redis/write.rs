//! The session writes: the save (over the pool or the near cache's channel,
//! with what the user index and its cap need) and the creation of a hash.

use deadpool_redis::redis::{self, Cmd};

use super::codec::{
    CREATED, DataField, EXPIRES, INDEX_SCORE, SIZE, SaveReply, USER, VERSION, index_score, millis,
};
use super::conn::Conn;
use super::{RedisChannel, RedisStore, scripts};
use crate::id::StorageKey;
use crate::store::{ChangeSet, Record, SaveOutcome, StoreError, UserChange, Version, data_bytes};

impl RedisStore {
    /// Applies a save: the script over the near cache's `channel` when given,
    /// else over the pool, then whatever the user index needs. Returns the
    /// session's new version.
    pub(super) async fn save_with(
        &self,
        key: &StorageKey,
        changes: &ChangeSet,
        channel: Option<&RedisChannel>,
    ) -> Result<(SaveOutcome, Version), StoreError> {
        let save = async {
            // A pool connection is only needed for the user index (and for the
            // save itself without a channel): most saves through the near
            // cache never touch the pool.
            let mut pool = None;
            let score = index_score(changes.expires_at());
            let joining = match changes.user() {
                UserChange::Set(user) => Some(user),
                _ => None,
            };
            if let Some(user) = joining {
                let conn = self.lazy_conn(&mut pool).await?;
                self.index_join(conn, user, key, score, changes.user_cap(), None)
                    .await?;
            }
            let tracked = if channel.is_some() { "t" } else { "" };
            let args = |cmd: &mut Cmd| {
                cmd.arg(millis(changes.expires_at()));
                match changes.user() {
                    UserChange::Keep => cmd.arg("k").arg(""),
                    UserChange::Set(user) => cmd.arg("s").arg(user),
                    UserChange::Clear => cmd.arg("c").arg(""),
                };
                cmd.arg(score);
                cmd.arg(self.max_session_bytes);
                cmd.arg(changes.removed().len());
                cmd.arg(tracked);
                let mut field = DataField::default();
                for name in changes.removed() {
                    cmd.arg(field.of(name));
                }
                for (name, json) in changes.inserted() {
                    cmd.arg(field.of(name)).arg(json);
                }
            };
            let redis_key = self.session_key(key);
            let reply = match channel {
                Some(channel) => channel.save_script(&redis_key, args).await,
                None => match self.lazy_conn(&mut pool).await {
                    Ok(conn) => self
                        .eval(conn, &scripts::SAVE, &redis_key, args, true)
                        .await
                        .and_then(SaveReply::parse),
                    Err(error) => Err(error),
                },
            };
            let reply = match (reply, joining) {
                (Ok(reply), _) => reply,
                (Err(error), None) => return Err(error),
                (Err(error), Some(user)) => {
                    // Refused, so certainly not written: the entry just made
                    // must not count against the user's cap, unless the
                    // session was that user's already. (After any other
                    // failure the write may have happened: the entry stays.)
                    if matches!(
                        error,
                        StoreError::TooLarge { .. } | StoreError::UnsupportedFormat { .. }
                    ) {
                        let conn = self.lazy_conn(&mut pool).await?;
                        let owner: Option<String> = conn
                            .query(redis::cmd("HGET").arg(&redis_key).arg(USER))
                            .await?;
                        if owner.as_deref() != Some(user.as_str()) {
                            self.index_remove(conn, user, &[key]).await?;
                        }
                    }
                    return Err(error);
                }
            };
            if !reply.applied {
                if let UserChange::Set(user) = changes.user() {
                    let conn = self.lazy_conn(&mut pool).await?;
                    self.index_remove(conn, user, &[key]).await?;
                }
                return Ok((SaveOutcome::Gone, reply.version));
            }
            if let Some(previous) = reply
                .previous
                .as_deref()
                .filter(|p| Some(*p) != reply.current.as_deref())
            {
                let conn = self.lazy_conn(&mut pool).await?;
                self.index_remove(conn, previous, &[key]).await?;
            }
            if let (Some(user), Some(_)) = (joining, changes.user_cap()) {
                let conn = self.lazy_conn(&mut pool).await?;
                if !self.still_indexed(conn, user, key).await? {
                    self.delete_owned(conn, key, user).await?;
                    return Ok((SaveOutcome::Gone, reply.version));
                }
            }
            if let (true, Some(current)) = (reply.rescore, &reply.current) {
                // Index first, then the record of it: if this stops halfway,
                // the next save sees the old score and re-scores again.
                let conn = self.lazy_conn(&mut pool).await?;
                self.index_add(conn, current, key, score).await?;
                self.eval::<i64>(
                    conn,
                    &scripts::SET_INDEX_SCORE,
                    &redis_key,
                    |cmd| {
                        cmd.arg(score);
                    },
                    false,
                )
                .await?;
            }
            Ok((SaveOutcome::Applied, reply.version))
        };
        match channel {
            Some(_) => self.bounded(1, save).await,
            None => self.bounded_pooled(1, save).await,
        }
    }

    /// Deletes the session at `key` if it belongs to `user`: a login that a
    /// racing login evicted while it was being written.
    pub(super) async fn delete_owned(
        &self,
        conn: &mut Conn,
        key: &StorageKey,
        user: &str,
    ) -> Result<(), StoreError> {
        let _: (i64, Option<String>) = self
            .eval(
                conn,
                &scripts::DELETE,
                &self.session_key(key),
                |cmd| {
                    cmd.arg("u").arg(user);
                },
                true,
            )
            .await?;
        Ok(())
    }

    /// Creates the hash; `index_score` is what the user index entry was given
    /// (ignored without a user).
    pub(super) async fn create_record(
        &self,
        conn: &mut Conn,
        key: &StorageKey,
        record: &Record,
        index_score: u64,
    ) -> Result<bool, StoreError> {
        let created: i64 = self
            .eval(
                conn,
                &scripts::CREATE,
                &self.session_key(key),
                |cmd| {
                    cmd.arg(millis(record.expires_at));
                    // A new hash is version 1, and its size counted at it.
                    cmd.arg(VERSION).arg(1);
                    cmd.arg(SIZE).arg(format!("1:{}", data_bytes(&record.data)));
                    cmd.arg(CREATED).arg(millis(record.created_at));
                    cmd.arg(EXPIRES).arg(millis(record.expires_at));
                    if let Some(user) = &record.user {
                        cmd.arg(USER).arg(user);
                        cmd.arg(INDEX_SCORE).arg(index_score);
                    }
                    let mut field = DataField::default();
                    for (name, json) in &record.data {
                        cmd.arg(field.of(name)).arg(json);
                    }
                },
                true,
            )
            .await?;
        Ok(created == 1)
    }
}
