//! Every kind of damaged data file stops start-up with an error naming the file and the fault,
//! and nothing in the data directory is changed by the failed start.

mod common;

use common::blocking::Blocking;
use common::{flip, patch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quotad::keys::NewKey;
use quotad::{FakeClock, LocalOptions, LocalStore};

const HEADER: u64 = 4096;

fn clock() -> FakeClock {
    FakeClock::at_secs(1_780_000_000)
}

/// A data directory with 3 keys that have been used.
fn populated() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap());
    let mut raws = Vec::new();
    for _ in 0..3 {
        let k = e
            .create_key(NewKey {
                consumer: "c".into(),
                tier: "pro".into(),
                ..Default::default()
            })
            .unwrap();
        for _ in 0..5 {
            assert!(e.check(Some(&k.raw), None, 1).verdict.is_allowed());
        }
        raws.push(k.raw);
    }
    drop(e);
    (tmp, dir, raws)
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "lock")
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Opens `dir` expecting failure; checks the message names `file` and contains `fault`, and that
/// no file changed.
fn refuses(dir: &Path, file: &str, fault: &str) {
    let before = snapshot(dir);
    let err = LocalStore::open(LocalOptions::new(dir), Arc::new(clock()))
        .expect_err("start-up must refuse a damaged data directory")
        .to_string();
    assert!(err.contains(file), "error does not name {file}: {err}");
    assert!(err.contains(fault), "error does not say {fault:?}: {err}");
    assert!(snapshot(dir) == before, "a failed start-up changed files");
}

#[test]
fn a_damaged_catalog_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("catalog.json");
    let len = std::fs::metadata(&p).unwrap().len();
    flip(&p, len / 2);
    refuses(&dir, "catalog.json", "checksum mismatch");
}

#[test]
fn a_truncated_catalog_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("catalog.json");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    refuses(&dir, "catalog.json", "corrupt");
}

#[test]
fn a_missing_catalog_with_key_files_present_is_refused() {
    let (_t, dir, _) = populated();
    std::fs::remove_file(dir.join("catalog.json")).unwrap();
    refuses(&dir, "catalog.json", "missing");
}

#[test]
fn a_key_file_with_a_bad_header_is_refused() {
    let (_t, dir, _) = populated();
    flip(&dir.join("keys-00000.qd"), 20);
    refuses(&dir, "keys-00000.qd", "header checksum mismatch");
}

#[test]
fn a_file_of_another_kind_is_refused() {
    let (_t, dir, _) = populated();
    patch(&dir.join("counters-00000.qd"), 0, b"NOTQUOTA");
    refuses(&dir, "counters-00000.qd", "bad magic");
}

#[test]
fn a_file_of_another_format_version_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("keys-00000.qd");
    let mut header = std::fs::read(&p).unwrap()[..48].to_vec();
    header[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&header[..40]);
    header[40..44].copy_from_slice(&crc.to_le_bytes());
    patch(&p, 0, &header);
    refuses(&dir, "keys-00000.qd", "unsupported format version 2");
}

#[test]
fn a_truncated_counter_file_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("counters-00000.qd");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(HEADER + 1000).unwrap();
    refuses(&dir, "counters-00000.qd", "truncated");
}

#[test]
fn a_file_shorter_than_its_header_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("keys-00000.qd");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(100)
        .unwrap();
    refuses(&dir, "keys-00000.qd", "truncated");
}

#[test]
fn a_key_record_damaged_in_both_copies_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("keys-00000.qd");
    let slot = HEADER + 512;
    flip(&p, slot + 100);
    flip(&p, slot + 256 + 100);
    refuses(
        &dir,
        "keys-00000.qd",
        "slot 1: key record: both copies fail",
    );
}

#[test]
fn a_counter_slot_damaged_in_both_copies_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("counters-00000.qd");
    let slot = HEADER + 2 * 128;
    flip(&p, slot + 40);
    flip(&p, slot + 64 + 40);
    refuses(
        &dir,
        "counters-00000.qd",
        "slot 2: counter slot: both copies fail",
    );
}

#[test]
fn counter_data_past_the_last_acknowledged_key_is_cleared() {
    let (_t, dir, _) = populated();
    let p = dir.join("counters-00000.qd");
    patch(&p, HEADER + 50 * 128 + 16, &[1, 2, 3]);
    let e = LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap();
    drop(e);
    let bytes = std::fs::read(&p).unwrap();
    let at = (HEADER + 50 * 128) as usize;
    assert!(bytes[at..at + 128].iter().all(|&b| b == 0));
}

#[test]
fn a_key_record_past_the_last_acknowledged_key_is_discarded() {
    let (_t, dir, _) = populated();
    let p = dir.join("keys-00000.qd");
    // A complete record in slot 3 that was never acknowledged: a creation killed before its ack.
    let rec =
        std::fs::read(&p).unwrap()[(HEADER + 512) as usize..(HEADER + 1024) as usize].to_vec();
    patch(&p, HEADER + 3 * 512, &rec);
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap());
    assert_eq!(e.key_count(), 3);
}

/// Sets the clean-shutdown word of `acks-00000.qd` to "open", as a killed process leaves it.
fn mark_unclean(dir: &Path) {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&2u32.to_le_bytes());
    let word = u64::from(crc32c::crc32c(&b)) << 32;
    patch(&dir.join("acks-00000.qd"), 64 + 16, &word.to_le_bytes());
}

#[test]
fn files_from_another_data_directory_are_refused() {
    let (_t1, dir, _) = populated();
    let (_t2, other, _) = populated();
    std::fs::copy(
        other.join("counters-00000.qd"),
        dir.join("counters-00000.qd"),
    )
    .unwrap();
    refuses(&dir, "counters-00000.qd", "another data directory");
}

#[test]
fn a_missing_segment_before_a_present_one_is_refused() {
    let (_t, dir, _) = populated();
    std::fs::rename(dir.join("keys-00000.qd"), dir.join("keys-00001.qd")).unwrap();
    refuses(&dir, "keys-00000.qd", "missing");
}

fn newest_counter_half(p: &Path) -> u64 {
    let bytes = std::fs::read(p).unwrap();
    let seq = |at: u64| u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
    if seq(HEADER + 64) > seq(HEADER) {
        1
    } else {
        0
    }
}

#[test]
fn a_torn_newest_counter_copy_after_a_kill_falls_back_to_the_previous_state() {
    let (_t, dir, raws) = populated();
    mark_unclean(&dir);
    let p = dir.join("counters-00000.qd");
    let newest = newest_counter_half(&p);
    flip(&p, HEADER + newest * 64 + 48); // inside month_used of the newest copy
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap());
    let id = quotad::keys::format::parse(&raws[0]).unwrap();
    assert_eq!(
        e.usage(id).unwrap().monthly_used,
        4,
        "the write in progress is lost, nothing else"
    );
    assert!(e.check(Some(&raws[0]), None, 1).verdict.is_allowed());
    drop(e);
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap());
    assert_eq!(e.usage(id).unwrap().monthly_used, 5);
}

#[test]
fn a_damaged_newest_counter_copy_after_a_clean_stop_is_refused() {
    let (_t, dir, _) = populated();
    let p = dir.join("counters-00000.qd");
    let newest = newest_counter_half(&p);
    flip(&p, HEADER + newest * 64 + 48);
    refuses(
        &dir,
        "counters-00000.qd",
        "slot 0: the newest counter copy fails",
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_clock_behind_the_stored_month_keeps_usage_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let july = || FakeClock::at_secs(1_784_116_800); // 2026-07-15
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(july())).unwrap());
    let k = e
        .create_key(NewKey {
            consumer: "c".into(),
            tier: "pro".into(),
            ..Default::default()
        })
        .unwrap();
    for _ in 0..7 {
        assert!(e.check(Some(&k.raw), None, 1).verdict.is_allowed());
    }
    drop(e);

    // The clock is two months behind (a VM before its time sync): usage kept, one WARN.
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let may = FakeClock::at_secs(1_778_414_400); // 2026-05-10
    let e = tracing::subscriber::with_default(subscriber, || {
        Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(may)).unwrap())
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("WARN")
            && text.contains("2026-07")
            && text.contains("2026-05")
            && text.contains("clock is behind"),
        "{text}"
    );
    assert_eq!(e.usage(k.info.id).unwrap().monthly_used, 7);
    assert!(e.check(Some(&k.raw), None, 1).verdict.is_allowed());
    assert_eq!(e.usage(k.info.id).unwrap().monthly_used, 8);
    drop(e);

    // The clock corrected: the stored month never went back, the usage is all there.
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(july())).unwrap());
    assert_eq!(e.usage(k.info.id).unwrap().monthly_used, 8);
    drop(e);
    // A month that moved forward starts at 0, as always.
    let august = FakeClock::at_secs(1_785_672_000);
    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(august)).unwrap());
    assert_eq!(e.usage(k.info.id).unwrap().monthly_used, 0);
}

#[test]
fn a_format_1_directory_is_upgraded_keeping_keys_and_usage() {
    let (_t, dir, raws) = populated();
    // Make it what an older quotad left: no acks file, a version 1 catalog header.
    std::fs::remove_file(dir.join("acks-00000.qd")).unwrap();
    let p = dir.join("catalog.json");
    let text = std::fs::read(&p).unwrap();
    let nl = text.iter().position(|&b| b == b'\n').unwrap();
    let json = &text[nl + 1..text.len() - 1];
    let mut v1 = format!("quotad-catalog v1 crc32={:08x}\n", crc32c::crc32c(json)).into_bytes();
    v1.extend_from_slice(json);
    v1.push(b'\n');
    std::fs::write(&p, v1).unwrap();

    let e = Blocking::new(LocalStore::open(LocalOptions::new(&dir), Arc::new(clock())).unwrap());
    assert_eq!(e.key_count(), 3);
    let id = quotad::keys::format::parse(&raws[0]).unwrap();
    assert_eq!(e.usage(id).unwrap().monthly_used, 5);
    assert!(e.check(Some(&raws[1]), None, 1).verdict.is_allowed());
    drop(e);
    assert!(dir.join("acks-00000.qd").exists());
    assert!(std::fs::read_to_string(&p)
        .unwrap()
        .starts_with("quotad-catalog v2 gen="));
    // From now on, the directory has the acks' protection: a zeroed counter slot is refused.
    patch(&dir.join("counters-00000.qd"), HEADER, &[0; 128]);
    refuses(&dir, "counters-00000.qd", "slot 0: counter slot is zeroed");
}
