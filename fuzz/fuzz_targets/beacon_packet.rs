//! Fuzz target `beacon_packet`: see [`crust_fuzz::beacon_packet`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::beacon_packet(data));
