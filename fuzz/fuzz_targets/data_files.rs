//! Damaged data files (catalog, key records, counters) at start-up.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad::fuzzing::data_files(data));
