// libtorch functions that tch does not expose: the autocast dtype (bf16 vs fp16) and autocast
// on the CPU, the fused Adam(W) update and AMP's fused unscale-and-check, and the CUDA caching
// allocator's peak-memory statistics. Every function catches C++ exceptions and reports
// failure through its return value (never unwinds into Rust).
#include <ATen/autocast_mode.h>
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <set>
#include <string>
#include <vector>
#ifndef DKA_NO_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

namespace at::cuda {
// Declared in ATen/cuda/CUDAContextLight.h (defined in libtorch_cuda); that header pulls in
// cuSOLVER/cuDSS headers we do not need.
cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}
#endif

static at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

// tch's tensor handles are `at::Tensor*`.
static std::vector<at::Tensor> tensors(const at::Tensor* const* ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

extern "C" {

// libtorch's profiler (what `torch.profiler.profile(activities=[CPU])` runs), on the calling
// thread: every operator and autograd node from here to dka_profiler_stop, with input shapes.
// 0 on success, -1 on error.
int dka_profiler_start() {
  try {
    using namespace torch::profiler::impl;
    ProfilerConfig cfg(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> acts{ActivityType::CPU};
    torch::autograd::profiler::prepareProfiler(cfg, acts);
    torch::autograd::profiler::enableProfiler(cfg, acts);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Stops the profiler and writes its Chrome trace (JSON) to `path`. 0 on success, -1 on error.
int dka_profiler_stop(const char* path) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr) result->save(std::string(path));
    return 0;
  } catch (...) {
    return -1;
  }
}


// Enables or disables autocast for the CUDA (cuda = 1) or CPU (cuda = 0) device with the
// given reduced precision (bf16 = 1: bfloat16, else float16). Returns the previous enabled
// state (0/1), or -1 on error.
int dka_autocast_set(int cuda, int enabled, int bf16) {
  try {
    auto dev = device_type(cuda);
    bool prev = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dev, enabled != 0);
    return prev ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

int dka_autocast_increment_nesting() {
  try {
    return static_cast<int>(at::autocast::increment_nesting());
  } catch (...) {
    return -1;
  }
}

// Decrements the nesting level and clears autocast's cast cache when it reaches zero.
int dka_autocast_decrement_nesting() {
  try {
    int n = static_cast<int>(at::autocast::decrement_nesting());
    if (n == 0) at::autocast::clear_cache();
    return n;
  } catch (...) {
    return -1;
  }
}

// One Adam (decoupled = 0: L2 weight decay) or AdamW (decoupled = 1) step over n tensors in
// libtorch's fused kernel (`torch.optim.Adam(fused=True)`): `steps` are float scalars the
// kernel increments. 0 on success, -1 when libtorch refuses (e.g. no fused kernel for this
// device or type); nothing is changed then.
int dka_fused_adam(int decoupled, const at::Tensor* const* params, const at::Tensor* const* grads,
                   const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                   const at::Tensor* const* steps, int n, double lr, double beta1, double beta2,
                   double weight_decay, double eps) {
  try {
    auto p = tensors(params, n), g = tensors(grads, n), m = tensors(exp_avgs, n),
         v = tensors(exp_avg_sqs, n), s = tensors(steps, n);
    std::vector<at::Tensor> none;
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, none, s, lr, beta1, beta2, weight_decay, eps, false, false);
    }
    return 0;
  } catch (...) {
    return -1;
  }
}

// Multiplies n gradients by `inv_scale` (a one-element float tensor) in place and sets
// `found_inf` (one-element float, zeroed by the caller) to 1 if any value is not finite:
// AMP's fused unscale. 0 on success, -1 on error.
int dka_unscale_check(const at::Tensor* const* grads, int n, const at::Tensor* found_inf,
                      const at::Tensor* inv_scale) {
  try {
    auto g = tensors(grads, n);
    at::Tensor found = *found_inf;  // a handle to the same tensor: the kernel writes into it
    at::_amp_foreach_non_finite_check_and_unscale_(g, found, *inv_scale);
    return 0;
  } catch (...) {
    return -1;
  }
}

#ifdef DKA_NO_CUDA
int dka_cuda_device_name(int, char*, int) { return -1; }
int dka_cuda_capability_major(int) { return -1; }
int dka_cuda_reset_peak(int) { return -1; }
long long dka_cuda_peak_allocated(int) { return -1; }
#else
// Writes the CUDA device's name (NUL-terminated, truncated to len) into buf; 0 on success.
int dka_cuda_device_name(int device, char* buf, int len) {
  try {
    if (len <= 0 || device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return -1;
    const char* name = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->name;
    int i = 0;
    for (; i + 1 < len && name[i] != 0; ++i) buf[i] = name[i];
    buf[i] = 0;
    return 0;
  } catch (...) {
    return -1;
  }
}

// Compute capability major of a CUDA device, -1 when unavailable.
int dka_cuda_capability_major(int device) {
  try {
    if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return -1;
    return at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device))->major;
  } catch (...) {
    return -1;
  }
}

// Resets the peak statistics of the caching allocator on a CUDA device (0 on success).
int dka_cuda_reset_peak(int device) {
  try {
    if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return -1;
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Peak bytes allocated by tensors on a CUDA device since the last reset, -1 when unavailable.
long long dka_cuda_peak_allocated(int device) {
  try {
    if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) return -1;
    auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return static_cast<long long>(
        stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
            .peak);
  } catch (...) {
    return -1;
  }
}

#endif

}  // extern "C"
