// Host-side interface of the CUDA fast-weights kernels (fastweights_cuda.cu).
//
// Plain C++ plus the CUDA runtime types only: no PyTorch headers, so the .cu file
// compiles with nvcc alone (CI compile-checks it on machines whose PyTorch is a CPU
// build). The PyTorch glue is fastweights_cuda_glue.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace crnn {
namespace cuda {

// Largest hidden size the CUDA kernels take (one thread per hidden unit, one block per example).
constexpr int64_t kMaxHidden = 1024;
// Longest sequence: the per-step score vectors (3 (T+1) values) live in shared memory.
constexpr int64_t kMaxLength = 2048;

template <typename T>
struct FwdParams {
  int64_t B, T_len, H, S;
  int act;  // 0 relu, 1 tanh
  double lam, eta, eps;
  const T* xp;     // [B,T,H]
  const T* h0;     // [B,H]
  const T* A0;     // [B,H,H]
  const T* W;      // [H,H]
  const T* gamma;  // [H]
  const T* beta;   // [H]
  T* out;          // [B,T,H]
  T* AT;           // [B,H,H]
  T* zs;           // [B,T,S,H] or nullptr (nothing saved)
  T* xhat;         // [B,T,S,H] or nullptr
  T* rstd;         // [B,T,S]   or nullptr
};

template <typename T>
struct BwdParams {
  int64_t B, T_len, H, S;
  int act;
  double lam, eta;
  const T* gout;   // [B,T,H] or nullptr (zero)
  const T* gAT;    // [B,H,H] or nullptr (zero)
  const T* h0;     // [B,H]
  const T* A0;     // [B,H,H]
  const T* W;      // [H,H]
  const T* gamma;  // [H]
  const T* out;    // [B,T,H]
  const T* zs;     // [B,T,S,H]
  const T* xhat;   // [B,T,S,H]
  const T* rstd;   // [B,T,S]
  T* dxp;          // [B,T,H]
  T* dh0;          // [B,H]
  T* dgamma_part;  // [B,H]
  T* dbeta_part;   // [B,H]
  T* dH;           // [B,T+1,H] workspace (any contents; initialised by the kernel)
  T* G;            // [B,T,S,H] lam^t du_{t,s} for dA0 = G^T zs (glue does the bmm), or nullptr
};

// One launch for the whole sequence (one block per example). Return the launch error.
template <typename T>
cudaError_t launch_forward(const FwdParams<T>& p, cudaStream_t stream);
template <typename T>
cudaError_t launch_backward(const BwdParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace crnn
