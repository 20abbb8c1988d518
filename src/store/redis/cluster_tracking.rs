//! The near cache's channel on Redis Cluster: one RESP3 tracking connection
//! per master (opened on first use, see [`super::tracking`]), each key read
//! and saved over the connection to the master that owns its hash slot, so
//! that master tracks it for this process.
//!
//! How it stays coherent as the cluster changes:
//! - **Slot moves.** Moving a key (`MIGRATE`) deletes it on the source, which
//!   invalidates it for every connection that read it there; so no cached
//!   copy outlives its key's move. An `ASK` reply (the key has moved, the
//!   slot not yet) is followed once, with `ASKING`, on the target's tracking
//!   connection; a `MOVED` reply updates the slot map (the whole map is read
//!   again) and the request goes to the new owner.
//! - **Failovers.** A promoted replica does not know what this process read
//!   from the old master, so the channel is given up (the whole cache is
//!   emptied, and the next call opens a new channel with a fresh slot map)
//!   when a connection fails, when a master that answered `MOVED` no longer
//!   says it is a master, or when the watcher, which asks every master it has
//!   a connection to for its `ROLE` every [`ROLE_CHECK_EVERY`], hears that one
//!   became a replica. Between a planned failover and the next check, another
//!   client's write can stay unseen here for up to that long; a client's own
//!   writes never do (the version in its cookie, see
//!   [`NearCache`](crate::NearCache)).
//! - Connecting to a master that does not answer leaves the channel (and what
//!   other shards cached) alone: that shard's calls fail, and the slot map is
//!   read again (at most every [`REFRESH_AT_MOST_EVERY`]) so that calls move on
//!   once a replica has taken over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::OnceCell;

use super::RedisStore;
use super::errors::{is_unavailable, map_redis_error};
use super::tracking::{is_primary, open_tracking};
use crate::store::{Invalidations, StoreError};

/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16_384;

/// How often the watcher asks each master this process tracks through whether
/// it still is one.
pub(super) const ROLE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The slot map is read again at most this often when connecting fails.
pub(super) const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(200);

/// Redirects followed for one request before giving up (a slot moving while
/// it is asked about takes two: `ASK`, then `MOVED`).
const MAX_REDIRECTS: usize = 5;

/// A near cache's channel on Cluster (see the module docs).
pub(super) struct ClusterChannel {
    shared: Arc<Shared>,
}

struct Shared {
    /// The store, whose pooled cluster connection reads the slot map.
    store: RedisStore,
    events: Invalidations,
    /// The master (`host:port`) of each slot, as last learned.
    owners: Mutex<Vec<Option<Arc<str>>>>,
    /// The tracking connection to each master, opened on first use.
    nodes: Mutex<HashMap<Arc<str>, Arc<OnceCell<MultiplexedConnection>>>>,
    /// When the slot map was last read.
    refreshed: Mutex<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here replaces whole values.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterChannel {
    /// Reads the slot map and starts the watcher; connections to the masters
    /// open on first use, so an unreachable master only fails its own slots.
    pub async fn open(store: &RedisStore, events: &Invalidations) -> Result<Self, StoreError> {
        let owners = read_slot_map(store).await?;
        let shared = Arc::new(Shared {
            store: store.clone(),
            events: events.clone(),
            owners: Mutex::new(owners),
            nodes: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(Instant::now()),
        });
        tokio::spawn(watch_roles(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// Runs `cmd`, about `redis_key`, on the tracking connection of the master
    /// that owns the key's slot, following redirects; a script call is sent
    /// again after loading `script` if that master does not know it.
    pub async fn query(
        &self,
        redis_key: &str,
        cmd: &Cmd,
        script: Option<&Script>,
    ) -> Result<Value, StoreError> {
        let shared = &self.shared;
        let slot = slot_of(redis_key.as_bytes());
        let mut node = shared.owner(slot).await?;
        let mut asking = false;
        for _ in 0..MAX_REDIRECTS {
            let mut conn = shared.connection(&node).await?;
            let error = match send(&mut conn, cmd, script, asking).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let redirect = error.redirect_node().map(|(to, _)| Arc::<str>::from(to));
            match (error.kind(), redirect) {
                (ErrorKind::Server(ServerErrorKind::Moved), Some(to)) => {
                    shared.moved(&mut conn, slot, to.clone()).await;
                    (node, asking) = (to, false);
                }
                (ErrorKind::Server(ServerErrorKind::Ask), Some(to)) => (node, asking) = (to, true),
                _ => {
                    if breaks_tracking(&error) {
                        shared.events.lost("a cluster tracking connection failed");
                    }
                    return Err(map_redis_error(error));
                }
            }
        }
        Err(StoreError::unavailable(
            "the cluster kept redirecting a near cache request (slots moving)",
        ))
    }
}

/// Errors after which a tracking connection cannot be trusted to have
/// delivered every invalidation, or talks to a server that is no longer the
/// master. `CLUSTERDOWN` and `TRYAGAIN` say nothing about the connection.
fn breaks_tracking(error: &RedisError) -> bool {
    is_unavailable(error)
        && !matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain)
        )
}

/// Sends `cmd` (after `ASKING` if the slot is being imported), loading
/// `script` once if the server does not know it.
async fn send(
    conn: &mut MultiplexedConnection,
    cmd: &Cmd,
    script: Option<&Script>,
    asking: bool,
) -> Result<Value, RedisError> {
    match (send_once(conn, cmd, asking).await, script) {
        (Err(error), Some(script))
            if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
        {
            script.load_async(conn).await?;
            send_once(conn, cmd, asking).await
        }
        (other, _) => other,
    }
}

async fn send_once(
    conn: &mut MultiplexedConnection,
    cmd: &Cmd,
    asking: bool,
) -> Result<Value, RedisError> {
    if !asking {
        return cmd.query_async(conn).await;
    }
    // One pipeline, so nothing else on the connection comes between them.
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").ignore().add_command(cmd.clone());
    let mut values: Vec<Value> = pipe.query_async(conn).await?;
    Ok(values.pop().unwrap_or(Value::Nil))
}

impl Shared {
    /// The master of `slot`, reading the slot map again if it names none.
    async fn owner(&self, slot: u16) -> Result<Arc<str>, StoreError> {
        if let Some(node) = lock(&self.owners)[usize::from(slot)].clone() {
            return Ok(node);
        }
        self.refresh().await?;
        lock(&self.owners)[usize::from(slot)]
            .clone()
            .ok_or_else(|| StoreError::unavailable("no cluster node serves the session's slot"))
    }

    /// Reads the slot map again.
    async fn refresh(&self) -> Result<(), StoreError> {
        let owners = read_slot_map(&self.store).await?;
        *lock(&self.owners) = owners;
        *lock(&self.refreshed) = Instant::now();
        Ok(())
    }

    /// The tracking connection to `node`, opening it if needed. When that
    /// fails, the slot map is read again (the node may have been replaced)
    /// unless it was just read.
    async fn connection(&self, node: &Arc<str>) -> Result<MultiplexedConnection, StoreError> {
        let cell = lock(&self.nodes).entry(node.clone()).or_default().clone();
        let opened = cell
            .get_or_try_init(|| async {
                let info = redis::Client::open(node_url(node))
                    .map_err(map_redis_error)?
                    .get_connection_info()
                    .clone();
                let conn = open_tracking(info, &self.events, &self.store.prefix, false).await?;
                tracing::debug!("near cache: tracking opened on a cluster master");
                Ok::<_, StoreError>(conn)
            })
            .await;
        match opened {
            Ok(conn) => Ok(conn.clone()),
            Err(error) => {
                if lock(&self.refreshed).elapsed() >= REFRESH_AT_MOST_EVERY {
                    let _ = self.refresh().await;
                }
                Err(error)
            }
        }
    }

    /// `conn`'s server answered `MOVED`: `slot` is served by `to` now. The
    /// slot map is read again (a failover moves all the shard's slots), and if
    /// that server is no longer a master, the channel is given up.
    async fn moved(&self, conn: &mut MultiplexedConnection, slot: u16, to: Arc<str>) {
        if let Err(error) = self.refresh().await {
            tracing::debug!(%error, "near cache: could not read the cluster slot map");
        }
        // The redirect is the owner's own word; the map may come from a node
        // that has not heard yet.
        lock(&self.owners)[usize::from(slot)] = Some(to);
        if !is_primary(conn).await.unwrap_or(false) {
            self.events
                .lost("a cluster master this process tracks through failed over");
        }
    }
}

/// Every `ROLE_CHECK_EVERY`, asks each master the channel has a connection
/// to whether it still is one, and gives the channel up if one is not (or
/// does not answer). Stops with the channel.
async fn watch_roles(shared: Weak<Shared>) {
    let mut was_current = false;
    loop {
        tokio::time::sleep(ROLE_CHECK_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // The cache starts listening just after the channel opens.
        let current = shared.events.is_current();
        if was_current && !current {
            return;
        }
        was_current |= current;
        let conns: Vec<MultiplexedConnection> = lock(&shared.nodes)
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect();
        for mut conn in conns {
            match is_primary(&mut conn).await {
                Ok(true) => {}
                Ok(false) => {
                    shared.events.lost(
                        "a cluster master this process tracks through became a replica (failover)",
                    );
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "near cache: a cluster master did not answer ROLE");
                    shared
                        .events
                        .lost("a cluster master this process tracks through stopped answering");
                    return;
                }
            }
        }
    }
}

/// Reads the slot map (`CLUSTER SLOTS`) through the store's pooled cluster
/// connection.
async fn read_slot_map(store: &RedisStore) -> Result<Vec<Option<Arc<str>>>, StoreError> {
    let mut conn = store.conn().await?;
    let reply: Value = conn.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
    parse_slot_map(reply)
}

/// The master of each slot from a `CLUSTER SLOTS` reply. Ranges whose master
/// has no known endpoint are left unserved.
fn parse_slot_map(reply: Value) -> Result<Vec<Option<Arc<str>>>, StoreError> {
    let malformed = || StoreError::backend("unexpected CLUSTER SLOTS reply");
    let Value::Array(ranges) = reply else {
        return Err(malformed());
    };
    let mut owners = vec![None; SLOTS];
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed());
        };
        let mut range = range.into_iter();
        let (Some(start), Some(end), Some(master)) = (range.next(), range.next(), range.next())
        else {
            return Err(malformed());
        };
        let start: usize = redis::from_redis_value(start).map_err(|_| malformed())?;
        let end: usize = redis::from_redis_value(end).map_err(|_| malformed())?;
        let Value::Array(master) = master else {
            return Err(malformed());
        };
        let mut master = master.into_iter();
        let (Some(host), Some(port)) = (master.next(), master.next()) else {
            return Err(malformed());
        };
        let host: String = redis::from_redis_value(host).map_err(|_| malformed())?;
        let port: u16 = redis::from_redis_value(port).map_err(|_| malformed())?;
        if host.is_empty() || host == "?" {
            continue;
        }
        let node: Arc<str> = if host.contains(':') {
            format!("[{host}]:{port}").into()
        } else {
            format!("{host}:{port}").into()
        };
        for owner in owners.iter_mut().take(end.min(SLOTS - 1) + 1).skip(start) {
            *owner = Some(node.clone());
        }
    }
    Ok(owners)
}

/// `redis://` URL of a node named `host:port` (as `CLUSTER SLOTS` and
/// redirects name them; an IPv6 host gets brackets).
fn node_url(node: &str) -> String {
    match node.rsplit_once(':') {
        Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
            format!("redis://[{host}]:{port}")
        }
        _ => format!("redis://{node}"),
    }
}

/// The Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, if not empty) or of the whole key.
fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            Some(&rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_redis::redis::cluster_routing::Slot;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        for key in [
            &b"unstuck:{abc}"[..],
            b"foo{}{bar}",
            b"foo{{bar}}zap",
            b"foo{bar}{zap}",
            b"",
            b"{",
            b"}{",
        ] {
            assert_eq!(Slot::new(slot_of(key)), Some(Slot::for_key(key)), "{key:?}");
        }
    }

    fn range(start: i64, end: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ]),
            // A replica: ignored.
            Value::Array(vec![
                Value::BulkString(b"10.0.0.9".to_vec()),
                Value::Int(1),
                Value::BulkString(b"id2".to_vec()),
            ]),
        ])
    }

    #[test]
    fn the_slot_map_names_each_slots_master() {
        let owners = parse_slot_map(Value::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(5461, 10922, "::1", 7001),
            range(10923, 16383, "", 7002),
        ]))
        .unwrap();
        assert_eq!(owners[0].as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(owners[5460].as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(owners[5461].as_deref(), Some("[::1]:7001"));
        assert_eq!(owners[10923], None, "no endpoint: unserved");
        assert!(parse_slot_map(Value::Int(1)).is_err());
    }

    #[test]
    fn node_urls_bracket_ipv6_hosts() {
        assert_eq!(node_url("127.0.0.1:7000"), "redis://127.0.0.1:7000");
        assert_eq!(node_url("::1:7000"), "redis://[::1]:7000");
        assert_eq!(node_url("[::1]:7000"), "redis://[::1]:7000");
    }
}
