//! The demo server contract on Redis standalone, Sentinel and Cluster, with
//! several demo instances sharing each deployment; and the demo through a Redis
//! outage.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::demo::Demo;
use common::redis_server::{self, RedisServer};

mod standalone {
    crate::common::demo_contract::demo_contract!(shared crate::common::redis_server::standalone_url());
}

mod sentinel {
    crate::common::demo_contract::demo_contract!(shared crate::common::redis_server::sentinel_url());
}

mod cluster {
    crate::common::demo_contract::demo_contract!(shared crate::common::redis_server::cluster_url());
}

#[tokio::test]
async fn redis_outage_is_a_503_and_the_demo_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let demo = Demo::start(&[("UNSTUCK_STORE", &redis.url())]);
    let mut client = demo.client();
    assert_eq!(client.get("/counter").await.body["count"], 1);

    redis.kill();
    let started = Instant::now();
    let reply = client.get("/counter").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow 503: {:?}",
        started.elapsed()
    );
    assert_eq!(
        client.get("/health").await.status,
        200,
        "routes without sessions keep working"
    );

    redis.restart();
    // The restarted server kept nothing (no persistence), so the session starts
    // over; what matters is that the same process serves sessions again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.get("/counter").await;
        if reply.status == 200 {
            assert_eq!(reply.body["count"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {reply:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.get("/counter").await.body["count"], 2);
}

#[tokio::test]
async fn no_session_id_reaches_redis_through_the_demo() {
    let redis = RedisServer::start();
    let demo = Demo::start(&[("UNSTUCK_STORE", &redis.url())]);
    let mut client = demo.client();
    client.get("/counter").await;
    let before_login = client.session_id_text().unwrap();
    client
        .post("/login", Some(serde_json::json!({"user": "dave"})))
        .await;
    let after_login = client.session_id_text().unwrap();
    let dump = redis_server::dump(redis.port(), "*");
    assert!(!dump.is_empty(), "the session should be in Redis");
    for (key, value) in dump {
        for id in [&before_login, &after_login] {
            assert!(
                !key.contains(id.as_str()) && !value.contains(id.as_str()),
                "ID in {key}"
            );
        }
    }
}

/// Many clients at once, each with its own session, spread over three demo
/// instances (two with the near cache, one without) on one Redis: every
/// counter ends exact, and every client saw only its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_concurrent_clients_across_instances_loses_nothing() {
    const CLIENTS: usize = 60;
    const REQUESTS: u64 = 50;
    let redis = RedisServer::start();
    let url = redis.url();
    let secret = (
        "UNSTUCK_SECRET",
        "a soak secret that is long enough for a key",
    );
    let instances = [
        Demo::start(&[("UNSTUCK_STORE", &url), ("UNSTUCK_NEAR_CACHE", "1"), secret]),
        Demo::start(&[("UNSTUCK_STORE", &url), ("UNSTUCK_NEAR_CACHE", "1"), secret]),
        Demo::start(&[("UNSTUCK_STORE", &url), secret]),
    ];
    let bases: Vec<String> = instances.iter().map(|d| d.base.clone()).collect();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let bases = bases.clone();
            tokio::spawn(async move {
                let mut client = common::demo::Client::new(&bases[c % bases.len()]);
                let tag = format!("client-{c}");
                client.put("/kv/owner", serde_json::json!(tag)).await;
                for n in 1..=REQUESTS {
                    client.base = bases[(c + n as usize) % bases.len()].clone();
                    let reply = client.get("/counter").await;
                    assert_eq!(reply.status, 200, "{reply:?}");
                    assert_eq!(reply.body["count"], n, "client {c} lost an increment");
                    let owner = client.get("/kv/owner").await;
                    assert_eq!(
                        owner.body["value"],
                        serde_json::json!(tag),
                        "sessions crossed"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let requests = CLIENTS as u64 * (2 * REQUESTS + 1);
    eprintln!(
        "soak: {requests} requests from {CLIENTS} clients over 3 instances in {:?}",
        started.elapsed()
    );
}

/// A logged-in client and the Redis key of its session hash (default prefix).
async fn session_with_hash(demo: &Demo) -> (common::demo::Client, String) {
    let (client, key) =
        common::demo_contract::logged_in_with_a_value(demo, serde_json::json!("kept")).await;
    (client, format!("unstuck:{{{key}}}"))
}

fn cli(args: &[&str]) -> String {
    redis_server::cli(redis_server::standalone_port(), args).expect("redis-cli")
}

#[tokio::test]
async fn a_session_rewritten_raw_in_todays_format_works_through_the_demo() {
    let demo = Demo::start(&[("UNSTUCK_STORE", &redis_server::standalone_url())]);
    let (mut client, hash) = session_with_hash(&demo).await;
    // Rewrite the hash exactly as the create script of releases before sizes
    // and formats wrote it: the same fields, `m:v` 1, no `m:sz`, no `m:fmt`.
    let fields = cli(&["HGETALL", &hash]);
    let fields: Vec<&str> = fields.lines().collect();
    let expires = cli(&["HGET", &hash, "m:expires"]);
    let mut hset = vec!["HSET", hash.as_str()];
    for pair in fields.chunks(2) {
        match pair[0] {
            "m:sz" | "m:v" => {}
            field => hset.extend([field, pair[1]]),
        }
    }
    hset.extend(["m:v", "1"]);
    cli(&["DEL", &hash]);
    cli(&hset);
    cli(&["PEXPIREAT", &hash, expires.trim()]);
    assert!(cli(&["HGET", &hash, "m:sz"]).trim().is_empty());

    let session = client.get("/session").await;
    assert_eq!(session.status, 200, "{session:?}");
    assert_eq!(session.body["data"]["note"], "kept");
    assert!(session.body["user"].as_str().unwrap().starts_with("fmt-"));
    assert_eq!(
        client.put("/kv/more", serde_json::json!(1)).await.status,
        200
    );
    assert!(
        cli(&["HGET", &hash, "m:sz"]).trim().starts_with("2:"),
        "the first save counts the old record's size"
    );
    let big = serde_json::json!("x".repeat(70_000));
    assert_eq!(client.put("/kv/big", big).await.status, 413);

    // A record from a newer release is a clear error, never misread.
    cli(&["HSET", &hash, "m:fmt", "2"]);
    let before = cli(&["HGETALL", &hash]);
    assert_eq!(client.get("/session").await.status, 500);
    assert_eq!(cli(&["HGETALL", &hash]), before, "the newer record changed");
}
