//! Fault cases of the files users hand to `dka`: run configs (TOML/JSON), experiment files,
//! manifests and run folders (`dka eval`), weights, inputs, peft and dka adapters, backbone
//! configs, and results folders that cannot be written.
use crate::data::quick_config;
use crate::{fixture, s, Case, Fault};
use dka_data::testing::write_rgb;
use std::path::{Path, PathBuf};
use std::process::Command;

fn write(p: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A 3-class image folder; returns `folder=ROOT`.
fn folder(d: &Path) -> String {
    let root = d.join("ds");
    for c in ["a", "b", "c"] {
        for i in 0..4 {
            write_rgb(&root.join(c).join(format!("{i}.png")), 12, 12);
        }
    }
    format!("folder={}", root.display())
}

/// `dka train CONFIG` on the folder dataset into `d/run`, which must not be created.
fn train(d: &Path, config: &Path) -> Fault {
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
fn bad_config(d: &Path, name: &str, text: &str) -> Fault {
    let p = d.join(name);
    write(&p, text);
    train(d, &p).names(&p)
}

const QUICK: &str = "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"folder\"\n\
                     img_size = 32\nepochs = 1\nbatch_size = 4\naugment = false\n";

/// `dka grid EXP` into `d/out`, which must hold no file afterwards (random weights unless
/// `extra` names some).
fn grid(d: &Path, exp: &Path, extra: &[&str]) -> Fault {
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
fn experiment(d: &Path, edit: impl Fn(String) -> String) -> PathBuf {
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

fn bad_experiment(d: &Path, edit: impl Fn(String) -> String) -> Fault {
    let p = experiment(d, edit);
    grid(d, &p, &[]).names(&p)
}

/// A safetensors file: each tensor `(name, dtype, shape)` filled with zeros.
fn safetensors(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
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
fn features(d: &Path, change: impl Fn(&mut Vec<String>)) -> Fault {
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

fn set_arg(args: &mut [String], flag: &str, value: &Path) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = s(value);
}

/// A copy of the peft fixture's adapter folder.
fn peft_adapter(d: &Path) -> PathBuf {
    let src = fixture("peft_lora").join("adapter");
    let dst = d.join("adapter");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn with_adapter(d: &Path, adapter: &Path) -> Fault {
    let a = adapter.to_path_buf();
    features(d, move |args| args.extend(["--adapter".into(), s(&a)]))
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
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
fn trained_run(d: &Path) -> (PathBuf, String) {
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
            .args(["--data", &data, "--device", "cpu"])
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

fn eval(run: &Path, data: &str) -> Fault {
    let cache = run.parent().unwrap().join("cache");
    Fault::run(["eval", &s(run), "--data", data, "--device", "cpu"])
        .also(["--cache-dir", &s(cache)])
}

/// Mounts a 64 KiB tmpfs and fills it; unmounted when dropped.
struct FullDisk(PathBuf);

impl FullDisk {
    fn new(at: &Path) -> Result<Self, String> {
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
            name: "manifest: of other data (dka eval)",
            setup: |d| {
                let (run, data) = trained_run(d);
                let m = run.join("manifest.json");
                let text = std::fs::read_to_string(&m).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let sha = v["sha256"].as_object_mut().unwrap();
                let k = sha.keys().next().unwrap().clone();
                sha[&k] = serde_json::json!("00".repeat(32));
                write(&m, serde_json::to_string_pretty(&v).unwrap());
                eval(&run, &data)
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
        // --- weights --------------------------------------------------------------------------
        Case {
            name: "weights: not safetensors (dka features)",
            setup: |d| {
                let w = d.join("w.safetensors");
                write(&w, "PK\x03\x04 this is a zip, or a pickle");
                features(d, |a| set_arg(a, "--weights", &d.join("w.safetensors")))
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "weights: truncated (dka features)",
            setup: |d| {
                let w = d.join("w.safetensors");
                let b = std::fs::read(fixture("peft_lora").join("model.safetensors")).unwrap();
                write(&w, &b[..b.len() - 1000]);
                features(d, |a| set_arg(a, "--weights", &d.join("w.safetensors")))
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "weights: header cut inside (dka features)",
            setup: |d| {
                let w = d.join("w.safetensors");
                let b = std::fs::read(fixture("peft_lora").join("model.safetensors")).unwrap();
                write(&w, &b[..200]);
                features(d, |a| set_arg(a, "--weights", &d.join("w.safetensors")))
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "weights: empty file (dka features)",
            setup: |d| {
                let w = d.join("w.safetensors");
                write(&w, "");
                features(d, |a| set_arg(a, "--weights", &d.join("w.safetensors")))
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "weights: wrong rank and wrong keys (dka train)",
            setup: |d| {
                let w = d.join("w.safetensors");
                write(
                    &w,
                    safetensors(&[
                        ("patch_embed.proj.weight", "F32", &[32]),
                        ("not_a_key", "F32", &[2, 2]),
                    ]),
                );
                let cfg = quick_config(d);
                let mut f = train(d, &cfg).names(&w).says("patch_embed.proj.weight");
                f.args.extend(["--weights".into(), s(&w)]);
                f
            },
        },
        Case {
            name: "weights: file missing (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| t);
                let w = d.join("missing.safetensors");
                grid(d, &p, &["--weights", &s(&w)])
                    .names(&w)
                    .says("no such file")
            },
        },
        Case {
            name: "weights: not safetensors (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| t);
                let w = d.join("w.safetensors");
                write(&w, "garbage");
                grid(d, &p, &["--weights", &s(&w)])
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "input: not safetensors (dka features)",
            setup: |d| {
                let i = d.join("in.safetensors");
                write(&i, "garbage");
                features(d, |a| set_arg(a, "--input", &d.join("in.safetensors")))
                    .names(&i)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "input: no tensor named input (dka features)",
            setup: |d| {
                let i = d.join("in.safetensors");
                write(&i, safetensors(&[("pixels", "F32", &[1, 3, 16, 16])]));
                features(d, |a| set_arg(a, "--input", &d.join("in.safetensors")))
                    .names(&i)
                    .says("input")
            },
        },
        Case {
            name: "convert: input not safetensors (dka convert)",
            setup: |d| {
                let i = d.join("model.safetensors");
                let o = d.join("timm.safetensors");
                write(&i, "\u{80}\u{2}ctorch pickle");
                Fault::run(["convert", "--input", &s(&i), "--output", &s(&o)])
                    .names(&i)
                    .absent(o)
                    .clean(d)
            },
        },
        // --- adapters -------------------------------------------------------------------------
        Case {
            name: "peft adapter: adapter_config.json cut short",
            setup: |d| {
                let a = peft_adapter(d);
                let c = a.join("adapter_config.json");
                write(&c, "{\"r\": 4,");
                with_adapter(d, &a).names(&c).says("invalid config")
            },
        },
        Case {
            name: "peft adapter: not a LoRA adapter",
            setup: |d| {
                let a = peft_adapter(d);
                let c = a.join("adapter_config.json");
                let t = std::fs::read_to_string(&c).unwrap();
                write(&c, t.replace("\"LORA\"", "\"IA3\""));
                with_adapter(d, &a).names(&c).says("IA3")
            },
        },
        Case {
            name: "peft adapter: rank of the wrong type",
            setup: |d| {
                let a = peft_adapter(d);
                let c = a.join("adapter_config.json");
                let t = std::fs::read_to_string(&c).unwrap();
                write(&c, t.replace("\"r\": 4", "\"r\": \"four\""));
                with_adapter(d, &a).names(&c).says("r")
            },
        },
        Case {
            name: "peft adapter: weights missing",
            setup: |d| {
                let a = peft_adapter(d);
                let w = a.join("adapter_model.safetensors");
                std::fs::remove_file(&w).unwrap();
                with_adapter(d, &a).names(&w).says("no such file")
            },
        },
        Case {
            name: "peft adapter: weights truncated",
            setup: |d| {
                let a = peft_adapter(d);
                let w = a.join("adapter_model.safetensors");
                let b = std::fs::read(&w).unwrap();
                write(&w, &b[..b.len() / 2]);
                with_adapter(d, &a)
                    .names(&w)
                    .says("not a readable safetensors file")
            },
        },
        Case {
            name: "peft adapter: weights of another rank than the config",
            setup: |d| {
                let a = peft_adapter(d);
                let c = a.join("adapter_config.json");
                let t = std::fs::read_to_string(&c).unwrap();
                write(&c, t.replace("\"r\": 4", "\"r\": 8"));
                with_adapter(d, &a)
                    .names(&a)
                    .says("blocks.0.attn.qkv.lora_A.weight: model [8, 48], file [4, 48]")
            },
        },
        Case {
            name: "adapter: an empty folder",
            setup: |d| {
                let a = d.join("adapter");
                std::fs::create_dir_all(&a).unwrap();
                with_adapter(d, &a).names(&a).says("neither method.json")
            },
        },
        Case {
            name: "dka adapter: method.json not JSON",
            setup: |d| {
                let a = d.join("adapter");
                write(&a.join("method.json"), "{\"name\": \"dka\",,}");
                write(&a.join("adapter.safetensors"), safetensors(&[]));
                with_adapter(d, &a).names(a.join("method.json"))
            },
        },
        // --- results folders and data folders ---------------------------------------------------
        Case {
            name: "results: folder under a regular file (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| t);
                let file = d.join("a-file");
                write(&file, "x");
                let out = file.join("out");
                let mut f = grid(d, &p, &[]);
                let i = f.args.iter().position(|a| a == "--out").unwrap();
                f.args[i + 1] = s(&out);
                f.names(&out).says("Not a directory")
            },
        },
        Case {
            name: "results: folder under /proc (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| t);
                let out = PathBuf::from("/proc/dka-fault-suite/out");
                let mut f = grid(d, &p, &[]);
                let i = f.args.iter().position(|a| a == "--out").unwrap();
                f.args[i + 1] = s(&out);
                f.names(&out)
            },
        },
        Case {
            name: "results: full disk (dka grid, a full 64 KiB tmpfs)",
            setup: |d| {
                let mnt = d.join("full");
                let disk = match FullDisk::new(&mnt) {
                    Ok(disk) => disk,
                    Err(why) => return Fault::skip(why),
                };
                let p = experiment(d, |t| t);
                let out = mnt.join("out");
                let mut f = grid(d, &p, &[]);
                let i = f.args.iter().position(|a| a == "--out").unwrap();
                f.args[i + 1] = s(&out);
                f.empty.clear();
                f.keep.push(Box::new(disk));
                f.names(&out)
                    .says("No space left on device")
                    .absent(out.join("runs"))
            },
        },
        Case {
            name: "results: run folder under a regular file (dka train)",
            setup: |d| {
                let file = d.join("a-file");
                write(&file, "x");
                let out = file.join("run");
                let mut f = train(d, &quick_config(d));
                let i = f.args.iter().position(|a| a == "--out").unwrap();
                f.args[i + 1] = s(&out);
                f.names(&out)
            },
        },
        Case {
            name: "results: manifest under a regular file (dka data inspect)",
            setup: |d| {
                let file = d.join("a-file");
                write(&file, "x");
                let m = file.join("m.json");
                let data = folder(d);
                let root = data.trim_start_matches("folder=").to_string();
                Fault::run([
                    "data",
                    "inspect",
                    "--dataset",
                    "folder",
                    "--root",
                    &root,
                    "--manifest",
                    &s(&m),
                ])
                .names(file)
                .clean(d)
            },
        },
        Case {
            name: "results: output folder missing (dka features)",
            setup: |d| {
                let o = d.join("no/such/folder/features.safetensors");
                features(d, |a| {
                    set_arg(
                        a,
                        "--output",
                        &d.join("no/such/folder/features.safetensors"),
                    )
                })
                .names(&o)
                .absent(o.clone())
            },
        },
        Case {
            name: "data: two dataset folders missing, each named once (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| {
                    t.replace("draw = [0]", "draw = [0]\ndataset = [\"folder\", \"csv\"]")
                });
                let out = d.join("out");
                Fault::run([
                    "grid",
                    &s(&p),
                    "--out",
                    &s(&out),
                    "--device",
                    "cpu",
                    "--data-dir",
                    &s(d.join("datasets")),
                    "--weights",
                    "none",
                ])
                .says("2 dataset folder(s) missing, nothing was run")
                .names(d.join("datasets/folder"))
                .names(d.join("datasets/csv"))
                .empty(out)
            },
        },
        Case {
            name: "data: --data without NAME=PATH (dka grid)",
            setup: |d| {
                let p = experiment(d, |t| t);
                let mut f = grid(d, &p, &[]);
                let i = f.args.iter().position(|a| a == "--data").unwrap();
                f.args[i + 1] = s(d.join("ds"));
                f.says("expected NAME=PATH")
            },
        },
    ]
}
