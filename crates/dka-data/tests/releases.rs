//! Each loader on a small tree in its release's exact layout: counts, labels, masks.

mod common;

use dka_data::*;
use tempfile::tempdir;

fn opts() -> LoaderOptions {
    LoaderOptions::default()
}

fn class_counts(ds: &dyn Dataset) -> Vec<usize> {
    let mut c = vec![0; ds.task().classes().len()];
    for r in ds.records() {
        c[r.class.unwrap()] += 1;
    }
    c
}

#[test]
fn isic2019_reads_one_hot_csv() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[5, 9, 3, 2, 2, 1, 1, 1]);
    let ds = open_dataset("isic2019", dir.path(), &opts()).unwrap();
    assert_eq!(
        ds.task().classes(),
        ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    );
    assert_eq!(class_counts(ds.as_ref()), vec![5, 9, 3, 2, 2, 1, 1, 1]);
    let raw = ds.read(0).unwrap();
    assert_eq!(raw.image.dimensions(), (12, 10));
    assert_eq!(raw.class, Some(0));
    assert!(raw.mask.is_none());
}

#[test]
fn isic2018_pairs_images_with_masks_and_keeps_official_splits() {
    let dir = tempdir().unwrap();
    common::isic2018(dir.path(), [6, 2, 3]);
    let ds = open_dataset("isic2018", dir.path(), &opts()).unwrap();
    assert!(ds.task().is_segmentation());
    assert_eq!(ds.records().len(), 11, "LICENSE.txt is not an image");
    let official = |s| {
        ds.records()
            .iter()
            .filter(|r| r.official == Some(s))
            .count()
    };
    assert_eq!(
        (
            official(SplitName::Train),
            official(SplitName::Val),
            official(SplitName::Test)
        ),
        (6, 2, 3)
    );
    let raw = ds.read(0).unwrap();
    let mask = raw.mask.unwrap();
    assert_eq!(mask.dimensions(), (20, 16));
    assert_eq!(mask.get_pixel(0, 0).0[0], 0);
    assert_eq!(mask.get_pixel(6, 6).0[0], 1, "0/255 masks become 0/1");
    let split = make_split(ds.as_ref(), &SplitSpec::default()).unwrap();
    assert_eq!(
        (split.train.len(), split.val.len(), split.test.len()),
        (6, 2, 3)
    );
}

#[test]
fn busi_classification_and_segmentation_with_extra_masks_ored() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [4, 3, 2]);
    let cls = open_dataset("busi-cls", dir.path(), &opts()).unwrap();
    assert_eq!(cls.task().classes(), ["benign", "malignant", "normal"]);
    assert_eq!(
        class_counts(cls.as_ref()),
        vec![4, 3, 2],
        "masks are not samples"
    );
    assert!(
        cls.records()
            .iter()
            .any(|r| r.id.ends_with("benign (1).png")),
        "spaces and parentheses"
    );

    // The root may also be the Dataset_BUSI_with_GT folder itself.
    let seg = open_dataset(
        "busi-seg",
        &dir.path().join("Dataset_BUSI_with_GT"),
        &opts(),
    )
    .unwrap();
    assert_eq!(seg.records().len(), 9);
    assert_eq!(seg.strata(), ["benign", "malignant", "normal"]);
    let i = seg
        .records()
        .iter()
        .position(|r| r.id == "benign/benign (1).png")
        .unwrap();
    assert_eq!(seg.records()[i].files.len(), 3, "image, _mask, _mask_1");
    let mask = seg.read(i).unwrap().mask.unwrap();
    assert_eq!(mask.get_pixel(1, 1).0[0], 1, "from _mask.png");
    assert_eq!(mask.get_pixel(12, 12).0[0], 1, "from _mask_1.png, OR-ed in");
    assert_eq!(mask.get_pixel(7, 7).0[0], 0);
    let j = seg
        .records()
        .iter()
        .position(|r| r.id == "benign/benign (2).png")
        .unwrap();
    assert_eq!(seg.read(j).unwrap().mask.unwrap().get_pixel(12, 12).0[0], 0);
}

#[test]
fn covid_kaggle_layout_with_official_test() {
    let dir = tempdir().unwrap();
    common::covid_kaggle(dir.path(), [4, 5, 6], [1, 2, 3]);
    let ds = open_dataset("covid", dir.path(), &opts()).unwrap();
    assert_eq!(ds.task().classes(), ["COVID19", "NORMAL", "PNEUMONIA"]);
    assert_eq!(class_counts(ds.as_ref()), vec![5, 7, 9]);
    let split = make_split(ds.as_ref(), &SplitSpec::default()).unwrap();
    assert_eq!(split.test.len(), 6, "the release's own test folder");
    assert_eq!(split.train.len(), 15);
    // Data/ itself as the root works too.
    let ds2 = open_dataset("covid", &dir.path().join("Data"), &opts()).unwrap();
    assert_eq!(ds2.records().len(), 21);
}

#[test]
fn covid_radiography_layout() {
    let dir = tempdir().unwrap();
    common::covid_radiography(dir.path(), [3, 4, 5, 2]);
    let ds = open_dataset("covid", dir.path(), &opts()).unwrap();
    assert_eq!(
        ds.task().classes(),
        ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    );
    assert_eq!(
        class_counts(ds.as_ref()),
        vec![3, 4, 5, 2],
        "masks/ are not samples"
    );
}

#[test]
fn generic_folder_with_and_without_split_folders() {
    let dir = tempdir().unwrap();
    for (c, k) in [("cat", 3), ("dog", 2)] {
        for i in 0..k {
            testing::write_rgb(&dir.path().join(format!("{c}/sub/{i}.png")), 8, 8);
        }
    }
    let ds = open_dataset("folder", dir.path(), &opts()).unwrap();
    assert_eq!(ds.task().classes(), ["cat", "dog"]);
    assert_eq!(class_counts(ds.as_ref()), vec![3, 2]);

    let dir = tempdir().unwrap();
    for (part, k) in [("train", 4), ("test", 2)] {
        for c in ["a", "b"] {
            for i in 0..k {
                testing::write_rgb(&dir.path().join(format!("{part}/{c}/{i}.jpg")), 8, 8);
            }
        }
    }
    let ds = open_dataset("folder", dir.path(), &opts()).unwrap();
    let split = make_split(ds.as_ref(), &SplitSpec::default()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (8, 4));
}

#[test]
fn generic_csv_classification_and_segmentation() {
    let dir = tempdir().unwrap();
    let mut csv = String::from("image,label,split\n");
    for i in 0..6 {
        testing::write_rgb(&dir.path().join(format!("img/{i}.png")), 8, 8);
        csv.push_str(&format!(
            "img/{i}.png,{},{}\n",
            if i % 2 == 0 { "pos" } else { "neg" },
            if i < 4 { "train" } else { "test" }
        ));
    }
    std::fs::write(dir.path().join("labels.csv"), csv).unwrap();
    let ds = open_dataset("csv", dir.path(), &opts()).unwrap();
    assert_eq!(ds.task().classes(), ["neg", "pos"]);
    assert_eq!(class_counts(ds.as_ref()), vec![3, 3]);
    let split = make_split(ds.as_ref(), &SplitSpec::default()).unwrap();
    assert_eq!(split.test.len(), 2);

    let dir = tempdir().unwrap();
    let mut csv = String::from("image,mask\n");
    for i in 0..3 {
        testing::write_rgb(&dir.path().join(format!("{i}.png")), 8, 8);
        testing::write_mask(&dir.path().join(format!("{i}_m.png")), 8, 8, (0, 0, 2, 2));
        csv.push_str(&format!("{i}.png,{i}_m.png\n"));
    }
    let path = dir.path().join("seg.csv");
    std::fs::write(&path, csv).unwrap();
    let ds = open_dataset("csv", &path, &opts()).unwrap();
    assert!(ds.task().is_segmentation());
    assert_eq!(ds.read(0).unwrap().mask.unwrap().get_pixel(1, 1).0[0], 1);
}

#[test]
fn brats_whole_tumour_and_regions_with_empty_slice_policies() {
    let dir = tempdir().unwrap();
    let root = dir.path().join("MICCAI_BraTS2020_TrainingData");
    for i in 1..=3 {
        common::brats_case(&root, &format!("BraTS20_Training_{i:03}"), 4);
    }
    std::fs::write(root.join("name_mapping.csv"), "x").unwrap();

    // Drop empty slices (default): 2 tumour slices per case; the root may be the parent.
    let mut o = opts();
    let ds = open_dataset("brats", dir.path(), &o).unwrap();
    assert_eq!(ds.records().len(), 6);
    assert_eq!(ds.records()[0].id, "BraTS20_Training_001/z002");
    assert_eq!(ds.records()[0].group, "BraTS20_Training_001");
    let raw = ds.read(0).unwrap();
    assert_eq!(raw.image.dimensions(), (8, 8));
    let m = raw.mask.unwrap();
    let labels: std::collections::BTreeSet<u8> = m.pixels().map(|p| p.0[0]).collect();
    assert_eq!(labels, [0, 1].into(), "whole tumour is binary");
    // Seen from above, anterior on top: voxel (x, y) is at row 7 - y, column x.
    assert_eq!(m.get_pixel(2, 5).0[0], 1);

    o.volume.labels = LabelMap::Regions;
    o.volume.empty_slices = EmptySlices::KeepAll;
    let ds = open_dataset("brats", &root, &o).unwrap();
    assert_eq!(ds.records().len(), 18);
    assert_eq!(ds.task().classes().len(), 4);
    let i = ds
        .records()
        .iter()
        .position(|r| r.id == "BraTS20_Training_002/z003")
        .unwrap();
    let m = ds.read(i).unwrap().mask.unwrap();
    assert_eq!(
        (
            m.get_pixel(2, 5).0[0],
            m.get_pixel(3, 4).0[0],
            m.get_pixel(4, 3).0[0]
        ),
        (1, 2, 3),
        "4 -> 3"
    );

    o.volume.empty_slices = EmptySlices::KeepFraction(0.5);
    let a = open_dataset("brats", &root, &o).unwrap();
    let b = open_dataset("brats", &root, &o).unwrap();
    assert!(a.records().len() > 6 && a.records().len() < 18);
    assert_eq!(a.records(), b.records(), "the kept fraction is seeded");

    // Three modalities stacked as RGB differ per channel.
    o.volume.modalities = vec![Modality::Flair, Modality::T1ce, Modality::T2];
    let ds = open_dataset("brats", &root, &o).unwrap();
    let img = ds.read(i).unwrap().image;
    let p = img.get_pixel(4, 4).0;
    assert!(p[0] != p[1] || p[1] != p[2]);

    // Splits are by case.
    let split = make_split(
        ds.as_ref(),
        &SplitSpec {
            test_fraction: 0.34,
            ..SplitSpec::default()
        },
    )
    .unwrap();
    let case = |i: &usize| ds.records()[*i].group.clone();
    let train: std::collections::BTreeSet<_> = split.train.iter().map(case).collect();
    let test: std::collections::BTreeSet<_> = split.test.iter().map(case).collect();
    assert_eq!(test.len(), 1);
    assert!(train.is_disjoint(&test));

    // Grouped epoch order keeps a case's slices together when the window is one case.
    let order = epoch_order_grouped(ds.as_ref(), &split.train, 1, 0, 0);
    assert_eq!(order.len(), split.train.len());
    let runs = order
        .windows(2)
        .filter(|w| case(&w[0]) != case(&w[1]))
        .count();
    assert_eq!(runs, train.len() - 1);
}

#[test]
fn brats_2023_naming_and_label_three() {
    let dir = tempdir().unwrap();
    let case = dir.path().join("BraTS-GLI-00000-000");
    for (m, v) in [("t2f", 10u8), ("t1n", 20), ("t1c", 30), ("t2w", 40)] {
        testing::write_u8_volume(
            &case.join(format!("BraTS-GLI-00000-000-{m}.nii.gz")),
            [4, 4, 2],
            move |_, _, _| v,
        );
    }
    testing::write_u8_volume(
        &case.join("BraTS-GLI-00000-000-seg.nii"),
        [4, 4, 2],
        |x, _, z| if z == 1 && x == 1 { 3 } else { 0 },
    );
    let mut o = opts();
    o.volume.labels = LabelMap::Regions;
    let ds = open_dataset("brats", dir.path(), &o).unwrap();
    assert_eq!(ds.records().len(), 1);
    let m = ds.read(0).unwrap().mask.unwrap();
    assert!(m.pixels().any(|p| p.0[0] == 3));
}
