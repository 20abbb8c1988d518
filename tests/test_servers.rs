//! Where the test harness gets its servers (`common::containers::decide_source`):
//! a forced choice, then local binaries, then a Docker engine, else a failure
//! that says how to get either.
#![cfg(any(feature = "redis", feature = "postgres"))]

mod common;

use common::containers::{Source, decide_source};

const HINT: &str = "apt-get install redis-server";

fn engine_up() -> Result<(), String> {
    Ok(())
}

fn engine_down() -> Result<(), String> {
    Err("Cannot connect to the Docker daemon".to_owned())
}

fn not_asked() -> Result<(), String> {
    panic!("the Docker engine must not be asked")
}

#[test]
fn installed_binaries_come_before_containers() {
    let source = decide_source(None, "Redis", || true, not_asked, HINT);
    assert_eq!(source, Ok(Source::Binaries));
    let source = decide_source(Some(""), "Redis", || true, not_asked, HINT);
    assert_eq!(source, Ok(Source::Binaries));
}

#[test]
fn containers_serve_when_binaries_are_missing_and_an_engine_answers() {
    let source = decide_source(None, "Redis", || false, engine_up, HINT);
    assert_eq!(source, Ok(Source::Containers));
}

#[test]
fn neither_binaries_nor_an_engine_fails_naming_both_ways() {
    let why = decide_source(None, "Redis", || false, engine_down, HINT).unwrap_err();
    assert!(why.contains("no Redis servers"), "{why}");
    assert!(why.contains(HINT), "{why}");
    assert!(why.contains("scripts/with-docker"), "{why}");
    assert!(why.contains("Cannot connect to the Docker daemon"), "{why}");
}

#[test]
fn forced_containers_use_the_engine_even_with_binaries_installed() {
    let source = decide_source(Some("containers"), "PostgreSQL", || true, engine_up, HINT);
    assert_eq!(source, Ok(Source::Containers));
}

#[test]
fn forced_containers_without_an_engine_fail_with_an_install_hint() {
    let why =
        decide_source(Some("containers"), "PostgreSQL", || true, engine_down, HINT).unwrap_err();
    assert!(why.contains("UNSTUCK_TEST_SERVERS=containers"), "{why}");
    assert!(why.contains("install Docker"), "{why}");
    assert!(why.contains("Cannot connect to the Docker daemon"), "{why}");
}

#[test]
fn forced_binaries_never_ask_the_engine() {
    let source = decide_source(Some("binaries"), "PostgreSQL", || false, not_asked, HINT);
    assert_eq!(source, Ok(Source::Binaries));
}

#[test]
fn an_unknown_choice_is_an_error() {
    let why = decide_source(Some("docker"), "Redis", || true, engine_up, HINT).unwrap_err();
    assert!(why.contains("expected `binaries` or `containers`"), "{why}");
}
