//! The bodies of the fuzz targets, shared by the cargo-fuzz targets (`fuzz_targets/`) and
//! `tests/fuzz_corpus.rs` (which includes this file as a module and replays the committed corpora
//! on every `cargo test`). Uses only quotad's public API.
//!
//! - [`frame_decoder`]: arbitrary bytes through the binary protocol decoder, the way a connection
//!   reads them. It must never panic, never read outside the buffer and never allocate.
//! - [`data_files`]: patches applied to a real data directory (catalog, key records, counters),
//!   which is then opened. Opening must fail with an error naming a file, or succeed and serve
//!   checks; never panic, never hang.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use quotad::keys::NewKey;
use quotad::protocol::frame::{self, BatchIter, DecodeError, Frame};
use quotad::store::KeyQuery;
use quotad::{CheckRequest, FakeClock, LocalOptions, LocalStore, Store};

/// Runs a store call that never waits (the local store's checks and reads) to completion.
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A runtime for the store's admin calls (they run on tokio's blocking pool).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn check(s: &LocalStore, key: &str, scope: &str) {
    let req = CheckRequest {
        key: Some(key),
        scope: Some(scope),
        cost: 1,
    };
    now(s.check(req, None, |_| ()));
}

/// Decodes every frame in `data` as the server does, checking the decoder's invariants.
pub fn frame_decoder(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match frame::decode(&data[at..]) {
            Ok((f, used)) => {
                assert!(used >= frame::HEADER_LEN && at + used <= data.len());
                if let Frame::Batch { count, body, .. } = f {
                    assert!(count <= frame::MAX_BATCH);
                    let n = BatchIter::new(body, count)
                        .inspect(|c| {
                            assert!(
                                c.key.len() <= frame::MAX_KEY && c.scope.len() <= frame::MAX_SCOPE
                            )
                        })
                        .count();
                    assert_eq!(n, count, "a validated batch yields every check");
                }
                if let Frame::Check { req, .. } = f {
                    assert!(req.key.len() <= frame::MAX_KEY && req.scope.len() <= frame::MAX_SCOPE);
                }
                at += used;
            }
            Err(DecodeError::Incomplete) => break,
            Err(DecodeError::Fatal { .. }) => break,
        }
    }
    // The client-side decoder over the same bytes.
    let mut at = 0;
    while let Ok((_, _, payload, used)) = frame::decode_any(&data[at..]) {
        assert!(payload.len() <= frame::MAX_PAYLOAD);
        at += used;
    }
}

struct Template {
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>, u64)>,
    key: String,
}

/// How much of a segment file the fuzzer may patch: the header and the first slots.
const PATCH_WINDOW: u64 = 4096 + 8 * 512;

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("quotad-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = FakeClock::at_secs(1_780_000_000);
        let key = {
            let e = LocalStore::open(LocalOptions::new(&dir), Arc::new(clock.clone()))
                .expect("template");
            let rt = runtime();
            let mut keys = Vec::new();
            for i in 0..3 {
                let k = rt
                    .block_on(e.create_key(NewKey {
                        consumer: format!("c{i}"),
                        tier: "free".into(),
                        scopes: vec!["a:read".into()],
                        ..Default::default()
                    }))
                    .expect("key");
                for _ in 0..=i {
                    check(&e, &k.raw, "a:read");
                }
                keys.push(k.raw);
            }
            keys.remove(0)
        };
        let files = ["catalog.json", "keys-00000.qd", "counters-00000.qd"]
            .iter()
            .map(|f| {
                let p = dir.join(f);
                let len = std::fs::metadata(&p).expect("template file").len();
                let keep = len.min(PATCH_WINDOW) as usize;
                let bytes = std::fs::read(&p).expect("template file")[..keep].to_vec();
                (p, bytes, len)
            })
            .collect();
        Template { dir, files, key }
    })
}

/// Removes the template data directory (call once when done).
pub fn cleanup() {
    let dir = std::env::temp_dir().join(format!("quotad-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

/// Patches the template data directory as `data` says, opens it, and restores it.
///
/// Input: byte 0 picks the file (catalog, key records, counters) and bit 7 asks for truncation
/// at the first offset; then 5-byte patches `offset u32 LE, value u8` (offsets are taken modulo
/// the patchable window).
pub fn data_files(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let t = template();
    let (path, original, len) = &t.files[usize::from(sel & 0x7f) % t.files.len()];
    let window = (original.len() as u64).max(1);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open template");
        for p in rest.chunks_exact(5) {
            let off = u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])) % window;
            f.seek(SeekFrom::Start(off)).expect("seek");
            f.write_all(&[p[4]]).expect("patch");
        }
        if sel & 0x80 != 0 {
            if let Some(p) = rest.get(..4) {
                let off = u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]])) % *len;
                f.set_len(off).expect("truncate");
            }
        }
    }
    let clock = FakeClock::at_secs(1_780_000_100);
    match LocalStore::open(LocalOptions::new(&t.dir), Arc::new(clock)) {
        Ok(e) => {
            // Whatever survived must still answer.
            check(&e, &t.key, "a:read");
            let _ = now(e.list_keys(KeyQuery {
                limit: 10,
                ..KeyQuery::default()
            }));
        }
        Err(err) => {
            let msg = err.to_string();
            assert!(
                msg.contains(&t.dir.display().to_string())
                    || msg.contains(".qd")
                    || msg.contains("catalog"),
                "a start-up error must name the file: {msg}"
            );
        }
    }
    // Restore the template exactly.
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("reopen template");
    f.set_len(*len).expect("restore length");
    f.seek(SeekFrom::Start(0)).expect("seek");
    // Past the window the template's files are all zeros (it holds three keys), so the window
    // and the length restore them exactly, truncation included.
    f.write_all(original).expect("restore bytes");
}
