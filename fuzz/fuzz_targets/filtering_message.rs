//! Fuzz target `filtering_message`: see [`crust_fuzz::filtering_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::filtering_message(data));
