//! Fuzz target `frame_decoder`: see [`crust_fuzz::frame_decoder`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::frame_decoder(data));
