//! Fuzz target `punch_message`: see [`crust_fuzz::punch_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::punch_message(data));
