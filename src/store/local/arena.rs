//! A growable array of fixed-size slots kept in memory-mapped segment files.
//!
//! Segments never move once mapped (a new segment is a new file and a new mapping), so a raw
//! pointer to a slot stays valid for the arena's lifetime and readers need no lock to find it.
//! Who may touch which slot is the caller's business: the engine guards slot `i` by the lock of
//! shard `i % SHARDS` (see `engine::shards`).
//!
//! The mappings are shared (`MAP_SHARED`): every store lands in the kernel's page cache at once, so
//! a killed process loses nothing. [`Arena::flush_all`] (`msync`) pushes the pages to the disk; it
//! bounds what a power loss can cost.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use memmap2::{MmapMut, MmapOptions};
use parking_lot::Mutex;
use zerocopy::{FromBytes, IntoBytes};

use super::datadir::DataDirError;
use super::layout::{SegmentHeader, FORMAT_VERSION, HEADER_LEN, SLOTS_PER_SEGMENT};

/// The most segments an arena may have (2^14 × 65,536 slots = 2^30 keys).
pub const MAX_SEGMENTS: usize = 1 << 14;

/// What an arena stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaKind {
    /// File name stem, e.g. `counters`.
    pub stem: &'static str,
    /// Header magic.
    pub magic: [u8; 8],
    /// Bytes per slot (a multiple of 64).
    pub slot_size: usize,
}

struct Segment {
    map: MmapMut,
    base: *mut u8,
    path: PathBuf,
}

// SAFETY: `base` points into `map`, which lives as long as the segment; access to slot memory is
// coordinated by the engine's shard locks (see module docs).
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

/// A set of segment files of one kind in one directory.
pub struct Arena {
    dir: PathBuf,
    kind: ArenaKind,
    data_dir_id: u64,
    /// Mode of new files; `None`: opened to look only (nothing allocated or created).
    file_mode: Option<u32>,
    segments: Box<[OnceLock<Segment>]>,
    count: std::sync::atomic::AtomicUsize,
    grow: Mutex<()>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("dir", &self.dir)
            .field("kind", &self.kind.stem)
            .field("segments", &self.segment_count())
            .finish()
    }
}

impl Arena {
    /// The path of segment `n`.
    pub fn segment_path(dir: &Path, kind: &ArenaKind, n: usize) -> PathBuf {
        dir.join(format!("{}-{n:05}.qd", kind.stem))
    }

    /// Opens every existing segment (0, 1, … until one is missing), checking each header and
    /// allocating each file's blocks. New segments are created with `file_mode`; with `None`
    /// the arena is only looked at (`inspect`): nothing is allocated or created.
    pub fn open(
        dir: &Path,
        kind: ArenaKind,
        data_dir_id: u64,
        file_mode: Option<u32>,
    ) -> Result<Self, DataDirError> {
        let segments: Box<[OnceLock<Segment>]> =
            (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect();
        let arena = Arena {
            dir: dir.to_path_buf(),
            kind,
            data_dir_id,
            file_mode,
            segments,
            count: 0.into(),
            grow: Mutex::new(()),
        };
        let mut n = 0;
        loop {
            let path = Self::segment_path(dir, &kind, n);
            if !path.exists() {
                break;
            }
            let seg = arena.open_segment(&path, n)?;
            let _ = arena.segments[n].set(seg);
            n += 1;
            if n == MAX_SEGMENTS {
                break;
            }
        }
        arena.count.store(n, std::sync::atomic::Ordering::Release);
        // A gap (e.g. segment 3 present, 2 missing) means a file was lost.
        let stray = Self::segment_path(dir, &kind, n + 1);
        if stray.exists() {
            return Err(DataDirError::corrupt(
                Self::segment_path(dir, &kind, n),
                format!("missing, but {} exists", stray.display()),
            ));
        }
        Ok(arena)
    }

    fn segment_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(SLOTS_PER_SEGMENT) * self.kind.slot_size as u64
    }

    fn open_segment(&self, path: &Path, n: usize) -> Result<Segment, DataDirError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| DataDirError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DataDirError::io(path, e))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(DataDirError::Size {
                path: path.into(),
                expected: self.segment_len(),
                found: len,
            });
        }
        // SAFETY: the file is ours (the data directory is locked); nothing else truncates it while
        // mapped.
        let map =
            unsafe { MmapOptions::new().map_mut(&file) }.map_err(|e| DataDirError::io(path, e))?;
        let header = SegmentHeader::read_from_prefix(&map[..])
            .map_err(|_| DataDirError::corrupt(path, "unreadable header"))?
            .0;
        if header.magic != self.kind.magic {
            return Err(DataDirError::corrupt(
                path,
                format!(
                    "bad magic {:?}: not a quotad {} file",
                    String::from_utf8_lossy(&header.magic),
                    self.kind.stem
                ),
            ));
        }
        if header.crc != header.compute_crc() {
            return Err(DataDirError::corrupt(path, "header checksum mismatch"));
        }
        if header.version != FORMAT_VERSION {
            return Err(DataDirError::Version {
                path: path.into(),
                found: header.version,
                expected: FORMAT_VERSION,
            });
        }
        if header.slot_size as usize != self.kind.slot_size
            || header.slots != SLOTS_PER_SEGMENT
            || header.segment as usize != n
        {
            return Err(DataDirError::corrupt(
                path,
                format!(
                    "header describes segment {} of {} slots of {} bytes; expected segment {n} of {} slots of {} bytes",
                    header.segment, header.slots, header.slot_size, SLOTS_PER_SEGMENT, self.kind.slot_size
                ),
            ));
        }
        if header.data_dir_id != self.data_dir_id {
            return Err(DataDirError::corrupt(
                path,
                "belongs to another data directory (data directory id differs from catalog.json)",
            ));
        }
        if len != self.segment_len() {
            return Err(DataDirError::Size {
                path: path.into(),
                expected: self.segment_len(),
                found: len,
            });
        }
        // A file written sparse (by an older quotad, or copied sparse) gets its blocks now, so
        // that a store into the mapping can never fault on a full disk.
        if self.file_mode.is_some() {
            super::datadir::allocate(&file, path, len)?;
        }
        drop(map);
        // SAFETY: as above; mapped again only once the blocks exist, populated.
        let map = unsafe { MmapOptions::new().populate().map_mut(&file) }
            .map_err(|e| DataDirError::io(path, e))?;
        let mut map = map;
        let base = map.as_mut_ptr();
        Ok(Segment {
            map,
            base,
            path: path.into(),
        })
    }

    fn create_segment(&self, n: usize) -> Result<Segment, DataDirError> {
        let path = Self::segment_path(&self.dir, &self.kind, n);
        let tmp = path.with_extension("qd.tmp");
        let header = {
            let mut h = SegmentHeader {
                magic: self.kind.magic,
                version: FORMAT_VERSION,
                slot_size: self.kind.slot_size as u32,
                slots: SLOTS_PER_SEGMENT,
                segment: n as u32,
                data_dir_id: self.data_dir_id,
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                crc: 0,
                pad: 0,
            };
            h.crc = h.compute_crc();
            h
        };
        let Some(mode) = self.file_mode else {
            return Err(DataDirError::corrupt(&path, "missing (opened read-only)"));
        };
        let made = (|| {
            let mut f = super::datadir::create_file(&tmp, mode)?;
            super::datadir::allocate(&f, &tmp, self.segment_len())?;
            f.write_all(header.as_bytes())
                .map_err(|e| DataDirError::io(&tmp, e))?;
            f.sync_all().map_err(|e| DataDirError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| DataDirError::io(&path, e))
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        super::datadir::sync_dir(&self.dir)?;
        self.open_segment(&path, n)
    }

    /// Segments currently mapped.
    pub fn segment_count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Slots currently available.
    pub fn capacity(&self) -> u64 {
        self.segment_count() as u64 * u64::from(SLOTS_PER_SEGMENT)
    }

    /// Makes sure slot `slot` exists, creating segment files as needed.
    pub fn ensure(&self, slot: u32) -> Result<(), DataDirError> {
        let seg = (slot / SLOTS_PER_SEGMENT) as usize;
        if seg < self.segment_count() {
            return Ok(());
        }
        let _g = self.grow.lock();
        while self.segment_count() <= seg {
            let n = self.segment_count();
            if n >= MAX_SEGMENTS {
                return Err(DataDirError::Full {
                    path: self.dir.clone(),
                });
            }
            let s = self.create_segment(n)?;
            let _ = self.segments[n].set(s);
            self.count
                .store(n + 1, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// A pointer to slot `slot`, or `None` if its segment does not exist.
    ///
    /// The memory is valid for the arena's lifetime and `slot_size` bytes long, aligned to 64.
    #[inline]
    pub(super) fn slot_ptr(&self, slot: u32) -> Option<*mut u8> {
        let seg = self
            .segments
            .get((slot / SLOTS_PER_SEGMENT) as usize)?
            .get()?;
        let off = HEADER_LEN + (slot % SLOTS_PER_SEGMENT) as usize * self.kind.slot_size;
        // SAFETY: `off + slot_size` is within the mapping, whose size was checked at open.
        Some(unsafe { seg.base.add(off) })
    }

    /// A pointer to the header page of segment 0 (4096 bytes), or `None` before it exists.
    pub(super) fn header_page(&self) -> Option<*mut u8> {
        self.header_page_of(0)
    }

    /// A pointer to the header page of segment `n`, or `None` if it does not exist.
    pub(super) fn header_page_of(&self, n: usize) -> Option<*mut u8> {
        Some(self.segments.get(n)?.get()?.base)
    }

    /// Synchronously writes the header page of segment 0 to disk.
    pub fn flush_header(&self) -> Result<(), DataDirError> {
        self.flush_header_of(0)
    }

    /// Synchronously writes the header page of segment `n` to disk.
    pub fn flush_header_of(&self, n: usize) -> Result<(), DataDirError> {
        match self.segments.get(n).and_then(|s| s.get()) {
            Some(seg) => seg
                .map
                .flush_range(0, HEADER_LEN)
                .map_err(|e| DataDirError::io(&seg.path, e)),
            None => Ok(()),
        }
    }

    /// Synchronously writes slots `first..=last` to disk.
    pub fn flush_slots(&self, first: u32, last: u32) -> Result<(), DataDirError> {
        let mut slot = first;
        while slot <= last {
            let seg_end = (slot / SLOTS_PER_SEGMENT + 1) * SLOTS_PER_SEGMENT - 1;
            let end = last.min(seg_end);
            if let Some(seg) = self
                .segments
                .get((slot / SLOTS_PER_SEGMENT) as usize)
                .and_then(|s| s.get())
            {
                let off = HEADER_LEN + (slot % SLOTS_PER_SEGMENT) as usize * self.kind.slot_size;
                let len = (end - slot + 1) as usize * self.kind.slot_size;
                seg.map
                    .flush_range(off, len)
                    .map_err(|e| DataDirError::io(&seg.path, e))?;
            }
            match end.checked_add(1) {
                Some(next) => slot = next,
                None => break,
            }
        }
        Ok(())
    }

    /// The file holding slot `slot`.
    pub fn path_of(&self, slot: u32) -> PathBuf {
        Self::segment_path(&self.dir, &self.kind, (slot / SLOTS_PER_SEGMENT) as usize)
    }

    /// Synchronously writes slot `slot`'s pages to disk (`msync`).
    pub fn flush_slot(&self, slot: u32) -> Result<(), DataDirError> {
        let Some(seg) = self
            .segments
            .get((slot / SLOTS_PER_SEGMENT) as usize)
            .and_then(|s| s.get())
        else {
            return Ok(());
        };
        let off = HEADER_LEN + (slot % SLOTS_PER_SEGMENT) as usize * self.kind.slot_size;
        seg.map
            .flush_range(off, self.kind.slot_size)
            .map_err(|e| DataDirError::io(&seg.path, e))
    }

    /// Synchronously writes every mapped page to disk (`msync`).
    pub fn flush_all(&self) -> Result<(), DataDirError> {
        for s in self.segments[..self.segment_count()]
            .iter()
            .filter_map(|s| s.get())
        {
            s.map.flush().map_err(|e| DataDirError::io(&s.path, e))?;
        }
        Ok(())
    }
}
