// libtorch functions that tch does not expose: the autocast dtype (bf16 vs fp16) and autocast
// on the CPU, and the CUDA caching allocator's peak-memory statistics. Every function catches
// C++ exceptions and reports failure through its return value (never unwinds into Rust).
#include <ATen/autocast_mode.h>
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

extern "C" {

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
