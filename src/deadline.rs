//! The one deadline for a request's store work.
//!
//! The layer sets it ([`SessionLayer::with_store_timeout`], default 5 s) once
//! for the load and once for the save with everything the save involves (a
//! delete, a rotation's two steps, replica acks). Stores read what is left of it
//! with [`remaining`] and keep their own calls within it, so no store call is
//! cut off by a second, independent timer above it. Outside a layer (a store
//! used directly), stores fall back to their own default budgets.
//!
//! [`SessionLayer::with_store_timeout`]: crate::SessionLayer::with_store_timeout

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::StoreError;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// A request's store work that ran out of its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the session store did not answer within {0:?}")]
pub(crate) struct OutOfTime(pub Duration);

/// Runs `work` with `budget` as the deadline of every store call in it; running
/// out counts as the store being unavailable, so a hung store answers 503
/// instead of hanging.
pub(crate) async fn within<T, E: From<StoreError>>(
    budget: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let deadline = Instant::now() + budget;
    match tokio::time::timeout_at(deadline, DEADLINE.scope(deadline, work)).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(timeout = ?budget, "session store work timed out");
            Err(StoreError::unavailable(OutOfTime(budget)).into())
        }
    }
}

/// What is left of the current request's deadline, or `None` outside one.
// Stores with budgets of their own read it (RedisStore); the others have no
// timer under the layer's.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(Instant::now()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_and_enforced() {
        assert_eq!(remaining(), None);
        let seen = within(Duration::from_secs(5), async {
            Ok::<_, StoreError>(remaining())
        })
        .await
        .unwrap()
        .unwrap();
        assert!(seen <= Duration::from_secs(5) && seen > Duration::from_secs(4));
        let late = within(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<(), StoreError>(())
        })
        .await;
        assert!(matches!(late, Err(StoreError::Unavailable(_))));
    }
}
