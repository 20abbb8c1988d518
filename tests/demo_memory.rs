//! The demo server contract on the memory store, black-box over HTTP.

mod common;

use common::demo::run_to_exit;

common::demo_contract::demo_contract!("memory".to_owned());

#[test]
fn bad_configuration_is_a_clear_startup_error() {
    let cases: [(&[(&str, &str)], &str); 10] = [
        (&[("UNSTUCK_SECRET", "short")], "at least 32 bytes"),
        (
            &[("UNSTUCK_STORE", "mongodb://x")],
            "not a store this demo knows",
        ),
        (&[("UNSTUCK_IDLE_SECS", "soon")], "UNSTUCK_IDLE_SECS"),
        (
            &[("UNSTUCK_COOKIE_SECURE", "maybe")],
            "UNSTUCK_COOKIE_SECURE",
        ),
        (&[("UNSTUCK_LISTEN", "not an address")], "cannot listen"),
        (
            &[("UNSTUCK_REPLICA_ACKS", "1")],
            "UNSTUCK_REPLICA_ACKS=1 works with Redis stores only",
        ),
        (
            &[("UNSTUCK_REPLICA_ACKS", "some")],
            "UNSTUCK_REPLICA_ACKS must be a whole number",
        ),
        (
            &[("UNSTUCK_MAX_SESSION_BYTES", "0")],
            "UNSTUCK_MAX_SESSION_BYTES must be a positive",
        ),
        (
            &[("UNSTUCK_MAX_SESSIONS_PER_USER", "three")],
            "UNSTUCK_MAX_SESSIONS_PER_USER must be a positive",
        ),
        (
            &[("UNSTUCK_SESSION_CAP_POLICY", "lru")],
            "UNSTUCK_SESSION_CAP_POLICY must be evict-oldest or refuse",
        ),
    ];
    for (env, message) in cases {
        let (status, stderr) = run_to_exit(env);
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(message), "{env:?}: {stderr}");
    }
}
