//! Fuzz target `message_decoder`: see [`crust_fuzz::message_decoder`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::message_decoder(data));
