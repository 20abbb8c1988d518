//! Which Redis errors mean "unavailable, try again" and which are failures.

use std::time::Duration;

use deadpool_redis::redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// A store call that ran out of its time budget.
#[derive(Debug, thiserror::Error)]
#[error("no answer from Redis within {0:?}")]
pub(super) struct TimedOut(pub Duration);

/// A write that too few replicas confirmed.
#[derive(Debug, thiserror::Error)]
#[error(
    "write reached {acked} of {wanted} required replicas within {timeout:?}; it is applied on the primary but may be lost if it fails over"
)]
pub(super) struct NotReplicated {
    pub acked: u32,
    pub wanted: u32,
    pub timeout: Duration,
}

/// Errors that say the server is (for now) not reachable or not the right one
/// to talk to: worth a `503` and a retry, and reason to drop the connection.
pub(super) fn is_unavailable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::EmptySentinelList
                | ErrorKind::Server(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::BusyLoading
                )
        )
}

pub(super) fn map_redis_error(error: RedisError) -> StoreError {
    if is_unavailable(&error) {
        tracing::warn!(%error, "redis session store unavailable");
        StoreError::unavailable(error)
    } else {
        tracing::error!(%error, "redis session store error");
        StoreError::backend(error)
    }
}

pub(super) fn map_pool_error(error: deadpool_redis::PoolError) -> StoreError {
    match error {
        deadpool_redis::PoolError::Backend(error) => map_redis_error(error),
        deadpool_redis::PoolError::Timeout(_) | deadpool_redis::PoolError::Closed => {
            tracing::warn!(%error, "redis session store unavailable");
            StoreError::unavailable(error)
        }
        other => StoreError::backend(other),
    }
}
