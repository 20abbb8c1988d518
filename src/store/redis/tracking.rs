//! The near cache's channel on Redis: one RESP3 connection with server-assisted
//! client-side caching (`CLIENT TRACKING ON NOLOOP`). Redis pushes an
//! invalidation on that same connection when a key read on it changes;
//! redis-rs hands each push to [`PushToCache`] from the connection's reader,
//! in order with the replies, so an invalidation that Redis sent before a
//! reply is always applied before that reply is seen.
//!
//! On Cluster the channel is one such connection per master, routed by slot
//! ([`super::cluster_tracking`]).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use deadpool_redis::redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, ProtocolVersion, PushInfo,
    PushKind, RedisError, Script, ServerErrorKind, Value,
};

use super::cluster_tracking::ClusterChannel;
use super::codec::{SaveReply, decode_reply, session_key, storage_key_of};
use super::errors::{is_unavailable, map_redis_error};
use super::exec::script_call;
use super::sentinel_watch::ask_for_primary;
use super::url::Target;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisStore, scripts};
use crate::error::ConfigError;
use crate::id::StorageKey;
use crate::store::{
    ChangeSet, Invalidations, Record, SaveOutcome, StoreError, Trackable, TrackedSave, Version,
};

/// A [`NearCache`](crate::NearCache)'s channel on Redis: a connection whose
/// reads Redis tracks for this process, or on Cluster one per master.
pub struct RedisChannel {
    events: Invalidations,
    route: Route,
}

enum Route {
    /// Standalone or Sentinel: one connection.
    Single {
        conn: MultiplexedConnection,
        /// The store's count of primary switches when the channel opened.
        switches: u64,
    },
    /// Cluster: a connection per master, each key sent to its slot's owner.
    Cluster(ClusterChannel),
}

impl fmt::Debug for RedisChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisChannel").finish_non_exhaustive()
    }
}

impl RedisChannel {
    /// Maps an error on the channel, giving the channel up when the error
    /// says it may be broken or pointing at the wrong server.
    fn failed(&self, error: RedisError) -> StoreError {
        if is_unavailable(&error) {
            self.events.lost("tracking connection failed");
        }
        map_redis_error(error)
    }

    /// Runs `cmd` (about `redis_key`) over the channel; a script call is
    /// sent again after loading `script` if Redis does not know it.
    async fn query(
        &self,
        redis_key: &str,
        cmd: &Cmd,
        script: Option<&Script>,
    ) -> Result<Value, StoreError> {
        let conn = match &self.route {
            Route::Single { conn, .. } => conn,
            Route::Cluster(cluster) => return cluster.query(redis_key, cmd, script).await,
        };
        let mut conn = conn.clone();
        match (cmd.query_async(&mut conn).await, script) {
            (Err(error), Some(script))
                if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
            {
                script
                    .load_async(&mut conn)
                    .await
                    .map_err(|error| self.failed(error))?;
                cmd.query_async(&mut conn).await
            }
            (other, _) => other,
        }
        .map_err(|error| self.failed(error))
    }

    /// Runs the save script over the channel.
    pub(super) async fn save_script(
        &self,
        redis_key: &str,
        args: impl Fn(&mut Cmd),
    ) -> Result<SaveReply, StoreError> {
        let mut cmd = script_call(&scripts::SAVE, redis_key);
        args(&mut cmd);
        let reply = self.query(redis_key, &cmd, Some(&scripts::SAVE)).await?;
        SaveReply::parse(redis::from_redis_value(reply).map_err(StoreError::backend)?)
    }
}

/// Delivers a tracking connection's pushes to the cache. It never blocks: it
/// takes the cache's lock for a few map operations.
struct PushToCache {
    events: Invalidations,
    prefix: Arc<str>,
}

/// Opens a RESP3 connection to `info` whose pushes go to `events`, and
/// turns tracking on; on Sentinel (`must_be_primary`), first makes sure the
/// server is the primary.
pub(super) async fn open_tracking(
    info: ConnectionInfo,
    events: &Invalidations,
    prefix: &Arc<str>,
    must_be_primary: bool,
) -> Result<MultiplexedConnection, StoreError> {
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(map_redis_error)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(PushToCache {
            events: events.clone(),
            prefix: prefix.clone(),
        });
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(map_redis_error)?;
    // A sentinel that has not heard of a switch yet names the old primary,
    // which still answers until it is demoted: make sure.
    if must_be_primary && !is_primary(&mut conn).await.map_err(map_redis_error)? {
        return Err(StoreError::unavailable(
            "the server the sentinels named is not the primary (a switch is under way)",
        ));
    }
    // NOLOOP: this process's own saves update the cache themselves (see the
    // near cache's docs) rather than invalidating it.
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("NOLOOP")
        .query_async::<()>(&mut conn)
        .await
        .map_err(map_redis_error)?;
    Ok(conn)
}

/// Whether the server on `conn` says (`ROLE`) it is a primary.
pub(super) async fn is_primary(conn: &mut MultiplexedConnection) -> Result<bool, RedisError> {
    let role: Vec<Value> = redis::cmd("ROLE").query_async(conn).await?;
    Ok(match role.first() {
        Some(Value::BulkString(role)) => role == b"master",
        Some(Value::SimpleString(role)) => role == "master",
        _ => false,
    })
}

impl AsyncPushSender for PushToCache {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Invalidate => match info.data.into_iter().next() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key
                            && let Some(key) = storage_key_of(&self.prefix, &key)
                        {
                            self.events.key(&key);
                        }
                    }
                }
                // A nil list: the server flushed its data.
                _ => self.events.all(),
            },
            PushKind::Disconnection => self.events.lost("tracking connection lost"),
            _ => {}
        }
        Ok(())
    }
}

impl RedisStore {
    /// Where the channel connects: the server of the URL, or the primary the
    /// sentinels name now.
    async fn tracking_target(&self) -> Result<ConnectionInfo, StoreError> {
        match self.target.as_deref() {
            Some(Target::Standalone(url)) => Ok(redis::Client::open(url.as_str())
                .map_err(map_redis_error)?
                .get_connection_info()
                .clone()),
            Some(Target::Sentinel {
                sentinels,
                master_name,
                db,
            }) => match self.connections.installed_primary() {
                // Right after a switch some sentinels may still name the old
                // primary: go where the store's own connection went.
                Some(addr) => redis::Client::open(format!("redis://{addr}/{db}"))
                    .map(|client| client.get_connection_info().clone())
                    .map_err(map_redis_error),
                None => primary_of(sentinels, master_name, *db).await,
            },
            Some(Target::Cluster { .. }) | None => Err(untrackable().into()),
        }
    }
}

fn untrackable() -> ConfigError {
    ConfigError::Unsupported(
        "the near cache needs a store made by RedisStore::connect, which knows where to open its tracking connection",
    )
}

#[async_trait]
impl Trackable for RedisStore {
    type Channel = RedisChannel;

    fn check_trackable(&self) -> Result<(), ConfigError> {
        match self.target {
            Some(_) => Ok(()),
            None => Err(untrackable()),
        }
    }

    async fn open_channel(&self, events: Invalidations) -> Result<RedisChannel, StoreError> {
        let switches = self.primary_switches();
        self.bounded(0, async {
            let route = if matches!(self.target.as_deref(), Some(Target::Cluster { .. })) {
                Route::Cluster(ClusterChannel::open(self, &events).await?)
            } else {
                let info = self.tracking_target().await?;
                let sentinel = matches!(self.target.as_deref(), Some(Target::Sentinel { .. }));
                let conn = open_tracking(info, &events, &self.prefix, sentinel).await?;
                Route::Single { conn, switches }
            };
            Ok(RedisChannel { events, route })
        })
        .await
    }

    fn channel_is_current(&self, channel: &RedisChannel) -> bool {
        match &channel.route {
            Route::Single { switches, .. } => *switches == self.primary_switches(),
            // The cluster channel watches its masters itself and reports a
            // failover as the channel's loss.
            Route::Cluster(_) => true,
        }
    }

    async fn load_tracked(
        &self,
        channel: &RedisChannel,
        key: &StorageKey,
    ) -> Result<Option<(Record, Version)>, StoreError> {
        let loaded = self
            .bounded(0, async {
                let redis_key = session_key(&self.prefix, key);
                channel
                    .query(&redis_key, redis::cmd("HGETALL").arg(&redis_key), None)
                    .await
            })
            .await;
        let reply = match loaded {
            Ok(reply) => reply,
            Err(error) => {
                // Out of time with the request still in flight: whatever the
                // connection answers later can no longer be matched up. (The
                // cluster channel tells for itself which of its connections
                // an abandoned request was on.)
                if matches!(channel.route, Route::Single { .. }) {
                    channel.events.lost("tracking connection timed out");
                }
                return Err(error);
            }
        };
        let Some((record, version)) = decode_reply(reply)? else {
            return Ok(None);
        };
        Ok((record.expires_at > SystemTime::now()).then_some((record, version)))
    }

    async fn save_tracked(
        &self,
        channel: &RedisChannel,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<TrackedSave, StoreError> {
        // A `WAIT` for replicas would stall every request sharing the
        // channel's connection: durable saves go through the pool instead.
        let on_channel = self.replica_acks.is_none();
        let saved = self
            .save_with(key, changes, on_channel.then_some(channel))
            .await;
        let single = matches!(channel.route, Route::Single { .. });
        if on_channel && single && matches!(saved, Err(StoreError::Unavailable(_))) {
            // Possibly cut off mid-request: the connection's later answers can
            // no longer be matched up. (The cluster channel tells for itself
            // whether the connection the save went over failed.)
            channel
                .events
                .lost("save on the tracking connection failed");
        }
        Ok(match saved? {
            (SaveOutcome::Gone, _) => TrackedSave::Gone,
            (SaveOutcome::Applied, version) if on_channel => TrackedSave::OnChannel(version),
            (SaveOutcome::Applied, version) => TrackedSave::Elsewhere(version),
        })
    }
}

/// Asks the sentinels, in turn, where the primary is now.
async fn primary_of(
    sentinels: &[String],
    master_name: &str,
    db: i64,
) -> Result<ConnectionInfo, StoreError> {
    let (host, port) = ask_for_primary(sentinels, master_name)
        .await
        .map_err(map_redis_error)?;
    redis::Client::open(format!("redis://{host}:{port}/{db}"))
        .map(|client| client.get_connection_info().clone())
        .map_err(map_redis_error)
}
