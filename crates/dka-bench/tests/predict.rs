//! `dka predict` and `dka eval --per-case` end to end (tiny ViT, one epoch, random-init
//! backbone): masks at the inputs' sizes with labels in range, NIfTI output with the input's
//! shape and affine (our reader, and nibabel when the pinned `.venv` is there), unreadable
//! inputs named while the rest are predicted, predicted masks and labels that score exactly
//! what `dka eval` scores on the run's own test images, per-case rows whose means and pooled
//! numbers are `summary.json`'s, and external data evaluated whole.
use image::{GrayImage, ImageFormat, Luma, RgbImage};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::{csv_rows, dka, metrics_of, ok, repo, stderr, synth};

/// A BUSI-layout segmentation release (`Dataset_BUSI_with_GT/<class>/<class> (n).png` and
/// `..._mask.png`) of `per_class` images per class, `size` pixels square: a bright disc on
/// speckle, the disc the mask.
fn busi(dir: &Path, per_class: usize, size: u32, seed: u64) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for class in ["benign", "malignant", "normal"] {
        let folder = dir.join("Dataset_BUSI_with_GT").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for n in 1..=per_class {
            let (cx, cy) = (
                (size / 4 + next() % (size / 2)) as f64,
                (size / 4 + next() % (size / 2)) as f64,
            );
            let r = (size / 8 + next() % (size / 6)) as f64;
            let inside = |x: u32, y: u32| {
                class != "normal" && (x as f64 - cx).powi(2) + (y as f64 - cy).powi(2) < r * r
            };
            let mut img = RgbImage::new(size, size);
            let mut mask = GrayImage::new(size, size);
            for (x, y, p) in img.enumerate_pixels_mut() {
                let v = if inside(x, y) { 170 } else { 50 } + (next() % 40) as u8;
                *p = image::Rgb([v, v, v]);
                mask.put_pixel(x, y, Luma([if inside(x, y) { 255 } else { 0 }]));
            }
            img.save(folder.join(format!("{class} ({n}).png"))).unwrap();
            mask.save(folder.join(format!("{class} ({n})_mask.png")))
                .unwrap();
        }
    }
    format!("busi-seg={}", dir.display())
}

/// Trains a one-epoch DKA run on `dataset` and returns its folder.
fn train(tmp: &Path, name: &str, dataset: &str, data: &str) -> PathBuf {
    let cfg = tmp.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"{dataset}\"\n\
             img_size = 32\nepochs = 1\nbatch_size = 16\nmethod = {{ name = \"dka\" }}\n"
        ),
    )
    .unwrap();
    let out = tmp.join(format!("run-{name}"));
    ok(dka(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--data",
        data,
        "--weights",
        "none",
    ]));
    out
}

/// The run's test files (absolute), first file of each manifest entry.
fn test_files(run: &Path, root: &Path) -> Vec<PathBuf> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    m["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| root.join(e["files"][0].as_str().unwrap()))
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Segmentation: predict on the run's test images, on a folder of other sizes and formats
/// with a corrupt file, and score the masks; per-case rows and summary.json; external data.
#[test]
fn segmentation_masks_score_what_eval_scores_and_per_case_rows_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = busi(&t.join("busi"), 10, 32, 0);
    let run = train(t, "seg", "busi-seg", &data);
    let r = run.to_str().unwrap();

    // Today's pooled numbers, then the same with per-case rows.
    let pooled = metrics_of(&dka(&["eval", r, "--data", &data, "--device", "cpu"]));
    let cases_csv = t.join("eval/cases.csv");
    let o = dka(&[
        "eval",
        r,
        "--data",
        &data,
        "--device",
        "cpu",
        "--per-case",
        cases_csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        metrics_of(&o),
        pooled,
        "--per-case changes no pooled number"
    );
    let summary = json(&t.join("eval/summary.json"));
    for (k, v) in &pooled {
        let s = summary["pooled"][k].as_f64().unwrap();
        assert!((s - v).abs() < 1e-6, "{k}: summary {s} vs eval {v}");
    }
    let files = test_files(&run, &t.join("busi"));
    let rows = csv_rows(&cases_csv);
    assert_eq!(rows.len(), files.len(), "one row per test image");
    assert_eq!(summary["cases"].as_u64().unwrap() as usize, files.len());
    for col in [
        "iou_lesion",
        "dice_lesion",
        "iou_background",
        "iou_foreground",
    ] {
        let vals: Vec<f64> = rows.iter().filter_map(|r| r[col].parse().ok()).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let s = &summary["per_case_mean"][col];
        assert_eq!(s["cases"].as_u64().unwrap() as usize, vals.len(), "{col}");
        assert!(
            (s["mean"].as_f64().unwrap() - mean).abs() < 1e-5,
            "{col}: mean of rows {mean} vs summary {}",
            s["mean"]
        );
    }
    assert_eq!(summary["paper_metric"]["name"], "miou_foreground");

    // Predicted masks of the test images (32x32, the run's input size: no resizing, so the
    // tolerance is round-off only) give eval's foreground IoU.
    let list = t.join("test.txt");
    std::fs::write(
        &list,
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let pred = t.join("pred-test");
    ok(dka(&[
        "predict",
        r,
        "--input",
        list.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--device",
        "cpu",
        "--batch-size",
        "5",
    ]));
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let m = image::open(pred.join(format!("{stem}.png")))
            .unwrap()
            .to_luma8();
        let gt = image::open(f.with_file_name(format!("{stem}_mask.png")))
            .unwrap()
            .to_luma8();
        assert_eq!(m.dimensions(), gt.dimensions());
        for (p, g) in m.pixels().zip(gt.pixels()) {
            match (p.0[0] == 1, g.0[0] > 0) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
    }
    let iou = tp as f64 / (tp + fp + fn_) as f64;
    assert!(
        (iou - pooled["miou_foreground"]).abs() < 1e-6,
        "IoU of predicted masks {iou} vs dka eval {}",
        pooled["miou_foreground"]
    );

    // A folder of other sizes and formats, a corrupt file and a sub-folder.
    let mixed = t.join("mixed");
    std::fs::create_dir_all(mixed.join("sub")).unwrap();
    let src = image::open(&files[0]).unwrap().to_rgb8();
    let sizes: [(&str, u32, u32, ImageFormat); 5] = [
        ("wide.png", 57, 23, ImageFormat::Png),
        ("tall.jpg", 19, 64, ImageFormat::Jpeg),
        ("big.bmp", 96, 80, ImageFormat::Bmp),
        ("sub/small.tiff", 11, 9, ImageFormat::Tiff),
        ("same.png", 32, 32, ImageFormat::Png),
    ];
    for (name, w, h, fmt) in sizes {
        image::imageops::resize(&src, w, h, image::imageops::FilterType::Triangle)
            .save_with_format(mixed.join(name), fmt)
            .unwrap();
    }
    std::fs::write(mixed.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let pred = t.join("pred-mixed");
    let o = dka(&[
        "predict",
        r,
        "--input",
        mixed.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--device",
        "cpu",
        "--overlay",
        "--probabilities",
    ]);
    assert!(!o.status.success(), "a failed input fails the command");
    let err = stderr(&o);
    assert!(err.contains("broken.png"), "the bad file is named: {err}");
    assert!(err.contains("1 of 6 inputs failed"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for (name, w, h, _) in sizes {
        let stem = Path::new(name).with_extension("");
        let m = image::open(pred.join(&stem).with_extension("png"))
            .unwrap()
            .to_luma8();
        assert_eq!(m.dimensions(), (w, h), "{name}");
        assert!(m.pixels().all(|p| p.0[0] < 2), "{name}: labels 0..C-1");
        let ov = pred.join(format!("{}_overlay.png", stem.display()));
        assert_eq!(image::image_dimensions(&ov).unwrap(), (w, h));
        let probs = tch::Tensor::read_safetensors(
            pred.join(format!("{}_probabilities.safetensors", stem.display())),
        )
        .unwrap();
        assert_eq!(probs[0].1.size(), [2, h as i64, w as i64]);
        let sum = probs[0].1.sum_dim_intlist(0, false, tch::Kind::Float);
        assert!((sum - 1.0).abs().max().double_value(&[]) < 1e-5);
    }
    let summary = json(&pred.join("predict.json"));
    assert_eq!(summary["predicted"], 5);
    assert_eq!(summary["failed"].as_array().unwrap().len(), 1);

    // External data with the run's classes: every record, one row each.
    let other = busi(&t.join("busi-b"), 4, 40, 7);
    let ext_csv = t.join("ext/cases.csv");
    let o = dka(&[
        "eval",
        r,
        "--data",
        &other,
        "--device",
        "cpu",
        "--per-case",
        ext_csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("external data"), "said: {}", stderr(&o));
    assert_eq!(
        csv_rows(&ext_csv).len(),
        12,
        "every image of the external set"
    );
    let s = json(&t.join("ext/summary.json"));
    assert_eq!(s["about"]["external"], true);
    // --split is for the run's own data only.
    let o = dka(&[
        "eval", r, "--data", &other, "--split", "test", "--device", "cpu",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("leave out --split"), "{}", stderr(&o));
}

/// Classification: predictions.csv labels are eval's per-case predictions; an external folder
/// with the classes in another order is matched by name.
#[test]
fn classification_labels_match_eval_and_external_classes_map_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = synth(&t.join("synth"), 10, 0);
    let run = train(t, "cls", "folder", &data);
    let r = run.to_str().unwrap();
    let cases_csv = t.join("cases.csv");
    let o = dka(&[
        "eval",
        r,
        "--data",
        &data,
        "--device",
        "cpu",
        "--per-case",
        cases_csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pooled = metrics_of(&o);
    let rows = csv_rows(&cases_csv);
    let correct: f64 = rows
        .iter()
        .map(|r| r["correct"].parse::<f64>().unwrap())
        .sum::<f64>()
        / rows.len() as f64;
    // `dka eval` prints 6 decimals.
    assert!(
        (correct - pooled["accuracy"]).abs() < 1e-6,
        "mean of `correct` {correct} vs accuracy {}",
        pooled["accuracy"]
    );
    let root = t.join("synth");
    let files = test_files(&run, &root);
    let pred = t.join("pred");
    let mut args = vec![
        "predict",
        r,
        "--out",
        pred.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    args.push("--input");
    let fs: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(fs.iter().map(String::as_str));
    ok(dka(&args));
    let preds = csv_rows(&pred.join("predictions.csv"));
    assert_eq!(preds.len(), files.len());
    let by_file: BTreeMap<String, String> = rows
        .iter()
        .map(|r| (r["file"].clone(), r["pred"].clone()))
        .collect();
    for (p, f) in preds.iter().zip(&files) {
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        assert_eq!(p["label"], by_file[&rel], "{rel}");
        for (k, v) in p.iter().filter(|(k, _)| k.starts_with("prob_")) {
            let e: f64 = rows.iter().find(|r| r["file"] == rel).unwrap()[k]
                .parse()
                .unwrap();
            assert!((v.parse::<f64>().unwrap() - e).abs() < 1e-5, "{rel} {k}");
        }
    }
    // The same classes under other folder names and order: matched by name.
    let ext = t.join("ext");
    for (from, to) in [
        ("class0", "Class0"),
        ("class1", "class1"),
        ("class2", "class2"),
    ] {
        let src = root.join(from);
        let dst = ext.join(to);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap().take(3) {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let ext_csv = t.join("ext-cases.csv");
    let o = dka(&[
        "eval",
        r,
        "--data",
        &format!("folder={}", ext.display()),
        "--device",
        "cpu",
        "--per-case",
        ext_csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = csv_rows(&ext_csv);
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r["true"].starts_with("class")));
    // A volume is refused by a classifier, in one line.
    let o = dka(&[
        "predict",
        r,
        "--input",
        repo()
            .join(".assets/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
            .to_str()
            .unwrap(),
        "--out",
        t.join("v").to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a classification run predicts images"));
}

/// A NIfTI volume (the MNI152 template) through a run trained on its slices: one label map
/// with the input's shape and affine, labels in range, probabilities 4-D.
#[test]
fn volumes_come_back_with_the_inputs_shape_and_affine() {
    let t1 = repo().join(".assets/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    if !t1.is_file() {
        eprintln!("skipped: no {} (run scripts/assets.sh)", t1.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mni = format!("mni152={}", repo().join(".assets/mni152").display());
    let run = train(t, "mni", "mni152", &mni);
    let pred = t.join("pred");
    ok(dka(&[
        "predict",
        run.to_str().unwrap(),
        "--input",
        t1.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
        "--device",
        "cpu",
        "--probabilities",
    ]));
    let out = pred.join("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    let input = dka_data::nifti_volume::read_volume(&t1).unwrap();
    let labels = dka_data::nifti_volume::read_volume(&out).unwrap();
    assert_eq!(labels.data.shape(), input.data.shape());
    assert_eq!(labels.header.affine, input.header.affine);
    assert!(labels
        .data
        .iter()
        .all(|&v| v == 0.0 || v == 1.0 || v == 2.0));
    let python = repo().join(".venv/bin/python");
    if python.exists() {
        let probs = pred.join("mni_icbm152_t1_tal_nlin_sym_09a_converted_probabilities.nii.gz");
        let code = format!(
            "import nibabel as nib, numpy as np\n\
             a = nib.load({:?}); b = nib.load({:?}); p = nib.load({:?})\n\
             assert a.shape == b.shape, (a.shape, b.shape)\n\
             assert np.array_equal(a.affine, b.affine), (a.affine, b.affine)\n\
             assert p.shape == a.shape + (3,), p.shape\n\
             assert np.array_equal(p.affine, a.affine)\n\
             lab = np.asarray(b.dataobj); pr = p.get_fdata()\n\
             assert np.allclose(pr.sum(-1), 1, atol=1e-5)\n\
             assert (pr.argmax(-1) == lab).mean() > 0.999\n\
             print('nibabel: shape', b.shape, 'affine equal')\n",
            t1.display().to_string(),
            out.display().to_string(),
            probs.display().to_string()
        );
        let o = std::process::Command::new(&python)
            .args(["-c", &code])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
