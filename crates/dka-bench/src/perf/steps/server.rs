//! `dka bench worker`'s loop: requests from stdin answered one line each on stdout by a
//! [`Server`] holding the case's [`Worker`].
use super::protocol::Request;
use super::worker::{sync, Worker};
use crate::util::profiler::profiled;
use anyhow::Context;
use std::io::{BufRead, Write};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Resets the CPU high-water mark of the resident set to its current value (Linux >= 4.0).
pub fn reset_cpu_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// fp32 GEMM throughput in GFLOP/s: median of `reps` products of `n x n` matrices.
pub fn gemm_gflops(device: Device, n: i64, reps: usize, bf16: bool) -> f64 {
    let kind = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let _ = a.matmul(&b);
    let mut ts: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            sync(device);
            let t = Instant::now();
            let _ = a.matmul(&b);
            sync(device);
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / ts[ts.len() / 2] / 1e9
}

/// Answers requests; `None` for `quit`.
pub struct Server {
    worker: Option<Worker>,
    device: Device,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            worker: None,
            device: Device::Cpu,
        }
    }
}

impl Server {
    pub fn handle(&mut self, req: Request) -> anyhow::Result<Option<serde_json::Value>> {
        use serde_json::json;
        Ok(Some(match req {
            Request::Quit => return Ok(None),
            Request::Setup {
                case,
                file,
                device,
                export,
                checkpoint,
            } => {
                self.device = crate::util::device::pick(
                    device.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                )?;
                self.worker = None;
                let w = Worker::new(&case, &file, self.device, export, checkpoint)?;
                let trainable = w.trainable();
                self.worker = Some(w);
                sync(self.device);
                json!({ "trainable": trainable })
            }
            Request::Step { .. } => {
                let w = self.worker.as_mut().context("step before setup")?;
                let faults = crate::util::device::minor_faults();
                let (loss, ms) = w.step()?;
                let faults = crate::util::device::minor_faults()
                    .zip(faults)
                    .map(|(b, a)| b.saturating_sub(a));
                json!({ "loss": loss, "ms": ms, "page_faults": faults })
            }
            Request::ResetPeak => {
                let reset = match self.device {
                    Device::Cuda(_) => {
                        sync(self.device);
                        crate::util::device::reset_peak_memory(self.device);
                        true
                    }
                    _ => reset_cpu_peak(),
                };
                json!({ "reset": reset })
            }
            Request::Memory => {
                sync(self.device);
                let rss = crate::util::device::proc_status_bytes("VmRSS");
                match self.device {
                    Device::Cuda(_) => json!({
                        "peak_bytes": crate::util::device::peak_memory(self.device),
                        "now_bytes": null,
                        "rss_bytes": rss,
                    }),
                    _ => json!({
                        "peak_bytes": crate::util::device::proc_status_bytes("VmHWM"),
                        "now_bytes": rss,
                        "rss_bytes": rss,
                    }),
                }
            }
            Request::Gemm {
                n,
                reps,
                device,
                bf16,
            } => {
                let d = crate::util::device::pick(
                    device.parse().map_err(|e: String| anyhow::anyhow!(e))?,
                )?;
                json!({ "gflops": gemm_gflops(d, n, reps, bf16) })
            }
            Request::Profile { steps, out } => {
                let w = self.worker.as_mut().context("profile before setup")?;
                let device = self.device;
                let ms = profiled(&out, || {
                    let mut ms = Vec::new();
                    for _ in 0..steps.max(1) {
                        ms.push(w.step()?.1);
                    }
                    sync(device);
                    Ok(ms)
                })?;
                json!({ "ms": ms, "trace": out })
            }
            Request::Info => json!({
                "libtorch": option_env!("DKA_LIBTORCH_VERSION"),
                "threads": tch::get_num_threads(),
                "cuda": tch::Cuda::is_available(),
            }),
        }))
    }
}

/// Set (to any value) by the driver when both implementations flush subnormal floats to zero.
pub const FLUSH_DENORMAL_ENV: &str = "DKA_BENCH_FLUSH_DENORMAL";

/// Flushes subnormal floats to zero on this thread and the threads it starts later (what
/// `torch.set_flush_denormal(True)` does): arithmetic on subnormals is many times slower on
/// x86, and whether a step meets them depends on the weights and the data. Call it before
/// libtorch starts its thread pool.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)]
    // SAFETY: only sets the FTZ (bit 15) and DAZ (bit 6) flags of this thread's MXCSR.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// `dka bench worker`: serve requests from stdin until `quit` or end of input.
pub fn serve() -> anyhow::Result<()> {
    if std::env::var_os(FLUSH_DENORMAL_ENV).is_some() {
        flush_denormals();
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::json!({ "ready": true }))?;
    out.flush()?;
    let mut server = Server::default();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line)
            .map_err(anyhow::Error::from)
            .and_then(|r| server.handle(r))
        {
            Ok(None) => break,
            Ok(Some(mut v)) => {
                v["ok"] = true.into();
                v
            }
            Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}
