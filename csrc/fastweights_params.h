// The one description of a fast-weights call shared by every implementation: the
// activation enum and the forward/backward parameter structs (shapes, scalars, raw
// pointers). Plain C++ (no PyTorch, no CUDA headers): the CPU kernel
// (fastweights_cpu_kernel.h), the CUDA kernels (fastweights_cuda.cu) and the CPU
// emulation of the CUDA kernels in the tests all take these structs; the PyTorch glue
// fills them in one place (make_fwd_params / make_bwd_params in fastweights_checks.h).
#pragma once

#include <cstdint>

namespace crnn {

// The activation f; the op's string argument ("relu" / "tanh") maps to it in
// parse_activation (fastweights_checks.h).
enum Activation : int { kRelu = 0, kTanh = 1 };

// Which vector k_t updates the fast weights, A_t = lam A_{t-1} + eta k_t k_t^T; the op's
// string argument a_update ("previous" / "preliminary") maps to it in parse_a_update.
//   kPrevious:    k_t = h_{t-1}   (Ba et al. 2016; the default)
//   kPreliminary: k_t = f(p_t) = z_0 of step t, before the inner loop (the paper
//                 authors' code, fomorians/contextual_rnn fast_weights_cell.py)
enum AUpdate : int { kPrevious = 0, kPreliminary = 1 };

// Forward of one call. Tensors are contiguous; shapes in the comments. With `lengths`,
// example b runs its first lengths[b] steps only, exactly as if it were alone: T stays the
// row stride, its outputs (and saved tensors, and in the backward dxp) after its end are
// zero, and its A_T is the one after its own last step.
template <typename T>
struct FwdParams {
  int64_t B, T_len, H, S;  // batch, sequence length, hidden size, inner steps
  int act;                 // Activation
  int a_update = kPrevious;  // AUpdate
  double lam, eta, eps;
  const T* xp;     // [B,T,H]  U x_t + b, precomputed
  const T* h0;     // [B,H]
  const T* A0;     // [B,H,H], or [H,H] with A0_shared, or nullptr: A_0 = 0 (CPU; the CUDA glue
                   // materialises zeros and tiles a shared A_0)
  bool A0_shared = false;  // CPU: A0 is one [H,H] for every example (the free init's tiled A_0)
  const T* W;      // [H,H]
  const T* gamma;  // [H]
  const T* beta;   // [H]
  T* out;          // [B,T,H]
  T* AT;           // [B,H,H], or nullptr: A_T not wanted (final_state=False)
  T* zs;           // [B,T,S,H] or nullptr (nothing saved for a backward)
  T* xhat;         // [B,T,S,H] or nullptr
  T* rstd;         // [B,T,S]   or nullptr
  T* keys = nullptr;  // CUDA, kPreliminary: [B,T,H] workspace for k_1..k_T. Otherwise unused.
  const int64_t* lengths = nullptr;  // [B] steps of each example, in [1, T], or nullptr: all T
};

// Backward of one call. On the CPU the kernel also forms the batch sums dW, dgamma and
// dbeta (per thread, then added in a fixed order); on CUDA the glue finishes dW, the sums
// of dgamma_part/dbeta_part and dA_0 = G^T zs with library GEMMs/reductions.
template <typename T>
struct BwdParams {
  int64_t B, T_len, H, S;
  int act;       // Activation
  int a_update = kPrevious;  // AUpdate
  double lam, eta;
  const T* gout;   // [B,T,H] or nullptr (zero)
  const T* gAT;    // [B,H,H] or nullptr (zero)
  const T* h0;     // [B,H]
  const T* A0;     // [B,H,H], or [H,H] with A0_shared, or nullptr (as FwdParams)
  bool A0_shared = false;  // CPU: A0 is one [H,H]; then dA0 is [H,H], the batch sum
  const T* W;      // [H,H]
  const T* gamma;  // [H]
  const T* out;    // [B,T,H]
  const T* zs;     // [B,T,S,H]
  const T* xhat;   // [B,T,S,H]
  const T* rstd;   // [B,T,S]
  T* dxp;          // [B,T,H]
  T* dh0;          // [B,H]
  T* dgamma_part;  // [B,H] per-example partial sums, or nullptr (CPU: the sums below)
  T* dbeta_part;   // [B,H] or nullptr
  T* dA0;          // CPU: [B,H,H] (or [H,H] with A0_shared) written by the kernel, or nullptr (not needed). CUDA: unused.
  T* dH;           // CUDA: [B,T+1,H] workspace (any contents). CPU: unused.
  T* G;            // CUDA: [B,T,S,H] lam^t du_{t,s} for dA0 = G^T zs, or nullptr. CPU: unused.
  T* dK = nullptr;    // CUDA, kPreliminary: [B,T,H] workspace, d loss / d k_t. Otherwise unused.
  T* dW = nullptr;      // CPU: [H,H] = sum_{b,t} dp_t h_{t-1}^T, or nullptr (not formed). CUDA: unused.
  T* dgamma = nullptr;  // CPU, with dW: [H] batch sum of dgamma. CUDA: unused.
  T* dbeta = nullptr;   // CPU, with dW: [H]
  const int64_t* lengths = nullptr;  // [B] as in FwdParams (the forward's lengths)
};

}  // namespace crnn
