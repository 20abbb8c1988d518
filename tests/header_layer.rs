//! Session tokens in a header, in process: what the layer does with its store
//! for header tokens, and how they follow the layer's keys.

mod common;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderName, Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use unstuck::{
    CookieProtection, Key, MemoryStore, Session, SessionLayer, SessionStore, SessionTransport,
    TokenHeader,
};

use common::instrumented::Instrumented;

const TOKEN_OUT: &str = "x-session-token";

async fn write(session: Session) -> Result<String, unstuck::Error> {
    let n: u64 = session.get("n")?.unwrap_or(0) + 1;
    session.insert("n", n)?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<String, unstuck::Error> {
    Ok(session
        .get::<u64>("n")?
        .map_or("none".to_owned(), |n| n.to_string()))
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/write", get(write))
        .route("/read", get(read))
        .layer(layer)
}

fn bearer_layer(store: impl SessionStore) -> SessionLayer {
    SessionLayer::new(store).with_transport(SessionTransport::Header(TokenHeader::bearer()))
}

/// Sends `GET path` with `Authorization: <authorization>`; returns the body
/// and the token the response handed out.
async fn call(app: &Router, path: &str, authorization: Option<&str>) -> (String, Option<String>) {
    let mut request = Request::builder().uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    let token = response
        .headers()
        .get(TOKEN_OUT)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), token)
}

#[tokio::test]
async fn doubtful_header_tokens_cause_no_store_lookup() {
    let store = Instrumented::new(MemoryStore::new());
    let app = router(bearer_layer(store.clone()));
    let (_, token) = call(&app, "/write", None).await;
    let token = token.expect("a new session hands out a token");
    let reads = store.reads();
    let other = if token.starts_with('A') { 'B' } else { 'A' };
    for bad in [
        format!("Bearer {other}{}", &token[1..]),
        format!("Bearer {}", &token[44..]),
        format!("Bearer {token}{}", "A".repeat(2000)),
        "Bearer garbage".to_owned(),
        "Bearer".to_owned(),
        format!("Basic {token}"),
    ] {
        assert_eq!(call(&app, "/read", Some(&bad)).await.0, "none", "{bad}");
    }
    assert_eq!(store.reads(), reads, "a doubtful token reached the store");
    assert_eq!(
        call(&app, "/read", Some(&format!("Bearer {token}")))
            .await
            .0,
        "1"
    );
    assert_eq!(store.reads(), reads + 1);
}

#[tokio::test]
async fn private_header_tokens_hide_the_id_and_survive_key_rotation() {
    let old = Key::derive_from(b"the old key's secret, at least 32 bytes long").unwrap();
    let new = Key::derive_from(b"the new key's secret, at least 32 bytes long").unwrap();
    let store = MemoryStore::new();
    let before = router(
        bearer_layer(store.clone())
            .with_keys([old.clone()])
            .with_protection(CookieProtection::Private),
    );
    let (_, token) = call(&before, "/write", None).await;
    let token = token.unwrap();
    assert!(!token.contains('.'), "a private token shows no structure");
    let rotated = router(
        bearer_layer(store.clone())
            .with_keys([new.clone(), old])
            .with_protection(CookieProtection::Private),
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(call(&rotated, "/write", Some(&bearer)).await.0, "2");
    // A token sealed under the new key alone reads back once the old key is gone.
    let (_, fresh) = call(&rotated, "/write", None).await;
    let only_new = router(
        bearer_layer(store)
            .with_keys([new])
            .with_protection(CookieProtection::Private),
    );
    let fresh = format!("Bearer {}", fresh.unwrap());
    assert_eq!(call(&only_new, "/read", Some(&fresh)).await.0, "1");
    assert_eq!(call(&only_new, "/read", Some(&bearer)).await.0, "none");
}

#[test]
fn token_headers_that_would_pass_for_cookies_or_credentials_are_refused() {
    for name in [header::COOKIE, header::SET_COOKIE, header::AUTHORIZATION] {
        let layer = SessionLayer::new(MemoryStore::new())
            .with_transport(SessionTransport::Header(TokenHeader::named(name.clone())));
        assert!(
            matches!(layer.validate(), Err(unstuck::ConfigError::TokenHeader(_))),
            "{name}"
        );
    }
    let fine = SessionLayer::new(MemoryStore::new()).with_transport(SessionTransport::Both(
        TokenHeader::named(HeaderName::from_static("x-auth-token")),
    ));
    assert_eq!(fine.validate(), Ok(()));
}
