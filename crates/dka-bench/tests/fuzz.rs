//! Property tests ("fuzzing") of the parsers the runner side writes itself: experiment files
//! (`Experiment::runs`), run configs (TOML and JSON, `RunConfig::validate`), checkpoint key
//! renaming
//! (`dka_core::convert::to_timm`) and peft adapter folders; command-line values and sbatch
//! scripts are in `fuzz_cli.rs` (`dka_baselines::peft::read`). No
//! input may panic; what has a writer or a printer round-trips.
//!
//! `just test` runs a few dozen cases per property; `just fuzz` sets `PROPTEST_CASES`. A failing
//! case is shrunk and saved to `tests/fuzz.proptest-regressions`, replayed first afterwards.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dka_bench::config::experiment::Experiment;
use dka_bench::config::run::RunConfig;
use proptest::prelude::*;
use proptest::test_runner::Config;

mod common;
use common::cases;

// --- run configs ---------------------------------------------------------------------------

/// A TOML value for a run-config key: usually of the right type, sometimes not.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..300).prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "-1",
            "0",
            "1e-3",
            "0.2",
            "1.5",
            "nan",
            "inf",
            "true",
            "false",
            "\"\"",
            "\"100%\"",
            "\"1.25%\"",
            "\"0.0125\"",
            "\"abc\"",
            "\"best-val\"",
            "\"best-test\"",
            "\"last\"",
            "\"bf16\"",
            "\"fp16\"",
            "\"auto\"",
            "\"cosine\"",
            "\"adamw\"",
            "\"ce-dice\"",
            "\"mask-transformer\"",
            "\"folder\"",
            "\"vit_quick\"",
            "[1, 2]",
            "[]",
            "{}",
            "{ name = \"dka\" }",
            "{ name = \"lora\", r = 4 }",
            "{ name = \"dka\", d_hat = 0 }",
            "{ name = \"vpt\", tokens = 5 }",
            "{ name = \"nope\" }",
            "{ kind = \"sgd\" }",
            "{ adapter_lr = -1.0 }",
            "{ skip_bad = true }",
            "{ mean = [0.5, 0.5] }",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_string),
    ]
}

fn config_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "backbone",
        "weights",
        "method",
        "dataset",
        "fraction",
        "data_options",
        "draw",
        "split_seed",
        "test_fraction",
        "val_fraction",
        "img_size",
        "input",
        "precision",
        "epochs",
        "batch_size",
        "optimizer",
        "selection",
        "test_every",
        "seg_loss",
        "decoder",
        "decoder_dim",
        "augment",
        "seed",
        "loader_threads",
        "epoch",
        "\"optimizer.head_lr\"",
    ])
}

/// A run-config TOML document of a few keys (each at most once).
fn config_toml() -> impl Strategy<Value = String> {
    prop::collection::btree_map(config_key(), toml_value(), 0..8)
        .prop_map(|m| m.into_iter().map(|(k, v)| format!("{k} = {v}\n")).collect())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Parsing and validation never panic; a config that validates round-trips through JSON
    /// (as `config.json` records it) and TOML.
    #[test]
    fn run_configs_parse_validate_and_round_trip(text in config_toml()) {
        let Ok(cfg) = toml::from_str::<RunConfig>(&text) else { return Ok(()) };
        if cfg.validate().is_err() {
            return Ok(());
        }
        let json = serde_json::to_string(&cfg).unwrap();
        let back: RunConfig = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &cfg);
        if let Ok(t) = toml::to_string(&cfg) {
            let back: RunConfig = toml::from_str(&t).unwrap();
            prop_assert_eq!(&back, &cfg);
        }
    }

    #[test]
    fn run_configs_of_arbitrary_text_never_panic(text in "\\PC{0,200}") {
        if let Ok(c) = toml::from_str::<RunConfig>(&text) {
            let _ = c.validate();
        }
        if let Ok(c) = serde_json::from_str::<RunConfig>(&text) {
            let _ = c.validate();
        }
    }
}

/// Non-finite numbers are refused, naming the field (`config.json` could not hold them).
#[test]
fn validate_refuses_non_finite_numbers() {
    for (text, field) in [
        ("test_fraction = nan\n", "test_fraction"),
        ("optimizer = { head_lr = inf }\n", "optimizer.head_lr"),
    ] {
        let cfg: RunConfig = toml::from_str(text).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("finite"), "{e}");
    }
}

// --- experiment files ----------------------------------------------------------------------

fn axis_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "method",
        "dataset",
        "fraction",
        "draw",
        "seed",
        "epochs",
        "\"method.d_hat\"",
        "\"method.large_kernel\"",
        "\"optimizer.head_lr\"",
        "\"optimizer.head_lr.x\"",
        "\"draw.x\"",
        "\"\"",
        "\".\"",
        "bogus",
    ])
}

fn axis_value() -> impl Strategy<Value = String> {
    prop_oneof![
        toml_value(),
        prop::sample::select(vec![
            "{ name = \"dka\", label = \"DKA\" }",
            "{ name = \"full\", with = { \"optimizer.backbone_lr\" = 1e-5 } }",
            "{ value = \"busi-seg\", with = { \"method.d_hat\" = 8 } }",
            "{ value = 3 }",
            "{ label = \"only a label\" }",
            "{ name = \"linear\", with = { \"epochs.x\" = 1 } }",
            "{ name = \"dka\", with = 5 }",
            "{ name = \"dka\", label = 7 }",
        ])
        .prop_map(str::to_string),
    ]
}

/// Distinct values that fit axis `key` (or, one time in ten, anything).
fn axis_values(key: &'static str) -> impl Strategy<Value = Vec<String>> {
    let fitting: Vec<&'static str> = match key {
        "method" => vec![
            "{ name = \"dka\", label = \"DKA\" }",
            "{ name = \"full\", with = { \"optimizer.backbone_lr\" = 1e-5 } }",
            "{ name = \"linear\" }",
            "{ name = \"lora\", r = 4 }",
        ],
        "dataset" => vec![
            "\"folder\"",
            "\"busi-cls\"",
            "{ value = \"busi-seg\", with = { \"epochs\" = 3 } }",
        ],
        "fraction" => vec!["\"1.25%\"", "\"100%\"", "0.5"],
        "draw" | "seed" => vec!["0", "1", "2"],
        "epochs" => vec!["1", "2", "3"],
        "\"method.d_hat\"" => vec!["4", "8", "16"],
        "\"method.large_kernel\"" => vec!["7", "51"],
        "\"optimizer.head_lr\"" => vec!["1e-3", "1e-4"],
        _ => vec!["1"],
    };
    let n = fitting.len();
    let distinct = prop::sample::subsequence(fitting, 1..=n.min(3))
        .prop_map(|v| v.into_iter().map(str::to_string).collect());
    prop_oneof![9 => distinct, 1 => prop::collection::vec(axis_value(), 0..4)]
}

/// An experiment file: the required keys, a base and a grid of up to 3 axes x 3 values,
/// maybe a profile, with the table's axes picked among the grid's (or not).
fn experiment_toml() -> impl Strategy<Value = (String, usize)> {
    (
        prop::collection::vec(
            axis_key().prop_flat_map(|k| (Just(k), axis_values(k))),
            1..4,
        ),
        prop_oneof![4 => Just(String::new()), 1 => config_toml()],
        prop::option::of(config_toml()),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(axes, base, profile, row, extra_column)| {
            let grid: BTreeMap<&str, Vec<String>> = axes.into_iter().collect();
            let keys: Vec<&str> = grid.keys().copied().collect();
            let unquote = |k: &str| k.trim_matches('"').to_string();
            let rows = unquote(keys[row.index(keys.len())]);
            let columns = if extra_column {
                vec!["seed".to_string()]
            } else {
                keys.iter()
                    .map(|k| unquote(k))
                    .filter(|k| *k != rows)
                    .collect()
            };
            let cells: usize = grid.values().map(|v| v.len()).product();
            let mut t = format!(
                "name = \"fuzz\"\ntitle = \"fuzz\"\nmetric = \"accuracy\"\nrows = {rows:?}\n\
                 columns = {columns:?}\n\n[base]\n{base}\n[grid]\n"
            );
            for (k, v) in &grid {
                t += &format!("{k} = [{}]\n", v.join(", "));
            }
            if let Some(p) = profile {
                t += &format!("\n[profiles.quick]\ncpu = true\n[profiles.quick.base]\n{p}");
            }
            (t, cells)
        })
}

/// `runs` never panics; when it succeeds every run is a valid config, runs are distinct, and
/// there is one per grid cell. At least a tenth of the cases must expand, so that the
/// property is known to reach its success path.
#[test]
fn experiments_expand_into_valid_distinct_runs() {
    let config = Config {
        source_file: Some(file!()),
        ..cases(256)
    };
    let n = config.cases as usize;
    let expanded = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&experiment_toml(), |(text, cells)| {
        let Ok(exp) = toml::from_str::<Experiment>(&text) else {
            return Ok(());
        };
        for profile in [None, Some("quick"), Some("absent")] {
            let Ok(runs) = exp.runs(profile) else {
                continue;
            };
            expanded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert_eq!(runs.len(), cells, "{}", text);
            let mut ids = std::collections::BTreeSet::new();
            for r in &runs {
                let cfg: RunConfig = serde_json::from_value(r.config.clone()).unwrap();
                cfg.validate().unwrap();
                prop_assert!(ids.insert(r.id.clone()), "duplicate {}", r.id);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let expanded = expanded.into_inner();
    assert!(
        expanded * 10 >= n,
        "only {expanded} of {n} experiments expanded"
    );
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn experiments_of_arbitrary_text_never_panic(text in "\\PC{0,300}") {
        if let Ok(exp) = toml::from_str::<Experiment>(&text) {
            let _ = exp.runs(None);
        }
    }
}

/// Every experiment in `experiments/` expands (under each of its profiles) into runs whose
/// configs round-trip through JSON.
#[test]
fn the_shipped_experiments_expand() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let exp = Experiment::load(&p).unwrap();
        let profiles = std::iter::once(None).chain(exp.profiles.keys().map(|k| Some(k.as_str())));
        for prof in profiles {
            let runs = exp
                .runs(prof)
                .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            assert!(!runs.is_empty());
            for r in runs {
                let cfg: RunConfig = serde_json::from_value(r.config.clone()).unwrap();
                assert_eq!(serde_json::to_value(&cfg).unwrap(), r.config);
            }
        }
    }
}

// --- checkpoint key renaming ---------------------------------------------------------------

/// Checkpoint keys as timm, torchvision and SAM write them, maybe wrapped (DDP, `model.`).
fn checkpoint_key() -> impl Strategy<Value = String> {
    let timm = prop::sample::select(vec![
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "blocks.0.attn.qkv.weight",
        "blocks.11.mlp.fc2.bias",
        "norm.weight",
        "head.bias",
        "layer1.0.bn1.running_var",
        "layer1.0.bn1.num_batches_tracked",
    ]);
    let torchvision = prop::sample::select(vec![
        "conv_proj.weight",
        "class_token",
        "encoder.pos_embedding",
        "encoder.layers.encoder_layer_3.ln_1.weight",
        "encoder.layers.encoder_layer_3.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_3.self_attention.out_proj.bias",
        "encoder.layers.encoder_layer_10.mlp.linear_2.bias",
        "encoder.layers.encoder_layer_",
        "encoder.ln.weight",
        "heads.head.weight",
    ]);
    let sam = prop::sample::select(vec![
        "image_encoder.blocks.0.mlp.lin1.weight",
        "image_encoder.neck.0.weight",
        "image_encoder.patch_embed.seq.0.bn.num_batches_tracked",
        "mask_decoder.iou_token.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    ]);
    (
        prop::sample::select(vec!["", "module.", "model.", "module.model."]),
        prop_oneof![timm, torchvision, sam],
    )
        .prop_map(|(w, k)| format!("{w}{k}"))
}

proptest! {
    #![proptest_config(cases(256))]

    /// Renaming drops only counters and SAM's non-encoder parts, never leaves a counter or a
    /// wrapper, and renaming its output again changes nothing.
    #[test]
    fn key_renaming_is_idempotent(keys in prop::collection::vec(checkpoint_key(), 0..12)) {
        let input: Vec<(String, usize)> = keys.iter().cloned().zip(0..).collect();
        let (once, _) = dka_core::convert::to_timm(input.clone());
        prop_assert!(once.len() <= input.len());
        for (k, _) in &once {
            prop_assert!(!k.ends_with("num_batches_tracked"), "{k}");
            prop_assert!(!k.starts_with("module.") && !k.starts_with("image_encoder."), "{k}");
        }
        let (twice, format) = dka_core::convert::to_timm(once.clone());
        prop_assert_eq!(format, dka_core::convert::SourceFormat::Timm);
        prop_assert_eq!(twice, once);
    }

    #[test]
    fn key_renaming_of_arbitrary_names_never_panics(keys in prop::collection::vec("\\PC{0,40}", 0..8)) {
        let (out, _) = dka_core::convert::to_timm(keys.into_iter().map(|k| (k, ())).collect());
        let _ = out;
    }
}

// --- peft adapter folders ------------------------------------------------------------------

fn peft_fixture() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/peft_lora/adapter");
    assert!(
        d.join("adapter_config.json").is_file(),
        "{} is missing: run `just fixtures`",
        d.display()
    );
    d
}

/// Values to put in an adapter config's fields.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        (-3i64..20).prop_map(|v| json!(v)),
        Just(json!(1e300)),
        Just(json!(-0.5)),
        Just(json!("LORA")),
        Just(json!("none")),
        Just(json!("all")),
        Just(json!(".*qkv")),
        Just(json!(["qkv", "fc2"])),
        Just(json!(["blocks.0.attn.qkv", "blocks.7.mlp.fc1"])),
        Just(json!(["conv2", "nonsense"])),
        Just(json!([0, 1, -1, 99999999999u64])),
        Just(json!([])),
        Just(json!({})),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    /// A peft folder whose config fields and weight-file header are changed is read or
    /// refused, never a panic; an error names a file in the folder.
    #[test]
    fn peft_adapters_never_panic(
        fields in prop::collection::btree_map(
            prop::sample::select(vec![
                "peft_type", "r", "lora_alpha", "target_modules", "layers_to_transform",
                "bias", "use_rslora", "use_dora", "fan_in_fan_out", "lora_dropout",
            ]),
            json_value(),
            0..4,
        ),
        header_edits in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(vec!["dtype", "shape", "data_offsets"]), json_value()),
            0..3,
        ),
        rename in prop::option::of("\\PC{0,20}"),
    ) {
        let src = peft_fixture();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
        for (k, v) in fields {
            cfg[k] = v;
        }
        std::fs::write(dir.path().join("adapter_config.json"), cfg.to_string()).unwrap();
        // The weights: the header (JSON after an 8-byte length) edited, the data kept.
        let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        for (i, field, v) in header_edits {
            let name = &names[i.index(names.len())];
            header.get_mut(name).unwrap()[field] = v;
        }
        if let Some(new) = rename {
            let v = header.remove(&names[0]).unwrap();
            header.insert(new, v);
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(dir.path().join("adapter_model.safetensors"), out).unwrap();
        if let Err(e) = dka_baselines::peft::read(dir.path()) {
            prop_assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
        }
    }
}
