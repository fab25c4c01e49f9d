//! Fuzz target `peer_addr_text`: see [`crust_fuzz::peer_addr_text`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::peer_addr_text(data));
