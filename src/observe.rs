//! What the layer tells operators about its store work: a `tracing` span per
//! load and save (store, outcome, latency), the [`metrics`](crate::metrics)
//! that go with them, and the lifecycle [`SessionEvent`]s.
//!
//! # Correlation without IDs
//! Logs never carry a session ID or cookie value. They do not carry the
//! [`StorageKey`] either, although it is not a credential: a log line would
//! then point straight at a row or Redis key, turning leaked logs plus a
//! leaked store dump into a map of who did what. Spans carry instead a
//! *correlation tag*: the first 8 bytes (16 hex digits) of
//! HMAC-SHA256(k, storage key), where k = HMAC-SHA256(signing key, a fixed
//! label), derived from the layer's first cookie key. Instances sharing keys
//! therefore tag one session alike (a request can be followed across
//! instances), the tag changes when the signing key rotates, and without the
//! key it can neither be computed from a store dump nor reversed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::config::Config;
use crate::events::{SessionEvent, SessionEventKind};
use crate::id::StorageKey;
use crate::metrics::{self, LoadOutcome, SaveOutcome};
use crate::store::{SessionStore, StoreError};

/// The label that separates the correlation key from the signing key's use.
const CORRELATION_LABEL: &[u8] = b"unstuck log correlation v1";

/// The correlation tag of a session (see the module documentation).
pub(crate) fn correlation(config: &Config, key: &StorageKey) -> String {
    let Some(first) = config.cookie.keys.first() else {
        return String::new();
    };
    let derive = Hmac::<Sha256>::new_from_slice(first.0.signing())
        .expect("HMAC takes keys of any length")
        .chain_update(CORRELATION_LABEL)
        .finalize()
        .into_bytes();
    let tag = Hmac::<Sha256>::new_from_slice(&derive)
        .expect("HMAC takes keys of any length")
        .chain_update(key.as_str().as_bytes())
        .finalize()
        .into_bytes();
    tag[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A load or save in progress: its span, its clock, and what it counts as.
pub(crate) struct Watch {
    store: &'static str,
    operation: &'static str,
    span: Span,
    /// When the work started, if anyone wants its latency: a subscriber
    /// interested in the span, or the metrics. Otherwise the clock is not read.
    started: Option<Instant>,
    store_timeout: Duration,
    /// A touch found its session gone (a save's "gone" outcome).
    gone: AtomicBool,
}

impl Watch {
    /// A load of `key` from `store` starts.
    pub fn load(store: &dyn SessionStore, config: &Config, key: &StorageKey) -> Self {
        let span = tracing::debug_span!(
            "unstuck.load",
            store = store.name(),
            session = Empty,
            outcome = Empty,
            latency_ms = Empty,
        );
        Self::start(store, "load", span, config, Some(key))
    }

    /// A save starts: `step` is what it writes, `key` the stored session's
    /// key if it has one.
    pub fn save(
        store: &dyn SessionStore,
        config: &Config,
        step: &'static str,
        key: Option<&StorageKey>,
    ) -> Self {
        let span = tracing::debug_span!(
            "unstuck.save",
            store = store.name(),
            step,
            session = Empty,
            new_session = Empty,
            outcome = Empty,
            latency_ms = Empty,
        );
        Self::start(store, "save", span, config, key)
    }

    fn start(
        store: &dyn SessionStore,
        operation: &'static str,
        span: Span,
        config: &Config,
        key: Option<&StorageKey>,
    ) -> Self {
        if let Some(key) = key
            && !span.is_disabled()
        {
            span.record("session", correlation(config, key));
        }
        let timed = cfg!(feature = "metrics") || !span.is_disabled();
        Self {
            store: store.name(),
            operation,
            span,
            started: timed.then(Instant::now),
            store_timeout: config.store_timeout,
            gone: AtomicBool::new(false),
        }
    }

    /// Runs the store work in the span. A span no subscriber is interested in
    /// is left out altogether: entering and leaving it on every poll would be
    /// pure cost.
    pub async fn run<F: Future>(&self, work: F) -> F::Output {
        if self.span.is_disabled() {
            work.await
        } else {
            work.instrument(self.span.clone()).await
        }
    }

    /// Notes the correlation tag of the key a save created or rotated to
    /// (`new_session`, beside the `session` it started from, if any).
    pub fn session(&self, config: &Config, key: &StorageKey) {
        if !self.span.is_disabled() {
            self.span.record("new_session", correlation(config, key));
        }
    }

    /// A touch found the session gone: nothing was lost, and the save counts
    /// as `gone`.
    pub fn found_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    /// Records how the work ended; returns how long it took (zero when
    /// nobody asked: see `started`).
    fn finish(&self, outcome: &'static str) -> Duration {
        let took = self
            .started
            .map_or(Duration::ZERO, |started| started.elapsed());
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome);
            self.span.record("latency_ms", took.as_secs_f64() * 1000.0);
        }
        tracing::debug!(parent: &self.span, outcome, "session {}", self.operation);
        took
    }

    /// The store failed.
    pub fn failed(&self, error: &StoreError) {
        let took = self.finish("error");
        let timed_out = self.started.is_some() && took >= self.store_timeout;
        metrics::store_error(self.store, self.operation, error, timed_out);
        match self.operation {
            "load" => metrics::load(self.store, LoadOutcome::Error, Some(took)),
            _ => metrics::save(self.store, SaveOutcome::Error, took),
        }
    }

    /// The load ended with `outcome`.
    pub fn loaded(&self, outcome: LoadOutcome) {
        let took = self.finish(outcome.as_str());
        metrics::load(self.store, outcome, Some(took));
    }

    /// The save ended: written, or refused because the session had ended
    /// (`conflict`).
    pub fn saved(&self, conflict: bool) {
        let outcome = if conflict {
            SaveOutcome::Conflict
        } else if self.gone.load(Ordering::Relaxed) {
            SaveOutcome::Gone
        } else {
            SaveOutcome::Applied
        };
        let took = self.finish(outcome.as_str());
        metrics::save(self.store, outcome, took);
    }
}

/// A request came without a (valid) session cookie: no store call.
pub(crate) fn no_session(store: &dyn SessionStore) {
    metrics::load(store.name(), LoadOutcome::None, None);
}

/// Counts a failure of a store call other than a load or save.
pub(crate) fn store_error(store: &dyn SessionStore, operation: &'static str, error: &StoreError) {
    metrics::store_error(store.name(), operation, error, false);
}

/// Emits a lifecycle event the store has just confirmed, to the layer's
/// listeners (if any) and the metrics.
pub(crate) fn emit(
    config: &Config,
    store: &dyn SessionStore,
    kind: SessionEventKind,
    user: Option<String>,
) {
    match &config.events {
        Some(events) => events.emit(SessionEvent::new(kind, user, store.name())),
        None if cfg!(feature = "metrics") => {
            metrics::event(&SessionEvent::new(kind, user, store.name()));
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SessionId;
    use crate::key::Key;

    fn config(secret: &[u8]) -> Config {
        let mut config = Config::default();
        config.cookie.keys = vec![Key::derive_from(secret).unwrap()];
        config
    }

    #[test]
    fn the_correlation_tag_is_short_stable_per_key_and_hides_the_storage_key() {
        let a = config(b"a secret of at least thirty-two bytes, one");
        let b = config(b"a secret of at least thirty-two bytes, two");
        let key = SessionId::generate().storage_key();
        let tag = correlation(&a, &key);
        assert_eq!(tag.len(), 16);
        assert!(tag.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(tag, correlation(&a, &key), "stable under one key");
        assert_ne!(tag, correlation(&b, &key), "keyed by the signing key");
        let other = SessionId::generate().storage_key();
        assert_ne!(tag, correlation(&a, &other));
        assert!(!key.as_str().contains(&tag));
    }
}
