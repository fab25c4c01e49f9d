//! Fuzz target `endpoint_text`: see [`crust_fuzz::endpoint_text`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::endpoint_text(data));
