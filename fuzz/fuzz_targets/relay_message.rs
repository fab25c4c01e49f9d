//! Fuzz target `relay_message`: see [`crust_fuzz::relay_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::relay_message(data));
