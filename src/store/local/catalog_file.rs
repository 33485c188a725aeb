//! `catalog.json`: the durable catalog of tiers, scope names and scope sets.
//!
//! The file is one header line and a JSON document:
//!
//! ```text
//! quotad-catalog v2 gen=17 crc32=1a2b3c4d
//! {"dataDirId":…,"tiers":[…],"scopes":[…],"scopeSets":[…]}
//! ```
//!
//! The CRC covers the generation and the JSON bytes. The generation counts the catalog's
//! acknowledged changes; `acks-00000.qd` holds the last one acknowledged, so a catalog replaced by
//! an older copy is recognised. Version 1 (no generation, no acks file) is read as generation 0;
//! the directory is upgraded the first time it is opened. Tier and scope-set *positions* are what key records refer to, so
//! entries are never reordered; a deleted tier leaves `null` in its place.

use std::path::Path;

use super::datadir::write_atomic;
use super::datadir::DataDirError;
use crate::engine::catalog_doc::CatalogDoc;

/// Version written in the header line.
pub const CATALOG_VERSION: u32 = 2;

/// A catalog as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCatalog {
    /// The catalog.
    pub doc: CatalogDoc,
    /// Format version of the file (1: a directory from before the acks file).
    pub version: u32,
    /// Generation (0 in version 1).
    pub generation: u32,
}
/// File name inside the data directory.
pub const CATALOG_FILE: &str = "catalog.json";

fn crc_of(generation: u32, json: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&generation.to_le_bytes()), json)
}

/// Serializes `doc` at `generation` with its header line.
pub fn encode(doc: &CatalogDoc, generation: u32) -> Vec<u8> {
    let json = serde_json::to_vec(doc).unwrap_or_default();
    let mut out = format!(
        "quotad-catalog v{CATALOG_VERSION} gen={generation} crc32={:08x}\n",
        crc_of(generation, &json)
    )
    .into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

/// Parses and checks a catalog file's bytes; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<StoredCatalog, DataDirError> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| DataDirError::corrupt(path, "missing header line"))?;
    let header = std::str::from_utf8(&bytes[..nl])
        .map_err(|_| DataDirError::corrupt(path, "header line is not text"))?;
    let rest = header
        .strip_prefix("quotad-catalog v")
        .ok_or_else(|| DataDirError::corrupt(path, "not a quotad catalog (bad header line)"))?;
    let (ver, crc) = rest
        .split_once(" crc32=")
        .ok_or_else(|| DataDirError::corrupt(path, "header line lacks crc32"))?;
    let (ver, generation) = match ver.split_once(" gen=") {
        Some((v, g)) => (
            v,
            Some(
                g.parse::<u32>()
                    .map_err(|_| DataDirError::corrupt(path, "unreadable generation"))?,
            ),
        ),
        None => (ver, None),
    };
    let ver: u32 = ver
        .parse()
        .map_err(|_| DataDirError::corrupt(path, "unreadable version"))?;
    if (ver == 1) != generation.is_none() {
        return Err(DataDirError::corrupt(
            path,
            "header line is not of its version",
        ));
    }
    if ver != CATALOG_VERSION && ver != 1 {
        return Err(DataDirError::Version {
            path: path.into(),
            found: ver,
            expected: CATALOG_VERSION,
        });
    }
    if crc.len() != 8
        || !crc
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(DataDirError::corrupt(path, "unreadable crc32"));
    }
    let crc = u32::from_str_radix(crc, 16)
        .map_err(|_| DataDirError::corrupt(path, "unreadable crc32"))?;
    let json = bytes[nl + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&bytes[nl + 1..]);
    let expected = match generation {
        Some(g) => crc_of(g, json),
        None => crc32c::crc32c(json),
    };
    if expected != crc {
        return Err(DataDirError::corrupt(
            path,
            "checksum mismatch (file damaged or truncated)",
        ));
    }
    let doc: CatalogDoc = serde_json::from_slice(json)
        .map_err(|e| DataDirError::corrupt(path, format!("bad JSON: {e}")))?;
    if doc.scope_sets.first().is_none_or(|s| !s.is_empty()) {
        return Err(DataDirError::corrupt(
            path,
            "scope set 0 must be the empty set",
        ));
    }
    for set in &doc.scope_sets {
        if set.iter().any(|&id| usize::from(id) >= doc.scopes.len()) {
            return Err(DataDirError::corrupt(
                path,
                "a scope set names an unknown scope",
            ));
        }
    }
    Ok(StoredCatalog {
        doc,
        version: ver,
        generation: generation.unwrap_or(0),
    })
}

/// Reads `DATA_DIR/catalog.json`, or `None` if it does not exist.
pub fn load(dir: &Path) -> Result<Option<StoredCatalog>, DataDirError> {
    let path = dir.join(CATALOG_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&path, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataDirError::io(&path, e)),
    }
}

/// Writes `DATA_DIR/catalog.json` at `generation` atomically and durably, with `mode`.
pub fn store(dir: &Path, doc: &CatalogDoc, generation: u32, mode: u32) -> Result<(), DataDirError> {
    write_atomic(&dir.join(CATALOG_FILE), &encode(doc, generation), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> CatalogDoc {
        CatalogDoc {
            data_dir_id: 42,
            tiers: crate::tiers::builtin_tiers()
                .into_iter()
                .map(Some)
                .collect(),
            scopes: vec!["a:read".into()],
            scope_sets: vec![vec![], vec![0]],
            tier_versions: Vec::new(),
            retired_prefixes: Vec::new(),
        }
    }

    #[test]
    fn round_trips() {
        let p = Path::new("catalog.json");
        let back = decode(p, &encode(&doc(), 9)).unwrap();
        assert_eq!((back.doc, back.version, back.generation), (doc(), 2, 9));
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let p = Path::new("catalog.json");
        let bytes = encode(&doc(), 3);
        for i in (0..bytes.len() - 1).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(decode(p, &b).is_err(), "flip at {i} not detected");
        }
        assert!(decode(p, &bytes[..bytes.len() / 2]).is_err());
    }
}
