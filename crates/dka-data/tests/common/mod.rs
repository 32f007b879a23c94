//! Small trees in each release's exact layout, generated per test (nothing committed).
#![allow(dead_code)]

use std::path::Path;

use dka_data::testing::{write_mask, write_rgb, write_u8_volume};

pub const ISIC2019_HEADER: &str = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK";

/// ISIC-2019 with `counts[c]` images of class c.
pub fn isic2019(root: &Path, counts: &[usize; 8]) {
    let mut csv = String::from(ISIC2019_HEADER);
    csv.push('\n');
    let mut n = 0;
    for (c, &k) in counts.iter().enumerate() {
        for _ in 0..k {
            let name = format!("ISIC_{n:07}");
            write_rgb(
                &root
                    .join("ISIC_2019_Training_Input")
                    .join(format!("{name}.jpg")),
                12,
                10,
            );
            let cells: Vec<&str> = (0..9).map(|j| if j == c { "1.0" } else { "0.0" }).collect();
            csv.push_str(&format!("{name},{}\n", cells.join(",")));
            n += 1;
        }
    }
    std::fs::write(root.join("ISIC_2019_Training_GroundTruth.csv"), csv).unwrap();
}

/// ISIC-2018 Task 1 with `n` images per part (Training, Validation, Test).
pub fn isic2018(root: &Path, n: [usize; 3]) {
    let mut id = 0;
    for (part, k) in ["Training", "Validation", "Test"].iter().zip(n) {
        for _ in 0..k {
            let name = format!("ISIC_{id:07}");
            write_rgb(
                &root.join(format!("ISIC2018_Task1-2_{part}_Input/{name}.jpg")),
                20,
                16,
            );
            write_mask(
                &root.join(format!(
                    "ISIC2018_Task1_{part}_GroundTruth/{name}_segmentation.png"
                )),
                20,
                16,
                (5, 4, 15, 12),
            );
            id += 1;
        }
    }
    std::fs::write(
        root.join("ISIC2018_Task1-2_Training_Input/LICENSE.txt"),
        "cc-by-nc",
    )
    .unwrap();
}

/// BUSI with `counts` images per class (benign, malignant, normal); `benign (1)` gets an
/// extra `_mask_1.png` covering another rectangle.
pub fn busi(root: &Path, counts: [usize; 3]) {
    let base = root.join("Dataset_BUSI_with_GT");
    for (class, k) in ["benign", "malignant", "normal"].iter().zip(counts) {
        for i in 1..=k {
            let dir = base.join(class);
            write_rgb(&dir.join(format!("{class} ({i}).png")), 16, 16);
            let rect = if *class == "normal" {
                (0, 0, 0, 0)
            } else {
                (0, 0, 4, 4)
            };
            write_mask(&dir.join(format!("{class} ({i})_mask.png")), 16, 16, rect);
        }
    }
    write_mask(
        &base.join("benign/benign (1)_mask_1.png"),
        16,
        16,
        (10, 10, 16, 16),
    );
}

/// Kaggle COVID layout: `Data/{train,test}/{COVID19,NORMAL,PNEUMONIA}`.
pub fn covid_kaggle(root: &Path, train: [usize; 3], test: [usize; 3]) {
    for (part, counts) in [("train", train), ("test", test)] {
        for (class, k) in ["COVID19", "NORMAL", "PNEUMONIA"].iter().zip(counts) {
            for i in 0..k {
                write_rgb(
                    &root.join(format!("Data/{part}/{class}/{class}({i}).jpg")),
                    10,
                    10,
                );
            }
        }
    }
}

/// COVID-19 Radiography Database layout.
pub fn covid_radiography(root: &Path, counts: [usize; 4]) {
    for (class, k) in ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
        .iter()
        .zip(counts)
    {
        for i in 1..=k {
            write_rgb(
                &root.join(format!("{class}/images/{class}-{i}.png")),
                10,
                10,
            );
            write_mask(
                &root.join(format!("{class}/masks/{class}-{i}.png")),
                10,
                10,
                (0, 0, 5, 5),
            );
        }
        std::fs::write(root.join(format!("{class}.metadata.xlsx")), "x").unwrap();
    }
}

/// One BraTS case: 8x8x6 volumes; slice z has tumour only for z in 2..4, with labels
/// 1, 2 and `enhancing` (4, or 3 for 2023+ data).
pub fn brats_case(root: &Path, case: &str, enhancing: u8) {
    let dir = root.join(case);
    let dims = [8, 8, 6];
    for (k, m) in ["flair", "t1", "t1ce", "t2"].iter().enumerate() {
        write_u8_volume(&dir.join(format!("{case}_{m}.nii.gz")), dims, |x, y, z| {
            // A different (not affinely related) pattern per modality.
            let v = [x + z, y + z, x * y + z, x + y][k] + 1;
            if (1..7).contains(&x) && (1..7).contains(&y) {
                v as u8
            } else {
                0
            }
        });
    }
    write_u8_volume(
        &dir.join(format!("{case}_seg.nii.gz")),
        dims,
        move |x, y, z| {
            if !(2..4).contains(&z) {
                0
            } else if x == 2 && y == 2 {
                1
            } else if x == 3 && y == 3 {
                2
            } else if x == 4 && y == 4 {
                enhancing
            } else {
                0
            }
        },
    );
}
