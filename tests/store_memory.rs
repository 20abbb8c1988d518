//! The conformance suite on [`MemoryStore`].

mod common;

common::conformance::store_conformance!(unstuck::MemoryStore::new());

#[test]
fn delete_expired_frees_memory_of_dead_sessions() {
    use std::time::{Duration, SystemTime};
    use unstuck::{MemoryStore, Record, SessionId, SessionStore};

    let store = MemoryStore::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = SystemTime::now();
        for ttl in [Duration::from_millis(1), Duration::from_secs(600)] {
            let record = Record {
                data: Default::default(),
                user: None,
                created_at: now,
                expires_at: now + ttl,
            };
            assert!(
                store
                    .create(&SessionId::generate().storage_key(), &record)
                    .await
                    .unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    assert_eq!(store.len(), 2);
    assert_eq!(store.delete_expired(), 1);
    assert_eq!(store.len(), 1);
}
