// Fused fast-weights forward/backward for the CPU (Ba et al. 2016), whole sequence per call.
//
// Plain C++ (no PyTorch types): the kernels take the parameter structs shared with the
// CUDA path (FwdParams/BwdParams, fastweights_params.h, filled by the glue in
// fastweights_checks.h) plus `CallConstants`, the padded copies of W, gamma, beta and the
// decay table that fastweights_cpu_path.h prepares once per call; it runs forward_example /
// backward_example (or forward_lanes / backward_lanes for a group of examples) inside
// at::parallel_for.
//
// Semantics (per example; xp_t = U x_t + b precomputed):
//   p_t = W h_{t-1} + xp_t;  z_0 = f(p_t)
//   A_t = lam A_{t-1} + eta k_t k_t^T
//       = lam^t A_0 + sum_{j<t} eta lam^(t-1-j) key_j key_j^T     ("attention form", key_j = k_{j+1})
//   u_s = p_t + A_t z_s;  z_{s+1} = f(gamma * xhat_s + beta),
//   xhat_s = (u_s - mean(u_s)) * rstd_s,  rstd_s = 1/sqrt(var(u_s) + eps);  h_t = z_S.
// The key k_t is h_{t-1} (a_update = kPrevious, Ba et al.) or z_0 = f(p_t) of the same
// step (kPreliminary, the paper authors' code); the code below is written for the key
// history key_0..key_{T-1}, which is the h history itself for kPrevious and a separate
// buffer (rows = the saved z_0's) for kPreliminary. Below, "h_tau" in the attention
// terms means key_tau.
//
// A_t is not materialised every step: A_t z is computed in attention form from the
// history (kept per example in thread-local buffers, row-wise and transposed) plus
// lam^t A_0 z (skipped when A_0 is zero for the example). Sequences longer than the
// chunk length K = max(64, 2H) are cut into chunks: A_t0 is materialised at each chunk
// start t0 and the attention window is h_t0..h_{t-1}, so the cost per step is bounded
// and time is linear in T (see chunk_length). Saved for the backward: z_0..z_{S-1},
// xhat_0..xhat_{S-1} and rstd per step ([B,T,S,H], [B,T,S,H], [B,T,S]) besides the
// outputs, i.e. O(B*T*S*H) memory; the backward recomputes the rest (the history
// scores, A_t^T du, the chunk-start matrices, the A_T/A_0 terms).
//
// Inner vectors live in thread-local buffers padded to Hp = H rounded up to a vector
// (zeros in the padding), and the hot loops are written with explicit vector types
// (GCC/Clang vector extensions of the target's register width: AVX-512, AVX2 or
// SSE/NEON code depending on -march),
// so no loop depends on -ffast-math to vectorise. With AVX-512 the ReLU sparsity of
// h and z is used (vcompress) to skip zero rows in W h and A_0 z.
//
// The kernel is split into four headers, included here in order:
//   fastweights_cpu_simd.h     vector helpers
//   fastweights_cpu_call.h     per-call state and the backward's batch sums
//   fastweights_cpu_example.h  the per-example forward and backward (any T, chunked)
//   fastweights_cpu_lanes.h    the batch-in-lanes forward and backward
// Everything is declared in namespace crnn::CRNN_CPU_PATH_NS, a name the includer defines
// per instruction set (fastweights_cpu_path.h explains why).
#pragma once

#ifndef CRNN_CPU_PATH_NS
#error "define CRNN_CPU_PATH_NS (the kernel's namespace for this instruction set) before including the CPU kernel"
#endif

#include "fastweights_cpu_simd.h"
#include "fastweights_cpu_call.h"
#include "fastweights_cpu_example.h"
#include "fastweights_cpu_lanes.h"
