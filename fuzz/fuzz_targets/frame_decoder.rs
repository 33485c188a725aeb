//! Arbitrary bytes through the binary protocol's frame decoder.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::frame_decoder(data));
