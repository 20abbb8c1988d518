//! The per-user index: a sorted set per user of the storage keys of their
//! sessions, scored a lifetime past each session's expiry (see
//! [`index_score`](super::codec::index_score)).

use std::time::SystemTime;

use deadpool_redis::redis;

use super::RedisStore;
use super::codec::{index_key, millis};
use super::conn::Conn;
use super::exec;
use super::scripts;
use crate::id::StorageKey;
use crate::store::{CapPolicy, SessionCap, StoreError};

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

    /// Adds `key` to `user`'s index with `score`; under a `cap`, admits it
    /// first ([`INDEX_ADMIT`](scripts::INDEX_ADMIT)), not counting `leaving`,
    /// and ends the sessions the admission evicted.
    ///
    /// The admission and the session write that follows are two steps (on
    /// Cluster the index and the session live on different slots). If the
    /// write then fails, the entry stays behind, counted against the cap
    /// until it is evicted as the oldest, the session is deleted, or its
    /// score passes. If deleting an evicted session fails, this call fails
    /// (the login answers `503`) and that session lives on unlisted, so "log
    /// out everywhere" misses it, until it expires: the one case (a node lost
    /// mid-login) where a user can hold a session beyond the cap.
    pub(super) async fn index_join(
        &self,
        conn: &mut Conn,
        user: &str,
        key: &StorageKey,
        score: u64,
        cap: Option<SessionCap>,
        leaving: Option<&StorageKey>,
    ) -> Result<(), StoreError> {
        let Some(cap) = cap else {
            return self.index_add(conn, user, key, score).await;
        };
        let now = millis(SystemTime::now());
        let reply: Vec<String> = self
            .eval(
                conn,
                &scripts::INDEX_ADMIT,
                &index_key(&self.prefix, user),
                |cmd| {
                    cmd.arg(now)
                        .arg(score)
                        .arg(key.as_str())
                        .arg(leaving.map_or("", StorageKey::as_str))
                        .arg(cap.max())
                        .arg(if cap.policy() == CapPolicy::Refuse {
                            "r"
                        } else {
                            "e"
                        });
                },
                false,
            )
            .await?;
        let Some(("ok", evicted)) = reply.split_first().map(|(s, rest)| (s.as_str(), rest)) else {
            return Err(StoreError::TooManySessions { max: cap.max() });
        };
        if evicted.is_empty() {
            return Ok(());
        }
        // Only the user's own sessions: an entry left behind by a session
        // that moved to another user cannot end that user's session.
        let calls = evicted
            .iter()
            .filter_map(|member| StorageKey::parse(member))
            .map(|evicted| {
                let mut cmd = exec::script_call(&scripts::DELETE, &self.session_key(&evicted));
                cmd.arg("u").arg(user);
                cmd
            })
            .collect();
        let _: Vec<(i64, Option<String>)> =
            self.eval_each(conn, &scripts::DELETE, calls, true).await?;
        tracing::debug!(
            evicted = evicted.len(),
            "sessions evicted by the user's cap"
        );
        Ok(())
    }

    /// Whether `key` is still in `user`'s index: a session admitted under a
    /// cap checks it once written, because a racing login may have evicted
    /// its entry while the write was in flight (and then found no session to
    /// delete).
    pub(super) async fn still_indexed(
        &self,
        conn: &mut Conn,
        user: &str,
        key: &StorageKey,
    ) -> Result<bool, StoreError> {
        let score: Option<f64> = conn
            .query(
                redis::cmd("ZSCORE")
                    .arg(index_key(&self.prefix, user))
                    .arg(key.as_str()),
            )
            .await?;
        Ok(score.is_some())
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
