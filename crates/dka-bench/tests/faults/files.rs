//! Fault cases of the files users hand to `dka`: run configs (TOML/JSON), experiment files,
//! manifests and run folders (`dka eval`); weights, adapters and unwritable folders are in
//! `models.rs`, which shares the helpers here.
use crate::data::quick_config;
use crate::{fixture, s, Case, Fault};
use dka_data::testing::write_rgb;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn write(p: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A 3-class image folder; returns `folder=ROOT`.
pub fn folder(d: &Path) -> String {
    let root = d.join("ds");
    for c in ["a", "b", "c"] {
        for i in 0..4 {
            write_rgb(&root.join(c).join(format!("{i}.png")), 12, 12);
        }
    }
    format!("folder={}", root.display())
}

/// `dka train CONFIG` on the folder dataset into `d/run`, which must not be created.
pub fn train(d: &Path, config: &Path) -> Fault {
    let out = d.join("run");
    Fault::run([
        "train",
        &s(config),
        "--out",
        &s(&out),
        "--data",
        &folder(d),
        "--device",
        "cpu",
        "--cache-dir",
        &s(d.join("cache")),
    ])
    .absent(out)
    .clean(d)
}

/// `dka train` on a config file holding `text` (named `name`); the error names the file.
pub fn bad_config(d: &Path, name: &str, text: &str) -> Fault {
    let p = d.join(name);
    write(&p, text);
    train(d, &p).names(&p)
}

const QUICK: &str = "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"folder\"\n\
                     img_size = 32\nepochs = 1\nbatch_size = 4\naugment = false\n";

/// `dka grid EXP` into `d/out`, which must hold no file afterwards (random weights unless
/// `extra` names some).
pub fn grid(d: &Path, exp: &Path, extra: &[&str]) -> Fault {
    let out = d.join("out");
    let mut args = vec![
        "grid".to_string(),
        s(exp),
        "--out".into(),
        s(&out),
        "--device".into(),
        "cpu".into(),
        "--data".into(),
        folder(d),
        "--cache-dir".into(),
        s(d.join("cache")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    if !extra.contains(&"--weights") {
        args.extend(["--weights".into(), "none".into()]);
    }
    Fault::run(args).empty(out).clean(d)
}

/// An experiment file: a valid small grid with `edit` applied to its text.
pub fn experiment(d: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = "name = \"faulty\"\ntitle = \"a faulty experiment\"\nmetric = \"accuracy\"\n\
                rows = \"method\"\ncolumns = [\"draw\"]\n\n[base]\n"
        .to_string()
        + QUICK
        + "\n[grid]\nmethod = [{ name = \"linear\" }, { name = \"dka\", d_hat = 4 }]\n\
           draw = [0]\n";
    let p = d.join("faulty.toml");
    write(&p, edit(text));
    p
}

pub fn bad_experiment(d: &Path, edit: impl Fn(String) -> String) -> Fault {
    let p = experiment(d, edit);
    grid(d, &p, &[]).names(&p)
}

/// A safetensors file: each tensor `(name, dtype, shape)` filled with zeros.
pub fn safetensors(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape) in tensors {
        let size = match *dtype {
            "F64" | "I64" => 8,
            "F16" | "BF16" | "I16" => 2,
            "U8" | "I8" | "BOOL" => 1,
            _ => 4,
        };
        let n = shape.iter().product::<usize>() * size;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.resize(out.len() + offset, 0);
    out
}

/// `dka features` on the peft LoRA fixture (ViT, its weights and input), with `change` applied
/// to the arguments; the output must not be written.
pub fn features(d: &Path, change: impl Fn(&mut Vec<String>)) -> Fault {
    let f = fixture("peft_lora");
    let out = d.join("features.safetensors");
    let mut args: Vec<String> = [
        "features",
        "--backbone",
        &s(f.join("config.json")),
        "--weights",
        &s(f.join("model.safetensors")),
        "--input",
        &s(f.join("io.safetensors")),
        "--output",
        &s(&out),
        "--device",
        "cpu",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    change(&mut args);
    Fault::run(args).absent(out).clean(d)
}

pub fn set_arg(args: &mut [String], flag: &str, value: &Path) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = s(value);
}

/// A copy of the peft fixture's adapter folder.
pub fn peft_adapter(d: &Path) -> PathBuf {
    let src = fixture("peft_lora").join("adapter");
    let dst = d.join("adapter");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

pub fn with_adapter(d: &Path, adapter: &Path) -> Fault {
    let a = adapter.to_path_buf();
    features(d, move |args| args.extend(["--adapter".into(), s(&a)]))
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy, in `d`, of one tiny trained run (1 epoch, trained once per test process) and of
/// its data; returns (run folder, `--data`).
pub fn trained_run(d: &Path) -> (PathBuf, String) {
    static TRAINED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let src = TRAINED.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-trained-run");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = folder(&dir);
        let out = Command::new(env!("CARGO_BIN_EXE_dka"))
            .args([
                "train",
                &s(quick_config(&dir)),
                "--out",
                &s(dir.join("run")),
            ])
            .args(["--data", &data, "--device", "cpu", "--weights", "none"])
            .args(["--cache-dir", &s(dir.join("cache"))])
            .current_dir(crate::repo())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    copy_tree(&src.join("run"), &d.join("run"));
    copy_tree(&src.join("ds"), &d.join("ds"));
    (d.join("run"), format!("folder={}", d.join("ds").display()))
}

pub fn eval(run: &Path, data: &str) -> Fault {
    let cache = run.parent().unwrap().join("cache");
    Fault::run(["eval", &s(run), "--data", data, "--device", "cpu"])
        .also(["--cache-dir", &s(cache)])
}

/// Mounts a 64 KiB tmpfs and fills it; unmounted when dropped.
pub struct FullDisk(PathBuf);

impl FullDisk {
    pub fn new(at: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("no mount command ({e})"))?;
        if !ok.status.success() {
            return Err(format!(
                "cannot mount a tmpfs here (needs root): {}",
                String::from_utf8_lossy(&ok.stderr).trim()
            ));
        }
        let disk = FullDisk(at.to_path_buf());
        let mut f = std::fs::File::create(at.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        Ok(disk)
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        // --- run configs (dka train) ----------------------------------------------------------
        Case {
            name: "config: TOML syntax error",
            setup: |d| bad_config(d, "run.toml", "epochs = [\n").says("TOML parse error"),
        },
        Case {
            name: "config: unknown field",
            setup: |d| bad_config(d, "run.toml", "epocs = 3\n").says("unknown field `epocs`"),
        },
        Case {
            name: "config: wrong type",
            setup: |d| {
                bad_config(d, "run.toml", "epochs = \"ten\"\n").says("invalid type: string \"ten\"")
            },
        },
        Case {
            name: "config: zero epochs",
            setup: |d| {
                bad_config(d, "run.toml", &QUICK.replace("epochs = 1", "epochs = 0"))
                    .says("epochs and batch_size must be positive")
            },
        },
        Case {
            name: "config: fraction above 100 %",
            setup: |d| {
                bad_config(d, "run.toml", &format!("{QUICK}fraction = \"150%\"\n"))
                    .says("fraction `150%` must be in (0, 1]")
            },
        },
        Case {
            name: "config: best-val selection without a validation split",
            setup: |d| {
                bad_config(d, "run.toml", &format!("{QUICK}selection = \"best-val\"\n"))
                    .says("val_fraction")
            },
        },
        Case {
            name: "config: image size too small",
            setup: |d| {
                bad_config(
                    d,
                    "run.toml",
                    &QUICK.replace("img_size = 32", "img_size = 8"),
                )
                .says("img_size 8 is too small")
            },
        },
        Case {
            name: "config: unknown method",
            setup: |d| {
                bad_config(d, "run.toml", "method = { name = \"dkaa\" }\n")
                    .says("unknown variant `dkaa`")
            },
        },
        Case {
            name: "config: unknown method field",
            setup: |d| {
                bad_config(d, "run.toml", "method = { name = \"dka\", d_hatt = 8 }\n")
                    .says("d_hatt")
            },
        },
        Case {
            name: "config: unknown loader option",
            setup: |d| {
                bad_config(d, "run.toml", "data_options = { skip_bda = true }\n").says("skip_bda")
            },
        },
        Case {
            name: "config: JSON cut short",
            setup: |d| bad_config(d, "run.json", "{\"epochs\": 1,").says("EOF while parsing"),
        },
        Case {
            name: "config: JSON of the wrong shape",
            setup: |d| bad_config(d, "run.json", "[1, 2, 3]").says("invalid type"),
        },
        Case {
            name: "config: file missing",
            setup: |d| {
                let p = d.join("nowhere.toml");
                train(d, &p).names(&p).says("No such file")
            },
        },
        Case {
            name: "config: unknown backbone preset",
            setup: |d| {
                bad_config(
                    d,
                    "run.toml",
                    &QUICK.replace("experiments/backbones/vit_quick.json", "vit_huge_nonsense"),
                )
                .says("unknown backbone preset 'vit_huge_nonsense'")
            },
        },
        Case {
            name: "config: backbone JSON of the wrong type (dka features)",
            setup: |d| {
                let bb = d.join("backbone.json");
                write(&bb, r#"{"arch": "vit", "embed_dim": "wide"}"#);
                features(d, |a| set_arg(a, "--backbone", &d.join("backbone.json")))
                    .names(&bb)
                    .says("invalid type")
            },
        },
        Case {
            name: "config: backbone JSON of an unknown arch (dka features)",
            setup: |d| {
                let bb = d.join("backbone.json");
                write(&bb, r#"{"arch": "transformer-xl"}"#);
                features(d, |a| set_arg(a, "--backbone", &d.join("backbone.json")))
                    .names(&bb)
                    .says("transformer-xl")
            },
        },
        // --- experiment files (dka grid) ------------------------------------------------------
        Case {
            name: "experiment: TOML syntax error",
            setup: |d| bad_experiment(d, |t| t + "[grid\n").says("not a valid experiment"),
        },
        Case {
            name: "experiment: a required key missing",
            setup: |d| {
                bad_experiment(d, |t| t.replace("title = \"a faulty experiment\"\n", ""))
                    .says("missing field `title`")
            },
        },
        Case {
            name: "experiment: unknown key",
            setup: |d| bad_experiment(d, |t| format!("colour = \"red\"\n{t}")).says("colour"),
        },
        Case {
            name: "experiment: an axis that is not a list",
            setup: |d| {
                bad_experiment(d, |t| t.replace("draw = [0]", "draw = 0"))
                    .says("grid axis 'draw' must be a non-empty list")
            },
        },
        Case {
            name: "experiment: an empty axis",
            setup: |d| {
                bad_experiment(d, |t| t.replace("draw = [0]", "draw = []"))
                    .says("grid axis 'draw' must be a non-empty list")
            },
        },
        Case {
            name: "experiment: a table axis that is not a grid axis",
            setup: |d| {
                bad_experiment(d, |t| {
                    t.replace("columns = [\"draw\"]", "columns = [\"seed\"]")
                })
                .says("table axis 'seed' is not a grid axis")
            },
        },
        Case {
            name: "experiment: a cell with an unknown run-config field",
            setup: |d| {
                bad_experiment(d, |t| t.replace("epochs = 1", "epochs = 1\nepochss = 1"))
                    .says("unknown field `epochss`")
            },
        },
        Case {
            name: "experiment: a cell with an invalid value",
            setup: |d| {
                bad_experiment(d, |t| t.replace("epochs = 1", "epochs = 0"))
                    .says("epochs and batch_size must be positive")
            },
        },
        Case {
            name: "experiment: a nested path into a non-table",
            setup: |d| {
                bad_experiment(d, |t| {
                    t.replace("epochs = 1", "epochs = 1\n\"epochs.x\" = 1")
                })
                .says("`epochs.x`")
            },
        },
        Case {
            name: "experiment: two identical runs",
            setup: |d| {
                bad_experiment(d, |t| t.replace("draw = [0]", "draw = [0, 0]"))
                    .says("two identical runs")
            },
        },
        Case {
            name: "experiment: unknown profile",
            setup: |d| {
                let p = experiment(d, |t| t);
                grid(d, &p, &["--profile", "fast"]).says("has no profile 'fast'")
            },
        },
        Case {
            name: "experiment: a profile with an unknown key",
            setup: |d| {
                bad_experiment(d, |t| t + "\n[profiles.quick]\ncpu = true\ngpu = false\n")
                    .says("gpu")
            },
        },
        Case {
            name: "experiment: file missing",
            setup: |d| {
                let p = d.join("nowhere.toml");
                grid(d, &p, &[]).names(&p).says("No such file")
            },
        },
        Case {
            name: "experiment: a --shard that is not I/N",
            setup: |d| {
                let p = experiment(d, |t| t);
                grid(d, &p, &["--shard", "2/2"]).says("shard 2/2")
            },
        },
        // --- manifests and run folders (dka eval) ------------------------------------------------
        Case {
            name: "manifest: not JSON (dka eval)",
            setup: |d| {
                let (run, data) = trained_run(d);
                let m = run.join("manifest.json");
                write(&m, "{\"version\": 1, \"dataset\":");
                eval(&run, &data).names(&m).says("not a valid manifest")
            },
        },
        Case {
            name: "manifest: another format version (dka eval)",
            setup: |d| {
                let (run, data) = trained_run(d);
                let m = run.join("manifest.json");
                let text = std::fs::read_to_string(&m).unwrap();
                write(&m, text.replacen("\"version\": 1", "\"version\": 7", 1));
                eval(&run, &data).names(&m).says("version 7")
            },
        },
        Case {
            name: "manifest: of other data (dka eval --split)",
            setup: |d| {
                let (run, data) = trained_run(d);
                let m = run.join("manifest.json");
                let text = std::fs::read_to_string(&m).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let sha = v["sha256"].as_object_mut().unwrap();
                let k = sha.keys().next().unwrap().clone();
                sha[&k] = serde_json::json!("00".repeat(32));
                write(&m, serde_json::to_string_pretty(&v).unwrap());
                // Without --split such data is evaluated whole, as external data
                // (tests/predict.rs); a split of the run's own is refused.
                eval(&run, &data)
                    .also(["--split", "test"])
                    .names(&run)
                    .says("not the data this run was trained on")
            },
        },
        Case {
            name: "run folder: config.json not JSON (dka eval)",
            setup: |d| {
                let (run, data) = trained_run(d);
                let c = run.join("config.json");
                write(&c, "backbone = 'toml, not json'");
                eval(&run, &data).names(&c)
            },
        },
        Case {
            name: "run folder: no such folder (dka eval)",
            setup: |d| {
                let run = d.join("no-run");
                eval(&run, &folder(d)).names(run.join("config.json"))
            },
        },
    ]
}
