//! Fuzz target `bootstrap_config`: see [`crust_fuzz::bootstrap_config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::bootstrap_config(data));
