//! Fuzz target `preamble`: see [`crust_fuzz::preamble`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::preamble(data));
