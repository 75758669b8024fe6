//! Fuzzes `shardhook::fuzzing::config`: see its doc for what the input means and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardhook::fuzzing::config(data));
