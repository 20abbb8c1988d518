//! The store conformance suite lives in the crate (`unstuck::test_util`,
//! feature `test-util`) so that other stores can run it; the tests here use it
//! under the name they always had.
//!
//! ```ignore
//! mod common;
//! common::conformance::store_conformance!(unstuck::MemoryStore::new());
//! ```

pub(crate) use unstuck::store_conformance;
