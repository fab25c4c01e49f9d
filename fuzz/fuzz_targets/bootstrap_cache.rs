//! Fuzz target `bootstrap_cache`: see [`crust_fuzz::bootstrap_cache`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::bootstrap_cache(data));
