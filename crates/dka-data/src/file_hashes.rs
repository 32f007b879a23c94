//! SHA-256 of files, remembered across runs by (absolute path, size, modification time in
//! nanoseconds) in `<cache_dir>/file-hashes.tsv`, so a manifest over 25,000 images is hashed
//! once per machine rather than once per run.
//!
//! The table is append-only: one line per hash (`v1`, hash, size, mtime-ns, path, tab
//! separated), each process appending whole lines with single writes, so several processes
//! can share it; the last line for a path wins, and a torn or unknown line is ignored. A file
//! whose size or mtime changed is hashed again. (A rewrite that keeps both size and mtime to
//! the nanosecond is not noticed; `Manifest::verify` re-hashes everything when that matters.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::files::sha256_file;

/// File name of the table inside a cache folder.
pub const TABLE: &str = "file-hashes.tsv";

/// What a [`HashCache::hash_files`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files whose contents were read and hashed.
    pub hashed: usize,
    /// Files whose hash came from the table.
    pub reused: usize,
}

/// (size, mtime in ns since the epoch).
type Stamp = (u64, i128);

/// The table, loaded.
#[derive(Debug, Default)]
pub struct HashCache {
    table: Option<PathBuf>,
    known: HashMap<PathBuf, (Stamp, String)>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let md = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let t = md.modified().map_err(|e| DataError::io(path, e))?;
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Ok((md.len(), ns))
}

fn parse_line(line: &str) -> Option<(PathBuf, (Stamp, String))> {
    let mut it = line.splitn(5, '\t');
    if it.next()? != "v1" {
        return None;
    }
    let hash = it.next()?;
    let size = it.next()?.parse().ok()?;
    let mtime = it.next()?.parse().ok()?;
    let path = it.next()?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || path.is_empty() {
        return None;
    }
    Some((PathBuf::from(path), ((size, mtime), hash.to_string())))
}

impl HashCache {
    /// No table: every file is hashed.
    pub fn none() -> Self {
        HashCache::default()
    }

    /// Loads `<cache_dir>/file-hashes.tsv` (missing: empty; the folder is created on the
    /// first append).
    pub fn open(cache_dir: &Path) -> Result<Self> {
        let table = cache_dir.join(TABLE);
        let mut known = HashMap::new();
        match std::fs::read(&table) {
            Ok(bytes) => {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    if let Some((p, v)) = parse_line(line) {
                        known.insert(p, v);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DataError::io(&table, e)),
        }
        Ok(HashCache {
            table: Some(table),
            known,
        })
    }

    /// SHA-256 (hex) of `files` (relative to `root`), hashed in parallel where the table has
    /// no entry with the file's current size and mtime; new hashes are appended to the table.
    pub fn hash_files(
        &self,
        root: &Path,
        files: &BTreeSet<String>,
    ) -> Result<(BTreeMap<String, String>, HashStats)> {
        // (file, hash, read its contents?, line to append)
        let found: Vec<(String, String, bool, Option<String>)> = files
            .par_iter()
            .map(|f| {
                let path = root.join(f);
                if self.table.is_none() {
                    return Ok((f.clone(), sha256_file(&path)?, true, None));
                }
                let abs = std::fs::canonicalize(&path).map_err(|e| DataError::io(&path, e))?;
                let st = stamp(&abs)?;
                if let Some((s, h)) = self.known.get(&abs) {
                    if *s == st {
                        return Ok((f.clone(), h.clone(), false, None));
                    }
                }
                let h = sha256_file(&abs)?;
                let abs = abs.to_string_lossy();
                let line =
                    (!abs.contains('\n')).then(|| format!("v1\t{h}\t{}\t{}\t{abs}\n", st.0, st.1));
                Ok((f.clone(), h, true, line))
            })
            .collect::<Result<_>>()?;
        let mut stats = HashStats::default();
        let mut out = BTreeMap::new();
        let mut lines = String::new();
        for (f, h, read, line) in found {
            if read {
                stats.hashed += 1;
            } else {
                stats.reused += 1;
            }
            lines.push_str(line.as_deref().unwrap_or(""));
            out.insert(f, h);
        }
        if let (Some(table), false) = (&self.table, lines.is_empty()) {
            append(table, &lines)?;
        }
        Ok((out, stats))
    }
}

/// Appends whole lines, at most 32 KiB per write, so concurrent writers never split a line.
fn append(table: &Path, lines: &str) -> Result<()> {
    if let Some(dir) = table.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(table)
        .map_err(|e| DataError::io(table, e))?;
    let mut chunk = String::new();
    for line in lines.split_inclusive('\n') {
        if chunk.len() + line.len() > 32 * 1024 && !chunk.is_empty() {
            f.write_all(chunk.as_bytes())
                .map_err(|e| DataError::io(table, e))?;
            chunk.clear();
        }
        chunk.push_str(line);
    }
    if !chunk.is_empty() {
        f.write_all(chunk.as_bytes())
            .map_err(|e| DataError::io(table, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_hashes_and_rehashes_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for n in ["a.bin", "b.bin"] {
            std::fs::write(data.join(n), n).unwrap();
        }
        let files: BTreeSet<String> = ["a.bin".to_string(), "b.bin".to_string()].into();
        let cache = dir.path().join("cache");
        let (h1, s1) = HashCache::open(&cache)
            .unwrap()
            .hash_files(&data, &files)
            .unwrap();
        assert_eq!(
            s1,
            HashStats {
                hashed: 2,
                reused: 0
            }
        );
        let (h2, s2) = HashCache::open(&cache)
            .unwrap()
            .hash_files(&data, &files)
            .unwrap();
        assert_eq!(
            s2,
            HashStats {
                hashed: 0,
                reused: 2
            }
        );
        assert_eq!(h1, h2);
        assert_eq!(h1["a.bin"], sha256_file(&data.join("a.bin")).unwrap());

        // Same size, new contents and a new mtime: hashed again.
        std::fs::write(data.join("a.bin"), "A.bin").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(data.join("a.bin"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let (h3, s3) = HashCache::open(&cache)
            .unwrap()
            .hash_files(&data, &files)
            .unwrap();
        assert_eq!(
            s3,
            HashStats {
                hashed: 1,
                reused: 1
            }
        );
        assert_ne!(h3["a.bin"], h1["a.bin"]);
        assert_eq!(h3["b.bin"], h1["b.bin"]);
    }

    #[test]
    fn torn_and_foreign_lines_are_ignored() {
        assert!(parse_line("v1\tabc\t1\t2\t/x").is_none(), "short hash");
        assert!(parse_line("v1\t").is_none());
        let h = "0".repeat(64);
        let (p, ((size, mtime), hash)) = parse_line(&format!("v1\t{h}\t3\t-4\t/a b\tc")).unwrap();
        assert_eq!((p, size, mtime, hash), (PathBuf::from("/a b\tc"), 3, -4, h));
    }
}
