//! Fuzzes `shardhook::fuzzing::control_command`: see its doc for what the input means and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardhook::fuzzing::control_command(data));
