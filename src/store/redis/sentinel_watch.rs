//! Following Sentinel switches as they are announced.
//!
//! After a planned failover (`SENTINEL FAILOVER`) the old primary keeps
//! accepting writes until Sentinel demotes it, about 10 s later; writes it takes
//! in between are lost when it resyncs from the new primary. A store must
//! therefore leave the old primary the moment Sentinel switches, not when the
//! old primary starts refusing writes. Two sources tell it:
//!
//! - the sentinels announce it on pub/sub. The one leading the failover
//!   publishes `+failover-state-send-slaveof-noone` (`slave <name> <ip> <port>
//!   @ <master-name> …`) as it tells the chosen replica to become primary: the
//!   watcher then polls that replica's `ROLE` and moves the store the moment
//!   it says `master`. Sentinel itself only notices the promotion at its next
//!   `INFO` of the replica (up to a second later) and then publishes
//!   `+promoted-slave` (same payload); every sentinel
//!   publishes `+switch-master` (`<master-name> <old-ip> <old-port> <new-ip>
//!   <new-port>`) when it adopts the new configuration, which comes later:
//!   after the other replicas were told to follow the new primary (with one
//!   replica, ~100 ms later; with several, one replica at a time). Each
//!   sentinel of the URL gets one subscription to both, re-established with a
//!   bounded backoff when the connection goes away and checked with a `PING`
//!   so a silently dead link is noticed too;
//! - about every second, and whenever a subscription was lost or restored, the
//!   sentinels are asked for the primary (`SENTINEL MASTER`); the answer with the
//!   highest configuration epoch wins, so a sentinel that has not heard of a
//!   switch yet is outvoted. Only a change of address at an epoch at least as
//!   new as the last one seen moves the store: a sentinel bumps the epoch when
//!   the promoted replica answers as primary but changes the address only
//!   later, at the switch, so `(new epoch, old address)` is a passing state
//!   that must neither move the store back nor hide the switch that follows.
//!   This bounds the window even when every announcement is missed.
//!
//! On a switch the watcher opens a connection to the new primary itself (after
//! checking with `ROLE` that it is one: a late announcement of an older switch
//! is ignored) and hands it to [`Connections::install_primary`], which retires
//! every other connection. It does not leave the reconnection to the pool: the
//! pool asks the sentinels in a fixed order, and the first one may not have
//! heard of the switch yet (sentinels learn it from each other within a few
//! hundred ms), which would land the store on the old primary again.
//!
//! The tasks hold only a weak reference to the connections and are aborted
//! when the [`Watcher`] (kept by the connections) is dropped with the last
//! store clone.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, Msg, RedisError, Value};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use super::conn::Connections;
use super::pubsub;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// How often the sentinels are asked where the primary is.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// First wait before resubscribing to a sentinel that went away.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between resubscription attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Published by every sentinel when it adopts a switch.
const SWITCH_MASTER: &str = "+switch-master";
/// Published by the leading sentinel once the promoted replica is primary.
const PROMOTED: &str = "+promoted-slave";
/// Published by the leading sentinel as it promotes the replica.
const PROMOTING: &str = "+failover-state-send-slaveof-noone";
/// How long the watcher waits for a replica being promoted to say so.
const PROMOTION_WAIT: Duration = Duration::from_secs(3);
/// How often it asks meanwhile.
const PROMOTION_POLL: Duration = Duration::from_millis(5);

/// Stops the watcher's tasks when dropped.
pub(super) struct Watcher {
    tasks: Vec<AbortHandle>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts watching `sentinels` (`redis://host:port` URLs) for switches of
/// `master_name`, and hands the watcher to `connections` to keep. `db` is the
/// database the store's connections select. Must run inside a Tokio runtime.
pub(super) fn watch(
    connections: &Arc<Connections>,
    sentinels: Vec<String>,
    master_name: String,
    db: i64,
) {
    let shared = Arc::new(Shared {
        connections: Arc::downgrade(connections),
        master_name,
        db,
        primary: tokio::sync::Mutex::new(None),
        seen: tokio::sync::Mutex::new(None),
        check_now: Notify::new(),
    });
    let mut tasks = Vec::with_capacity(sentinels.len() + 1);
    for sentinel in &sentinels {
        let task = tokio::spawn(follow_announcements(shared.clone(), sentinel.clone()));
        tasks.push(task.abort_handle());
    }
    tasks.push(tokio::spawn(poll_sentinels(shared, sentinels)).abort_handle());
    connections.keep_watcher(Watcher { tasks });
}

/// A primary's address as Sentinel gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Addr {
    host: String,
    port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why the watcher could not use a primary it was told about.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the announced primary reports the role {0:?}")]
    NotPrimary(String),
    #[error("malformed sentinel reply: {0}")]
    Malformed(&'static str),
}

struct Shared {
    connections: Weak<Connections>,
    master_name: String,
    db: i64,
    /// The primary last switched to (or first seen); the lock also keeps
    /// switches from the announcements and the poll from interleaving.
    primary: tokio::sync::Mutex<Option<Addr>>,
    /// What the poll last saw: the highest configuration epoch and the
    /// address the sentinels gave with it.
    seen: tokio::sync::Mutex<Option<(u64, Addr)>>,
    /// Wakes the poll early: after a subscription was lost or restored an
    /// announcement may have been missed.
    check_now: Notify,
}

impl Shared {
    /// An announcement arrived on a sentinel subscription.
    async fn announced(&self, msg: &Msg) {
        let Ok(payload) = msg.get_payload::<String>() else {
            return;
        };
        let channel = msg.get_channel_name();
        let Some((name, addr, promoting)) = parse_announcement(channel, &payload) else {
            tracing::warn!(channel, "ignoring a malformed sentinel announcement");
            return;
        };
        if name != self.master_name {
            return;
        }
        // Each switch is announced several times (the promotion, then the
        // switch by every sentinel): the repeats are no-ops unless the
        // connection installed for the first one has been lost meanwhile.
        let wait = promoting.then_some(PROMOTION_WAIT);
        self.switch_to(addr, "announcement", wait).await;
    }

    /// The poll found the primary at `addr` in configuration `epoch`.
    ///
    /// Moves the store only when the address changed since the last poll at
    /// an epoch at least as new (see the module docs): the announcements run
    /// ahead of the sentinels' configuration, and the poll must not move the
    /// store back while they catch up.
    async fn observed(&self, addr: Addr, epoch: u64) {
        {
            let mut seen = self.seen.lock().await;
            match poll_verdict(seen.as_ref(), epoch, &addr) {
                Verdict::Stale => return,
                Verdict::Same => {
                    if seen.is_none() {
                        // The first look: the pool found the primary on its own.
                        self.primary
                            .lock()
                            .await
                            .get_or_insert_with(|| addr.clone());
                    }
                    *seen = Some((epoch, addr));
                    return;
                }
                Verdict::Moved => *seen = Some((epoch, addr.clone())),
            }
        }
        self.switch_to(addr, "periodic check", None).await;
    }

    /// Moves the store to the primary at `addr`; with `wait`, polls that long
    /// for a replica being promoted to become primary.
    async fn switch_to(&self, addr: Addr, source: &'static str, wait: Option<Duration>) {
        let Some(connections) = self.connections.upgrade() else {
            return;
        };
        let mut primary = self.primary.lock().await;
        let label = addr.to_string();
        if primary.as_ref() == Some(&addr) && connections.follows(&label) {
            return;
        }
        match self.open_primary(&label, wait).await {
            Ok(conn) => {
                tracing::info!(primary = %label, source, "redis sentinel: following a primary switch");
                connections.install_primary(conn, &label);
            }
            Err(WatchError::NotPrimary(role)) => {
                // A late announcement of an older switch, or a promotion not
                // finished: the poll (highest epoch) settles it.
                tracing::warn!(primary = %label, source, %role, "redis sentinel: the announced primary is not one; not switching");
                self.check_now.notify_one();
                return;
            }
            Err(error) => {
                // The old primary is not the primary any more either way: let
                // the pool find the new one.
                tracing::warn!(primary = %label, source, %error, "redis sentinel: cannot reach the new primary; retiring the store's connections anyway");
                connections.primary_switched();
            }
        }
        *primary = Some(addr);
    }

    /// A connection to `addr` (`host:port`), checked to be a primary; with
    /// `wait`, retried until it is one or `wait` has passed.
    async fn open_primary(
        &self,
        addr: &str,
        wait: Option<Duration>,
    ) -> Result<MultiplexedConnection, WatchError> {
        let url = format!("redis://{addr}/{}", self.db);
        let Some(wait) = wait else {
            let limit = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
            return tokio::time::timeout(limit, checked_primary(&url))
                .await
                .map_err(|_| WatchError::TimedOut(limit))?;
        };
        let poll = async {
            loop {
                match checked_primary(&url).await {
                    Ok(conn) => return conn,
                    // Not yet promoted, or our connection was among those the
                    // sentinel kills on the replica as it promotes it.
                    Err(error) => tracing::trace!(%error, "redis sentinel: not promoted yet"),
                }
                tokio::time::sleep(PROMOTION_POLL).await;
            }
        };
        tokio::time::timeout(wait, poll)
            .await
            .map_err(|_| WatchError::NotPrimary(format!("not promoted within {wait:?}")))
    }
}

/// What one poll's answer means, given what the poll saw before.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// An older configuration than already seen: ignore it.
    Stale,
    /// Nothing moved (or this is the first look): remember it.
    Same,
    /// The primary moved at an epoch at least as new: follow it.
    Moved,
}

fn poll_verdict(seen: Option<&(u64, Addr)>, epoch: u64, addr: &Addr) -> Verdict {
    match seen {
        None => Verdict::Same,
        Some((last_epoch, _)) if epoch < *last_epoch => Verdict::Stale,
        Some((_, last_addr)) if last_addr == addr => Verdict::Same,
        Some(_) => Verdict::Moved,
    }
}

/// A connection to `url` if the server there is a primary.
async fn checked_primary(url: &str) -> Result<MultiplexedConnection, WatchError> {
    let client = redis::Client::open(url)?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&timeouts())
        .await?;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
    let role: String = role
        .into_iter()
        .next()
        .map(redis::from_redis_value)
        .transpose()
        .map_err(|_| WatchError::Malformed("ROLE"))?
        .unwrap_or_default();
    if role == "master" {
        Ok(conn)
    } else {
        Err(WatchError::NotPrimary(role))
    }
}

/// The master name and new primary an announcement on `channel` gives, and
/// whether that replica is only being promoted (not yet primary).
fn parse_announcement<'a>(channel: &str, payload: &'a str) -> Option<(&'a str, Addr, bool)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    let (name, host, port) = match (channel, &parts[..]) {
        (SWITCH_MASTER, [name, _old_host, _old_port, host, port]) => (*name, *host, *port),
        (PROMOTED | PROMOTING, ["slave", _instance, host, port, "@", name, ..]) => {
            (*name, *host, *port)
        }
        _ => return None,
    };
    let addr = Addr {
        host: host.to_owned(),
        port: port.parse().ok()?,
    };
    Some((name, addr, channel == PROMOTING))
}

pub(super) fn timeouts() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// Keeps a subscription to the switch announcements of one sentinel.
async fn follow_announcements(shared: Arc<Shared>, sentinel: String) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if shared.connections.strong_count() == 0 {
            return;
        }
        match subscribe(&sentinel).await {
            Ok((mut sink, mut stream)) => {
                backoff = MIN_BACKOFF;
                tracing::debug!(%sentinel, "redis sentinel: subscribed to switch announcements");
                // A switch may have been announced while unsubscribed.
                shared.check_now.notify_one();
                let shared = &shared;
                pubsub::listen(&mut sink, &mut stream, |msg| async move {
                    shared.announced(&msg).await;
                })
                .await;
                tracing::warn!(%sentinel, "redis sentinel: lost the subscription to switch announcements; resubscribing");
                shared.check_now.notify_one();
            }
            Err(error) => {
                tracing::warn!(%sentinel, %error, ?backoff, "redis sentinel: cannot subscribe to switch announcements");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    sentinel: &str,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), WatchError> {
    let limit = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
    let attempt = async {
        let client = redis::Client::open(sentinel)?;
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(&[SWITCH_MASTER, PROMOTED, PROMOTING])
            .await?;
        Ok::<_, RedisError>((sink, stream))
    };
    Ok(tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| WatchError::TimedOut(limit))??)
}

/// Asks the sentinels, in turn, where the primary of `master_name` is: the
/// address the first one that knows it names. Fails with the last sentinel's
/// error (or "unknown") when none does.
pub(super) async fn ask_for_primary(
    sentinels: &[String],
    master_name: &str,
) -> Result<(String, u16), RedisError> {
    let mut last = None;
    for sentinel in sentinels {
        let asked = async {
            let mut conn = redis::Client::open(sentinel.as_str())?
                .get_multiplexed_async_connection_with_config(&timeouts())
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
        };
        match asked.await {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => {
                last = Some(RedisError::from(std::io::Error::other(
                    "no sentinel knows the primary's address",
                )));
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from(std::io::Error::other("no sentinel to ask"))))
}

/// Asks every sentinel where the primary is, about every [`POLL_EVERY`].
async fn poll_sentinels(shared: Arc<Shared>, sentinels: Vec<String>) {
    let mut conns: Vec<Option<MultiplexedConnection>> = vec![None; sentinels.len()];
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.check_now.notified() => {}
        }
        if shared.connections.strong_count() == 0 {
            return;
        }
        let views = futures_util::future::join_all(
            sentinels
                .iter()
                .zip(conns.iter_mut())
                .map(|(sentinel, conn)| ask(sentinel, conn, &shared.master_name)),
        )
        .await;
        let views: Vec<(u64, Addr)> = views.into_iter().flatten().collect();
        let Some(newest) = views.iter().map(|(epoch, _)| *epoch).max() else {
            continue;
        };
        let mut named = views
            .into_iter()
            .filter(|(epoch, _)| *epoch == newest)
            .map(|(_, addr)| addr);
        let first = named.next().expect("the newest epoch was seen");
        // Sentinels at the newest epoch that name different primaries are in
        // the middle of adopting it: the next poll settles it.
        if named.all(|addr| addr == first) {
            shared.observed(first, newest).await;
        }
    }
}

/// One sentinel's view of the primary: its configuration epoch and address.
/// `None` if the sentinel did not answer (logged at debug: the subscriptions
/// log sentinels that go away).
async fn ask(
    sentinel: &str,
    slot: &mut Option<MultiplexedConnection>,
    master_name: &str,
) -> Option<(u64, Addr)> {
    let attempt = async {
        if slot.is_none() {
            let client = redis::Client::open(sentinel)?;
            *slot = Some(
                client
                    .get_multiplexed_async_connection_with_config(&timeouts())
                    .await?,
            );
        }
        let conn = slot.as_mut().expect("just filled");
        let fields: HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(master_name)
            .query_async(conn)
            .await?;
        let field = |name: &'static str| {
            fields
                .get(name)
                .ok_or(WatchError::Malformed("a field is missing"))
        };
        let port = field("port")?
            .parse()
            .map_err(|_| WatchError::Malformed("bad port"))?;
        let epoch = field("config-epoch")?
            .parse()
            .map_err(|_| WatchError::Malformed("bad config-epoch"))?;
        Ok::<_, WatchError>((
            epoch,
            Addr {
                host: field("ip")?.clone(),
                port,
            },
        ))
    };
    let limit = CONNECT_TIMEOUT + RESPONSE_TIMEOUT;
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(view)) => Some(view),
        Ok(Err(error)) => {
            tracing::debug!(%sentinel, %error, "redis sentinel: no answer about the primary");
            *slot = None;
            None
        }
        Err(_) => {
            tracing::debug!(%sentinel, "redis sentinel: no answer about the primary in time");
            *slot = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_follows_an_address_change_and_never_goes_back() {
        let a = Addr {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let b = Addr {
            host: "127.0.0.1".into(),
            port: 2,
        };
        assert_eq!(poll_verdict(None, 1, &a), Verdict::Same);
        assert_eq!(poll_verdict(Some(&(1, a.clone())), 1, &a), Verdict::Same);
        // A sentinel bumps the epoch when the replica answers as primary and
        // changes the address later: the passing state moves nothing, and the
        // switch after it is still followed.
        assert_eq!(poll_verdict(Some(&(1, a.clone())), 2, &a), Verdict::Same);
        assert_eq!(poll_verdict(Some(&(2, a.clone())), 2, &b), Verdict::Moved);
        // A sentinel that has not caught up is outvoted, not followed back.
        assert_eq!(poll_verdict(Some(&(2, b.clone())), 1, &a), Verdict::Stale);
    }

    #[test]
    fn announcements_name_the_master_and_the_new_primary() {
        let new = Addr {
            host: "10.0.0.2".into(),
            port: 6380,
        };
        assert_eq!(
            parse_announcement(SWITCH_MASTER, "mymaster 10.0.0.1 6379 10.0.0.2 6380"),
            Some(("mymaster", new.clone(), false))
        );
        let promotion = "slave 10.0.0.2:6380 10.0.0.2 6380 @ mymaster 10.0.0.1 6379";
        assert_eq!(
            parse_announcement(PROMOTED, promotion),
            Some(("mymaster", new.clone(), false))
        );
        assert_eq!(
            parse_announcement(PROMOTING, promotion),
            Some(("mymaster", new, true))
        );
        assert_eq!(
            parse_announcement(SWITCH_MASTER, "mymaster 10.0.0.1 6379"),
            None
        );
        assert_eq!(
            parse_announcement(SWITCH_MASTER, "m 10.0.0.1 6379 10.0.0.2 port"),
            None
        );
        assert_eq!(
            parse_announcement(PROMOTED, "master mymaster 10.0.0.1 6379"),
            None
        );
        assert_eq!(parse_announcement("+sdown", "m 1 2 3 4"), None);
    }

    #[test]
    fn addresses_print_as_host_port_with_ipv6_in_brackets() {
        let v4 = Addr {
            host: "10.0.0.1".into(),
            port: 6379,
        };
        let v6 = Addr {
            host: "::1".into(),
            port: 6380,
        };
        assert_eq!(v4.to_string(), "10.0.0.1:6379");
        assert_eq!(v6.to_string(), "[::1]:6380");
    }
}
