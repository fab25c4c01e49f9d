//! Fuzz target `identity_pem`: see [`crust_fuzz::identity_pem`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| crust_fuzz::identity_pem(data));
