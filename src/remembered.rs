//! Remembered outcomes: a bundle that had to move to a more permissive mode (at load,
//! or because of a refusal at call time) goes straight to that mode on its next load or
//! reload in this process, unless its files changed. Process-wide, by canonical bundle
//! directory; `PythonConfig::bundle_modes` always wins (it is never consulted for a
//! pinned bundle).
//!
//! The fingerprint: the entry file's path, size and mtime, then every file under the
//! bundle directory (its `site-packages` included, symlinks followed but each directory
//! entered once, `__pycache__` skipped: CPython writes there), by relative path, size and
//! mtime, sorted. Directory
//! mtimes are left out for the same reason. ~4 ms for the numpy bundle's 1,000 files,
//! computed once per load of a bundle that is not pinned.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::UNIX_EPOCH;

use crate::config::InterpreterMode;
use crate::mode_reason::ModeReason;

/// A bundle directory and the fingerprint of its files at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    dir: String,
    fingerprint: u64,
}

struct Outcome {
    fingerprint: u64,
    mode: InterpreterMode,
    reason: ModeReason,
}

fn map() -> MutexGuard<'static, HashMap<String, Outcome>> {
    static MAP: OnceLock<Mutex<HashMap<String, Outcome>>> = OnceLock::new();
    MAP.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// How permissive a mode is: the downgrade chain's order.
pub(crate) fn rank(mode: InterpreterMode) -> u8 {
    match mode {
        InterpreterMode::OwnGil => 0,
        InterpreterMode::SharedGil => 1,
        InterpreterMode::Main => 2,
    }
}

impl Key {
    /// The key of the bundle in `dir` (canonical) with entry file `file`, as its files are
    /// now.
    pub(crate) fn of(dir: &str, file: &str) -> Self {
        let mut h = DefaultHasher::new();
        stamp(&mut h, Path::new(file), file);
        let mut files = Vec::new();
        walk(Path::new(dir), "", 0, &mut files);
        files.sort();
        files.hash(&mut h);
        Self {
            dir: dir.to_owned(),
            fingerprint: h.finish(),
        }
    }
}

fn stamp(h: &mut impl Hasher, path: &Path, name: &str) {
    name.hash(h);
    if let Ok(m) = std::fs::metadata(path) {
        m.len().hash(h);
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        t.map(|t| t.as_nanos()).hash(h);
    }
}

/// `(relative path, size, mtime ns)` of every file under `dir`. Symlinks are followed
/// (a bundle may link its `site-packages`), but each directory is entered once, by its
/// canonical path, and entries are read in name order: links that point back up the
/// tree (two of them made this walk exponential) end where the directory was already
/// seen, and the same tree always yields the same list.
fn walk(dir: &Path, rel: &str, depth: usize, out: &mut Vec<(String, u64, u128)>) {
    let mut seen = HashSet::new();
    if let Ok(canonical) = std::fs::canonicalize(dir) {
        seen.insert(canonical);
    }
    walk_in(dir, rel, depth, &mut seen, out);
}

fn walk_in(
    dir: &Path,
    rel: &str,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    out: &mut Vec<(String, u64, u128)>,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "__pycache__" {
            continue;
        }
        let path = e.path();
        let rel = format!("{rel}/{name}");
        let Ok(m) = std::fs::metadata(&path) else {
            continue;
        };
        if m.is_dir() {
            let first_visit = std::fs::canonicalize(&path).is_ok_and(|c| seen.insert(c));
            if first_visit && depth < 32 {
                walk_in(&path, &rel, depth + 1, seen, out);
            }
            continue;
        }
        let t = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_nanos());
        out.push((rel, m.len(), t));
    }
}

/// The remembered mode and reason for `key`, if its files are unchanged since.
pub(crate) fn lookup(key: &Key) -> Option<(InterpreterMode, ModeReason)> {
    let map = map();
    let o = map.get(&key.dir)?;
    (o.fingerprint == key.fingerprint).then(|| (o.mode, o.reason.clone()))
}

/// Remembers that the bundle at `key` needs `mode` (kept if a more permissive mode is
/// already remembered for the same files).
pub(crate) fn store(key: &Key, mode: InterpreterMode, reason: ModeReason) {
    let mut map = map();
    if let Some(o) = map.get(&key.dir) {
        if o.fingerprint == key.fingerprint && rank(o.mode) >= rank(mode) {
            return;
        }
    }
    map.insert(
        key.dir.clone(),
        Outcome {
            fingerprint: key.fingerprint,
            mode,
            reason,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::Key;

    /// Defect 9b: two links back to the bundle dir made the walk exponential (2^32 paths).
    #[test]
    fn cyclic_symlinks_are_walked_once_and_the_fingerprint_is_stable() {
        let dir = std::env::temp_dir().join(format!("remembered-cycle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("entry.py"), "x = 1\n").unwrap();
        std::fs::write(dir.join("pkg/mod.py"), "y = 2\n").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("a")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("pkg/b")).unwrap();
        let (d, f) = (dir.to_str().unwrap(), dir.join("entry.py"));
        let first = Key::of(d, f.to_str().unwrap());
        assert_eq!(first, Key::of(d, f.to_str().unwrap()));
        std::fs::write(dir.join("pkg/mod.py"), "y = 3 # changed\n").unwrap();
        assert_ne!(first, Key::of(d, f.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
