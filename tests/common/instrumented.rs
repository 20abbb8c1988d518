//! A store wrapper that counts calls and can be made to fail or hang, for
//! checking what the layer asks of its store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use unstuck::{
    ChangeSet, Record, SaveOutcome, SessionStore, SessionSummary, StorageKey, StoreError,
};

/// How the wrapped store behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Healthy = 0,
    /// Every call fails as if the server were down.
    Down = 1,
    /// Reads work, writes fail.
    WritesFail = 2,
    /// Every call hangs for a minute.
    Hung = 3,
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicUsize,
    writes: AtomicUsize,
    mode: AtomicU8,
}

#[derive(Clone, Debug)]
pub struct Instrumented<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: SessionStore> Instrumented<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn reads(&self) -> usize {
        self.counters.reads.load(Ordering::SeqCst)
    }

    pub fn writes(&self) -> usize {
        self.counters.writes.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.counters.mode.store(mode as u8, Ordering::SeqCst);
    }

    async fn gate(&self, write: bool) -> Result<(), StoreError> {
        let counter = if write {
            &self.counters.writes
        } else {
            &self.counters.reads
        };
        counter.fetch_add(1, Ordering::SeqCst);
        match self.counters.mode.load(Ordering::SeqCst) {
            1 => Err(StoreError::unavailable("connection refused (simulated)")),
            2 if write => Err(StoreError::unavailable("write failed (simulated)")),
            3 => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err(StoreError::unavailable("hung (simulated)"))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Instrumented<S> {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.gate(false).await?;
        self.inner.load(key).await
    }
    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        self.gate(true).await?;
        self.inner.create(key, record).await
    }
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        self.gate(true).await?;
        self.inner.save(key, changes).await
    }
    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        self.gate(true).await?;
        self.inner.rotate(from, to, changes).await
    }
    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.gate(true).await?;
        self.inner.delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        self.gate(false).await?;
        self.inner.user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        self.gate(true).await?;
        self.inner.delete_user_sessions(user).await
    }
}
