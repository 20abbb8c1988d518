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
            absolute_timeout_ends_even_an_active_session,
            oversized_put_is_413_and_changes_nothing,
            concurrent_puts_that_together_pass_the_limit_are_refused_at_save,
            logins_beyond_the_user_cap_end_the_oldest_sessions,
            logins_beyond_a_refusing_cap_are_409_and_log_nobody_out
        );
    };
    (shared $store:expr) => {
        $crate::common::demo_contract::demo_contract!($store);
        $crate::common::demo_contract::demo_contract!(@tests $store;
            instances_sharing_a_store_serve_one_session,
            rotated_keys_are_accepted_across_instances,
            sessions_survive_the_loss_of_an_instance,
            racing_logins_on_two_instances_never_pass_the_user_cap
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

/// A JSON string of `len` bytes of text.
fn text(len: usize) -> serde_json::Value {
    json!("x".repeat(len))
}

pub async fn oversized_put_is_413_and_changes_nothing(store: &str) {
    // The default limit: 64 KiB of keys and JSON text.
    let demo = demo(store, &[]);
    let mut client = demo.client();
    assert_eq!(client.put("/kv/first", text(40_000)).await.status, 200);
    let before = client.get("/session").await.body["data"].clone();
    for (key, len) in [("second", 30_000), ("huge", 1_500_000)] {
        let reply = client.put(&format!("/kv/{key}"), text(len)).await;
        assert_eq!(reply.status, 413, "{key}: {:?}", reply.body);
        assert!(reply.body["instance"].is_string(), "{:?}", reply.body);
        assert!(
            !reply.body.to_string().contains("xxxxxxxx"),
            "the error repeats the value"
        );
        assert_eq!(reply.set_cookie, None);
    }
    assert_eq!(client.get("/session").await.body["data"], before);
    // Replacing the big value by a smaller one is fine.
    assert_eq!(client.put("/kv/first", text(60_000)).await.status, 200);
    assert_eq!(client.get("/kv/first").await.body["value"], text(60_000));
}

pub async fn concurrent_puts_that_together_pass_the_limit_are_refused_at_save(store: &str) {
    // Both requests load the session before either saves (each waits before
    // answering), so each fits alone; the store refuses the second save.
    let demo = demo(store, &[]);
    let mut client = demo.client();
    client.put("/kv/seed", json!(1)).await;
    let puts: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|key| {
            let client = client.clone();
            tokio::spawn(async move {
                let path = format!("/kv/{key}?delay_ms=300");
                let reply = client
                    .send_keeping_cookie(Method::PUT, &path, Some(text(40_000)))
                    .await;
                (key, reply.status)
            })
        })
        .collect();
    let mut saved = Vec::new();
    let mut statuses = Vec::new();
    for put in puts {
        let (key, status) = put.await.unwrap();
        statuses.push(status);
        if status == 200 {
            saved.push(key);
        }
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 413]);
    let data = client.get("/session").await.body["data"].clone();
    let mut keys: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = [vec!["seed"], saved].concat();
    expected.sort_unstable();
    assert_eq!(keys, expected, "only the saved PUT is there");
}

/// Logs `count` new clients in as `user`, one after another; returns them.
async fn log_in_clients(demo: &Demo, user: &str, count: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = demo.client();
        let reply = client.post("/login", Some(json!({"user": user}))).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        clients.push(client);
    }
    clients
}

/// Which of `clients` are logged in as `user`.
async fn logged_in(clients: &mut [Client], user: &str) -> Vec<bool> {
    let mut who = Vec::new();
    for client in clients {
        who.push(client.get("/me").await.body["user"] == json!(user));
    }
    who
}

pub async fn logins_beyond_the_user_cap_end_the_oldest_sessions(store: &str) {
    let demo = demo(store, &[("UNSTUCK_MAX_SESSIONS_PER_USER", "2")]);
    let user = format!("capped-{}", rand_tag());
    let mut clients = log_in_clients(&demo, &user, 4).await;
    let who = logged_in(&mut clients, &user).await;
    assert_eq!(who.iter().filter(|&&w| w).count(), 2, "{who:?}");
    assert!(
        !who[0] && who[3],
        "the oldest went, the newest stayed: {who:?}"
    );
    let listed = clients[3].get("/sessions").await;
    assert_eq!(listed.body["sessions"].as_array().unwrap().len(), 2);
    // Another user is not affected.
    let mut other = log_in_clients(&demo, &format!("other-{}", rand_tag()), 1).await;
    assert_eq!(other[0].get("/me").await.status, 200);
    assert_eq!(logged_in(&mut clients, &user).await, who);
}

pub async fn logins_beyond_a_refusing_cap_are_409_and_log_nobody_out(store: &str) {
    let demo = demo(
        store,
        &[
            ("UNSTUCK_MAX_SESSIONS_PER_USER", "1"),
            ("UNSTUCK_SESSION_CAP_POLICY", "refuse"),
        ],
    );
    let user = format!("refused-{}", rand_tag());
    let mut first = log_in_clients(&demo, &user, 1).await.remove(0);
    let mut second = demo.client();
    second.put("/kv/cart", json!([1, 2])).await;
    let refused = second.post("/login", Some(json!({"user": user}))).await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(first.get("/me").await.body["user"], json!(user));
    assert_eq!(second.get("/me").await.body["user"], json!(null));
    assert_eq!(second.get("/kv/cart").await.body["value"], json!([1, 2]));
    first.post("/logout", None).await;
    assert_eq!(
        second
            .post("/login", Some(json!({"user": user})))
            .await
            .status,
        200
    );
    assert_eq!(second.get("/me").await.body["user"], json!(user));
}

pub async fn racing_logins_on_two_instances_never_pass_the_user_cap(store: &str) {
    const LOGINS: usize = 10;
    let env = [
        ("UNSTUCK_SECRET", SECRET_A),
        ("UNSTUCK_MAX_SESSIONS_PER_USER", "2"),
    ];
    let a = demo(store, &env);
    let b = demo(store, &env);
    let user = format!("racer-{}", rand_tag());
    let logins: Vec<_> = (0..LOGINS)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.client() } else { b.client() };
            let user = user.clone();
            tokio::spawn(async move {
                let reply = client.post("/login", Some(json!({"user": user}))).await;
                // 409: evicted by a racing login before its own was saved.
                assert!(matches!(reply.status, 200 | 409), "{reply:?}");
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for login in logins {
        clients.push(login.await.unwrap());
    }
    let who = logged_in(&mut clients, &user).await;
    assert_eq!(who.iter().filter(|&&w| w).count(), 2, "{who:?}");
    let mut survivor = clients.into_iter().zip(who).find(|(_, w)| *w).unwrap().0;
    let listed = survivor.get("/sessions").await;
    assert_eq!(
        listed.body["sessions"].as_array().unwrap().len(),
        2,
        "{listed:?}"
    );
}

/// Logs a new client in as a fresh user and stores `value` under `note`;
/// returns the client and its session's storage key (from `GET /sessions`),
/// for tests that look at the record in the store.
#[allow(dead_code)] // used by the store-specific demo tests
pub async fn logged_in_with_a_value(demo: &Demo, value: serde_json::Value) -> (Client, String) {
    let mut client = demo.client();
    let user = format!("fmt-{}", rand_tag());
    client.post("/login", Some(json!({"user": user}))).await;
    assert_eq!(client.put("/kv/note", value).await.status, 200);
    let listed = client.get("/sessions").await;
    let key = listed.body["sessions"][0]["key"].as_str().unwrap();
    (client, key.to_owned())
}

fn rand_tag() -> String {
    unstuck::SessionId::generate().storage_key().as_str()[..8].to_owned()
}
