//! What decides a run's result, hashed into its id: the resolved config (without the weights
//! file's path and without settings that cannot change a result, such as loader threads), the
//! weights file's content and the exact split (its manifest's content).
use crate::config::run::RunConfig;
use crate::util::fs::write_atomic;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// SHA-256 of a file, hex, cached in `cache_dir/file-sha256.json` by absolute path, size and
/// modification time (a multi-GB checkpoint is hashed once per machine, not once per run).
pub fn file_sha256(path: &Path, cache_dir: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let abs = std::fs::canonicalize(path).with_context(|| path.display().to_string())?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}|{}|{}", abs.display(), meta.len(), mtime);
    let cache_file = cache_dir.join("file-sha256.json");
    let read_cache = || -> BTreeMap<String, String> {
        std::fs::read_to_string(&cache_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    if let Some(h) = read_cache().get(&key) {
        return Ok(h.clone());
    }
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    // Best effort: a cache that cannot be written only costs a re-hash next time. Concurrent
    // writers may drop each other's entries, never corrupt the file (atomic replace).
    if std::fs::create_dir_all(cache_dir).is_ok() {
        let mut all = read_cache();
        all.insert(key, hex.clone());
        if let Ok(text) = serde_json::to_string_pretty(&all) {
            let _ = write_atomic(&cache_file, text.as_bytes());
        }
    }
    Ok(hex)
}

/// The identity of a run: its resolved config minus what cannot change its result, plus the
/// weights' and the split's content hashes.
pub fn run_identity(
    resolved: &RunConfig,
    weights_sha256: Option<&str>,
    split_sha256: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut cfg = serde_json::to_value(resolved)?;
    if let Some(o) = cfg.as_object_mut() {
        // The path of the weights is not their content; loader threads, the evaluation batch
        // (round-off only: see `RunConfig::eval_batch_size`) and the note on where
        // the input convention came from change nothing.
        o.remove("weights");
        o.remove("loader_threads");
        o.remove("eval_batch_size");
        // Off (the default) leaves the ids of runs made before the option existed unchanged;
        // on, dropout draws its masks in another order, so it is part of the identity.
        if o.get("checkpoint_blocks") == Some(&serde_json::Value::Bool(false)) {
            o.remove("checkpoint_blocks");
        }
        if let Some(input) = o.get_mut("input").and_then(|i| i.as_object_mut()) {
            input.remove("source");
        }
    }
    Ok(serde_json::json!({
        "config": cfg,
        "weights_sha256": weights_sha256,
        "split_sha256": split_sha256,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hashes_are_cached_until_the_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("w.bin");
        std::fs::write(&f, b"abc").unwrap();
        let cache = d.path().join("cache");
        // sha256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_sha256(&f, &cache).unwrap(), abc);
        let cached = std::fs::read_to_string(cache.join("file-sha256.json")).unwrap();
        assert!(cached.contains(abc));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"abd").unwrap();
        assert_ne!(
            file_sha256(&f, &cache).unwrap(),
            abc,
            "a changed file is re-hashed"
        );
    }

    #[test]
    fn the_identity_ignores_paths_and_threads_but_not_content() {
        let a = RunConfig {
            weights: Some("/a/w.safetensors".into()),
            loader_threads: 1,
            ..Default::default()
        };
        let b = RunConfig {
            weights: Some("/b/w.safetensors".into()),
            loader_threads: 7,
            eval_batch_size: 32,
            ..Default::default()
        };
        let id = |c: &RunConfig, w: &str, s: &str| run_identity(c, Some(w), s).unwrap();
        assert_eq!(id(&a, "w1", "s1"), id(&b, "w1", "s1"));
        assert_ne!(id(&a, "w1", "s1"), id(&a, "w2", "s1"));
        assert_ne!(id(&a, "w1", "s1"), id(&a, "w1", "s2"));
        let c = RunConfig {
            epochs: 7,
            ..a.clone()
        };
        assert_ne!(id(&a, "w1", "s1"), id(&c, "w1", "s1"));
    }
}
