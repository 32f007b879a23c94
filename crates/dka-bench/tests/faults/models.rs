//! Fault cases of the model side's files: weights (safetensors, shapes, keys), adapter folders
//! (ours and peft's), and results and data folders that cannot be written or read. The
//! helpers are `files.rs`'s.
use crate::data::quick_config;
use crate::files::*;
use crate::{fixture, s, Case, Fault};
use std::path::PathBuf;

pub fn cases() -> Vec<Case> {
    vec![
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
