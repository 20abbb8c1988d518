//! `cargo fuzz run postgres_row`: see `unstuck::fuzzing::postgres_row` for the input format and
//! the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unstuck::fuzzing::postgres_row(data));
