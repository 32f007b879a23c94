//! Errors of the core crate. Every variant names the file, tensor or shapes involved.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: invalid config: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("unknown backbone preset '{name}' (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("{path}: weights do not fit the model: {summary}")]
    WeightsMismatch { path: PathBuf, summary: String },
    #[error("input tensor '{name}' has shape {shape:?}; expected {expected}")]
    InputShape {
        name: String,
        shape: Vec<i64>,
        expected: String,
    },
    #[error("method '{method}' does not apply to a {arch} backbone ({why})")]
    Unsupported {
        method: String,
        arch: String,
        why: String,
    },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, CoreError>;
