//! What every networked store must do with a record a newer release wrote:
//! refuse it, typed, and leave it alone (the callers compare the stored bytes
//! before and after, each in its own store's terms).

use std::time::{Duration, SystemTime};

use unstuck::{ChangeSet, SessionId, SessionStore, StorageKey, StoreError};

/// True when `result` is the refusal of a record in format 2.
pub fn refused_as_newer<T>(result: Result<T, StoreError>) -> bool {
    matches!(
        result,
        Err(StoreError::UnsupportedFormat {
            found: 2,
            supported: 1
        })
    )
}

/// Asserts that loading, saving a value to and rotating the session at
/// `key`, which is marked as format 2, are all refused as a newer format, and
/// that the refused rotation created nothing.
pub async fn assert_newer_format_refused(store: &impl SessionStore, key: &StorageKey) {
    assert!(refused_as_newer(store.load(key).await), "load");
    let mut changes = ChangeSet::new(SystemTime::now() + Duration::from_secs(600));
    changes.insert("x", "1");
    assert!(refused_as_newer(store.save(key, &changes).await), "save");
    let to = SessionId::generate().storage_key();
    assert!(
        refused_as_newer(store.rotate(key, &to, &changes).await),
        "rotate"
    );
    assert_eq!(
        store.load(&to).await.unwrap(),
        None,
        "a refused rotation created a session"
    );
}
