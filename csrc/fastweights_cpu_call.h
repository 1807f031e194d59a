// The CPU kernel's per-call state: `CallConstants` (the sizes, the padded copies of W, gamma
// and beta, the powers of lam and the decay table, filled once per call by
// fastweights_cpu_path.h), the chunking of long sequences (chunk_length, coef_row), and the
// backward's batch sums (BwdSums per thread, RangeSums per call).
// Part of the CPU kernel (fastweights_cpu_kernel.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "fastweights_cpu_simd.h"
#include "fastweights_params.h"

namespace crnn {
namespace CRNN_CPU_PATH_NS {

// ---------------------------------------------------------------------------------------

template <typename T>
struct CallConstants {
  int64_t B, T_len, H, Hp, S, Tp;  // Tp: T+1 rounded up to a vector length
  T lam, eta, eps;
  const T* WTp;      // [H][Hp]  W transposed (row j = column j of W), padded  (forward)
  const T* Wp;       // [H][Hp]  W, padded                                     (backward)
  const T* gamma;    // [Hp] padded with zeros
  const T* beta;     // [Hp]
  const T* mask;     // [Hp] 1 for i < H, 0 in the padding
  const T* lam_pow;  // [T+1] lam^k
  const T* decay;    // [T + vec_len + kSlack] eta lam^(T-1-j) for j < T, else 0
  int64_t chunk;     // K: the fast-weight matrix is materialised every K steps (chunk_length)
  int a_update = kPrevious;  // AUpdate: which key updates A (see the top of this file)
  bool w_finite = true;      // W has no NaN or inf: W h may skip the zeros of h
};

// Chunk length K of the "chunked attention form": steps t0+1 .. t0+K (t0 a multiple of K)
// use A_t z = lam^(t-t0) A_t0 z + sum_{t0 <= tau < t} eta lam^(t-1-tau) h_tau (h_tau . z),
// with A_t0 materialised at the chunk's start (A_0 for the first chunk). Per step this
// costs O(K H + H^2) instead of O(t H), so time is linear in T, and the matrices
// (T/K of them in the backward, H^2 each) are O(T H) memory with K >= H. For T <= K
// (every sequence the paper trains on) there is one chunk and nothing changes.
inline int64_t chunk_length(int64_t H) { return std::max<int64_t>(64, 2 * H); }

// Row t of the decay coefficients, c[tau] = eta lam^(t-1-tau) for tau < t and 0 beyond (as
// far as any padded read goes): a window of the one decay vector, O(T) memory, not a
// [T+1][T+1] table.
template <typename T>
inline const T* coef_row(const CallConstants<T>& consts, int64_t t) {
  return consts.decay + (consts.T_len - t);
}

// Example b's number of steps: lengths[b], or T without lengths.
template <typename Params>
inline int64_t example_steps(const Params& params, int64_t b) {
  return params.lengths ? params.lengths[b] : params.T_len;
}

// Example b ran `steps` < T steps: zero its rows of the outputs and saved tensors after them.
template <typename T>
inline void zero_after_end(const FwdParams<T>& params, int64_t b, int64_t steps) {
  const int64_t Tn = params.T_len, H = params.H, S = params.S, n = Tn - steps;
  if (n <= 0) return;
  std::fill_n(params.out + (b * Tn + steps) * H, n * H, T(0));
  if (params.zs == nullptr) return;
  std::fill_n(params.zs + (b * Tn + steps) * S * H, n * S * H, T(0));
  std::fill_n(params.xhat + (b * Tn + steps) * S * H, n * S * H, T(0));
  std::fill_n(params.rstd + (b * Tn + steps) * S, n * S, T(0));
}

// The backward's counterpart: dxp of example b is zero after its `steps` steps.
template <typename T>
inline void zero_after_end(const BwdParams<T>& params, int64_t b, int64_t steps) {
  const int64_t Tn = params.T_len, H = params.H;
  if (steps < Tn) std::fill_n(params.dxp + (b * Tn + steps) * H, (Tn - steps) * H, T(0));
}

// Example b's A_0: nullptr for A_0 = 0 (not materialised), the one shared A_0, or its own.
template <typename Params>
inline auto example_a0(const Params& params, int64_t b) -> decltype(params.A0) {
  if (params.A0 == nullptr) return nullptr;
  return params.A0_shared ? params.A0 : params.A0 + b * params.H * params.H;
}

// Row stride of the transposed A_0 (whole 16-lane blocks for the AVX-512 transpose).
inline int64_t a0t_ld(int64_t Hp) { return (Hp + 15) / 16 * 16; }

// ---------------------------------------------------------------------------------------

// The batch sums of the backward over the examples one thread ran: dW^T (H x Hp, row j =
// sum_t h_{t-1}[j] dp_t), the sums of dgamma and dbeta (Hp), and with a shared A_0 whose
// gradient is wanted, dA_0 (H x H).
// dA0L holds the batch-in-lanes backward's per-lane sums of dA_0 (H x H x G) until the
// thread's range is done.
template <typename T>
struct BwdSums {
  std::vector<T> dWT, dgamma, dbeta, dA0, dA0L;
  void zero(int64_t H, int64_t Hp, bool with_dA0, bool lanes = false) {
    dWT.assign(H * Hp, T(0));
    dgamma.assign(Hp, T(0));
    dbeta.assign(Hp, T(0));
    if (with_dA0) dA0.assign(H * H, T(0));
    if (with_dA0 && lanes) dA0L.assign(H * H * vec_len<T>(), T(0));
  }
};

// Whether the backward sums dA_0 over the batch (a shared A_0 whose gradient is wanted).
template <typename T>
inline bool sums_dA0(const BwdParams<T>& params) {
  return params.A0_shared && params.dA0 != nullptr;
}

// Example b's dA_0 (mat, H x H): into the thread's batch sum for a shared A_0, else out.
template <typename T>
inline void emit_dA0(const BwdParams<T>& params, int64_t b, const T* mat, BwdSums<T>& sum) {
  const int64_t H = params.H;
  if (params.A0_shared) {
    for (int64_t k = 0; k < H * H; ++k) sum.dA0[k] += mat[k];
  } else {
    stream_copy(params.dA0 + b * H * H, mat, H * H);
  }
}

// The backward's batch sums (BwdParams::dW, dgamma, dbeta) from the per-thread BwdSums:
// each range of examples [b0, b1) that a thread runs hands its sums over, and finish()
// adds them up in order of b0, so the result does not depend on which thread ended first.
template <typename T>
struct RangeSums {
  std::mutex mutex;
  std::vector<std::pair<int64_t, BwdSums<T>>> parts;

  void add(int64_t b0, BwdSums<T>&& part) {
    const std::lock_guard<std::mutex> lock(mutex);
    parts.emplace_back(b0, std::move(part));
  }

  void finish(const BwdParams<T>& params, int64_t Hp) {
    const int64_t H = params.H;
    std::sort(parts.begin(), parts.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    BwdSums<T>& acc = parts.front().second;
    for (size_t p = 1; p < parts.size(); ++p) {
      const BwdSums<T>& s = parts[p].second;
      for (int64_t k = 0; k < H * Hp; ++k) acc.dWT[k] += s.dWT[k];
      for (int64_t i = 0; i < H; ++i) {
        acc.dgamma[i] += s.dgamma[i];
        acc.dbeta[i] += s.dbeta[i];
      }
      for (size_t k = 0; k < acc.dA0.size(); ++k) acc.dA0[k] += s.dA0[k];
    }
    if (params.dW)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < H; ++j) params.dW[i * H + j] = acc.dWT[j * Hp + i];
    if (params.dgamma) std::copy_n(acc.dgamma.data(), H, params.dgamma);
    if (params.dbeta) std::copy_n(acc.dbeta.data(), H, params.dbeta);
    if (sums_dA0(params)) std::copy_n(acc.dA0.data(), H * H, params.dA0);
  }
};

}  // namespace CRNN_CPU_PATH_NS
}  // namespace crnn
