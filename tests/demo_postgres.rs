//! The demo server contract on PostgreSQL, with several demo instances sharing
//! one database.
#![cfg(feature = "postgres")]

mod common;

common::demo_contract::demo_contract!(shared common::postgres_server::shared().url.clone());
