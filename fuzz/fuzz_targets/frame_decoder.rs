//! Arbitrary bytes through the binary protocol's frame decoder.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad::fuzzing::frame_decoder(data));
