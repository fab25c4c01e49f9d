//! Fuzz target `ping_nonce`: see [`crust_fuzz::ping_nonce`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::ping_nonce(data));
