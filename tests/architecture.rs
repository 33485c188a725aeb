//! The shape `docs/DESIGN.md` promises, checked on the source itself: no file under `src/` over
//! 600 lines; imports run one way (cli → server → store → engine → keys, tiers); and no two files
//! import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// Every `.rs` file under `dir`, as a path relative to `src/` with `/` separators.
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut v = Vec::new();
    sources(&root, &root, &mut v);
    v.sort();
    assert!(v.len() > 20, "found the sources");
    v
}

/// The module path of a file: `store/local/mod.rs` → `store::local`, `engine/bucket.rs` →
/// `engine::bucket`.
fn module_of(file: &str) -> String {
    let f = file.trim_end_matches(".rs");
    let f = f.strip_suffix("/mod").unwrap_or(f);
    match f {
        "lib" | "main" => String::new(),
        _ => f.replace('/', "::"),
    }
}

/// The `use` statements of `text`, joined into single lines, comments and tests left out.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in code.lines() {
        let t = line.trim();
        if t.starts_with("//") {
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(t);
        } else if let Some(rest) = t
            .strip_prefix("use ")
            .or_else(|| t.strip_prefix("pub use "))
            .or_else(|| t.strip_prefix("pub(crate) use "))
        {
            cur = Some(rest.to_string());
        }
        if cur.as_ref().is_some_and(|c| c.ends_with(';')) {
            out.extend(cur.take());
        }
    }
    out
}

/// The crate modules (as paths) a file's `use` statements name, resolved against `modules`
/// (the longest known module prefix of each path wins).
fn imported_modules(file: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let me = module_of(file);
    let parent = match me.rsplit_once("::") {
        Some((p, _)) => p.to_string(),
        None => String::new(),
    };
    let mut out = BTreeSet::new();
    for u in uses(text) {
        // Expand `a::{b, c::d}` one level: enough for this crate's imports.
        let u = u.trim_end_matches(';').replace(' ', "");
        let paths: Vec<String> = match u.split_once('{') {
            Some((base, rest)) => rest
                .trim_end_matches('}')
                .split(',')
                .map(|p| format!("{base}{}", p.split('{').next().unwrap_or("")))
                .collect(),
            None => vec![u.clone()],
        };
        for p in paths {
            let abs = if let Some(r) = p.strip_prefix("crate::") {
                r.to_string()
            } else if let Some(r) = p.strip_prefix("super::") {
                // `super` of `a/b.rs` and of `a/b/mod.rs` (both module a::b) is `a`.
                if parent.is_empty() {
                    r.to_string()
                } else {
                    format!("{parent}::{r}")
                }
            } else if let Some(r) = p.strip_prefix("self::") {
                if me.is_empty() {
                    r.to_string()
                } else {
                    format!("{me}::{r}")
                }
            } else {
                continue;
            };
            let segs: Vec<&str> = abs.split("::").collect();
            for n in (1..=segs.len()).rev() {
                let m = segs[..n].join("::");
                if modules.contains(&m) {
                    if m != me {
                        out.insert(m);
                    }
                    break;
                }
            }
        }
    }
    out
}

/// The layer of a module, by its top-level name; higher layers may import lower ones only.
fn layer(module: &str) -> Option<u8> {
    match module.split("::").next().unwrap_or("") {
        "keys" | "tiers" => Some(0),
        "engine" => Some(1),
        "store" => Some(2),
        "protocol" | "metrics" => Some(3),
        "server" => Some(4),
        "cli" => Some(5),
        _ => None,
    }
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    let long: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, t)| t.lines().count() > MAX_LINES)
        .map(|(f, t)| format!("src/{f}: {} lines", t.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:#?}");
}

#[test]
fn imports_run_one_way_from_cli_to_server_to_store_to_engine_to_keys_and_tiers() {
    let files = all_sources();
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| module_of(f)).collect();
    let mut wrong = Vec::new();
    for (file, text) in &files {
        let me = module_of(file);
        let Some(mine) = layer(&me) else { continue };
        for m in imported_modules(file, text, &modules) {
            if layer(&m).is_some_and(|theirs| theirs > mine) {
                wrong.push(format!("src/{file} ({me}) imports {m}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering: {wrong:#?}");
}

#[test]
fn the_engine_is_pure_policy_without_io_locks_or_threads() {
    // The policy imports nothing of the store or the transports, and touches no file, socket,
    // lock or thread: a store hands it state and `now`.
    let banned = [
        "crate::store",
        "crate::server",
        "crate::cli",
        "crate::protocol",
        "crate::metrics",
        "std::fs",
        "std::net",
        "std::thread",
        "std::sync::Mutex",
        "std::sync::RwLock",
        "parking_lot",
        "tokio",
        "memmap2",
        "redis",
        "hyper",
        "SystemTime::now",
        "Instant::now",
    ];
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        if !file.starts_with("engine/") || file == "engine/clock.rs" {
            continue;
        }
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for b in banned {
            if code.contains(b) {
                found.push(format!("src/{file} uses {b}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
    // The production clock is the one place the wall clock is read.
    let clock = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/engine/clock.rs"),
    )
    .unwrap();
    assert!(!clock.contains("crate::store") && !clock.contains("crate::server"));
}

#[test]
fn no_two_files_import_each_other() {
    let files = all_sources();
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| module_of(f)).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .map(|(f, t)| (module_of(f), imported_modules(f, t, &modules)))
        .collect();
    let mut pairs = Vec::new();
    for (a, deps) in &graph {
        for b in deps {
            // A module and its own parent `mod.rs` (which declares it and may re-export it) are
            // one unit; siblings and strangers are not.
            let parent_child = b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"));
            if a < b && !parent_child && graph.get(b).is_some_and(|d| d.contains(a)) {
                pairs.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(pairs.is_empty(), "files that import each other: {pairs:#?}");
}

#[test]
fn the_checker_sees_imports_it_must_catch() {
    // The checks above would pass on a parser that saw nothing: show they see real imports.
    let files = all_sources();
    let modules: BTreeSet<String> = files.iter().map(|(f, _)| module_of(f)).collect();
    let text = |name: &str| {
        files
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let admin = imported_modules(
        "server/admin/mod.rs",
        &text("server/admin/mod.rs"),
        &modules,
    );
    assert!(
        admin.contains("server::reply") && admin.contains("store"),
        "{admin:?}"
    );
    let check = imported_modules(
        "store/local/check.rs",
        &text("store/local/check.rs"),
        &modules,
    );
    assert!(
        check.contains("engine::admission") && check.contains("store::local::layout"),
        "{check:?}"
    );
    // A made-up file in the engine importing the store is caught by the layering.
    let fake = "use crate::store::Store;\nuse super::{bucket, limits};\n";
    let m = imported_modules("engine/fake.rs", fake, &modules);
    assert!(m.contains("store") && m.contains("engine::bucket"), "{m:?}");
    assert!(layer("store") > layer("engine"));
}
