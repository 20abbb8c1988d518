//! The per-user index: a sorted set per user of the storage keys of their
//! sessions, scored a lifetime past each session's expiry (see
//! [`index_score`](super::codec::index_score)).

use std::time::SystemTime;

use deadpool_redis::redis;

use super::RedisStore;
use super::codec::{index_key, millis};
use super::conn::Conn;
use super::scripts;
use crate::id::StorageKey;
use crate::store::StoreError;

impl RedisStore {
    /// Adds or re-scores `key` in `user`'s index with `score`.
    pub(super) async fn index_add(
        &self,
        conn: &mut Conn,
        user: &str,
        key: &StorageKey,
        score: u64,
    ) -> Result<(), StoreError> {
        let now = millis(SystemTime::now());
        self.eval::<i64>(
            conn,
            &scripts::INDEX_ADD,
            &index_key(&self.prefix, user),
            |cmd| {
                cmd.arg(now).arg(score).arg(key.as_str());
            },
            false,
        )
        .await
        .map(drop)
    }

    pub(super) async fn index_remove(
        &self,
        conn: &mut Conn,
        user: &str,
        keys: &[&StorageKey],
    ) -> Result<(), StoreError> {
        let now = millis(SystemTime::now());
        self.eval::<i64>(
            conn,
            &scripts::INDEX_REMOVE,
            &index_key(&self.prefix, user),
            |cmd| {
                cmd.arg(now);
                for key in keys {
                    cmd.arg(key.as_str());
                }
            },
            false,
        )
        .await
        .map(drop)
    }

    /// The storage keys the index lists for `user`, after trimming expired ones.
    /// Entries may be stale (see the type docs): callers check each session.
    pub(super) async fn indexed(
        &self,
        conn: &mut Conn,
        user: &str,
    ) -> Result<Vec<StorageKey>, StoreError> {
        let index = index_key(&self.prefix, user);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(millis(SystemTime::now()))
            .ignore()
            .cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1);
        let (members,): (Vec<String>,) = conn.pipeline_typed(&pipe).await?;
        Ok(members
            .iter()
            .filter_map(|member| StorageKey::parse(member))
            .collect())
    }
}
