//! Split sizes, seeds, and manifests written and re-loaded.

mod common;

use std::collections::BTreeSet;

use dka_data::*;
use tempfile::tempdir;

fn counts(ds: &dyn Dataset, idx: &[usize]) -> Vec<usize> {
    let mut c = vec![0; ds.task().classes().len()];
    for &i in idx {
        c[ds.records()[i].class.unwrap()] += 1;
    }
    c
}

fn isic(dir: &std::path::Path) -> Box<dyn Dataset> {
    common::isic2019(dir, &[100, 200, 60, 20, 30, 5, 5, 10]);
    open_dataset("isic2019", dir, &LoaderOptions::default()).unwrap()
}

#[test]
fn stratified_test_and_per_class_train_fractions() {
    let dir = tempdir().unwrap();
    let ds = isic(dir.path());
    let spec = SplitSpec {
        test_fraction: 0.2,
        train_fraction: 0.0125,
        ..SplitSpec::default()
    };
    let s = make_split(ds.as_ref(), &spec).unwrap();
    assert_eq!(
        counts(ds.as_ref(), &s.test),
        vec![20, 40, 12, 4, 6, 1, 1, 2]
    );
    // Pool per class: 80, 160, 48, 16, 24, 4, 4, 8 -> max(1, floor(n * 0.0125)).
    assert_eq!(counts(ds.as_ref(), &s.train), vec![1, 2, 1, 1, 1, 1, 1, 1]);
    assert!(s.val.is_empty());

    let full = make_split(
        ds.as_ref(),
        &SplitSpec {
            train_fraction: 1.0,
            ..spec
        },
    )
    .unwrap();
    assert_eq!(
        full.test, s.test,
        "the test split does not depend on the fraction"
    );
    assert_eq!(full.train.len() + full.test.len(), ds.records().len());
    let train: BTreeSet<_> = s.train.iter().collect();
    assert!(
        train.is_subset(&full.train.iter().collect()),
        "fractions are nested"
    );

    let with_val = make_split(
        ds.as_ref(),
        &SplitSpec {
            val_fraction: 0.1,
            ..spec
        },
    )
    .unwrap();
    assert_eq!(with_val.test, s.test);
    assert_eq!(
        counts(ds.as_ref(), &with_val.val),
        vec![8, 16, 5, 2, 2, 1, 1, 1]
    );
    let all: Vec<_> = [&with_val.train, &with_val.val, &with_val.test]
        .iter()
        .flat_map(|v| v.iter())
        .collect();
    assert_eq!(
        all.len(),
        all.iter().collect::<BTreeSet<_>>().len(),
        "splits are disjoint"
    );
}

#[test]
fn draws_differ_but_share_the_test_split() {
    let dir = tempdir().unwrap();
    let ds = isic(dir.path());
    let spec = |draw| SplitSpec {
        train_fraction: 0.1,
        draw,
        ..SplitSpec::default()
    };
    let splits: Vec<Split> = (0..5)
        .map(|k| make_split(ds.as_ref(), &spec(k)).unwrap())
        .collect();
    for s in &splits[1..] {
        assert_eq!(s.test, splits[0].test);
        assert_ne!(s.train, splits[0].train);
        assert_eq!(s.train.len(), splits[0].train.len());
    }
}

#[test]
fn same_seed_same_manifest_other_seed_other_manifest() {
    let dir = tempdir().unwrap();
    let out = tempdir().unwrap();
    common::busi(dir.path(), [30, 20, 10]);
    let o = LoaderOptions::default();
    let spec = SplitSpec {
        train_fraction: 0.25,
        seed: 7,
        ..SplitSpec::default()
    };
    let (a, b) = (out.path().join("a.json"), out.path().join("b.json"));
    inspect("busi-cls", dir.path(), &o, &spec, Some(&a)).unwrap();
    inspect("busi-cls", dir.path(), &o, &spec, Some(&b)).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let c = out.path().join("c.json");
    inspect(
        "busi-cls",
        dir.path(),
        &o,
        &SplitSpec { seed: 8, ..spec },
        Some(&c),
    )
    .unwrap();
    let (ma, mc) = (Manifest::load(&a).unwrap(), Manifest::load(&c).unwrap());
    assert_ne!(ma.test, mc.test);
    assert_ne!(ma.train, mc.train);
    // Only the two manifests: no temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3);
}

#[test]
fn manifest_reloads_into_the_same_split_and_catches_changed_files() {
    let dir = tempdir().unwrap();
    let out = tempdir().unwrap();
    common::busi(dir.path(), [12, 8, 6]);
    let o = LoaderOptions::default();
    let spec = SplitSpec {
        train_fraction: 0.5,
        draw: 3,
        ..SplitSpec::default()
    };
    let path = out.path().join("m.json");
    let report = inspect("busi-seg", dir.path(), &o, &spec, Some(&path)).unwrap();
    assert_eq!(report.skipped_count(), 0);
    let text = report.to_string();
    assert!(text.contains("benign") && text.contains("train"), "{text}");

    let m = Manifest::load(&path).unwrap();
    assert_eq!(m.spec, spec);
    assert!(m.sha256.values().all(|h| h.len() == 64));
    assert!(m.train[0].files.len() >= 2, "image and mask(s)");
    let ds = open_dataset(&m.dataset, dir.path(), &m.options).unwrap();
    assert_eq!(m.resolve(ds.as_ref(), &path).unwrap(), report.split);

    // A file changed since: a clear error naming it.
    let victim = dir.path().join(&m.test[0].files[0]);
    testing::write_rgb(&victim, 16, 16);
    image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]))
        .save(&victim)
        .unwrap();
    let err = m.resolve(ds.as_ref(), &path).unwrap_err();
    assert!(matches!(err, DataError::HashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&victim.display().to_string()),
        "{err}"
    );
}

#[test]
fn manifest_for_another_dataset_is_refused() {
    let dir = tempdir().unwrap();
    let out = tempdir().unwrap();
    common::busi(dir.path(), [4, 3, 2]);
    let path = out.path().join("m.json");
    inspect(
        "busi-cls",
        dir.path(),
        &LoaderOptions::default(),
        &SplitSpec::default(),
        Some(&path),
    )
    .unwrap();
    let m = Manifest::load(&path).unwrap();
    let seg = open_dataset("busi-seg", dir.path(), &LoaderOptions::default()).unwrap();
    assert!(matches!(
        m.resolve(seg.as_ref(), &path),
        Err(DataError::Manifest { .. })
    ));
    std::fs::write(&path, "{not json").unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(err.to_string().contains("m.json"), "{err}");
}
