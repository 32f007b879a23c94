//! How fast the machine is right now (`dka info --speed`): shared machines drift by tens of
//! percent over a day, so a wall time means more beside the speed measured with it.
use crate::perf::steps::server::gemm_gflops;
use crate::perf::steps::worker::sync;
use crate::util::device::{cpu_bf16_native, cuda_bf16_native};
use tch::{Device, Kind, Tensor};

/// One line: GEMM GFLOP/s (median of 5 products of 1024 x 1024 matrices; bf16 where native)
/// and the mean time of a tiny training step at the size of the demo's smallest maps (four
/// operations on `[2, 16, 12, 12]` fp32 tensors, forward and backward; 1,000 steps after 100
/// warm-up steps).
pub fn now(device: Device) -> String {
    let fp32 = gemm_gflops(device, 1024, 5, false);
    let bf16_native = match device {
        Device::Cpu => cpu_bf16_native(),
        d => cuda_bf16_native(d).unwrap_or(false),
    };
    let bf16 = if bf16_native {
        format!("{:.0} GFLOP/s", gemm_gflops(device, 1024, 5, true))
    } else {
        "not native".into()
    };
    // Spinning OpenMP threads (ACTIVE) make small steps several times faster on 2 cores.
    let policy = std::env::var("OMP_WAIT_POLICY").unwrap_or_else(|_| "unset".into());
    format!(
        "GEMM 1024x1024 fp32 {fp32:.0} GFLOP/s, bf16 {bf16}; a tiny step (4 operations on \
         [2, 16, 12, 12], forward and backward) {:.0} µs (OMP_WAIT_POLICY {policy})",
        tiny_step_us(device)
    )
}

/// Mean time of forward and backward of `sum(gelu(x * w) + x)` on the demo's smallest maps:
/// what per-operation overhead (dispatch, autograd, allocation) costs where the arithmetic is
/// negligible.
fn tiny_step_us(device: Device) -> f64 {
    let x = Tensor::ones([2, 16, 12, 12], (Kind::Float, device)).set_requires_grad(true);
    let w = Tensor::full([16, 1, 1], 0.5, (Kind::Float, device)).set_requires_grad(true);
    let step = || (&x * &w).gelu("none").g_add(&x).sum(Kind::Float).backward();
    for _ in 0..100 {
        step();
    }
    sync(device);
    let t = std::time::Instant::now();
    for _ in 0..1000 {
        step();
    }
    sync(device);
    t.elapsed().as_secs_f64() * 1e6 / 1000.0
}
