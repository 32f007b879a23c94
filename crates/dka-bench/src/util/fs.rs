//! Files written whole or not at all: bytes and safetensors through a temporary sibling and a
//! rename (`dka_data::files::write_with`, the project's one atomic writer).
use anyhow::Context;
use std::path::Path;
use tch::Tensor;

/// Writes `bytes` to `path` atomically (its folder must exist).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(dka_data::files::write_bytes(path, bytes)?)
}

/// Writes named tensors as safetensors to `path` atomically (its folder must exist), so a
/// failure leaves nothing half-written.
pub fn write_safetensors(path: &Path, tensors: &[(&str, Tensor)]) -> anyhow::Result<()> {
    let tensors: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (*n, t.contiguous())).collect();
    dka_data::files::write_with(path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(std::io::Error::other)
    })
    .with_context(|| format!("writing {}", path.display()))
}
