// Host-side interface of the CUDA fast-weights kernels (fastweights_cuda.cu).
//
// Plain C++ plus the CUDA runtime types only: no PyTorch headers, so the .cu file
// compiles with nvcc alone (CI compile-checks it on machines whose PyTorch is a CPU
// build) and, in the tests, as C++ on the CPU (tests/cuda_emu: the emulation harness).
// The PyTorch glue is fastweights_cuda_glue.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "fastweights_params.h"

namespace crnn {
namespace cuda {

// Largest hidden size the CUDA kernels take (one thread per hidden unit, one block per example).
constexpr int64_t kMaxHidden = 1024;
// Longest sequence: the per-step score vectors (3 (T+1) values) live in shared memory.
constexpr int64_t kMaxLength = 2048;
// Largest batch: one block per example, and a grid's x dimension is at most 2^31 - 1.
constexpr int64_t kMaxBatch = 2147483647;

// One launch for the whole sequence (one block per example), with the parameter structs
// shared with the CPU kernel (fastweights_params.h; BwdParams::dA0 is unused here: the
// glue forms dA_0 = G^T zs). Return the launch error (cudaErrorInvalidValue for shapes
// outside the limits above).
template <typename T>
cudaError_t launch_forward(const FwdParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const BwdParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace crnn
