//! `cargo fuzz run header`: see `unstuck::fuzzing::header` for the input format and
//! the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unstuck::fuzzing::header(data));
