//! Batches: shapes, labels, determinism, prefetch shutdown.

mod common;

use std::sync::Arc;

use dka_data::*;
use tempfile::tempdir;

fn pre() -> Preprocess {
    Preprocess {
        size: (24, 32),
        ..Preprocess::default()
    }
}

#[test]
fn classification_batches_have_images_and_class_indices() {
    let dir = tempdir().unwrap();
    common::isic2019(dir.path(), &[3, 3, 2, 1, 1, 1, 1, 1]);
    let ds: Arc<dyn Dataset> =
        Arc::from(open_dataset("isic2019", dir.path(), &LoaderOptions::default()).unwrap());
    let order: Vec<usize> = (0..ds.records().len()).collect();
    let cfg = LoaderConfig {
        batch_size: 4,
        threads: 2,
        ..LoaderConfig::default()
    };
    let loader = BatchLoader::new(ds.clone(), order.clone(), pre(), None, &cfg, 0).unwrap();
    assert_eq!(loader.num_batches(), 4);
    let batches: Vec<Batch> = loader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[0].images.shape(), &[4, 3, 24, 32]);
    assert_eq!(batches[3].images.shape()[0], 1, "last partial batch kept");
    let BatchTarget::Classes(c) = &batches[0].target else {
        panic!("classification")
    };
    assert_eq!(c, &vec![0, 0, 0, 1]);
    // Evaluation batches equal the samples prepared one by one.
    let one = ds.sample(2, &pre(), None).unwrap();
    assert_eq!(batches[0].images.index_axis(ndarray::Axis(0), 2), one.image);

    let cfg = LoaderConfig {
        drop_last: true,
        ..cfg
    };
    assert_eq!(
        BatchLoader::new(ds, order, pre(), None, &cfg, 0)
            .unwrap()
            .count(),
        3
    );
}

#[test]
fn segmentation_batches_are_deterministic_under_augmentation() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [5, 4, 3]);
    let ds: Arc<dyn Dataset> =
        Arc::from(open_dataset("busi-seg", dir.path(), &LoaderOptions::default()).unwrap());
    let order = epoch_order(&(0..ds.records().len()).collect::<Vec<_>>(), 1, 0);
    let aug = Some(Augment::default());
    let run = |threads| {
        let cfg = LoaderConfig {
            batch_size: 5,
            threads,
            seed: 1,
            ..LoaderConfig::default()
        };
        BatchLoader::new(ds.clone(), order.clone(), pre(), aug, &cfg, 0)
            .unwrap()
            .map(|b| b.unwrap())
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(1), run(2));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.images, y.images, "independent of the thread count");
        assert_eq!(x.target, y.target);
    }
    let BatchTarget::Masks(m) = &a[0].target else {
        panic!("segmentation")
    };
    assert_eq!(m.shape(), &[5, 24, 32]);
    assert!(m.iter().all(|&v| v == 0 || v == 1));
    assert_ne!(epoch_order(&order, 1, 1), epoch_order(&order, 1, 2));
}

#[test]
fn dropping_a_loader_early_stops_its_worker() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [10, 10, 10]);
    let ds: Arc<dyn Dataset> =
        Arc::from(open_dataset("busi-cls", dir.path(), &LoaderOptions::default()).unwrap());
    let cfg = LoaderConfig {
        batch_size: 2,
        prefetch: 1,
        ..LoaderConfig::default()
    };
    let mut loader = BatchLoader::new(ds, (0..30).collect(), pre(), None, &cfg, 0).unwrap();
    assert!(loader.next().unwrap().is_ok());
    drop(loader); // must not hang
}

#[test]
fn a_bad_file_met_while_training_is_an_error_not_a_panic() {
    let dir = tempdir().unwrap();
    common::busi(dir.path(), [3, 3, 3]);
    let ds: Arc<dyn Dataset> =
        Arc::from(open_dataset("busi-cls", dir.path(), &LoaderOptions::default()).unwrap());
    let bad = dir
        .path()
        .join("Dataset_BUSI_with_GT/benign/benign (2).png");
    std::fs::write(&bad, b"garbage").unwrap();
    let cfg = LoaderConfig {
        batch_size: 3,
        ..LoaderConfig::default()
    };
    let results: Vec<_> = BatchLoader::new(ds, (0..9).collect(), pre(), None, &cfg, 0)
        .unwrap()
        .collect();
    let err = results.into_iter().find_map(|r| r.err()).expect("an error");
    assert!(err.to_string().contains("benign (2).png"), "{err}");
}
