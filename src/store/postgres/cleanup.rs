//! Deleting expired rows: one batch on demand, or a task that keeps at it.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use sqlx::Row;

use super::codec::{millis, store_error};
use super::{MAX_BATCHES_PER_RUN, PostgresStore};
use crate::events::{SessionEvent, SessionEventKind, SessionEvents};
use crate::id::StorageKey;
use crate::store::StoreError;

impl PostgresStore {
    /// Reports the sessions [`delete_expired`](Self::delete_expired) and the
    /// cleanup task delete to `events`, as
    /// [`Expired`](crate::SessionEventKind::Expired) with their user: exact,
    /// but as late as the cleanup runs.
    pub fn with_events(mut self, events: SessionEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// Deletes up to `batch_size` expired rows and returns how many it deleted.
    ///
    /// Rows that another caller is deleting at the same moment are skipped
    /// (`FOR UPDATE SKIP LOCKED`), so any number of instances can run this at
    /// once without waiting on each other or deleting a row twice. Keep batches
    /// small (hundreds to a few thousands) so each statement is short.
    ///
    /// # Errors
    /// When the database cannot be reached or the delete fails.
    pub async fn delete_expired(&self, batch_size: u32) -> Result<u64, StoreError> {
        let sql = self.ready().await?;
        let rows = sqlx::query(sql.delete_expired.sql())
            .bind(millis(SystemTime::now()))
            .bind(i64::from(batch_size))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        if let Some(events) = &self.events {
            for row in &rows {
                let key: String = row.try_get(0).map_err(store_error)?;
                let user: Option<String> = row.try_get(1).map_err(store_error)?;
                // Rows written by anything else than this store are skipped.
                if let Some(key) = StorageKey::parse(&key) {
                    let kind = SessionEventKind::Expired { key };
                    events.emit(SessionEvent::new(kind, user, "postgres"));
                }
            }
        }
        Ok(rows.len() as u64)
    }

    /// Starts a task that deletes expired rows every `interval`, in batches of
    /// `batch_size` (see [`delete_expired`](Self::delete_expired)), and returns its
    /// handle.
    ///
    /// The task runs until the handle is dropped or
    /// [`stop`](PostgresCleanup::stop)ped. Each run deletes batches until one
    /// comes back short, so a backlog is worked off at once (up to 1000 batches
    /// per run; the rest waits for the next run). Errors are logged with
    /// `tracing` and retried at the next run. The first run starts immediately.
    ///
    /// Run it on one instance, or on all of them: concurrent runs skip each
    /// other's rows instead of blocking. On all instances, a longer interval
    /// (such as the number of instances times the interval you want) keeps the
    /// total load the same.
    ///
    /// # Panics
    /// If `interval` is zero, or when called outside a Tokio runtime.
    pub fn spawn_cleanup(&self, interval: Duration, batch_size: u32) -> PostgresCleanup {
        assert!(!interval.is_zero(), "cleanup interval must not be zero");
        let batch_size = batch_size.max(1);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(cleanup_loop(self.clone(), interval, batch_size, stopped));
        PostgresCleanup {
            stop: Some(stop),
            task,
        }
    }
}

async fn cleanup_loop(
    store: PostgresStore,
    interval: Duration,
    batch_size: u32,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        let mut deleted = 0u64;
        for _ in 0..MAX_BATCHES_PER_RUN {
            match store.delete_expired(batch_size).await {
                Ok(n) => {
                    deleted += n;
                    if n < u64::from(batch_size) {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "deleting expired sessions failed; retrying at the next run");
                    break;
                }
            }
            // A stop (or a dropped handle) takes effect between batches, so a
            // batch in flight always completes.
            if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
                return;
            }
        }
        if deleted > 0 {
            tracing::debug!(deleted, "deleted expired sessions");
        }
    }
}

/// The handle of the cleanup task started by [`PostgresStore::spawn_cleanup`].
///
/// Dropping it stops the task after the batch in flight, if any;
/// [`stop`](Self::stop) does the same and waits for it, and
/// [`abort`](Self::abort) cancels it at once.
#[derive(Debug)]
#[must_use = "the cleanup task stops when its handle is dropped"]
pub struct PostgresCleanup {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl PostgresCleanup {
    /// Stops the task after the batch in flight, if any, and waits until it has
    /// stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The task only ends by returning or by being aborted; neither is an
        // error worth reporting to someone shutting it down.
        let _ = (&mut self.task).await;
    }

    /// Cancels the task at once, even in the middle of a batch (the batch's
    /// statement is then rolled back or completed by the server; no row is half
    /// deleted).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// True once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
