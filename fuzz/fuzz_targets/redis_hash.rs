//! `cargo fuzz run redis_hash`: see `unstuck::fuzzing::redis_hash` for the input format and
//! the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unstuck::fuzzing::redis_hash(data));
