//! Running the Lua scripts: `EVALSHA`, loading the script once after a
//! `NOSCRIPT`, and `WAIT`ing for replicas after durable writes.

use deadpool_redis::redis::{
    self, Cmd, ErrorKind, FromRedisValue, Pipeline, Script, ServerErrorKind, Value,
};

use super::conn::Conn;
use super::errors::{NotReplicated, map_redis_error};
use super::{RedisStore, ReplicaAcks};
use crate::store::StoreError;

impl RedisStore {
    /// Runs a script on one key; for a `durable` write, `WAIT`s for the replica
    /// acks in the same pipeline (so on Cluster it reaches the node that took the
    /// write) and fails if too few replicas confirmed.
    pub(super) async fn eval<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        script: &Script,
        key: &str,
        args: impl FnOnce(&mut Cmd),
        durable: bool,
    ) -> Result<T, StoreError> {
        let mut cmd = script_call(script, key);
        args(&mut cmd);
        if self.acks_for(durable).is_none() {
            // One command rather than a pipeline of one: no packing into a
            // pipeline buffer and no vector of replies for the common case.
            let value = loading(conn, script, Sent::Command(&cmd)).await?;
            return redis::from_redis_value(value).map_err(StoreError::backend);
        }
        let mut replies = self.run(conn, script, vec![cmd], durable).await?;
        replies
            .pop()
            .ok_or_else(|| StoreError::backend("empty reply to a script call"))
    }

    /// Runs calls of one script (each made by [`script_call`]): pipelined on
    /// one server, one after another on Cluster (a pipeline must stay within
    /// a slot).
    pub(super) async fn eval_each<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        script: &Script,
        calls: Vec<Cmd>,
        durable: bool,
    ) -> Result<Vec<T>, StoreError> {
        if !conn.is_cluster() {
            return self.run(conn, script, calls, durable).await;
        }
        let mut replies = Vec::with_capacity(calls.len());
        for call in calls {
            replies.extend(self.run(conn, script, vec![call], durable).await?);
        }
        Ok(replies)
    }

    /// The replica acks a write waits for: none unless it is `durable` and the
    /// store asks for acks.
    fn acks_for(&self, durable: bool) -> Option<ReplicaAcks> {
        self.replica_acks.filter(|_| durable)
    }

    /// One pipeline: the script calls, then a `WAIT` for a durable write.
    async fn run<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        script: &Script,
        calls: Vec<Cmd>,
        durable: bool,
    ) -> Result<Vec<T>, StoreError> {
        let count = calls.len();
        let mut pipe = redis::pipe();
        for cmd in calls {
            pipe.add_command(cmd);
        }
        let acks = self.acks_for(durable);
        if let Some(acks) = acks {
            pipe.cmd("WAIT")
                .arg(acks.replicas)
                .arg(u64::try_from(acks.timeout.as_millis()).unwrap_or(u64::MAX));
        }
        let mut values = match loading(conn, script, Sent::Pipeline(&pipe)).await? {
            Value::Array(values) => values,
            _ => {
                return Err(StoreError::backend(
                    "a pipeline's replies came as one value",
                ));
            }
        };
        if let Some(acks) = acks {
            check_acks(acks, values.pop())?;
        }
        values.truncate(count);
        values
            .into_iter()
            .map(|value| redis::from_redis_value(value).map_err(StoreError::backend))
            .collect()
    }
}

/// What carries a script call: the call alone, or a pipeline around it.
#[derive(Clone, Copy)]
enum Sent<'a> {
    Command(&'a Cmd),
    Pipeline(&'a Pipeline),
}

/// Sends `sent` (a pipeline's replies as one array); if Redis does not know
/// the script (first use, or after a restart or `SCRIPT FLUSH`), loads it and
/// sends once more.
async fn loading(conn: &mut Conn, script: &Script, sent: Sent<'_>) -> Result<Value, StoreError> {
    let send = async |conn: &mut Conn| match sent {
        Sent::Command(cmd) => conn.command(cmd).await,
        Sent::Pipeline(pipe) => conn.pipeline(pipe).await.map(Value::Array),
    };
    match send(conn).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            conn.load(script).await.map_err(map_redis_error)?;
            send(conn).await
        }
        other => other,
    }
    .map_err(map_redis_error)
}

/// `EVALSHA <script> 1 <key>`, for the caller to add the script's arguments.
pub(super) fn script_call(script: &Script, key: &str) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key);
    cmd
}

/// Fails a write that fewer replicas than required confirmed.
fn check_acks(acks: ReplicaAcks, reply: Option<Value>) -> Result<(), StoreError> {
    let acked: u32 = reply
        .map(redis::from_redis_value)
        .transpose()
        .map_err(StoreError::backend)?
        .unwrap_or(0);
    if acked >= acks.replicas {
        return Ok(());
    }
    tracing::warn!(
        acked,
        wanted = acks.replicas,
        "redis session write not acknowledged by enough replicas"
    );
    // Unavailable, not Backend: too few acks means replicas that are down or
    // resyncing (a failover does that for ~15 s), a state that passes, so
    // clients get a 503 that invites a retry rather than a 500.
    Err(StoreError::unavailable(NotReplicated {
        acked,
        wanted: acks.replicas,
        timeout: acks.timeout,
    }))
}
