//! Shared test support: the store conformance suite, the demo contract suite,
//! and helpers to reach (or start) real servers.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod app;
pub mod browser;
#[cfg(feature = "redis")]
pub mod cache_rounds;
pub mod conformance;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub mod containers;
pub mod demo;
pub mod demo_contract;
#[cfg(feature = "redis")]
pub mod failover_load;
pub mod hogs;
pub mod instrumented;
#[cfg(feature = "postgres")]
pub mod postgres_server;
#[cfg(feature = "redis")]
pub mod redis_server;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub mod stored_format;
#[cfg(any(feature = "redis", feature = "postgres"))]
pub mod watchdog;
