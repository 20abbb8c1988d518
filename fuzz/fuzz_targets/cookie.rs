//! `cargo fuzz run cookie`: see `unstuck::fuzzing::cookie` for the input format and
//! the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| unstuck::fuzzing::cookie(data));
