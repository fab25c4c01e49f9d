//! Fuzz target `probe_datagram`: see [`crust_fuzz::probe_datagram`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::probe_datagram(data));
