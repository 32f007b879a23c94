//! Fault cases of the loaders and the data formats: images, masks, CSV, NIfTI, one or more per
//! loader, through `dka data inspect` (the manifest must not be written) or `dka train`.
use crate::common;
use crate::{s, Case, Fault};
use dka_data::testing::{encode_nifti, gzip, write_rgb, RAS_1MM};
use std::path::Path;

/// `dka data inspect` of `dataset` at `root`; the error names `file`; no manifest written.
fn inspect(dir: &Path, dataset: &str, root: &Path, file: &Path) -> Fault {
    let manifest = dir.join("manifest.json");
    Fault::run([
        "data",
        "inspect",
        "--dataset",
        dataset,
        "--root",
        &s(root),
        "--manifest",
        &s(&manifest),
    ])
    .names(file)
    .absent(manifest)
    .clean(dir)
}

fn write(p: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn truncate(p: &Path, keep: usize) {
    let b = std::fs::read(p).unwrap();
    std::fs::write(p, &b[..keep.min(b.len())]).unwrap();
}

/// An image-folder dataset of 3 classes x 4 PNGs.
fn folder(root: &Path) {
    for c in ["a", "b", "c"] {
        for i in 0..4 {
            write_rgb(&root.join(c).join(format!("{i}.png")), 12, 12);
        }
    }
}

/// A run config for `dka train` on the folder dataset (tiny backbone, one epoch).
pub fn quick_config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("run.toml");
    write(
        &p,
        "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"folder\"\nimg_size = \
         32\nepochs = 1\nbatch_size = 4\naugment = false\nloader_threads = 1\n",
    );
    p
}

fn isic2019_gt(dir: &Path) -> std::path::PathBuf {
    common::isic2019(dir, &[2, 2, 1, 1, 1, 1, 1, 1]);
    dir.join("ISIC_2019_Training_GroundTruth.csv")
}

/// Replaces line `n` (0-based) of a text file.
fn set_line(p: &Path, n: usize, line: &str) {
    let text = std::fs::read_to_string(p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[n] = line.to_string();
    std::fs::write(p, lines.join("\n") + "\n").unwrap();
}

/// A generic-CSV dataset: `d.csv` with `header` and `rows`, 4 images `i{k}.png`.
fn csv_dataset(dir: &Path, text: &str) -> std::path::PathBuf {
    let root = dir.join("csvdata");
    for k in 0..4 {
        write_rgb(&root.join(format!("i{k}.png")), 8, 8);
    }
    let p = root.join("d.csv");
    write(&p, text);
    p
}

fn brats(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("brats");
    common::brats_case(&root, "BraTS20_Training_001", 4);
    common::brats_case(&root, "BraTS20_Training_002", 4);
    root
}

fn brats_file(root: &Path, m: &str) -> std::path::PathBuf {
    root.join(format!(
        "BraTS20_Training_002/BraTS20_Training_002_{m}.nii.gz"
    ))
}

/// `dka train` of a tiny segmentation run on the BraTS tree at `root`; the error names `file`
/// and the run folder is not written.
fn train_brats(d: &Path, root: &Path, file: &Path) -> Fault {
    let cfg = d.join("brats.toml");
    write(
        &cfg,
        "backbone = \"experiments/backbones/vit_quick.json\"\ndataset = \"brats\"\nimg_size = \
         32\nepochs = 1\nbatch_size = 4\naugment = false\nloader_threads = 1\ntest_fraction = 0.5\n",
    );
    let out = d.join("run");
    Fault::run([
        "train",
        &s(&cfg),
        "--out",
        &s(&out),
        "--data",
        &format!("brats={}", root.display()),
        "--device",
        "cpu",
        "--cache-dir",
        &s(d.join("cache")),
    ])
    .names(file)
    .absent(out)
    .clean(d)
}

/// A plain NIfTI-1 of 8x8x6 u8 voxels whose header bytes `patch` changes.
fn nifti_with(patch: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = encode_nifti([8, 8, 6], 2, &[1u8; 8 * 8 * 6], &RAS_1MM, false);
    patch(&mut b);
    gzip(&b)
}

pub fn cases() -> Vec<Case> {
    vec![
        // --- images -------------------------------------------------------------------------
        Case {
            name: "image: not an image (folder)",
            setup: |d| {
                let root = d.join("ds");
                folder(&root);
                let bad = root.join("b/1.png");
                write(&bad, "this is text, not a PNG");
                inspect(d, "folder", &root, &bad).says("cannot decode image")
            },
        },
        Case {
            name: "image: empty file (folder)",
            setup: |d| {
                let root = d.join("ds");
                folder(&root);
                let bad = root.join("c/0.png");
                write(&bad, "");
                inspect(d, "folder", &root, &bad).says("cannot decode image")
            },
        },
        Case {
            name: "image: JPEG with a corrupt header (isic2019)",
            setup: |d| {
                isic2019_gt(d);
                let bad = d.join("ISIC_2019_Training_Input/ISIC_0000003.jpg");
                write(&bad, b"\xFF\xD8\xFF\xE0 not a jpeg at all");
                inspect(d, "isic2019", d, &bad).says("cannot decode image")
            },
        },
        Case {
            name: "image: PNG truncated after its header (dka train)",
            setup: |d| {
                let root = d.join("ds");
                folder(&root);
                let bad = root.join("a/2.png");
                truncate(&bad, 60);
                let out = d.join("run");
                Fault::run([
                    "train",
                    &s(quick_config(d)),
                    "--out",
                    &s(&out),
                    "--data",
                    &format!("folder={}", root.display()),
                    "--device",
                    "cpu",
                    "--cache-dir",
                    &s(d.join("cache")),
                ])
                .names(&bad)
                .says("cannot decode image")
                .absent(out.join("config.json"))
                .clean(d)
            },
        },
        Case {
            name: "image: class folder with no images (folder)",
            setup: |d| {
                let root = d.join("ds");
                std::fs::create_dir_all(&root).unwrap();
                write(&root.join("notes.txt"), "no class folders here");
                inspect(d, "folder", &root, &root).says("no class sub-folders")
            },
        },
        // --- masks --------------------------------------------------------------------------
        Case {
            name: "mask: of another size than its image (isic2018)",
            setup: |d| {
                common::isic2018(d, [3, 0, 0]);
                let bad =
                    d.join("ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png");
                dka_data::testing::write_mask(&bad, 10, 10, (0, 0, 5, 5));
                inspect(d, "isic2018", d, &bad).says("10x10")
            },
        },
        Case {
            name: "mask: missing (busi-seg)",
            setup: |d| {
                common::busi(d, [2, 2, 1]);
                let gone = d.join("Dataset_BUSI_with_GT/malignant/malignant (2)_mask.png");
                std::fs::remove_file(&gone).unwrap();
                inspect(d, "busi-seg", d, &gone).says("no mask")
            },
        },
        Case {
            name: "mask: not an image (busi-seg)",
            setup: |d| {
                common::busi(d, [2, 2, 1]);
                let bad = d.join("Dataset_BUSI_with_GT/benign/benign (2)_mask.png");
                write(&bad, "garbage");
                inspect(d, "busi-seg", d, &bad).says("cannot decode image")
            },
        },
        Case {
            name: "mask: an extra BUSI mask of another size (busi-seg)",
            setup: |d| {
                common::busi(d, [2, 2, 1]);
                let bad = d.join("Dataset_BUSI_with_GT/benign/benign (1)_mask_1.png");
                dka_data::testing::write_mask(&bad, 9, 7, (0, 0, 2, 2));
                inspect(d, "busi-seg", d, &bad).says("9x7")
            },
        },
        Case {
            name: "mask: missing (isic2018 validation part)",
            setup: |d| {
                common::isic2018(d, [2, 2, 0]);
                let gone =
                    d.join("ISIC2018_Task1_Validation_GroundTruth/ISIC_0000003_segmentation.png");
                std::fs::remove_file(&gone).unwrap();
                inspect(d, "isic2018", d, &gone).says("no mask")
            },
        },
        // --- class folders ------------------------------------------------------------------
        Case {
            name: "layout: unknown class folder (busi-cls)",
            setup: |d| {
                common::busi(d, [2, 2, 2]);
                let odd = d.join("Dataset_BUSI_with_GT/benign_extra");
                write_rgb(&odd.join("x.png"), 4, 4);
                inspect(d, "busi-cls", d, &odd).says("unknown class folder")
            },
        },
        Case {
            name: "layout: unknown class folder (covid, Kaggle)",
            setup: |d| {
                common::covid_kaggle(d, [1, 1, 1], [1, 1, 1]);
                let odd = d.join("Data/train/COVID");
                write_rgb(&odd.join("x.jpg"), 4, 4);
                inspect(d, "covid", d, &odd).says("unknown class folder")
            },
        },
        Case {
            name: "layout: an unreadable image (covid, Radiography)",
            setup: |d| {
                common::covid_radiography(d, [2, 2, 2, 2]);
                let bad = d.join("Normal/images/Normal-2.png");
                write(&bad, "not a png");
                inspect(d, "covid", d, &bad).says("cannot decode image")
            },
        },
        Case {
            name: "layout: no release here (covid)",
            setup: |d| {
                let root = d.join("empty");
                std::fs::create_dir_all(root.join("something else")).unwrap();
                inspect(d, "covid", &root, &root)
            },
        },
        // --- CSV ----------------------------------------------------------------------------
        Case {
            name: "csv: ground truth without a class column (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                set_line(&gt, 0, "image,MEL,NV,AK,BKL,DF,VASC,SCC,UNK");
                inspect(d, "isic2019", d, &gt).says("CSV header should be")
            },
        },
        Case {
            name: "csv: a cell that is not a number (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                set_line(&gt, 2, "ISIC_0000001,1.0,yes,0.0,0.0,0.0,0.0,0.0,0.0,0.0");
                inspect(d, "isic2019", d, &gt).says(":3: column 3 is `yes`")
            },
        },
        Case {
            name: "csv: a row with two classes (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                set_line(&gt, 1, "ISIC_0000000,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0");
                inspect(d, "isic2019", d, &gt).says("two classes")
            },
        },
        Case {
            name: "csv: a row with too few fields (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                set_line(&gt, 4, "ISIC_0000003,1.0,0.0");
                inspect(d, "isic2019", d, &gt).says("cannot read CSV")
            },
        },
        Case {
            name: "csv: not UTF-8 (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                let mut b = std::fs::read(&gt).unwrap();
                b.extend_from_slice(b"ISIC_\xFF\xFE0000099,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n");
                std::fs::write(&gt, b).unwrap();
                inspect(d, "isic2019", d, &gt)
            },
        },
        Case {
            name: "csv: a row whose image is missing (isic2019)",
            setup: |d| {
                isic2019_gt(d);
                let gone = d.join("ISIC_2019_Training_Input/ISIC_0000005.jpg");
                std::fs::remove_file(&gone).unwrap();
                inspect(d, "isic2019", d, &gone)
            },
        },
        Case {
            name: "csv: ground-truth file missing (isic2019)",
            setup: |d| {
                let gt = isic2019_gt(d);
                std::fs::remove_file(&gt).unwrap();
                inspect(d, "isic2019", d, &gt).says("ground-truth CSV")
            },
        },
        Case {
            name: "csv: neither a label nor a mask column (csv)",
            setup: |d| {
                let p = csv_dataset(d, "image,klass\ni0.png,x\ni1.png,y\n");
                inspect(d, "csv", &p, &p).says("CSV header should be")
            },
        },
        Case {
            name: "csv: a split that is not train, val or test (csv)",
            setup: |d| {
                let p = csv_dataset(
                    d,
                    "image,label,split\ni0.png,x,train\ni1.png,y,holdout\ni2.png,x,test\n",
                );
                inspect(d, "csv", &p, &p).says("split `holdout`")
            },
        },
        Case {
            name: "csv: an empty label cell (csv)",
            setup: |d| {
                let p = csv_dataset(d, "image,label\ni0.png,x\ni1.png,\ni2.png,y\ni3.png,y\n");
                inspect(d, "csv", &p, &p).says(":3: empty `label`")
            },
        },
        Case {
            name: "csv: a row naming a missing image (csv)",
            setup: |d| {
                let p = csv_dataset(d, "image,label\ni0.png,x\ngone.png,y\ni2.png,y\ni3.png,x\n");
                let gone = p.parent().unwrap().join("gone.png");
                inspect(d, "csv", &p, &gone)
            },
        },
        Case {
            name: "csv: two CSV files where one is expected (csv)",
            setup: |d| {
                let p = csv_dataset(d, "image,label\ni0.png,x\ni1.png,y\n");
                let root = p.parent().unwrap().to_path_buf();
                write(&root.join("other.csv"), "image,label\n");
                inspect(d, "csv", &root, &root).says("2 .csv files")
            },
        },
        Case {
            name: "csv: a quoted field left open (csv)",
            setup: |d| {
                let p = csv_dataset(d, "image,label\ni0.png,\"x\ni1.png,y\n");
                inspect(d, "csv", &p, &p)
            },
        },
        // --- NIfTI (BraTS, MNI152, Colin27) -------------------------------------------------
        Case {
            name: "nifti: truncated .nii.gz (brats)",
            setup: |d| {
                let root = brats(d);
                let seg = brats_file(&root, "seg");
                let n = std::fs::metadata(&seg).unwrap().len() as usize;
                truncate(&seg, n / 2);
                inspect(d, "brats", &root, &seg).says("NIfTI")
            },
        },
        Case {
            name: "nifti: not a NIfTI file (brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "seg");
                write(&bad, "hello, I am a text file");
                inspect(d, "brats", &root, &bad).says("not a NIfTI file")
            },
        },
        Case {
            name: "nifti: gzip magic then garbage (brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "flair");
                write(&bad, b"\x1f\x8b\x08\x00garbage garbage garbage");
                inspect(d, "brats", &root, &bad).says("gzip")
            },
        },
        Case {
            name: "nifti: header declares more voxels than the file holds (brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "flair");
                write(
                    &bad,
                    nifti_with(|b| b[46..48].copy_from_slice(&600i16.to_le_bytes())),
                );
                inspect(d, "brats", &root, &bad).says("differs from the label map")
            },
        },
        Case {
            name: "nifti: unknown datatype code (brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "seg");
                write(
                    &bad,
                    nifti_with(|b| b[70..72].copy_from_slice(&999i16.to_le_bytes())),
                );
                inspect(d, "brats", &root, &bad).says("datatype")
            },
        },
        Case {
            name: "nifti: negative dimension (brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "flair");
                write(
                    &bad,
                    nifti_with(|b| b[42..44].copy_from_slice(&(-8i16).to_le_bytes())),
                );
                inspect(d, "brats", &root, &bad)
            },
        },
        Case {
            // (A bitpix that disagrees with the datatype is decoded by the datatype's size:
            // see dka-data's fuzz tests.)
            name: "nifti: dimensions of 32767^3 voxels (dka train, brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "flair");
                write(
                    &bad,
                    nifti_with(|b| {
                        for k in 0..3 {
                            b[42 + 2 * k..44 + 2 * k].copy_from_slice(&32767i16.to_le_bytes());
                        }
                    }),
                );
                train_brats(d, &root, &bad)
            },
        },
        Case {
            name: "nifti: RGB24 voxels (dka train, brats)",
            setup: |d| {
                let root = brats(d);
                let bad = brats_file(&root, "flair");
                let b = encode_nifti([8, 8, 6], 128, &[1u8; 8 * 8 * 6 * 3], &RAS_1MM, false);
                write(&bad, gzip(&b));
                train_brats(d, &root, &bad)
            },
        },
        Case {
            name: "nifti: segmentation of other dimensions than the image (brats)",
            setup: |d| {
                let root = brats(d);
                let seg = brats_file(&root, "seg");
                dka_data::testing::write_u8_volume(&seg, [8, 8, 5], |_, _, _| 0);
                // The error names the image and says that its label map differs.
                let flair = brats_file(&root, "flair");
                inspect(d, "brats", &root, &flair).says("label map's [8, 8, 5]")
            },
        },
        Case {
            name: "nifti: a case without its segmentation (brats)",
            setup: |d| {
                let root = brats(d);
                let seg = brats_file(&root, "seg");
                std::fs::remove_file(&seg).unwrap();
                inspect(d, "brats", &root, &seg).says("no mask")
            },
        },
        Case {
            name: "nifti: a case without one modality (brats)",
            setup: |d| {
                let root = brats(d);
                let flair = brats_file(&root, "flair");
                std::fs::remove_file(&flair).unwrap();
                inspect(d, "brats", &root, &flair)
            },
        },
        Case {
            name: "nifti: a template file missing (mni152)",
            setup: |d| {
                let root = d.join("mni");
                std::fs::create_dir_all(&root).unwrap();
                inspect(d, "mni152", &root, &root)
            },
        },
        Case {
            name: "text: a label index that is not a number (colin27)",
            setup: |d| {
                let root = colin27(d);
                let names = root.join("aal.nii.txt");
                write(&names, "1 Precentral_L 2001\nseven Precentral_R 2002\n");
                inspect(d, "colin27", &root, &names).says("not a label index")
            },
        },
        Case {
            name: "text: a label index too large (colin27)",
            setup: |d| {
                let root = colin27(d);
                let names = root.join("aal.nii.txt");
                write(&names, "18446744073709551615 Huge_L 1\n");
                inspect(d, "colin27", &root, &names).says("above 255")
            },
        },
        // --- dataset folders ----------------------------------------------------------------
        Case {
            name: "data: unknown dataset name",
            setup: |d| {
                let root = d.join("ds");
                folder(&root);
                Fault::run([
                    "data",
                    "inspect",
                    "--dataset",
                    "imagenet",
                    "--root",
                    &s(&root),
                    "--manifest",
                    &s(d.join("m.json")),
                ])
                .says("unknown dataset 'imagenet'")
                .says("busi-cls")
                .absent(d.join("m.json"))
            },
        },
        Case {
            name: "data: the root is a file (isic2018)",
            setup: |d| {
                let root = d.join("release.zip");
                write(&root, "PK\x03\x04");
                inspect(d, "isic2018", &root, &root)
            },
        },
        Case {
            name: "data: a fraction that is not one (data inspect)",
            setup: |d| {
                let root = d.join("ds");
                folder(&root);
                Fault::run([
                    "data",
                    "inspect",
                    "--dataset",
                    "folder",
                    "--root",
                    &s(&root),
                    "--fraction",
                    "150%",
                    "--manifest",
                    &s(d.join("m.json")),
                ])
                .says("fraction `150%` must be in (0, 1]")
                .absent(d.join("m.json"))
            },
        },
    ]
}

/// A Colin27 folder with a real (tiny) template and atlas, so that only `aal.nii.txt` decides.
fn colin27(d: &Path) -> std::path::PathBuf {
    let root = d.join("colin27");
    for f in ["ch2.nii.gz", "aal.nii.gz"] {
        dka_data::testing::write_u8_volume(&root.join(f), [8, 8, 6], |x, _, _| (x % 3) as u8);
    }
    write(
        &root.join("aal.nii.txt"),
        "1 Precentral_L 2001\n2 Precentral_R 2002\n",
    );
    root
}
