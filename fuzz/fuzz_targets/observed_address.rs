//! Fuzz target `observed_address`: see [`crust_fuzz::observed_address`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::observed_address(data));
