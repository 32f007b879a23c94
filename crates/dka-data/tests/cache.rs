//! The decoded cache: same pixels as decoding directly, reuse, keys, repair, augmentation,
//! and the file-hash table behind manifests.

mod common;

use std::path::Path;
use std::sync::Arc;

use dka_data::normalize::to_chw;
use dka_data::testing::{write_mask, write_rgb};
use dka_data::*;
use ndarray::Axis;
use tempfile::tempdir;

fn open(name: &str, root: &Path, opts: &LoaderOptions) -> (Arc<dyn Dataset>, Manifest) {
    let ds: Arc<dyn Dataset> = Arc::from(open_dataset(name, root, opts).unwrap());
    let spec = SplitSpec::default();
    let split = make_split(ds.as_ref(), &spec).unwrap();
    let m = Manifest::build(ds.as_ref(), &spec, opts, &split).unwrap();
    (ds, m)
}

fn all(ds: &dyn Dataset) -> Vec<usize> {
    (0..ds.records().len()).collect()
}

/// Every cached sample equals `sample_u8` of its record without augmentation.
fn assert_matches_direct(ds: &dyn Dataset, split: &DecodedSplit, idx: &[usize], pre: &Preprocess) {
    assert_eq!(split.len(), idx.len());
    for (pos, &i) in idx.iter().enumerate() {
        let direct = ds.sample_u8(i, pre, None).unwrap();
        assert_eq!(
            split.image(pos),
            to_chw(&direct.image),
            "{}",
            ds.records()[i].id
        );
        match (split.mask(pos), &direct.mask) {
            (Some(a), Some(b)) => assert_eq!(a.as_slice().unwrap(), b.as_raw().as_slice()),
            (None, None) => assert_eq!(split.class(pos), direct.class.map(|c| c as i64)),
            _ => panic!("task mismatch"),
        }
        assert_eq!(split.extent(pos), direct.extent);
        assert_eq!(split.records()[pos], i);
    }
}

/// A class-folder tree of JPEGs large enough for the reduced DCT decode, plus PNGs.
fn folder(root: &Path) {
    for (c, n) in [("a", 3), ("b", 2)] {
        for i in 0..n {
            // The first is large enough for a 1/8 DCT decode at the tests' input sizes.
            let (w, h) = if i == 0 {
                (320, 240)
            } else {
                (160 + 8 * i, 120)
            };
            write_rgb(&root.join(format!("{c}/{i}.jpg")), w, h);
        }
        write_rgb(&root.join(format!("{c}/x.png")), 40, 30);
    }
}

#[test]
fn classification_cache_equals_direct_decoding_and_is_reused() {
    let dir = tempdir().unwrap();
    folder(&dir.path().join("data"));
    let cache = dir.path().join("cache");
    let (ds, m) = open(
        "folder",
        &dir.path().join("data"),
        &LoaderOptions::default(),
    );
    let pre = Preprocess {
        size: (24, 32),
        ..Preprocess::default()
    };
    let idx = all(ds.as_ref());
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let progress = |_: usize, total: usize| {
        assert_eq!(total, 7);
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let (split, stats) =
        DecodedSplit::open_or_build(ds.as_ref(), &idx, &pre, &m, &cache, 2, &progress).unwrap();
    assert_eq!((stats.outcome, stats.decoded), (CacheOutcome::Built, 7));
    assert_eq!(calls.into_inner(), 7);
    assert_eq!(split.image_size(), (24, 32));
    assert_matches_direct(ds.as_ref(), &split, &idx, &pre);

    // Normalisation is not part of the key; the second open decodes nothing.
    let other_norm = Preprocess {
        mean: [0.5; 3],
        scale: PixelScale::MinMax,
        ..pre
    };
    let (again, stats) =
        DecodedSplit::open_or_build(ds.as_ref(), &idx, &other_norm, &m, &cache, 2, &|_, _| {})
            .unwrap();
    assert_eq!((stats.outcome, stats.decoded), (CacheOutcome::Reused, 0));
    assert_eq!(again.key(), split.key());
    assert_eq!(stats.dir, split.dir());

    // Batches from the cache equal the uncached loader's, once normalised.
    let cfg = LoaderConfig {
        batch_size: 3,
        threads: 2,
        ..LoaderConfig::default()
    };
    let split = Arc::new(split);
    let cached: Vec<Batch> = CachedLoader::new(split.clone(), (0..7).collect(), None, &cfg, 0)
        .unwrap()
        .map(|b| b.unwrap().to_batch(&pre))
        .collect();
    let direct: Vec<Batch> = BatchLoader::new(ds.clone(), idx.clone(), pre, None, &cfg, 0)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(cached.len(), 3);
    for (a, b) in cached.iter().zip(&direct) {
        assert_eq!(a.indices, b.indices);
        assert_eq!(a.images, b.images);
        assert_eq!(a.target, b.target);
    }
}

#[test]
fn size_and_file_contents_change_the_key_and_a_truncated_cache_is_rebuilt() {
    let dir = tempdir().unwrap();
    let data = dir.path().join("data");
    folder(&data);
    let cache = dir.path().join("cache");
    let (ds, m) = open("folder", &data, &LoaderOptions::default());
    let idx = all(ds.as_ref());
    let pre = Preprocess {
        size: (16, 16),
        ..Preprocess::default()
    };
    let build = |ds: &dyn Dataset, m: &Manifest, pre: &Preprocess| {
        DecodedSplit::open_or_build(ds, &idx, pre, m, &cache, 1, &|_, _| {}).unwrap()
    };
    let (a, _) = build(ds.as_ref(), &m, &pre);
    let bigger = Preprocess {
        size: (16, 20),
        ..pre
    };
    let (b, stats) = build(ds.as_ref(), &m, &bigger);
    assert_eq!(stats.outcome, CacheOutcome::Built);
    assert_ne!(a.key(), b.key());
    let sam = Preprocess {
        resize: ResizeMode::LongestSidePad,
        ..pre
    };
    assert_ne!(build(ds.as_ref(), &m, &sam).0.key(), a.key());

    // New contents of one file: a new manifest hash, a new key.
    write_rgb(&data.join("a/x.png"), 41, 30);
    let (ds2, m2) = open("folder", &data, &LoaderOptions::default());
    let (c, stats) = build(ds2.as_ref(), &m2, &pre);
    assert_eq!(stats.outcome, CacheOutcome::Built);
    assert_ne!(c.key(), a.key());

    // A truncated image file is noticed and rebuilt with the same pixels.
    let want: Vec<_> = (0..c.len()).map(|p| c.image(p).to_owned()).collect();
    let path = c.dir().join("images.u8");
    drop(c);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(100).unwrap();
    drop(f);
    let (c, stats) = build(ds2.as_ref(), &m2, &pre);
    assert_eq!((stats.outcome, stats.decoded), (CacheOutcome::Rebuilt, 7));
    for (p, w) in want.iter().enumerate() {
        assert_eq!(&c.image(p), w);
    }
    // A manifest that lacks a record's file is an error, not a panic.
    let mut partial = m2.clone();
    partial.sha256.clear();
    let err =
        DecodedSplit::open_or_build(ds2.as_ref(), &idx, &pre, &partial, &cache, 1, &|_, _| {})
            .unwrap_err();
    assert!(err.to_string().contains("no hash in the manifest"), "{err}");
}

#[test]
fn segmentation_and_longest_side_pad_cache_equal_direct_decoding() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [3, 2, 2]);
    let cache = dir.path().join("cache");
    let (ds, m) = open("busi-seg", dir.path(), &LoaderOptions::default());
    let idx: Vec<usize> = all(ds.as_ref()).into_iter().rev().collect();
    for resize in [ResizeMode::Stretch, ResizeMode::LongestSidePad] {
        let pre = Preprocess {
            size: (20, 28),
            resize,
            ..Preprocess::default()
        };
        let (split, _) =
            DecodedSplit::open_or_build(ds.as_ref(), &idx, &pre, &m, &cache, 2, &|_, _| {})
                .unwrap();
        assert!(split.is_segmentation());
        assert_matches_direct(ds.as_ref(), &split, &idx, &pre);
        if resize == ResizeMode::LongestSidePad {
            // 16x16 images fit 20x20 at the left of 20x28: columns 20.. are padding.
            assert_eq!(split.extent(0), (20, 20));
            let mask = split.mask(0).unwrap();
            assert!(mask
                .slice(ndarray::s![.., 20..])
                .iter()
                .all(|&v| v == IGNORE_INDEX));
            assert!(mask.slice(ndarray::s![.., ..20]).iter().all(|&v| v <= 1));
            let img = split.image(0);
            assert!(img.slice(ndarray::s![.., .., 20..]).iter().all(|&v| v == 0));
        }
    }
}

#[test]
fn volume_cache_equals_direct_decoding() {
    let dir = tempdir().unwrap();
    for i in 1..=3 {
        common::brats_case(dir.path(), &format!("BraTS20_Training_{i:03}"), 4);
    }
    let mut opts = LoaderOptions::default();
    opts.volume.empty_slices = EmptySlices::KeepAll;
    opts.volume.modalities = vec![Modality::Flair, Modality::T1ce, Modality::T2];
    let (ds, m) = open("brats", dir.path(), &opts);
    // Slices of all cases, interleaved, as a shuffled split would have them.
    let idx = epoch_order(&all(ds.as_ref()), 3, 0);
    let pre = Preprocess {
        size: (12, 12),
        ..Preprocess::default()
    };
    let cache = dir.path().join("cache");
    let (split, stats) =
        DecodedSplit::open_or_build(ds.as_ref(), &idx, &pre, &m, &cache, 2, &|_, _| {}).unwrap();
    assert_eq!(stats.decoded, 18);
    assert_matches_direct(ds.as_ref(), &split, &idx, &pre);
    // read_many (one decode per case) equals read (through the LRU).
    let many = ds.read_many(&idx);
    for (r, &i) in many.into_iter().zip(&idx) {
        assert_eq!(r.unwrap(), ds.read(i).unwrap());
    }
}

#[test]
fn an_empty_split_is_fine() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [2, 2, 2]);
    let (ds, m) = open("busi-seg", dir.path(), &LoaderOptions::default());
    let cache = dir.path().join("cache");
    let pre = Preprocess::default();
    let (split, stats) =
        DecodedSplit::open_or_build(ds.as_ref(), &[], &pre, &m, &cache, 1, &|_, _| {}).unwrap();
    assert_eq!((split.len(), stats.decoded), (0, 0));
    let (split, stats) =
        DecodedSplit::open_or_build(ds.as_ref(), &[], &pre, &m, &cache, 1, &|_, _| {}).unwrap();
    assert_eq!(stats.outcome, CacheOutcome::Reused);
    let cfg = LoaderConfig::default();
    assert_eq!(
        CachedLoader::new(Arc::new(split), vec![], None, &cfg, 0)
            .unwrap()
            .count(),
        0
    );
}

/// A segmentation set whose red channel is 255 exactly where the mask is 1.
fn aligned_set(root: &Path) {
    let mut csv = String::from("image,mask\n");
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(40 + i, 30, |x, y| {
            let fg = (x / 5 + y / 7 + i) % 2 == 1;
            image::Rgb([if fg { 255 } else { 0 }, (x * 3) as u8, 7])
        });
        img.save(root.join(format!("{i}.png"))).unwrap();
        let m = image::GrayImage::from_fn(40 + i, 30, |x, y| {
            image::Luma([if (x / 5 + y / 7 + i) % 2 == 1 { 255 } else { 0 }])
        });
        m.save(root.join(format!("{i}_m.png"))).unwrap();
        csv.push_str(&format!("{i}.png,{i}_m.png\n"));
    }
    std::fs::write(root.join("set.csv"), csv).unwrap();
}

#[test]
fn augmentation_on_cached_images_is_deterministic_and_keeps_masks_aligned() {
    let dir = tempdir().unwrap();
    aligned_set(dir.path());
    let (ds, m) = open("csv", dir.path(), &LoaderOptions::default());
    let pre = Preprocess {
        size: (24, 24),
        interpolation: Interpolation::Nearest,
        ..Preprocess::default()
    };
    let cache = dir.path().join("cache");
    let idx = all(ds.as_ref());
    let split = Arc::new(
        DecodedSplit::open_or_build(ds.as_ref(), &idx, &pre, &m, &cache, 2, &|_, _| {})
            .unwrap()
            .0,
    );
    let aug = Some(Augment::default());
    let run = |threads: usize, seed: u64, epoch: u64| {
        let cfg = LoaderConfig {
            batch_size: 4,
            threads,
            seed,
            ..LoaderConfig::default()
        };
        let order = epoch_order(&(0..split.len()).collect::<Vec<_>>(), seed, epoch);
        CachedLoader::new(split.clone(), order, aug, &cfg, epoch)
            .unwrap()
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(1, 5, 0), run(2, 5, 0));
    assert_eq!(a, b, "same seed, same batches, whatever the thread count");
    assert_ne!(a, run(1, 5, 1), "another epoch, other crops");
    let plain = split.batch(&a[0].indices).unwrap();
    assert_ne!(a[0].images, plain.images, "augmented");
    for batch in &a {
        let U8Target::Masks(masks) = &batch.target else {
            panic!("segmentation")
        };
        for (img, mask) in batch
            .images
            .axis_iter(Axis(0))
            .zip(masks.axis_iter(Axis(0)))
        {
            for (r, mv) in img.index_axis(Axis(0), 0).iter().zip(mask.iter()) {
                assert_eq!(*mv == 1, *r == 255, "image and mask aligned");
            }
        }
    }
}

#[test]
fn manifests_reuse_file_hashes_across_builds() {
    let dir = tempdir().unwrap();
    let data = dir.path().join("data");
    common::busi(&data, [3, 2, 2]);
    let hashes = dir.path().join("cache");
    let opts = LoaderOptions::default();
    let ds = open_dataset("busi-seg", &data, &opts).unwrap();
    let spec = SplitSpec::default();
    let split = make_split(ds.as_ref(), &spec).unwrap();
    let n_files = {
        let m = Manifest::build(ds.as_ref(), &spec, &opts, &split).unwrap();
        m.sha256.len()
    };
    let (m1, s1) =
        Manifest::build_cached(ds.as_ref(), &spec, &opts, &split, Some(&hashes)).unwrap();
    assert_eq!((s1.hashed, s1.reused), (n_files, 0));
    let (m2, s2) =
        Manifest::build_cached(ds.as_ref(), &spec, &opts, &split, Some(&hashes)).unwrap();
    assert_eq!(
        (s2.hashed, s2.reused),
        (0, n_files),
        "no file read the second time"
    );
    assert_eq!(m1, m2);
    assert_eq!(m1.content_hash(), m2.content_hash());
    assert_eq!(
        m1,
        Manifest::build(ds.as_ref(), &spec, &opts, &split).unwrap()
    );

    // A new mtime (same contents) is hashed again; the content hash does not move.
    let f = std::fs::File::options()
        .write(true)
        .open(data.join("Dataset_BUSI_with_GT/benign/benign (1).png"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    let (m3, s3) =
        Manifest::build_cached(ds.as_ref(), &spec, &opts, &split, Some(&hashes)).unwrap();
    assert_eq!((s3.hashed, s3.reused), (1, n_files - 1));
    assert_eq!(m3.content_hash(), m1.content_hash());

    // Content hash: independent of where the data lies, dependent on what it is.
    let mut moved = m1.clone();
    moved.root = "/elsewhere".into();
    assert_eq!(moved.content_hash(), m1.content_hash());
    let mut other = m1.clone();
    other.train.pop();
    assert_ne!(other.content_hash(), m1.content_hash());
    write_mask(
        &data.join("Dataset_BUSI_with_GT/benign/benign (1)_mask.png"),
        16,
        16,
        (1, 1, 4, 4),
    );
    let (m4, s4) =
        Manifest::build_cached(ds.as_ref(), &spec, &opts, &split, Some(&hashes)).unwrap();
    assert!(s4.hashed >= 1);
    assert_ne!(m4.content_hash(), m1.content_hash());
}

#[test]
fn sixteen_bit_pngs_scale_to_eight_bits() {
    let dir = tempdir().unwrap();
    let p = dir.path().join("g16.png");
    let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(4, 1, |x, _| {
        image::Luma([[0u16, 257, 32896, 65535][x as usize]])
    });
    img.save(&p).unwrap();
    let rgb = image_io::read_rgb(&p).unwrap();
    let got: Vec<u8> = rgb.pixels().map(|p| p.0[0]).collect();
    assert_eq!(got, vec![0, 1, 128, 255]);
    assert!(rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

#[test]
fn a_loader_started_at_a_batch_yields_what_the_full_loader_yields_from_there() {
    let dir = tempdir().unwrap();
    folder(&dir.path().join("data"));
    let (ds, m) = open(
        "folder",
        &dir.path().join("data"),
        &LoaderOptions::default(),
    );
    let pre = Preprocess {
        size: (16, 16),
        ..Preprocess::default()
    };
    let idx = all(ds.as_ref());
    let (split, _) = DecodedSplit::open_or_build(
        ds.as_ref(),
        &idx,
        &pre,
        &m,
        &dir.path().join("cache"),
        1,
        &|_, _| {},
    )
    .unwrap();
    let split = Arc::new(split);
    let cfg = LoaderConfig {
        batch_size: 2,
        ..LoaderConfig::default()
    };
    let order: Vec<usize> = (0..split.len()).rev().collect();
    let aug = Some(Augment::default());
    let full: Vec<U8Batch> = CachedLoader::new(split.clone(), order.clone(), aug, &cfg, 3)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let tail = CachedLoader::starting_at(split.clone(), order, aug, &cfg, 3, 2).unwrap();
    assert_eq!(tail.num_batches(), full.len() - 2);
    let tail: Vec<U8Batch> = tail.map(|b| b.unwrap()).collect();
    assert_eq!(tail, full[2..].to_vec());
}
