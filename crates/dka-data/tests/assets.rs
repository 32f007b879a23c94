//! Real medical images from the package registries (`scripts/assets.sh` puts them in
//! `.assets/`). These tests fail, saying so, when the files are missing: they never pass
//! silently.

use std::collections::BTreeSet;
use std::path::PathBuf;

use dka_data::nifti_volume::{axcodes, axial_axis, read_header, read_volume};
use dka_data::*;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.assets")
}

fn require(rel: &str) -> PathBuf {
    let p = assets().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/assets.sh (from the repository root) to fetch the registry assets",
        p.display()
    );
    p
}

#[test]
fn mni152_volume_has_the_right_shape_orientation_and_values() {
    let t1 = require("mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    let vol = read_volume(&t1).unwrap();
    assert_eq!(vol.data.shape(), &[197, 233, 189]);
    assert_eq!(vol.header.version, 1);
    assert_eq!(vol.header.datatype, "Uint8");
    assert_eq!(axcodes(&vol.header.affine), ['R', 'A', 'S']);
    assert_eq!(axial_axis(&vol.header.affine), 2);
    assert_eq!(vol.header.affine[0][3], -98.0);
    let max = vol.data.fold(0.0f32, |m, &v| m.max(v));
    assert_eq!(max, 255.0);
    assert_eq!(read_header(&t1).unwrap().dims, [197, 233, 189]);
}

#[test]
fn mni152_slices_carry_background_grey_and_white_matter() {
    require("mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz");
    require("mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz");
    let root = assets().join("mni152");
    let all = LoaderOptions {
        volume: VolumeOptions {
            empty_slices: EmptySlices::KeepAll,
            ..VolumeOptions::default()
        },
        ..LoaderOptions::default()
    };
    let ds = open_dataset("mni152", &root, &all).unwrap();
    assert_eq!(ds.records().len(), 189, "one sample per axial slice");
    assert_eq!(
        ds.task().classes(),
        ["background", "grey matter", "white matter"]
    );
    let mid = ds
        .records()
        .iter()
        .position(|r| r.id == "mni152/z094")
        .unwrap();
    let raw = ds.read(mid).unwrap();
    assert_eq!(raw.image.dimensions(), (197, 233), "x across, y down");
    let mask = raw.mask.unwrap();
    let labels: BTreeSet<u8> = mask.pixels().map(|p| p.0[0]).collect();
    assert_eq!(labels, [0, 1, 2].into());
    let frac = |c: u8| mask.pixels().filter(|p| p.0[0] == c).count() as f64 / (197.0 * 233.0);
    assert!(
        frac(1) > 0.1 && frac(2) > 0.05,
        "grey {} white {}",
        frac(1),
        frac(2)
    );
    // Anterior at the top: the brain's front reaches nearer the top edge than its back
    // reaches the bottom edge in this template's field of view.
    let rows: Vec<u32> = mask
        .enumerate_pixels()
        .filter(|p| p.2 .0[0] != 0)
        .map(|p| p.1)
        .collect();
    let (top, bottom) = (
        *rows.iter().min().unwrap(),
        232 - *rows.iter().max().unwrap(),
    );
    assert!(top > 0 && bottom > 0);
    // Intensities are normalised per volume to 8 bits, the full range used, and the brain is
    // brighter than the corner.
    assert!(raw.image.pixels().any(|p| p.0[0] == 255));
    assert!(raw.image.get_pixel(98, 116).0[0] > raw.image.get_pixel(0, 0).0[0]);

    // Dropping empty slices keeps the brain's slices only; splits are per slice.
    let ds = open_dataset("mni152", &root, &LoaderOptions::default()).unwrap();
    let n = ds.records().len();
    assert!(n > 120 && n < 189, "{n} slices with tissue");
    let split = make_split(
        ds.as_ref(),
        &SplitSpec {
            train_fraction: 0.1,
            ..SplitSpec::default()
        },
    )
    .unwrap();
    assert_eq!(split.test.len(), (n as f64 * 0.2).round() as usize);
    let cfg = LoaderConfig {
        batch_size: 4,
        ..LoaderConfig::default()
    };
    let ds: std::sync::Arc<dyn Dataset> = std::sync::Arc::from(ds);
    let batch = BatchLoader::new(
        ds,
        split.train[..4].to_vec(),
        Preprocess::default(),
        Some(Augment::default()),
        &cfg,
        0,
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    assert_eq!(batch.images.shape(), &[4, 3, 224, 224]);
    let BatchTarget::Masks(m) = batch.target else {
        panic!("segmentation")
    };
    assert!(m.iter().all(|&v| (0..3).contains(&v)));
}

#[test]
fn retina_photo_decodes_and_preprocesses() {
    let p = require("skimage/retina.jpg");
    let img = image_io::read_rgb(&p).unwrap();
    assert_eq!(img.dimensions(), (1411, 1411));
    let raw = RawSample {
        image: img,
        mask: None,
        class: Some(0),
    };
    let s = prepare(raw, &Preprocess::default(), None).unwrap();
    assert_eq!(s.image.shape(), &[3, 224, 224]);
    // A fundus photo is red-dominated.
    assert!(
        s.image.index_axis(ndarray::Axis(0), 0).mean().unwrap()
            > s.image.index_axis(ndarray::Axis(0), 2).mean().unwrap()
    );
}

/// Dataset `name` over `.assets/colin27` (its T1 `t1` and the AAL atlas), or `None` when
/// DKA_ASSETS_NO_APT=1 (the switch scripts/assets.sh reads) says Colin27 was not fetched: it
/// comes from a Debian package, fetched when apt works.
fn colin27(name: &str, t1: &str) -> Option<Box<dyn Dataset>> {
    if std::env::var_os("DKA_ASSETS_NO_APT").is_some() {
        eprintln!("{name} skipped: DKA_ASSETS_NO_APT is set");
        return None;
    }
    require(&format!("colin27/{t1}"));
    require("colin27/aal.nii.gz");
    Some(open_dataset(name, &assets().join("colin27"), &LoaderOptions::default()).unwrap())
}

#[test]
fn colin27_with_the_aal_atlas() {
    let Some(ds) = colin27("colin27", "ch2.nii.gz") else {
        return;
    };
    assert_eq!(ds.task().classes().len(), 117);
    assert_eq!(ds.task().classes()[1], "Precentral_L");
    let h = read_header(&require("colin27/ch2.nii.gz")).unwrap();
    assert_eq!(h.dims, [181, 217, 181]);
    let mid = ds.records().len() / 2;
    let mask = ds.read(mid).unwrap().mask.unwrap();
    let labels: BTreeSet<u8> = mask.pixels().map(|p| p.0[0]).collect();
    assert!(labels.len() > 10 && labels.iter().all(|&l| l <= 116));
}

#[test]
fn colin27_grey_matter_has_a_held_out_slab_and_two_classes() {
    let Some(ds) = colin27("colin27-gm-slab", "ch2bet.nii.gz") else {
        return;
    };
    assert_eq!(ds.task().classes(), ["background", "grey matter"]);
    let z = |r: &Record| -> usize { r.id.rsplit("/z").next().unwrap().parse().unwrap() };
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for r in ds.records() {
        match r.official {
            Some(SplitName::Train) => train.push(z(r)),
            Some(SplitName::Test) => test.push(z(r)),
            other => panic!("{}: split {other:?}", r.id),
        }
    }
    // Every slice the atlas touches, minus the gap around the test slab.
    let (lo, hi) = (train.iter().min().unwrap(), train.iter().max().unwrap());
    let range = (hi - lo) as f64;
    let n = test.len() as f64;
    assert!(
        n >= 0.19 * range && n <= 0.21 * range + 1.0,
        "{n} test slices"
    );
    let (t0, t1) = (*test.iter().min().unwrap(), *test.iter().max().unwrap());
    // No training slice within 8 % of the range of a test slice (7 % allows for rounding).
    for &s in &train {
        let d = if s < t0 { t0 - s } else { s.saturating_sub(t1) };
        assert!(
            d as f64 >= 0.07 * range,
            "training slice {s} is {d} slices from the test slab"
        );
    }
    let ids: Vec<usize> = ds.records().iter().map(z).collect();
    let mid = ids.iter().position(|&s| s == (t0 + t1) / 2).unwrap();
    let mask = ds.read(mid).unwrap().mask.unwrap();
    let labels: BTreeSet<u8> = mask.pixels().map(|p| p.0[0]).collect();
    assert_eq!(labels, BTreeSet::from([0, 1]));
    let grey = mask.pixels().filter(|p| p.0[0] == 1).count() as f64 / mask.pixels().len() as f64;
    assert!(
        (0.05..0.5).contains(&grey),
        "grey matter covers {grey:.3} of a mid-slab slice"
    );
}
