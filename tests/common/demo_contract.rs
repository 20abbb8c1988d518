//! Black-box checks of the demo server contract (DESIGN.md), run against the
//! demo process on any store. `demo_contract!(url)` runs the checks that hold on
//! every store; `demo_contract!(shared url)` adds the ones that need instances
//! sharing one store (alternation, key rotation across instances, instance
//! loss).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::demo::{Client, Demo};

macro_rules! demo_contract {
    ($store:expr) => {
        $crate::common::demo_contract::demo_contract!(@tests $store;
            health_answers_without_a_session,
            counter_counts_per_client,
            peek_reads_without_writing,
            kv_round_trip,
            session_shows_every_key,
            cookie_has_secure_defaults,
            tampered_and_garbage_cookies_mean_no_session,
            login_rotates_the_id_and_keeps_the_data,
            logout_destroys_the_session_and_clears_the_cookie,
            slow_request_racing_logout_does_not_resurrect_the_session,
            logout_everywhere_ends_only_that_users_sessions,
            concurrent_requests_changing_different_keys_all_persist,
            idle_timeout_ends_an_unused_session,
            activity_keeps_a_session_past_the_idle_timeout,
            absolute_timeout_ends_even_an_active_session
        );
    };
    (shared $store:expr) => {
        $crate::common::demo_contract::demo_contract!($store);
        $crate::common::demo_contract::demo_contract!(@tests $store;
            instances_sharing_a_store_serve_one_session,
            rotated_keys_are_accepted_across_instances,
            sessions_survive_the_loss_of_an_instance
        );
    };
    (@tests $store:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let store: String = $store;
                $crate::common::demo_contract::$check(&store).await;
            }
        )+
    };
}
pub(crate) use demo_contract;

const SECRET_A: &str = "first demo secret that is long enough to sign cookies";
const SECRET_B: &str = "second demo secret that is long enough to sign cookies";

fn demo(store: &str, env: &[(&str, &str)]) -> Demo {
    let mut all = vec![("UNSTUCK_STORE", store)];
    all.extend_from_slice(env);
    Demo::start(&all)
}

pub async fn health_answers_without_a_session(store: &str) {
    let demo = demo(store, &[("UNSTUCK_INSTANCE", "alpha")]);
    let reply = demo.client().get("/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["instance"], "alpha");
    assert_eq!(reply.set_cookie, None);
}

pub async fn counter_counts_per_client(store: &str) {
    let demo = demo(store, &[]);
    let mut alice = demo.client();
    let mut bob = demo.client();
    for expected in 1..=3 {
        let reply = alice.get("/counter").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["count"], expected);
        assert_eq!(
            reply.body["instance"],
            demo.base.trim_start_matches("http://")
        );
    }
    assert_eq!(bob.get("/counter").await.body["count"], 1);
    assert_eq!(alice.get("/counter").await.body["count"], 4);
}

pub async fn peek_reads_without_writing(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    let first = client.get("/peek").await;
    assert_eq!((first.status, &first.body["count"]), (200, &json!(null)));
    assert_eq!(first.set_cookie, None, "an empty session is not stored");
    client.get("/counter").await;
    let reply = client.get("/peek").await;
    assert_eq!(reply.body["count"], 1);
    assert_eq!(reply.set_cookie, None);
    assert_eq!(client.get("/peek").await.body["count"], 1);
}

pub async fn kv_round_trip(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    let value = json!({"theme": "dark", "sizes": [1, 2.5, null], "ünï": "✓"});
    assert_eq!(client.put("/kv/prefs", value.clone()).await.status, 200);
    let got = client.get("/kv/prefs").await;
    assert_eq!((got.status, &got.body["value"]), (200, &value));
    assert_eq!(client.get("/kv/missing").await.status, 404);
    assert_eq!(client.delete("/kv/prefs").await.body["removed"], true);
    assert_eq!(client.get("/kv/prefs").await.status, 404);
    let bad = client.send(Method::PUT, "/kv/x", None).await;
    assert_eq!(bad.status, 400, "a body that is not JSON is refused");
}

pub async fn session_shows_every_key(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.get("/counter").await;
    client.put("/kv/a", json!("one")).await;
    client.put("/kv/b", json!([2])).await;
    let reply = client.get("/session").await;
    assert_eq!(
        reply.body["data"],
        json!({"count": 1, "a": "one", "b": [2]})
    );
}

pub async fn cookie_has_secure_defaults(store: &str) {
    let demo = demo(store, &[("UNSTUCK_COOKIE_SECURE", "1")]);
    let mut client = demo.client();
    let set = client
        .get("/counter")
        .await
        .set_cookie
        .expect("a new session sets a cookie");
    let attributes: Vec<&str> = set.split(';').map(str::trim).collect();
    for expected in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(&expected), "{set} lacks {expected}");
    }
    assert!(
        attributes[0].starts_with("id="),
        "generic cookie name: {set}"
    );
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "browser-session cookie: {set}"
    );
}

pub async fn tampered_and_garbage_cookies_mean_no_session(store: &str) {
    let demo = demo(store, &[]);
    let mut owner = demo.client();
    owner.get("/counter").await;
    owner.get("/counter").await;
    let good = owner.cookie.clone().unwrap();
    let value = good.strip_prefix("id=").unwrap();
    let id = owner.session_id_text().unwrap();
    let mut flipped = value.as_bytes().to_vec();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let cases = [
        format!("id={id}"),
        format!("id={flipped}"),
        format!("id={}x", value),
        format!("{good}; {good}"),
        format!("id={}", "A".repeat(4000)),
        "id=".to_owned(),
        "id=%00%ff;;=;".to_owned(),
        "id=\u{7f}garbage".replace('\u{7f}', ""),
        format!("id={}", value.replace('=', "")),
    ];
    for cookie in cases {
        let mut attacker = demo.client();
        attacker.cookie = Some(cookie.clone());
        let reply = attacker.get("/counter").await;
        assert_eq!(reply.status, 200, "{cookie}");
        assert_eq!(reply.body["count"], 1, "{cookie} reached a session");
    }
    assert_eq!(
        owner.get("/counter").await.body["count"],
        3,
        "the real session is intact"
    );
}

pub async fn login_rotates_the_id_and_keeps_the_data(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.get("/counter").await;
    let before = client.clone();
    let reply = client.post("/login", Some(json!({"user": "alice"}))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.set_cookie.is_some(), "login issues a new cookie");
    assert_ne!(client.cookie, before.cookie, "the ID changed");
    assert_eq!(client.get("/me").await.body["user"], "alice");
    assert_eq!(client.get("/peek").await.body["count"], 1, "data kept");
    let mut fixated = before;
    assert_eq!(
        fixated.get("/me").await.body["user"],
        json!(null),
        "old ID is dead"
    );
    assert_eq!(fixated.get("/peek").await.body["count"], json!(null));
    assert_eq!(
        demo.client()
            .post("/login", Some(json!({"nope": 1})))
            .await
            .status,
        400
    );
}

pub async fn logout_destroys_the_session_and_clears_the_cookie(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.post("/login", Some(json!({"user": "alice"}))).await;
    let before = client.clone();
    let reply = client.post("/logout", None).await;
    assert_eq!(reply.status, 200);
    let set = reply.set_cookie.expect("logout clears the cookie");
    assert!(
        set.starts_with("id=;") && set.contains("Max-Age=0"),
        "{set}"
    );
    assert_eq!(client.cookie, None);
    let mut replayed = before;
    assert_eq!(replayed.get("/me").await.body["user"], json!(null));
    assert_eq!(replayed.get("/session").await.body["data"], json!({}));
}

pub async fn slow_request_racing_logout_does_not_resurrect_the_session(store: &str) {
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.post("/login", Some(json!({"user": "alice"}))).await;
    client.put("/kv/before", json!(1)).await;
    let slow_client = client.clone();
    let slow = tokio::spawn(async move {
        slow_client
            .send_keeping_cookie(Method::PUT, "/kv/late?delay_ms=1500", Some(json!("late")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut logout = client.clone();
    assert_eq!(logout.post("/logout", None).await.status, 200);
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status, 409,
        "a change to a session that ended meanwhile is refused, not reported as saved"
    );
    assert_eq!(slow.set_cookie, None);
    let mut replayed = client.clone();
    let after = replayed.get("/session").await;
    assert_eq!(
        after.body["data"],
        json!({}),
        "the session came back: {after:?}"
    );
    assert_eq!(after.body["user"], json!(null));
}

pub async fn logout_everywhere_ends_only_that_users_sessions(store: &str) {
    let demo = demo(store, &[]);
    let user = format!("alice-{}", rand_tag());
    let mut laptop = demo.client();
    let mut phone = demo.client();
    let mut bob = demo.client();
    laptop.post("/login", Some(json!({"user": user}))).await;
    phone.post("/login", Some(json!({"user": user}))).await;
    bob.post(
        "/login",
        Some(json!({"user": format!("bob-{}", rand_tag())})),
    )
    .await;
    let listed = laptop.get("/sessions").await;
    assert_eq!(
        listed.body["sessions"].as_array().unwrap().len(),
        2,
        "{listed:?}"
    );
    let reply = laptop.post("/logout-everywhere", None).await;
    assert_eq!((reply.status, &reply.body["deleted"]), (200, &json!(2)));
    assert_eq!(laptop.cookie, None, "the caller's cookie is cleared too");
    assert_eq!(phone.get("/me").await.body["user"], json!(null));
    assert!(
        bob.get("/me").await.body["user"]
            .as_str()
            .unwrap()
            .starts_with("bob-")
    );
    assert_eq!(
        demo.client().post("/logout-everywhere", None).await.status,
        401
    );
}

pub async fn concurrent_requests_changing_different_keys_all_persist(store: &str) {
    const REQUESTS: usize = 24;
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.get("/counter").await;
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_keeping_cookie(
                        Method::PUT,
                        &format!("/kv/k{i}?delay_ms=50"),
                        Some(json!(i)),
                    )
                    .await
                    .status
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let data = client.get("/session").await.body["data"].clone();
    for i in 0..REQUESTS {
        assert_eq!(data[format!("k{i}")], json!(i), "k{i} was lost: {data}");
    }
    assert_eq!(data["count"], 1);
}

pub async fn idle_timeout_ends_an_unused_session(store: &str) {
    let demo = demo(store, &[("UNSTUCK_IDLE_SECS", "1")]);
    let mut client = demo.client();
    client.get("/counter").await;
    assert_eq!(client.get("/counter").await.body["count"], 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client.get("/counter").await.body["count"],
        1,
        "idle session survived"
    );
}

pub async fn activity_keeps_a_session_past_the_idle_timeout(store: &str) {
    let demo = demo(store, &[("UNSTUCK_IDLE_SECS", "2")]);
    let mut client = demo.client();
    client.get("/counter").await;
    // Read-only requests for twice the idle timeout: the throttled refresh keeps
    // the session alive.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            client.get("/peek").await.body["count"],
            1,
            "active session expired"
        );
    }
}

pub async fn absolute_timeout_ends_even_an_active_session(store: &str) {
    let demo = demo(
        store,
        &[("UNSTUCK_IDLE_SECS", "60"), ("UNSTUCK_ABSOLUTE_SECS", "2")],
    );
    let mut client = demo.client();
    let mut last = 0;
    let mut reset = false;
    for _ in 0..12 {
        let reply = client.get("/counter").await;
        if reply.status == 409 {
            // The session reached its absolute deadline between this request's
            // load and its save: the change was refused, the session is over.
            reset = true;
            break;
        }
        let count = reply.body["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a count: {reply:?}"));
        if count < last {
            reset = true;
            break;
        }
        last = count;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        reset,
        "the session outlived its absolute timeout (count reached {last})"
    );
    assert!(
        last >= 4,
        "the session ended too early (count reached {last})"
    );
}

pub async fn instances_sharing_a_store_serve_one_session(store: &str) {
    let env = [("UNSTUCK_SECRET", SECRET_A)];
    let a = demo(store, &[&env[..], &[("UNSTUCK_INSTANCE", "a")]].concat());
    let b = demo(store, &[&env[..], &[("UNSTUCK_INSTANCE", "b")]].concat());
    let mut client = a.client();
    for n in 1..=20u64 {
        let base = if n % 2 == 0 { &b.base } else { &a.base };
        client.base = base.clone();
        let reply = client.get("/counter").await;
        assert_eq!(reply.body["count"], n);
        assert_eq!(reply.body["instance"], if n % 2 == 0 { "b" } else { "a" });
    }
}

pub async fn rotated_keys_are_accepted_across_instances(store: &str) {
    let old = demo(store, &[("UNSTUCK_SECRET", SECRET_A)]);
    let both = format!("{SECRET_B},{SECRET_A}");
    let rotated = demo(store, &[("UNSTUCK_SECRET", &both)]);
    let new_only = demo(store, &[("UNSTUCK_SECRET", SECRET_B)]);
    let mut client = old.client();
    client.get("/counter").await;
    client.base = rotated.base.clone();
    assert_eq!(
        client.get("/counter").await.body["count"],
        2,
        "old key still verifies"
    );
    // A new cookie from the rotated instance is signed with the new key.
    let mut fresh = rotated.client();
    fresh.get("/counter").await;
    fresh.base = new_only.base.clone();
    assert_eq!(
        fresh.get("/counter").await.body["count"],
        2,
        "new key signs"
    );
    client.base = new_only.base.clone();
    assert_eq!(
        client.get("/counter").await.body["count"],
        1,
        "retired key no longer verifies"
    );
}

pub async fn sessions_survive_the_loss_of_an_instance(store: &str) {
    let env = [("UNSTUCK_SECRET", SECRET_A)];
    let a = demo(store, &env);
    let b = demo(store, &env);
    let mut client = a.client();
    client.post("/login", Some(json!({"user": "carol"}))).await;
    client.get("/counter").await;
    drop(a);
    client.base = b.base.clone();
    assert_eq!(client.get("/me").await.body["user"], "carol");
    assert_eq!(client.get("/counter").await.body["count"], 2);
}

fn rand_tag() -> String {
    unstuck::SessionId::generate().storage_key().as_str()[..8].to_owned()
}
