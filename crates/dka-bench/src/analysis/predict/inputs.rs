//! The inputs of `dka predict`: folders (walked, sorted, hidden files skipped), `.txt` file
//! lists and single files, each with the name (relative, without extension) its outputs take.
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
/// Image file extensions `dka predict` reads.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// What an input file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Image,
    Volume,
}

/// One input and the name (relative, without extension) its outputs take.
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub stem: PathBuf,
    pub kind: InputKind,
}

/// The kind of a file by its name; `None` for anything else.
pub fn kind_of(path: &Path) -> Option<InputKind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Some(InputKind::Volume);
    }
    let ext = name.rsplit_once('.')?.1;
    IMAGE_EXTENSIONS.contains(&ext).then_some(InputKind::Image)
}

/// `path` without its extension (both of `.nii.gz`).
fn strip_ext(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    let lower = s.to_ascii_lowercase();
    if lower.ends_with(".nii.gz") {
        return PathBuf::from(&s[..s.len() - 7]);
    }
    path.with_extension("")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// The inputs named by `paths` (folders, `.txt` lists, files), each with its output name.
pub fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    let file_input = |p: &Path| -> anyhow::Result<Input> {
        let kind = kind_of(p).with_context(|| {
            format!(
                "{}: not an image or a NIfTI volume (PNG, JPEG, BMP, TIFF, .nii, .nii.gz)",
                p.display()
            )
        })?;
        let stem = strip_ext(Path::new(p.file_name().unwrap_or(p.as_os_str())));
        Ok(Input {
            path: p.to_path_buf(),
            stem,
            kind,
        })
    };
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            for f in files {
                if let Some(kind) = kind_of(&f) {
                    let rel = f.strip_prefix(p).unwrap_or(&f);
                    inputs.push(Input {
                        stem: strip_ext(rel),
                        path: f,
                        kind,
                    });
                }
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the file list {}", p.display()))?;
            let base = p.parent().unwrap_or(Path::new("."));
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let f = if Path::new(line).is_absolute() {
                    PathBuf::from(line)
                } else {
                    base.join(line)
                };
                inputs.push(
                    file_input(&f).with_context(|| format!("{}, line {}", p.display(), n + 1))?,
                );
            }
        } else {
            inputs.push(file_input(p)?);
        }
    }
    Ok(inputs)
}

/// Refuses inputs that would write the same output (a segmenter's masks), before any work.
pub fn check_unique_outputs(inputs: &[Input]) -> anyhow::Result<()> {
    let mut seen: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    for i in inputs {
        if let Some(other) = seen.insert(i.stem.clone(), &i.path) {
            bail!(
                "{} and {} would both be written as {}: predict them into separate --out folders",
                other.display(),
                i.path.display(),
                i.stem.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_from_folders_lists_and_files_with_their_output_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "a.png",
            "sub/b.JPG",
            "sub/c.nii.gz",
            "notes.md",
            ".hidden.png",
        ] {
            let p = d.join("in").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        std::fs::write(d.join("x.tiff"), b"").unwrap();
        std::fs::write(d.join("list.txt"), "# two\nx.tiff\n\nin/a.png\n").unwrap();
        let got = collect_inputs(&[d.join("in")]).unwrap();
        let stems: Vec<_> = got.iter().map(|i| i.stem.display().to_string()).collect();
        assert_eq!(stems, ["a", "sub/b", "sub/c"]);
        assert_eq!(got[2].kind, InputKind::Volume);
        let got = collect_inputs(&[d.join("list.txt")]).unwrap();
        assert_eq!(got[0].path, d.join("x.tiff"));
        assert_eq!(got[1].stem, PathBuf::from("a"));
        let both = collect_inputs(&[d.join("list.txt"), d.join("in/a.png")]).unwrap();
        let e = check_unique_outputs(&both).unwrap_err();
        assert!(e.to_string().contains("would both be written as a"), "{e}");
        let e = collect_inputs(&[d.join("in/notes.md")]).unwrap_err();
        assert!(e.to_string().contains("not an image"), "{e}");
    }
}
