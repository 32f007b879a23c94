//! The bottom layer: small helpers every other layer uses, knowing nothing of runs, grids or
//! figures. One implementation of each: the atomic writers ([`fs`]), median / mean / sample
//! standard deviation ([`stats`]), where numbers were made ([`provenance`]), devices and their
//! memory ([`device`]), progress bars ([`progress`]), stop signals ([`interrupt`]), panics as
//! errors ([`panics`]), the figures' font ([`fonts`]) and TensorBoard event files
//! ([`tensorboard`]), libtorch's profiler ([`profiler`]).
pub mod device;
pub mod fonts;
pub mod fs;
pub mod interrupt;
pub mod malloc;
pub mod panics;
pub mod profiler;
pub mod progress;
pub mod provenance;
pub mod stats;
pub mod tensorboard;
