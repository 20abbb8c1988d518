//! Expirations as Redis reports them: keyspace notifications
//! (`__keyevent@<db>__:expired`) turned into
//! [`Expired`](crate::SessionEventKind::Expired) events.
//!
//! Redis sends them only when configured to (`notify-keyspace-events` must
//! contain `E` and `x`, e.g. `CONFIG SET notify-keyspace-events Ex`), per node
//! (each primary of a Cluster reports the keys of its own slots), and
//! fire-and-forget: a notification sent while nobody listens is gone. So the
//! watcher subscribes on every primary, follows Sentinel switches (through the
//! store's own Sentinel watcher) and Cluster topology changes (it asks the
//! cluster again every second), and resubscribes with a bounded backoff when a
//! subscription drops; expirations during those gaps are not reported.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, Msg, RedisError};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::codec::storage_key_of;
use super::conn::Connections;
// Subscriptions are kept, retried and checked as the Sentinel watcher's are.
use super::pubsub;
use super::sentinel_watch::{MAX_BACKOFF, MIN_BACKOFF, ask_for_primary, timeouts};
use super::url::Target;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisStore};
use crate::error::ConfigError;
use crate::events::{SessionEvent, SessionEventKind, SessionEvents};

/// How often the watcher checks whether the primaries changed.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// The task started by [`RedisStore::spawn_expiry_events`]; dropping it (or
/// [`stop`](Self::stop)) ends the subscriptions.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Debug)]
#[must_use = "the expiry subscriptions end when the handle is dropped"]
pub struct RedisExpiryEvents {
    task: AbortHandle,
}

impl RedisExpiryEvents {
    /// Ends the subscriptions now.
    pub fn stop(self) {}
}

impl Drop for RedisExpiryEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisStore {
    /// Reports sessions that Redis expires to `events`, as
    /// [`Expired`](crate::SessionEventKind::Expired) (without a user: the
    /// session is gone when Redis reports it), from Redis keyspace
    /// notifications.
    ///
    /// The servers must send them: `notify-keyspace-events` has to contain `E`
    /// and `x` (`CONFIG SET notify-keyspace-events Ex`, or the same line in
    /// `redis.conf`; on a Cluster, on every node). A subscription to a server
    /// that does not is logged as a warning.
    ///
    /// What is guaranteed, and what is not: Redis sends an `expired`
    /// notification when it deletes an expired key, either on access or in
    /// its background cycle (so a notification can come somewhat after the
    /// deadline), to whoever is subscribed at that moment. The watcher
    /// subscribes on each primary (on Cluster, every primary; on Sentinel,
    /// the current primary, moving with the store when Sentinel switches) and
    /// resubscribes when a connection drops or the topology changes (checked
    /// every second). Expirations that happen while it is not subscribed are
    /// never reported. Use the events for metrics and audit trails, not as a
    /// guarantee.
    ///
    /// Needs a store made by [`connect`](Self::connect), and a Tokio runtime.
    ///
    /// # Errors
    /// [`ConfigError::Unsupported`] for a store built from a pool (it does not
    /// know the servers' addresses).
    ///
    /// # Examples
    /// ```no_run
    /// use unstuck::{RedisStore, SessionEvent, SessionEvents, SessionLayer};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let events = SessionEvents::new()
    ///     .with_listener(|event: &SessionEvent| eprintln!("{}", event.name()));
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let expirations = store.spawn_expiry_events(events.clone())?;
    /// let layer = SessionLayer::new(store).with_events(events);
    /// # let _ = (layer, expirations);
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_expiry_events(
        &self,
        events: SessionEvents,
    ) -> Result<RedisExpiryEvents, ConfigError> {
        let target = self.target.clone().ok_or(ConfigError::Unsupported(
            "expiry events need a RedisStore made by RedisStore::connect",
        ))?;
        let watch = Watch {
            target,
            prefix: self.prefix.clone(),
            connections: self.connections.clone(),
            events,
        };
        let task = tokio::spawn(watch.run());
        Ok(RedisExpiryEvents {
            task: task.abort_handle(),
        })
    }
}

struct Watch {
    target: Arc<Target>,
    prefix: Arc<str>,
    connections: Arc<Connections>,
    events: SessionEvents,
}

/// Where to subscribe: the primaries' URLs, and the database's channel.
#[derive(Debug, PartialEq, Eq)]
struct Topology {
    nodes: Vec<String>,
    channel: String,
}

fn channel(db: i64) -> String {
    format!("__keyevent@{db}__:expired")
}

impl Watch {
    async fn run(self) {
        let watch = Arc::new(self);
        let mut backoff = MIN_BACKOFF;
        loop {
            let topology = match watch.topology().await {
                Ok(topology) => topology,
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "redis expiry events: cannot find the primaries");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let switches = watch.connections.switch_count();
            let mut subscriptions = JoinSet::new();
            for node in &topology.nodes {
                let (watch, node) = (watch.clone(), node.clone());
                let channel = topology.channel.clone();
                subscriptions.spawn(async move { watch.listen(&node, &channel).await });
            }
            let mut check = tokio::time::interval(TOPOLOGY_CHECK);
            check.set_missed_tick_behavior(MissedTickBehavior::Delay);
            check.tick().await;
            let healthy = loop {
                tokio::select! {
                    ended = subscriptions.join_next() => {
                        if let Some(Ok(Err(error))) = &ended {
                            tracing::warn!(%error, "redis expiry events: subscription failed; expirations until it is back are not reported");
                        } else {
                            tracing::warn!("redis expiry events: subscription ended; expirations until it is back are not reported");
                        }
                        break false;
                    }
                    _ = check.tick() => {
                        if watch.connections.switch_count() != switches {
                            break true;
                        }
                        if matches!(*watch.target, Target::Cluster { .. })
                            && watch.topology().await.is_ok_and(|now| now != topology)
                        {
                            tracing::debug!("redis expiry events: the cluster's primaries changed; resubscribing");
                            break true;
                        }
                    }
                }
            };
            subscriptions.abort_all();
            if healthy {
                backoff = MIN_BACKOFF;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The primaries to subscribe on, as things stand.
    async fn topology(&self) -> Result<Topology, RedisError> {
        let limit = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
        let found = tokio::time::timeout(limit, async {
            match &*self.target {
                Target::Standalone(url) => {
                    let db = redis::Client::open(url.as_str())?
                        .get_connection_info()
                        .redis_settings()
                        .db();
                    Ok(Topology {
                        nodes: vec![url.clone()],
                        channel: channel(db),
                    })
                }
                Target::Sentinel {
                    sentinels,
                    master_name,
                    db,
                } => {
                    // The store's watcher moves to a promoted replica before
                    // every sentinel names it: follow the store, not them.
                    let primary = match self.connections.installed_primary() {
                        Some(addr) => format!("redis://{addr}"),
                        None => sentinel_primary(sentinels, master_name).await?,
                    };
                    Ok(Topology {
                        nodes: vec![primary],
                        channel: channel(*db),
                    })
                }
                Target::Cluster { nodes } => Ok(Topology {
                    nodes: cluster_primaries(nodes).await?,
                    channel: channel(0),
                }),
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )))
        })
    }

    /// Subscribes on one node and reports what it hears, until the
    /// connection ends.
    async fn listen(&self, node: &str, channel: &str) -> Result<(), RedisError> {
        let client = redis::Client::open(node)?;
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(channel).await?;
            Ok::<_, RedisError>((sink, stream))
        })
        .await;
        let (mut sink, mut stream) = subscribed.unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "subscribing took too long",
            )))
        })?;
        warn_unless_enabled(&client).await;
        tracing::debug!("redis expiry events: subscribed");
        pubsub::listen(&mut sink, &mut stream, |msg| {
            self.heard(&msg);
            std::future::ready(())
        })
        .await;
        Ok(())
    }

    fn heard(&self, msg: &Msg) {
        // Other keys (user indexes, other applications) are not sessions.
        if let Some(key) = storage_key_of(&self.prefix, msg.get_payload_bytes()) {
            let kind = SessionEventKind::Expired { key };
            self.events.emit(SessionEvent::new(kind, None, "redis"));
        }
    }
}

/// Warns when the server does not send expiry notifications. A server that
/// refuses `CONFIG` (managed services rename it) is given the benefit of the
/// doubt.
async fn warn_unless_enabled(client: &redis::Client) {
    let asked = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&timeouts())
            .await?;
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async::<(String, String)>(&mut conn)
            .await
    };
    if let Ok(Ok((_, flags))) =
        tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, asked).await
        && !sends_expirations(&flags)
    {
        tracing::warn!(
            flags,
            "redis expiry events: the server does not send expiry notifications; \
             set notify-keyspace-events to include E and x (e.g. `Ex`)"
        );
    }
}

/// Whether `notify-keyspace-events` flags include keyevent notifications of
/// expirations (`A` stands for every class, `x` included).
fn sends_expirations(flags: &str) -> bool {
    flags.contains('E') && (flags.contains('x') || flags.contains('A'))
}

/// The primary's URL, as the first sentinel that knows it gives it.
async fn sentinel_primary(sentinels: &[String], master_name: &str) -> Result<String, RedisError> {
    let (host, port) = ask_for_primary(sentinels, master_name).await?;
    Ok(node_url(&host, port))
}

/// The cluster's primaries, sorted, as the first seed that answers lists them.
async fn cluster_primaries(seeds: &[String]) -> Result<Vec<String>, RedisError> {
    let mut last = None;
    for seed in seeds {
        let asked = async {
            let mut conn = redis::Client::open(seed.as_str())?
                .get_multiplexed_async_connection_with_config(&timeouts())
                .await?;
            redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut conn)
                .await
        };
        match asked.await {
            Ok(nodes) => return Ok(primaries_of(&nodes)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from(std::io::Error::other("no seed node"))))
}

/// The URLs of the healthy primaries in a `CLUSTER NODES` answer, sorted.
fn primaries_of(nodes: &str) -> Vec<String> {
    let mut primaries: Vec<String> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (fields.get(1)?, fields.get(2)?);
            let flags: Vec<&str> = flags.split(',').collect();
            let healthy = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "fail?" | "handshake" | "noaddr"));
            // `ip:port@cport[,hostname]`
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let port = port.parse().ok()?;
            (healthy && !host.is_empty()).then(|| node_url(host, port))
        })
        .collect();
    primaries.sort();
    primaries
}

fn node_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("redis://[{host}]:{port}")
    } else {
        format!("redis://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_give_the_healthy_primaries() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master,fail - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
e5 ::1:7005@17005 master - 0 0 4 connected
";
        assert_eq!(
            primaries_of(nodes),
            [
                "redis://127.0.0.1:7001",
                "redis://127.0.0.1:7002",
                "redis://[::1]:7005"
            ]
        );
    }

    #[test]
    fn only_e_with_x_or_a_sends_expirations() {
        assert!(sends_expirations("xE"));
        assert!(sends_expirations("AKE"));
        assert!(!sends_expirations(""));
        assert!(!sends_expirations("Kx"));
        assert!(!sends_expirations("E$"));
    }
}
