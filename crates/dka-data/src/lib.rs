//! Dataset loaders for the DKA paper's medical imaging releases.
