//! Shared test support: the store conformance suite and helpers to reach (or
//! start) real servers.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres_server;
