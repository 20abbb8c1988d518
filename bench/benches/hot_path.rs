//! Criterion micro-benchmarks of the per-request CPU work, through the public
//! API: ID generation and hashing, the cookie check, a whole request through
//! the layer on the memory store, and change sets.
//!
//! ```sh
//! cargo bench --manifest-path bench/Cargo.toml --bench hot_path
//! ```

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use hyper::Request;
use tower::ServiceExt;
use unstuck::{
    ChangeSet, Key, MemoryStore, Record, SaveOutcome, Session, SessionId, SessionLayer, SessionStore,
    SessionSummary, StorageKey, StoreError, Version,
};

/// The memory store, reporting a version for every save as a near cache does:
/// the layer then sends the version in a fresh `Set-Cookie` after each write.
/// The difference to the plain memory store is the cost of that cookie.
#[derive(Debug, Default)]
struct Versioned {
    inner: MemoryStore,
    version: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl SessionStore for Versioned {
    async fn load(&self, key: &StorageKey) -> Result<Option<Record>, StoreError> {
        self.inner.load(key).await
    }
    async fn create(&self, key: &StorageKey, record: &Record) -> Result<bool, StoreError> {
        self.inner.create(key, record).await
    }
    async fn save(&self, key: &StorageKey, changes: &ChangeSet) -> Result<SaveOutcome, StoreError> {
        self.inner.save(key, changes).await
    }
    async fn save_versioned(
        &self,
        key: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<(SaveOutcome, Option<Version>), StoreError> {
        let outcome = self.inner.save(key, changes).await?;
        let version = self.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 2;
        Ok((outcome, Some(Version::new(version))))
    }
    async fn rotate(
        &self,
        from: &StorageKey,
        to: &StorageKey,
        changes: &ChangeSet,
    ) -> Result<SaveOutcome, StoreError> {
        self.inner.rotate(from, to, changes).await
    }
    async fn delete(&self, key: &StorageKey) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionSummary>, StoreError> {
        self.inner.user_sessions(user).await
    }
    async fn delete_user_sessions(&self, user: &str) -> Result<u64, StoreError> {
        self.inner.delete_user_sessions(user).await
    }
}

fn app() -> Router {
    app_on(MemoryStore::new())
}

fn app_on(store: impl SessionStore) -> Router {
    let layer = SessionLayer::new(store).with_keys([Key::derive_from(&[3; 32]).unwrap()]);
    Router::new()
        .route("/none", get(|| async { "ok" }))
        .route(
            "/read",
            get(|session: Session| async move {
                session.get::<u64>("count").ok().flatten().unwrap_or(0).to_string()
            }),
        )
        .route(
            "/write",
            get(|session: Session| async move {
                let n = session.get::<u64>("count").ok().flatten().unwrap_or(0) + 1;
                session.insert("count", n).unwrap();
                n.to_string()
            }),
        )
        .layer(layer)
}

async fn call(app: &Router, path: &str, cookie: Option<&str>) -> Option<String> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    response.into_body().collect().await.unwrap();
    set_cookie
}

fn ids(c: &mut Criterion) {
    c.bench_function("id: generate (OS CSPRNG)", |b| b.iter(SessionId::generate));
    let id = SessionId::generate();
    c.bench_function("id: storage key (SHA-256 + base64)", |b| {
        b.iter(|| black_box(&id).storage_key())
    });
}

fn requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app = app();
    let cookie = runtime.block_on(call(&app, "/write", None)).unwrap();
    let mut tampered = cookie.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let mut group = c.benchmark_group("request through the layer (memory store)");
    group.bench_function("route without Session", |b| {
        b.to_async(&runtime).iter(|| call(&app, "/none", Some(&cookie)))
    });
    group.bench_function("read (cookie check + load)", |b| {
        b.to_async(&runtime).iter(|| call(&app, "/read", Some(&cookie)))
    });
    group.bench_function("tampered cookie (rejected, no load)", |b| {
        b.to_async(&runtime).iter(|| call(&app, "/read", Some(&tampered)))
    });
    group.bench_function("write (load + delta save)", |b| {
        b.to_async(&runtime).iter(|| call(&app, "/write", Some(&cookie)))
    });
    let versioned = app_on(Versioned::default());
    let versioned_cookie = runtime.block_on(call(&versioned, "/write", None)).unwrap();
    assert!(
        runtime.block_on(call(&versioned, "/write", Some(&versioned_cookie))).is_some(),
        "a versioned save must send a cookie"
    );
    group.bench_function("write with the version cookie (as through a near cache)", |b| {
        b.to_async(&runtime).iter(|| call(&versioned, "/write", Some(&versioned_cookie)))
    });
    group.finish();
}

fn deltas(c: &mut Criterion) {
    let now = SystemTime::now();
    let record = Record {
        data: (0..20)
            .map(|i| (format!("key{i}"), serde_json::json!({"n": i, "s": "value"}).to_string()))
            .collect(),
        user: Some("alice".to_owned()),
        created_at: now,
        expires_at: now + Duration::from_secs(1800),
    };
    c.bench_function("delta: build a 3-key change set", |b| {
        b.iter(|| {
            let mut changes = ChangeSet::new(now);
            changes
                .insert("count", "42")
                .insert("cart", r#"[1,2,3]"#)
                .remove("flash");
            black_box(changes)
        })
    });
    let mut changes = ChangeSet::new(now);
    changes.insert("count", "42").insert("cart", r#"[1,2,3]"#).remove("flash");
    c.bench_function("delta: apply to a 20-key record", |b| {
        b.iter_batched(
            || record.clone(),
            |mut r| {
                changes.apply_to(&mut r);
                r
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = ids, requests, deltas
}
criterion_main!(benches);
