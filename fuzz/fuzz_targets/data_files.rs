//! Damaged data files (catalog, key records, counters) at start-up.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::data_files(data));
