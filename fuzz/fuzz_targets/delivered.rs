//! Fuzz target `delivered`: see [`crust_fuzz::delivered`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::delivered(data));
