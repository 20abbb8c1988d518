//! `cargo fuzz run tower_sessions_record`: see `unstuck::fuzzing::tower_sessions_record` for the input format and
//! the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unstuck::fuzzing::tower_sessions_record(data));
