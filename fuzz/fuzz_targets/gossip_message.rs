//! Fuzz target `gossip_message`: see [`crust_fuzz::gossip_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::gossip_message(data));
