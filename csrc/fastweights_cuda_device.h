// Device helpers shared by the CUDA fast-weights kernels (fastweights_cuda.cu, one block per
// example, and fastweights_cuda_warp.h, one warp per example): the activation and its
// backward, warp sums, rsqrt per type, and the hooks that the CPU emulation of the tests
// (tests/cuda_emu) replaces; and the host helpers of their launchers. Includes only CUDA and standard headers.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fastweights_params.h"

#ifndef CRNN_DYNAMIC_SMEM
#define CRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif
#ifndef CRNN_LAUNCH
#define CRNN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

namespace crnn {
namespace cuda {
namespace device {

// ReLU keeps a NaN (NaN < 0 is false), as torch.relu does.
template <int ACT, typename T>
__device__ __forceinline__ T act(T x) {
  if (ACT == kRelu) return x < T(0) ? T(0) : x;
  return tanh(x);
}

// f'(x) * g through y = f(x). ReLU: 0 where y <= 0 (even for a NaN or inf g), else g, as
// torch's threshold_backward.
template <int ACT, typename T>
__device__ __forceinline__ T dact_mul(T y, T g) {
  if (ACT == kRelu) return y <= T(0) ? T(0) : g;
  return g * (T(1) - y * y);
}

// Sum over the 32 lanes of a warp; every lane gets it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// OR over the 32 lanes of a warp; every lane gets it.
__device__ __forceinline__ int warp_or(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T rsqrt_t(T x);
template <>
__device__ __forceinline__ float rsqrt_t<float>(float x) {
  return rsqrtf(x);
}
template <>
__device__ __forceinline__ double rsqrt_t<double>(double x) {
  return rsqrt(x);
}

}  // namespace device

// Raises a kernel's dynamic shared-memory limit where a launch needs more than the default
// 48 KiB (up to the device's opt-in maximum, which the planners check first).
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// The device's opt-in shared memory per block and its number of multiprocessors.
inline cudaError_t device_limits(size_t* smem_optin, int* sms) {
  int dev = 0, optin = 0, count = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) return err;
  *smem_optin = static_cast<size_t>(optin);
  *sms = count < 1 ? 1 : count;
  return cudaSuccess;
}
}  // namespace cuda
}  // namespace crnn
