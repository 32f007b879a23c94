//! Property tests ("fuzzing") of the parsers this crate writes itself: NIfTI-1/2 headers,
//! manifests, the ground-truth and generic CSV readers, the Colin27 label list, the file-hash
//! table and fractions. No input may panic; readers that have a writer round-trip.
//!
//! `just test` runs a few dozen cases per property; `just fuzz` sets `PROPTEST_CASES` (and
//! runs them all again with many more). A failing case is shrunk and saved to
//! `tests/fuzz.proptest-regressions`, which is replayed first on every later run.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dka_data::testing::{encode_nifti, gzip, write_rgb, write_u8_volume, RAS_1MM};
use dka_data::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// `default` cases unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

// --- NIfTI ---------------------------------------------------------------------------------

/// (offset, width) of the NIfTI-1 header fields a reader interprets.
const NIFTI1_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // sizeof_hdr
    (40, 2),  // dim[0]
    (42, 2),  // dim[1]
    (44, 2),  // dim[2]
    (46, 2),  // dim[3]
    (48, 2),  // dim[4]
    (70, 2),  // datatype
    (72, 2),  // bitpix
    (76, 4),  // pixdim[0] (qfac)
    (80, 4),  // pixdim[1]
    (108, 4), // vox_offset
    (112, 4), // scl_slope
    (116, 4), // scl_inter
    (252, 2), // qform_code
    (254, 2), // sform_code
    (256, 4), // quatern_b
    (280, 4), // srow_x[0]
    (344, 4), // magic
];

/// The same for NIfTI-2.
const NIFTI2_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // sizeof_hdr
    (4, 8),   // magic
    (12, 2),  // datatype
    (14, 2),  // bitpix
    (16, 8),  // dim[0]
    (24, 8),  // dim[1]
    (32, 8),  // dim[2]
    (40, 8),  // dim[3]
    (112, 8), // pixdim[1]
    (168, 8), // vox_offset
    (176, 8), // scl_slope
    (184, 8), // scl_inter
    (344, 4), // qform_code
    (348, 4), // sform_code
    (352, 8), // quatern_b
    (400, 8), // srow_x[0]
];

/// Field values worth trying: small and extreme integers, float specials, anything.
fn field_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..10),
        Just(u64::MAX),
        Just(0x7fff),
        Just(0x8000),
        Just(f32::NAN.to_bits() as u64),
        Just(f32::INFINITY.to_bits() as u64),
        Just(1e30f32.to_bits() as u64),
        Just((-1.0f32).to_bits() as u64),
        Just(f64::NAN.to_bits()),
        Just(1e300f64.to_bits()),
        Just(i64::MAX as u64),
    ]
}

/// A valid 4x3x2 NIfTI file, then header fields overwritten, cut, maybe gzipped.
fn mutated_nifti() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec((any::<prop::sample::Index>(), field_value()), 0..5),
        prop_oneof![Just(None), (0usize..700).prop_map(Some)],
        any::<bool>(),
        prop::sample::select(vec![2i16, 4, 8, 16, 64, 512, 256, 2304, 1]),
    )
        .prop_map(|(v2, patches, cut, gz, datatype)| {
            let data: Vec<u8> = (0..4 * 3 * 2 * 8).map(|v| v as u8).collect();
            let size = [1usize, 2, 4, 4, 8, 2, 1, 4, 1][[2, 4, 8, 16, 64, 512, 256, 2304, 1]
                .iter()
                .position(|d| *d == datatype)
                .unwrap()];
            let mut b = encode_nifti([4, 3, 2], datatype, &data[..4 * 3 * 2 * size], &RAS_1MM, v2);
            let fields = if v2 { NIFTI2_FIELDS } else { NIFTI1_FIELDS };
            for (i, v) in patches {
                let (off, w) = fields[i.index(fields.len())];
                b[off..off + w].copy_from_slice(&v.to_le_bytes()[..w]);
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            if gz {
                gzip(&b)
            } else {
                b
            }
        })
}

fn check_nifti(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let p = dir.join("v.nii");
    std::fs::write(&p, bytes).unwrap();
    let datatype = match nifti_volume::read_header(&p) {
        Ok(h) => h.datatype,
        Err(e) => {
            prop_assert!(e.to_string().contains(&p.display().to_string()), "{e}");
            String::new()
        }
    };
    match std::panic::catch_unwind(|| nifti_volume::read_volume(&p)) {
        Err(_) => prop_assert!(false, "read_volume panicked ({datatype})"),
        Ok(Ok(v)) => {
            let d = v.header.dims;
            prop_assert_eq!(v.data.shape(), &[d[0], d[1], d[2]]);
        }
        Ok(Err(e)) => prop_assert!(e.to_string().contains(&p.display().to_string()), "{e}"),
    }
    Ok(())
}

/// Colour and complex voxels are refused, naming the file; a `bitpix` that disagrees with the
/// datatype (0, or too small) is decoded by the datatype's own size.
#[test]
fn odd_voxel_types_and_bitpix_fail_cleanly_or_decode() {
    let dir = tempfile::tempdir().unwrap();
    for (code, size, bitpix, ok) in [
        (128i16, 3usize, 24i16, false),
        (32, 8, 64, false),
        (1792, 16, 128, false),
        (2, 1, 0, true),
        (16, 4, 8, true),
    ] {
        let mut b = encode_nifti([4, 3, 2], code, &vec![1u8; 24 * size], &RAS_1MM, false);
        b[72..74].copy_from_slice(&bitpix.to_le_bytes());
        let p = dir.path().join(format!("{code}.nii"));
        std::fs::write(&p, &b).unwrap();
        let r = std::panic::catch_unwind(|| nifti_volume::read_volume(&p).map(|v| v.data.len()));
        match r {
            Err(_) => panic!("datatype {code} with bitpix {bitpix} panics"),
            Ok(Ok(n)) => assert!(ok && n == 24, "datatype {code}: {n} voxels"),
            Ok(Err(e)) => {
                assert!(!ok, "datatype {code} bitpix {bitpix}: {e}");
                assert!(e.to_string().contains(&p.display().to_string()), "{e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn nifti_headers_never_panic(bytes in mutated_nifti()) {
        let dir = tempfile::tempdir().unwrap();
        check_nifti(dir.path(), &bytes)?;
    }

    #[test]
    fn nifti_of_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..1200),
        sizeof in prop::sample::select(vec![None, Some(348i32), Some(540)]),
    ) {
        let mut bytes = bytes;
        if let (Some(s), true) = (sizeof, bytes.len() >= 4) {
            bytes[..4].copy_from_slice(&s.to_le_bytes());
        }
        let dir = tempfile::tempdir().unwrap();
        check_nifti(dir.path(), &bytes)?;
    }
}

// --- manifests -----------------------------------------------------------------------------

fn entry() -> impl Strategy<Value = ManifestEntry> {
    (
        ".{0,12}",
        prop::collection::vec("[a-zA-Z0-9 ()_./-]{1,16}", 1..3),
        prop::option::of("[A-Za-z ]{1,8}"),
    )
        .prop_map(|(id, files, label)| ManifestEntry { id, files, label })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let split = || prop::collection::vec(entry(), 0..4);
    (
        ("[a-z0-9-]{1,10}", ".{0,20}"),
        prop::collection::vec(".{0,8}", 1..4),
        any::<bool>(),
        (0u32..20, 0u32..20, 1u32..=20, any::<u32>(), any::<u64>()),
        (split(), split(), split()),
        prop::collection::btree_map("[a-z0-9./]{1,12}", "[0-9a-f]{64}", 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(
                (dataset, root),
                classes,
                seg,
                (t, v, r, draw, seed),
                (train, val, test),
                sha256,
                skip,
            )| {
                let task = if seg {
                    Task::Segmentation { classes }
                } else {
                    Task::Classification { classes }
                };
                Manifest {
                    version: manifest::MANIFEST_VERSION,
                    dataset,
                    root: PathBuf::from(root),
                    task,
                    // Decimal fractions: what a command line writes.
                    spec: SplitSpec {
                        test_fraction: t as f64 / 40.0,
                        val_fraction: v as f64 / 40.0,
                        train_fraction: r as f64 / 20.0,
                        draw,
                        seed,
                    },
                    options: LoaderOptions {
                        skip_bad: skip,
                        ..LoaderOptions::default()
                    },
                    skipped: Vec::new(),
                    sha256,
                    train,
                    val,
                    test,
                }
            },
        )
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn manifests_round_trip(m in manifest()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        m.write(&p).unwrap();
        let back = Manifest::load(&p).unwrap();
        prop_assert_eq!(&back, &m);
        // Where the data lies does not change what it holds.
        let mut moved = back.clone();
        moved.root = PathBuf::from("/elsewhere");
        prop_assert_eq!(moved.content_hash(), m.content_hash());
    }

    #[test]
    fn mutated_manifests_never_panic(
        m in manifest(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        let mut b = serde_json::to_vec_pretty(&m).unwrap();
        for (i, v) in edits {
            let k = i.index(b.len());
            b[k] = v;
        }
        if let Some(c) = cut {
            b.truncate(c.index(b.len()));
        }
        std::fs::write(&p, &b).unwrap();
        if let Err(e) = Manifest::load(&p) {
            prop_assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn manifests_of_arbitrary_text_never_panic(text in ".{0,300}") {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        std::fs::write(&p, &text).unwrap();
        prop_assert!(Manifest::load(&p).is_err());
    }
}

// --- CSV readers ---------------------------------------------------------------------------

const CELLS: &[&str] = &[
    "1.0", "0.0", "1", "0", "", "x", "NaN", "inf", "-0", "2", "1e0", " 1.0 ", "\"1.0\"", "\"",
    "0.5", "-1",
];

fn isic_row() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "ISIC_0000000",
            "ISIC_0000001",
            "ISIC_0000002",
            "ISIC_0000003",
            "",
            "ISIC_9999999",
            "../ISIC_0000000",
            "ISIC 0000001",
        ]),
        prop_oneof![
            // Usually ten fields, one-hot or near it.
            (0usize..9).prop_map(|c| (0..9)
                .map(|k| if k == c { "1.0" } else { "0.0" })
                .collect::<Vec<_>>()),
            prop::collection::vec(prop::sample::select(CELLS), 0..12),
        ],
    )
        .prop_map(|(id, cells)| {
            std::iter::once(id)
                .chain(cells)
                .collect::<Vec<_>>()
                .join(",")
        })
}

fn isic_csv() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            4 => Just(common::ISIC2019_HEADER.to_string()),
            1 => prop::collection::vec(
                prop::sample::select(vec!["image", "MEL", "NV", "BCC", "UNK", "x", ""]),
                0..11
            )
            .prop_map(|v| v.join(",")),
        ],
        prop::collection::vec(isic_row(), 0..8),
        prop::sample::select(vec!["\n", "\r\n"]),
    )
        .prop_map(|(h, rows, nl)| std::iter::once(h).chain(rows).collect::<Vec<_>>().join(nl))
}

fn csv_generic() -> impl Strategy<Value = String> {
    let col = prop::sample::select(vec!["image", "label", "mask", "split", "group", "x", ""]);
    let cell = prop::sample::select(vec![
        "i0.png",
        "i1.png",
        "m0.png",
        "gone.png",
        "",
        "a",
        "b",
        "train",
        "val",
        "test",
        "holdout",
        "g1",
        "../i0.png",
        "\"i1.png\"",
        "i0.png,extra",
    ]);
    (
        prop::collection::vec(col, 0..6),
        prop::collection::vec(prop::collection::vec(cell, 0..7), 0..8),
    )
        .prop_map(|(header, rows)| {
            std::iter::once(header.join(","))
                .chain(rows.into_iter().map(|r| r.join(",")))
                .collect::<Vec<_>>()
                .join("\n")
        })
}

/// Opening never panics; an error names a file under `root`; a dataset has at most as many
/// records as the CSV has rows.
fn check_open(name: &str, root: &Path, rows: usize) -> Result<(), TestCaseError> {
    for skip_bad in [false, true] {
        let opts = LoaderOptions {
            skip_bad,
            ..LoaderOptions::default()
        };
        match open_dataset(name, root, &opts) {
            Ok(ds) => prop_assert!(ds.records().len() <= rows),
            Err(e) => prop_assert!(e.to_string().contains(&root.display().to_string()), "{e}"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(32))]

    #[test]
    fn isic2019_ground_truth_never_panics(text in isic_csv()) {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..4 {
            write_rgb(
                &dir.path().join(format!("ISIC_2019_Training_Input/ISIC_{k:07}.jpg")),
                8,
                8,
            );
        }
        std::fs::write(dir.path().join("ISIC_2019_Training_GroundTruth.csv"), &text).unwrap();
        check_open("isic2019", dir.path(), text.lines().count())?;
    }

    #[test]
    fn generic_csv_never_panics(text in csv_generic()) {
        let dir = tempfile::tempdir().unwrap();
        write_rgb(&dir.path().join("i0.png"), 8, 8);
        write_rgb(&dir.path().join("i1.png"), 8, 8);
        dka_data::testing::write_mask(&dir.path().join("m0.png"), 8, 8, (0, 0, 4, 4));
        std::fs::write(dir.path().join("d.csv"), &text).unwrap();
        check_open("csv", dir.path(), text.lines().count())?;
    }

    #[test]
    fn csv_of_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ISIC_2019_Training_Input")).unwrap();
        std::fs::write(dir.path().join("ISIC_2019_Training_GroundTruth.csv"), &bytes).unwrap();
        check_open("isic2019", dir.path(), usize::MAX)?;
        std::fs::write(dir.path().join("d.csv"), &bytes).unwrap();
        check_open("csv", &dir.path().join("d.csv"), usize::MAX)?;
    }

    #[test]
    fn colin27_label_names_never_panic(
        lines in prop::collection::vec(
            (prop_oneof![
                (0u32..300).prop_map(|i| i.to_string()),
                any::<u64>().prop_map(|i| i.to_string()),
                "[a-z0-9.-]{0,4}",
            ],
             "[A-Za-z_]{0,8}", "[0-9 ]{0,6}"),
            0..6,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ch2.nii.gz", "aal.nii.gz"] {
            write_u8_volume(&dir.path().join(f), [6, 6, 4], |x, _, _| (x % 3) as u8);
        }
        let text: String = lines
            .iter()
            .map(|(i, n, rest)| format!("{i} {n} {rest}\n"))
            .collect();
        std::fs::write(dir.path().join("aal.nii.txt"), text).unwrap();
        if let Err(e) = open_dataset("colin27", dir.path(), &LoaderOptions::default()) {
            prop_assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");
        }
    }
}

// --- the file-hash table, fractions, modalities --------------------------------------------

proptest! {
    #![proptest_config(cases(64))]

    /// Torn and foreign lines are ignored; the valid line for a file is still used.
    #[test]
    fn hash_tables_ignore_garbage_lines(
        garbage in prop::collection::vec(".{0,80}", 0..6),
        at in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        std::fs::write(&f, b"hello").unwrap();
        let abs = f.canonicalize().unwrap();
        let md = std::fs::metadata(&abs).unwrap();
        let mtime = md
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let hash = dka_data::files::sha256_file(&abs).unwrap();
        let valid = format!("v1\t{hash}\t{}\t{mtime}\t{}", md.len(), abs.display());
        let mut lines: Vec<String> = garbage.into_iter().map(|g| g.replace('\n', " ")).collect();
        let k = at.index(lines.len() + 1);
        lines.insert(k, valid);
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(cache.join(file_hashes::TABLE), lines.join("\n") + "\n").unwrap();
        let table = HashCache::open(&cache).unwrap();
        let files = BTreeSet::from(["a.bin".to_string()]);
        let (hashes, stats) = table.hash_files(dir.path(), &files).unwrap();
        prop_assert_eq!(&hashes, &BTreeMap::from([("a.bin".to_string(), hash)]));
        prop_assert_eq!(stats.reused, 1);
    }

    #[test]
    fn hash_tables_of_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..500)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_hashes::TABLE), &bytes).unwrap();
        HashCache::open(dir.path()).unwrap();
    }

    #[test]
    fn fractions_parse_into_0_1(s in "\\PC{0,12}") {
        if let Ok(v) = parse_fraction(&s) {
            prop_assert!(v > 0.0 && v <= 1.0, "{s} -> {v}");
        }
    }

    #[test]
    fn fractions_round_trip(v in 1u32..=10_000) {
        let r = v as f64 / 10_000.0;
        prop_assert_eq!(parse_fraction(&r.to_string()).unwrap(), r);
        let pct = parse_fraction(&format!("{}%", v as f64 / 100.0)).unwrap();
        prop_assert!((pct - r).abs() < 1e-12, "{v}: {pct} vs {r}");
    }

    #[test]
    fn modality_names_never_panic(s in "\\PC{0,8}") {
        let _ = Modality::parse(&s);
    }
}
