//! Bad input: one test each. A clear error naming the file, never a panic; `skip_bad` skips
//! and counts.

mod common;

use std::path::Path;

use dka_data::testing::{encode_nifti, gzip, write_mask, write_rgb, RAS_1MM};
use dka_data::*;
use tempfile::tempdir;

fn opts() -> LoaderOptions {
    LoaderOptions::default()
}

fn skip() -> LoaderOptions {
    LoaderOptions {
        skip_bad: true,
        ..LoaderOptions::default()
    }
}

fn names(err: &DataError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "`{msg}` should name {}",
        path.display()
    );
}

#[test]
fn corrupt_jpeg() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[3, 3, 1, 1, 1, 1, 1, 1]);
    let bad = dir.path().join("ISIC_2019_Training_Input/ISIC_0000001.jpg");
    std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 this is not a jpeg").unwrap();
    let err = open_dataset("isic2019", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    names(&err, &bad);
    let ds = open_dataset("isic2019", dir.path(), &skip()).unwrap();
    assert_eq!(ds.skipped().len(), 1);
    assert_eq!(ds.records().len(), 11);
    assert_eq!(ds.skipped()[0].path, bad);
}

#[test]
fn jpeg_truncated_after_its_header_fails_at_decode_with_the_file_named() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[2, 1, 1, 1, 1, 1, 1, 1]);
    let bad = dir.path().join("ISIC_2019_Training_Input/ISIC_0000000.jpg");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    // A header scan may pass; reading it must fail cleanly, and a decode-level scan catches it.
    if let Ok(ds) = open_dataset("isic2019", dir.path(), &opts()) {
        let i = ds
            .records()
            .iter()
            .position(|r| r.id.ends_with("ISIC_0000000.jpg"))
            .unwrap();
        names(&ds.read(i).unwrap_err(), &bad);
    }
    let deep = LoaderOptions {
        check: CheckLevel::Decode,
        ..opts()
    };
    names(
        &open_dataset("isic2019", dir.path(), &deep).unwrap_err(),
        &bad,
    );
}

#[test]
fn mask_of_another_size() {
    let dir = tempdir().unwrap();
    common::isic2018(dir.path(), [3, 0, 0]);
    let bad = dir
        .path()
        .join("ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png");
    write_mask(&bad, 10, 10, (0, 0, 5, 5));
    let err = open_dataset("isic2018", dir.path(), &opts()).unwrap_err();
    match &err {
        DataError::MaskSizeMismatch {
            mask,
            image_size,
            mask_size,
            ..
        } => {
            assert_eq!(mask, &bad);
            assert_eq!((*image_size, *mask_size), ((20, 16), (10, 10)));
        }
        other => panic!("unexpected {other}"),
    }
    names(&err, &bad);
    assert_eq!(
        open_dataset("isic2018", dir.path(), &skip())
            .unwrap()
            .records()
            .len(),
        2
    );
}

#[test]
fn missing_mask() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [3, 2, 1]);
    let gone = dir
        .path()
        .join("Dataset_BUSI_with_GT/malignant/malignant (2)_mask.png");
    std::fs::remove_file(&gone).unwrap();
    let err = open_dataset("busi-seg", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::MissingMask { .. }), "{err}");
    names(&err, &gone);
    // Classification does not need masks.
    assert_eq!(
        open_dataset("busi-cls", dir.path(), &opts())
            .unwrap()
            .records()
            .len(),
        6
    );
    let ds = open_dataset("busi-seg", dir.path(), &skip()).unwrap();
    assert_eq!((ds.records().len(), ds.skipped().len()), (5, 1));

    let dir = tempdir().unwrap();
    common::isic2018(dir.path(), [2, 0, 0]);
    let gone = dir
        .path()
        .join("ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png");
    std::fs::remove_file(&gone).unwrap();
    names(
        &open_dataset("isic2018", dir.path(), &opts()).unwrap_err(),
        &gone,
    );
}

#[test]
fn unknown_class_folder() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [2, 2, 2]);
    let odd = dir.path().join("Dataset_BUSI_with_GT/benign_extra");
    write_rgb(&odd.join("x.png"), 4, 4);
    let err = open_dataset("busi-cls", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::UnknownClassFolder { .. }), "{err}");
    names(&err, &odd);
    assert!(
        err.to_string().contains("malignant"),
        "lists the expected classes: {err}"
    );

    let dir = tempdir().unwrap();
    common::covid_kaggle(dir.path(), [1, 1, 1], [1, 1, 1]);
    let odd = dir.path().join("Data/train/COVID");
    write_rgb(&odd.join("x.jpg"), 4, 4);
    names(
        &open_dataset("covid", dir.path(), &opts()).unwrap_err(),
        &odd,
    );
    let ds = open_dataset("covid", dir.path(), &skip()).unwrap();
    assert_eq!((ds.records().len(), ds.skipped().len()), (6, 1));
}

#[test]
fn csv_with_a_missing_column() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[1; 8]);
    let gt = dir.path().join("ISIC_2019_Training_GroundTruth.csv");
    let text = std::fs::read_to_string(&gt).unwrap();
    let dropped: String = text
        .lines()
        .map(|l| {
            let mut c: Vec<&str> = l.split(',').collect();
            c.remove(3); // BCC
            c.join(",") + "\n"
        })
        .collect();
    std::fs::write(&gt, dropped).unwrap();
    let err = open_dataset("isic2019", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::CsvHeader { .. }), "{err}");
    names(&err, &gt);
    assert!(err.to_string().contains("image,MEL,NV,BCC"), "{err}");

    // The generic CSV loader: neither a label nor a mask column.
    let dir = tempdir().unwrap();
    std::fs::write(dir.path().join("d.csv"), "image,klass\na.png,x\n").unwrap();
    let err = open_dataset("csv", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::CsvHeader { .. }), "{err}");
}

#[test]
fn csv_row_with_two_classes() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[2, 2, 1, 1, 1, 1, 1, 1]);
    let gt = dir.path().join("ISIC_2019_Training_GroundTruth.csv");
    let text = std::fs::read_to_string(&gt).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen("0.0", "1.0", 1);
    std::fs::write(&gt, lines.join("\n") + "\n").unwrap();
    let err = open_dataset("isic2019", dir.path(), &opts()).unwrap_err();
    match &err {
        DataError::CsvRow { line, problem, .. } => {
            assert_eq!(*line, 4);
            assert!(problem.contains("two classes"), "{problem}");
        }
        other => panic!("unexpected {other}"),
    }
    names(&err, &gt);
    let ds = open_dataset("isic2019", dir.path(), &skip()).unwrap();
    assert_eq!((ds.records().len(), ds.skipped().len()), (9, 1));
}

#[test]
fn truncated_nii_gz() {
    let dir = tempdir().unwrap();
    common::brats_case(dir.path(), "BraTS20_Training_001", 4);
    let seg = dir
        .path()
        .join("BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz");
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() / 2]).unwrap();
    let err = nifti_volume::read_volume(&seg).unwrap_err();
    assert!(matches!(err, DataError::Nifti { .. }), "{err}");
    names(&err, &seg);
    names(
        &open_dataset("brats", dir.path(), &opts()).unwrap_err(),
        &seg,
    );
    let ds = open_dataset("brats", dir.path(), &skip()).unwrap();
    assert_eq!((ds.records().len(), ds.skipped().len()), (0, 1));
}

#[test]
fn header_that_lies_about_its_size() {
    let dir = tempdir().unwrap();
    let data = vec![7u8; 4 * 4 * 4];
    for (name, dims) in [
        ("big.nii", [4usize, 4, 40]),
        ("huge.nii.gz", [30000, 30000, 30000]),
    ] {
        let mut bytes = encode_nifti([4, 4, 4], 2, &data, &RAS_1MM, false);
        for (k, d) in dims.iter().enumerate() {
            bytes[42 + 2 * k..44 + 2 * k].copy_from_slice(&(*d as i16).to_le_bytes());
        }
        let bytes = if name.ends_with(".gz") {
            gzip(&bytes)
        } else {
            bytes
        };
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = nifti_volume::read_volume(&p).unwrap_err();
        assert!(err.to_string().contains("header declares"), "{err}");
        names(&err, &p);
    }
    // Not a NIfTI file at all.
    let p = dir.path().join("junk.nii");
    std::fs::write(&p, b"hello").unwrap();
    names(&nifti_volume::read_volume(&p).unwrap_err(), &p);
}

#[test]
fn brats_case_without_seg_or_modality() {
    let dir = tempdir().unwrap();
    common::brats_case(dir.path(), "BraTS20_Training_001", 4);
    common::brats_case(dir.path(), "BraTS20_Training_002", 4);
    std::fs::remove_file(
        dir.path()
            .join("BraTS20_Training_002/BraTS20_Training_002_seg.nii.gz"),
    )
    .unwrap();
    let err = open_dataset("brats", dir.path(), &opts()).unwrap_err();
    assert!(matches!(err, DataError::MissingMask { .. }), "{err}");
    std::fs::remove_dir_all(dir.path().join("BraTS20_Training_002")).unwrap();
    let flair = dir
        .path()
        .join("BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz");
    std::fs::remove_file(&flair).unwrap();
    names(
        &open_dataset("brats", dir.path(), &opts()).unwrap_err(),
        &flair,
    );
}

#[test]
fn unknown_dataset_name_and_missing_root() {
    let err = open_dataset("imagenet", Path::new("/nonexistent"), &opts()).unwrap_err();
    assert!(matches!(
        err,
        DataError::MissingFile { .. } | DataError::UnknownDataset { .. }
    ));
    let dir = tempdir().unwrap();
    let err = open_dataset("imagenet", dir.path(), &opts()).unwrap_err();
    assert!(err.to_string().contains("busi-cls"), "{err}");
}
