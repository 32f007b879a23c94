//! The one error type of `dka-data`: every variant names the file and what is wrong with it.

use std::path::PathBuf;

/// Everything that can go wrong while scanning, decoding, splitting or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: missing {what}")]
    MissingFile { path: PathBuf, what: String },
    #[error("{path}: {problem}")]
    Layout { path: PathBuf, problem: String },
    #[error("{path}: cannot decode image")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{path}: cannot write image")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error(
        "{mask}: mask is {}x{} but its image {image} is {}x{}",
        mask_size.0, mask_size.1, image_size.0, image_size.1
    )]
    MaskSizeMismatch {
        image: PathBuf,
        mask: PathBuf,
        image_size: (u32, u32),
        mask_size: (u32, u32),
    },
    #[error("{image}: no mask (expected {expected})")]
    MissingMask { image: PathBuf, expected: PathBuf },
    #[error("{path}: unknown class folder (expected one of: {})", expected.join(", "))]
    UnknownClassFolder {
        path: PathBuf,
        expected: Vec<String>,
    },
    #[error("{path}: CSV header should be `{expected}`, found `{found}`")]
    CsvHeader {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}:{line}: {problem}")]
    CsvRow {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    #[error("{path}: cannot read CSV: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: NIfTI: {problem}")]
    Nifti { path: PathBuf, problem: String },
    #[error("{path}: manifest: {problem}")]
    Manifest { path: PathBuf, problem: String },
    #[error("{path}: content changed since the manifest was written (sha256 {expected} in the manifest, {found} now)")]
    HashMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("unknown dataset `{name}` (known: {})", known.join(", "))]
    UnknownDataset { name: String, known: Vec<String> },
    #[error("{path}: decoded cache: {problem}")]
    Cache { path: PathBuf, problem: String },
    #[error("invalid configuration: {problem}")]
    Config { problem: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn layout(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn nifti(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        DataError::Nifti {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn cache(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        DataError::Cache {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn config(problem: impl Into<String>) -> Self {
        DataError::Config {
            problem: problem.into(),
        }
    }
}

/// Result alias used across the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
