//! A pub/sub subscription kept alive, for the Sentinel watcher (switch
//! announcements) and the expiry events (keyspace notifications).

use std::future::Future;
use std::time::Duration;

use deadpool_redis::redis::aio::{PubSubSink, PubSubStream};
use deadpool_redis::redis::{Msg, Value};
use futures_util::StreamExt as _;
use tokio::time::MissedTickBehavior;

use super::RESPONSE_TIMEOUT;

/// How often a quiet subscription is checked with a `PING`: a server that
/// vanished without closing the connection sends nothing, and would otherwise
/// look like one with nothing to say.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(5);

/// Hands every message of a subscription to `heard`, in order, until the
/// connection ends or stops answering the keepalive `PING`.
pub(super) async fn listen<F, Fut>(sink: &mut PubSubSink, stream: &mut PubSubStream, mut heard: F)
where
    F: FnMut(Msg) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    keepalive.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => heard(msg).await,
                None => return,
            },
            _ = keepalive.tick() => {
                let ping = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>());
                if !matches!(ping.await, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
