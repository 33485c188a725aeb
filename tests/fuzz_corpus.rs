//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' bodies,
//! so every `cargo test` runs what the fuzzers found interesting.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod targets;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "empty corpus for {target}");
    v
}

#[test]
fn frame_decoder_corpus_replays_without_panics() {
    for (name, data) in corpus("frame_decoder") {
        let r = std::panic::catch_unwind(|| targets::frame_decoder(&data));
        assert!(r.is_ok(), "frame_decoder panicked on corpus entry {name}");
    }
}

#[test]
fn data_files_corpus_replays_without_panics() {
    for (name, data) in corpus("data_files") {
        let r = std::panic::catch_unwind(|| targets::data_files(&data));
        assert!(r.is_ok(), "data_files panicked on corpus entry {name}");
    }
    targets::cleanup();
}
