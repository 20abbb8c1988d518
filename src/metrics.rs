//! Counters and histograms through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), so whichever exporter the application installs
//! (Prometheus, OpenTelemetry, StatsD) picks them up. Without the feature every
//! function here is an empty inline function: no cost.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `unstuck_loads_total` | counter | `store`, `outcome` | session loads by a request: `hit` (a live session), `miss` (the cookie named none: unknown, ended or expired), `none` (no valid cookie: no store call), `error` |
//! | `unstuck_load_duration_seconds` | histogram | `store`, `outcome` | how long loads that reached the store took (`hit`, `miss`, `error`) |
//! | `unstuck_saves_total` | counter | `store`, `outcome` | end-of-request saves that wrote: `applied`, `gone` (only the idle deadline was to move and the session had ended: nothing lost), `conflict` (the session ended before the request's changes could be saved: `409`), `error` |
//! | `unstuck_save_duration_seconds` | histogram | `store`, `outcome` | how long those saves took |
//! | `unstuck_store_errors_total` | counter | `store`, `operation`, `kind` | store failures seen by the layer; `operation`: `load`, `save`, `user_sessions`, `delete_user_sessions`; `kind`: `timeout`, `unavailable`, `backend`, `key_taken`, `config`, `too_large` (`413`), `too_many_sessions` (a refused login, `409`), `unsupported_format` |
//! | `unstuck_store_timeouts_total` | counter | `store`, `operation` | store work that ran out of the layer's store timeout (also counted above as `kind="timeout"`) |
//! | `unstuck_near_cache_hits_total` | counter | `store` | loads a [`NearCache`](crate::NearCache) answered from memory |
//! | `unstuck_near_cache_misses_total` | counter | `store` | loads it sent to the store |
//! | `unstuck_events_total` | counter | `store`, `event` | [`SessionEvent`]s emitted: `created`, `rotated`, `destroyed`, `logged_out_everywhere`, `expired` |
//! | `unstuck_events_dropped_total` | counter | | events dropped because a [`SessionEvents`](crate::SessionEvents) queue was full |
//!
//! `store` is [`SessionStore::name`](crate::SessionStore::name): `memory`,
//! `redis`, `postgres`, `tower_sessions`, or what a custom store says.
//! Durations are in seconds.

use std::time::Duration;

use crate::events::SessionEvent;
#[cfg(feature = "metrics")]
use crate::store::StoreError;

/// How a request's session load ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoadOutcome {
    Hit,
    Miss,
    None,
    Error,
}

impl LoadOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::None => "none",
            Self::Error => "error",
        }
    }
}

/// How an end-of-request save ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SaveOutcome {
    Applied,
    Gone,
    Conflict,
    Error,
}

impl SaveOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Gone => "gone",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

/// The `kind` label of a store error; `timed_out` when the work ran out of
/// the layer's store timeout (whichever timer noticed first).
#[cfg(feature = "metrics")]
fn error_kind(error: &StoreError, timed_out: bool) -> &'static str {
    match error {
        StoreError::Unavailable(_) if timed_out => "timeout",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Backend(_) => "backend",
        StoreError::KeyTaken => "key_taken",
        StoreError::Config(_) => "config",
        StoreError::TooLarge { .. } => "too_large",
        StoreError::TooManySessions { .. } => "too_many_sessions",
        StoreError::UnsupportedFormat { .. } => "unsupported_format",
    }
}

#[cfg(feature = "metrics")]
mod on {
    use super::*;

    pub fn load(store: &'static str, outcome: LoadOutcome, took: Option<Duration>) {
        let labels = [("store", store), ("outcome", outcome.as_str())];
        metrics::counter!("unstuck_loads_total", &labels).increment(1);
        if let Some(took) = took {
            metrics::histogram!("unstuck_load_duration_seconds", &labels).record(took);
        }
    }

    pub fn save(store: &'static str, outcome: SaveOutcome, took: Duration) {
        let labels = [("store", store), ("outcome", outcome.as_str())];
        metrics::counter!("unstuck_saves_total", &labels).increment(1);
        metrics::histogram!("unstuck_save_duration_seconds", &labels).record(took);
    }

    pub fn store_error(
        store: &'static str,
        operation: &'static str,
        error: &StoreError,
        timed_out: bool,
    ) {
        let kind = error_kind(error, timed_out);
        metrics::counter!(
            "unstuck_store_errors_total",
            "store" => store, "operation" => operation, "kind" => kind
        )
        .increment(1);
        if kind == "timeout" {
            metrics::counter!(
                "unstuck_store_timeouts_total",
                "store" => store, "operation" => operation
            )
            .increment(1);
        }
    }

    pub fn near_cache(store: &'static str, hit: bool) {
        if hit {
            metrics::counter!("unstuck_near_cache_hits_total", "store" => store).increment(1);
        } else {
            metrics::counter!("unstuck_near_cache_misses_total", "store" => store).increment(1);
        }
    }

    pub fn event(event: &SessionEvent) {
        metrics::counter!(
            "unstuck_events_total",
            "store" => event.store, "event" => event.name()
        )
        .increment(1);
    }

    pub fn event_dropped() {
        metrics::counter!("unstuck_events_dropped_total").increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use super::*;
    use crate::store::StoreError;

    #[inline(always)]
    pub fn load(_: &'static str, _: LoadOutcome, _: Option<Duration>) {}
    #[inline(always)]
    pub fn save(_: &'static str, _: SaveOutcome, _: Duration) {}
    #[inline(always)]
    pub fn store_error(_: &'static str, _: &'static str, _: &StoreError, _: bool) {}
    #[inline(always)]
    pub fn near_cache(_: &'static str, _: bool) {}
    #[inline(always)]
    pub fn event(_: &SessionEvent) {}
    #[inline(always)]
    pub fn event_dropped() {}
}

pub(crate) use on::{event, event_dropped, load, near_cache, save, store_error};
