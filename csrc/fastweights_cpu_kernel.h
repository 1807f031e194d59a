// Fused fast-weights forward/backward for the CPU (Ba et al. 2016), whole sequence per call.
//
// Plain C++ (no PyTorch types): the kernels take the parameter structs shared with the
// CUDA path (FwdParams/BwdParams, fastweights_params.h, filled by the glue in
// fastweights_checks.h) plus `Shared`, the padded copies of W, gamma, beta and the decay
// table that fastweights_op.cpp prepares once per call; the glue
// runs `forward_example` / `backward_example` for each example inside at::parallel_for.
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
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "fastweights_params.h"

#if !(defined(__GNUC__) || defined(__clang__))
#error "the crnn CPU kernel needs GCC or Clang (vector extensions)"
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#define CRNN_AVX512 1
#else
#define CRNN_AVX512 0
#endif

// Width (bytes) of the vector type the kernels are written with: the target's native
// register width (64 = one zmm / cache line with AVX-512, 32 with AVX/AVX2, else 16).
// Wider-than-native GCC vectors are lowered through memory and run ~10x slower.
#ifndef CRNN_VEC_BYTES
#if defined(__AVX512F__)
#define CRNN_VEC_BYTES 64
#elif defined(__AVX__)
#define CRNN_VEC_BYTES 32
#else
#define CRNN_VEC_BYTES 16
#endif
#endif
#if CRNN_VEC_BYTES != 64 && CRNN_VEC_BYTES != 32 && CRNN_VEC_BYTES != 16
#error "CRNN_VEC_BYTES must be 16, 32 or 64"
#endif

namespace crnn {
namespace cpu {

template <typename T>
constexpr int64_t vec_len() {
  return CRNN_VEC_BYTES / static_cast<int64_t>(sizeof(T));  // AVX-512: 16 float, 8 double
}

template <typename T>
inline int64_t padded(int64_t n) {
  const int64_t v = vec_len<T>();
  return (n + v - 1) / v * v;
}

// Extra elements every index/value scratch list needs beyond its logical length.
constexpr int64_t kSlack = 16;

template <int ACT, typename T>
inline T act(T x) {
  if (ACT == kRelu) return x > T(0) ? x : T(0);
  return std::tanh(x);
}

// ---------------------------------------------------------------------------------------
// Vectors of CRNN_VEC_BYTES bytes.
template <typename T>
struct VecType;
template <>
struct VecType<float> {
  typedef float type __attribute__((vector_size(CRNN_VEC_BYTES), aligned(4), __may_alias__));
};
template <>
struct VecType<double> {
  typedef double type __attribute__((vector_size(CRNN_VEC_BYTES), aligned(8), __may_alias__));
};
template <typename T>
using vec = typename VecType<T>::type;

template <typename T>
inline vec<T> vload(const T* p) {
  return *reinterpret_cast<const vec<T>*>(p);
}
template <typename T>
inline void vstore(T* p, vec<T> v) {
  *reinterpret_cast<vec<T>*>(p) = v;
}
template <typename T>
inline vec<T> vzero() {
  return vec<T>{};
}
// Horizontal sum, as a tree (log2 lanes dependent adds, not one add per lane).
#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
inline float hsum(vec<float> v) { return _mm512_reduce_add_ps((__m512)v); }
inline double hsum(vec<double> v) { return _mm512_reduce_add_pd((__m512d)v); }
#else
template <typename T>
inline T hsum_tree(vec<T> v) {
  for (int64_t w = vec_len<T>() / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) v[l] += v[l + w];
  return v[0];
}
inline float hsum(vec<float> v) { return hsum_tree<float>(v); }
inline double hsum(vec<double> v) { return hsum_tree<double>(v); }
#endif

// The first n < vec_len lanes of p, zeros elsewhere (never reads past p[n-1]).
inline vec<float> load_tail(const float* p, int64_t n) {
#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
  return (vec<float>)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
#elif CRNN_AVX512 && defined(__AVX512VL__) && CRNN_VEC_BYTES == 32
  return (vec<float>)_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1u), p);
#else
  vec<float> v = vzero<float>();
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
  return v;
#endif
}
inline vec<double> load_tail(const double* p, int64_t n) {
#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
  return (vec<double>)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p);
#elif CRNN_AVX512 && defined(__AVX512VL__) && CRNN_VEC_BYTES == 32
  return (vec<double>)_mm256_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p);
#else
  vec<double> v = vzero<double>();
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
  return v;
#endif
}
// Store the first n < vec_len lanes of v to p.
inline void store_tail(float* p, vec<float> v, int64_t n) {
#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), (__m512)v);
#elif CRNN_AVX512 && defined(__AVX512VL__) && CRNN_VEC_BYTES == 32
  _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << n) - 1u), (__m256)v);
#else
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
#endif
}
inline void store_tail(double* p, vec<double> v, int64_t n) {
#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
  _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), (__m512d)v);
#elif CRNN_AVX512 && defined(__AVX512VL__) && CRNN_VEC_BYTES == 32
  _mm256_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), (__m256d)v);
#else
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
#endif
}

// f'(x) * g through y = f(x), on vectors.
template <int ACT, typename T>
inline vec<T> dact_mul(vec<T> y, vec<T> g) {
  if (ACT == kTanh) return g * (vzero<T>() + T(1) - y * y);
  return g * -__builtin_convertvector(y > vzero<T>(), vec<T>);  // (y > 0) is -1 / 0 per lane
}

// ---------------------------------------------------------------------------------------
// Small vector kernels. Padded lengths (n, np) are multiples of vec_len<T>().

// y[0:NV*W] += sum_jj x[jj] * M[rows(jj), 0:NV*W], accumulators in registers.
// rows(jj) = idx[jj] when idx is given, else jj. Narrow blocks use several independent
// accumulator sets so that the FMA latency is hidden.
template <typename T, int NV, bool IDX>
inline void mv_block(const T* __restrict M, int64_t ld, const int32_t* __restrict idx,
                     const T* __restrict x, int64_t k, T* __restrict y) {
  constexpr int64_t W = vec_len<T>();
  constexpr int U = NV >= 4 ? 1 : 4 / NV;
  vec<T> acc[U][NV];
  for (int n = 0; n < NV; ++n) acc[0][n] = vload(y + n * W);
  for (int u = 1; u < U; ++u)
    for (int n = 0; n < NV; ++n) acc[u][n] = vzero<T>();
  int64_t jj = 0;
  for (; jj + U <= k; jj += U) {
    for (int u = 0; u < U; ++u) {
      const T xj = x[jj + u];
      const T* __restrict r = M + (IDX ? static_cast<int64_t>(idx[jj + u]) : jj + u) * ld;
      for (int n = 0; n < NV; ++n) acc[u][n] += vload(r + n * W) * xj;
    }
  }
  for (; jj < k; ++jj) {
    const T xj = x[jj];
    const T* __restrict r = M + (IDX ? static_cast<int64_t>(idx[jj]) : jj) * ld;
    for (int n = 0; n < NV; ++n) acc[0][n] += vload(r + n * W) * xj;
  }
  for (int u = 1; u < U; ++u)
    for (int n = 0; n < NV; ++n) acc[0][n] += acc[u][n];
  for (int n = 0; n < NV; ++n) vstore(y + n * W, acc[0][n]);
}

template <typename T, bool IDX>
inline void matvec_impl(const T* M, int64_t ld, const int32_t* idx, const T* x, int64_t k, T* y,
                        int64_t n) {
  constexpr int64_t W = vec_len<T>();
  int64_t c = 0;
  for (; c + 4 * W <= n; c += 4 * W) mv_block<T, 4, IDX>(M + c, ld, idx, x, k, y + c);
  if (c + 2 * W <= n) {
    mv_block<T, 2, IDX>(M + c, ld, idx, x, k, y + c);
    c += 2 * W;
  }
  if (c < n) mv_block<T, 1, IDX>(M + c, ld, idx, x, k, y + c);
}

// y[0:n] += sum_jj x[jj] * M[idx[jj], 0:n]
template <typename T>
inline void matvec_idx(const T* M, int64_t ld, const int32_t* idx, const T* x, int64_t k, T* y,
                       int64_t n) {
  matvec_impl<T, true>(M, ld, idx, x, k, y, n);
}

// y[0:n] += sum_{j<k} x[j] * M[j, 0:n]
template <typename T>
inline void matvec(const T* M, int64_t ld, const T* x, int64_t k, T* y, int64_t n) {
  matvec_impl<T, false>(M, ld, nullptr, x, k, y, n);
}

#if CRNN_AVX512
// Nonzero entries of x[0:k] (times `scale`) as (idx, val) lists; returns their count.
// Writes up to kSlack entries past the count.
inline int64_t compact(const float* x, int64_t k, float scale, int32_t* idx, float* val) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t nnz = 0;
  for (int64_t j = 0; j < k; j += 16) {
    const int64_t rem = k - j;
    const __mmask16 lm = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(lm, x + j);
    const __mmask16 nz = _mm512_mask_cmp_ps_mask(lm, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm512_storeu_ps(val + nnz, _mm512_maskz_compress_ps(nz, _mm512_mul_ps(v, vs)));
    _mm512_storeu_si512(idx + nnz, _mm512_maskz_compress_epi32(nz, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j)))));
    nnz += __builtin_popcount(static_cast<unsigned>(nz));
  }
  return nnz;
}
inline int64_t compact(const double* x, int64_t k, double scale, int32_t* idx, double* val) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512d vs = _mm512_set1_pd(scale);
  int64_t nnz = 0;
  for (int64_t j = 0; j < k; j += 8) {
    const int64_t rem = k - j;
    const __mmask8 lm = rem >= 8 ? static_cast<__mmask8>(0xFF) : static_cast<__mmask8>((1u << rem) - 1u);
    const __m512d v = _mm512_maskz_loadu_pd(lm, x + j);
    const __mmask8 nz = _mm512_mask_cmp_pd_mask(lm, v, _mm512_setzero_pd(), _CMP_NEQ_UQ);
    _mm512_storeu_pd(val + nnz, _mm512_maskz_compress_pd(nz, _mm512_mul_pd(v, vs)));
    _mm512_storeu_si512(idx + nnz, _mm512_maskz_compress_epi32(static_cast<__mmask16>(nz), _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(j)))));
    nnz += __builtin_popcount(static_cast<unsigned>(nz));
  }
  return nnz;
}
#else
template <typename T>
inline int64_t compact(const T* __restrict x, int64_t k, T scale, int32_t* __restrict idx,
                       T* __restrict val) {
  int64_t nnz = 0;
  for (int64_t j = 0; j < k; ++j) {
    const T v = x[j];
    idx[nnz] = static_cast<int32_t>(j);
    val[nnz] = v * scale;
    nnz += (v != T(0));
  }
  return nnz;
}
#endif

// y[0:n] += scale * sum_j x[j] M[j, 0:n] for a vector x with many zeros (ReLU outputs):
// with AVX-512 only the nonzero rows are visited, otherwise all k rows.
template <typename T>
inline void sparse_matvec(const T* M, int64_t ld, const T* x, int64_t k, T scale, T* y, int64_t n,
                          int32_t* idx, T* val) {
#if CRNN_AVX512
  const int64_t nnz = compact(x, k, scale, idx, val);
  matvec_idx(M, ld, idx, val, nnz, y, n);
#else
  (void)idx;
  if (scale == T(1)) {
    matvec(M, ld, x, k, y, n);
  } else {
    for (int64_t j = 0; j < k; ++j) val[j] = scale * x[j];
    matvec(M, ld, val, k, y, n);
  }
#endif
}

#if CRNN_AVX512
// In-register transpose of a 16 x 16 float block: afterwards lane l of r[k] is what lane k
// of r[l] was.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    const __m512d a0 = _mm512_castps_pd(t[g]), a1 = _mm512_castps_pd(t[g + 1]);
    const __m512d a2 = _mm512_castps_pd(t[g + 2]), a3 = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int g = 0; g < 16; g += 8)
    for (int k = 0; k < 4; ++k) {
      t[g + k] = _mm512_shuffle_f32x4(r[g + k], r[g + 4 + k], 0x88);
      t[g + 4 + k] = _mm512_shuffle_f32x4(r[g + k], r[g + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}

inline __mmask16 first_lanes(int64_t n) {  // the mask of lanes 0 .. n-1 (n <= 16)
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}
#endif

// dst[j][i] = src[i][j] for i < n, j < n (src unpadded n x n, dst [>= padded(n)][ld]);
// rows/lanes of dst beyond n are zero-filled up to the next multiple of 16 (AVX-512).
inline void transpose_square(const float* src, int64_t n, float* dst, int64_t ld) {
#if CRNN_AVX512
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      const int64_t nr = std::min<int64_t>(16, n - i0);
      const __mmask16 cm = first_lanes(n - j0);
      __m512 r[16];
      for (int k = 0; k < 16; ++k)
        r[k] = k < nr ? _mm512_maskz_loadu_ps(cm, src + (i0 + k) * n + j0) : _mm512_setzero_ps();
      transpose16(r);
      for (int k = 0; k < 16; ++k) _mm512_storeu_ps(dst + (j0 + k) * ld + i0, r[k]);
    }
  }
#else
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < n; ++i) dst[j * ld + i] = src[i * n + j];
    for (int64_t i = n; i < ld; ++i) dst[j * ld + i] = 0.0f;
  }
#endif
}
inline void transpose_square(const double* src, int64_t n, double* dst, int64_t ld) {
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < n; ++i) dst[j * ld + i] = src[i * n + j];
    for (int64_t i = n; i < ld; ++i) dst[j * ld + i] = 0.0;
  }
}

// Register-blocked "rank-K rows" kernel, used for A_T and dA_0:
//   mat[i][0:H] = beta * init[i][0:H] + sum_{k<K} w[i][k] R[k][0:H]     (i < H)
// with w[i][k] = wT[i*ldw + k] * scale[k] (scale may be null), R rows padded (stride ldr).
// Four output rows at a time against up to four column vectors: 16 accumulators, each
// R load feeds four FMAs. `mat` is unpadded (stride H); wbuf needs 4*ldw elements and
// wT must have readable (any value) rows up to H rounded up to 4.
template <typename T, int NV>
inline void rank_rows_block(const T* __restrict R, int64_t ldr, const T* __restrict w, int64_t ldw,
                            int64_t K, const T* __restrict init, T beta, int64_t H, int64_t i0,
                            int64_t nr, int64_t c0, T* __restrict mat) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc[4][NV];
  for (int r = 0; r < 4; ++r)
    for (int n = 0; n < NV; ++n) {
      acc[r][n] = vzero<T>();
      const int64_t col = c0 + n * W, valid = H - col;
      if (init != nullptr && r < nr && valid > 0) {
        const T* src = init + (i0 + r) * H + col;
        acc[r][n] = (valid >= W ? vload(src) : load_tail(src, valid)) * beta;
      }
    }
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict rk = R + k * ldr + c0;
    vec<T> v[NV];
    for (int n = 0; n < NV; ++n) v[n] = vload(rk + n * W);
    for (int r = 0; r < 4; ++r) {
      const T wr = w[r * ldw + k];
      for (int n = 0; n < NV; ++n) acc[r][n] += v[n] * wr;
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int n = 0; n < NV; ++n) {
      const int64_t col = c0 + n * W, valid = H - col;
      T* dst = mat + (i0 + r) * H + col;
      if (valid >= W)
        vstore(dst, acc[r][n]);
      else if (valid > 0)
        store_tail(dst, acc[r][n], valid);
    }
}

template <typename T>
inline void rank_rows(const T* R, int64_t ldr, const T* wT, int64_t ldw, const T* scale, int64_t K,
                      const T* init, T beta, int64_t H, int64_t Hp, T* wbuf, T* mat) {
  constexpr int64_t W = vec_len<T>();
  for (int64_t i0 = 0; i0 < H; i0 += 4) {
    const int64_t nr = std::min<int64_t>(4, H - i0);
    for (int r = 0; r < 4; ++r) {  // this block's weights, scaled, in a small dense buffer
      T* dst = wbuf + r * ldw;
      const T* src = wT + (r < nr ? (i0 + r) * ldw : 0);
      for (int64_t k = 0; k < ldw; k += W) {
        vec<T> x = r < nr ? vload(src + k) : vzero<T>();
        if (scale != nullptr) x *= vload(scale + k);
        vstore(dst + k, x);
      }
    }
    int64_t c0 = 0;
    for (; c0 + 4 * W <= Hp; c0 += 4 * W) rank_rows_block<T, 4>(R, ldr, wbuf, ldw, K, init, beta, H, i0, nr, c0, mat);
    if (c0 + 2 * W <= Hp) {
      rank_rows_block<T, 2>(R, ldr, wbuf, ldw, K, init, beta, H, i0, nr, c0, mat);
      c0 += 2 * W;
    }
    if (c0 < Hp) rank_rows_block<T, 1>(R, ldr, wbuf, ldw, K, init, beta, H, i0, nr, c0, mat);
  }
}

// mat[i][0:Hp] += sum_{k<K} (c_k v_k[i]) v_k[0:Hp] over the rows i where v_k[i] != 0:
// sparse rank-1 updates of a padded, cache-resident H x Hp accumulator (used for A_T,
// whose factors h_tau are mostly zero under ReLU).
template <typename T, int NV>
inline void sparse_rank1_block(T* __restrict mat, int64_t ldm, const T* __restrict v, const int32_t* __restrict idx,
                               const T* __restrict val, int64_t nnz, int64_t c0) {
  constexpr int64_t W = vec_len<T>();
  vec<T> x[NV];
  for (int n = 0; n < NV; ++n) x[n] = vload(v + c0 + n * W);
  for (int64_t jj = 0; jj < nnz; ++jj) {
    T* __restrict row = mat + static_cast<int64_t>(idx[jj]) * ldm + c0;
    const T a = val[jj];
    for (int n = 0; n < NV; ++n) vstore(row + n * W, vload(row + n * W) + x[n] * a);
  }
}

// (mat's rows have stride ldm >= Hp; ldm = 0 means Hp.)
template <typename T>
inline void sparse_rank1_rows(T* mat, int64_t H, int64_t Hp, const T* V, int64_t ldv, const T* coef,
                              int64_t K, int32_t* idx, T* val, int64_t ldm = 0) {
  constexpr int64_t W = vec_len<T>();
  if (ldm == 0) ldm = Hp;
  for (int64_t k = 0; k < K; ++k) {
    if (coef[k] == T(0)) continue;
    const T* v = V + k * ldv;
    const int64_t nnz = compact(v, H, coef[k], idx, val);
    int64_t c0 = 0;
    for (; c0 + 4 * W <= Hp; c0 += 4 * W) sparse_rank1_block<T, 4>(mat, ldm, v, idx, val, nnz, c0);
    if (c0 + 2 * W <= Hp) {
      sparse_rank1_block<T, 2>(mat, ldm, v, idx, val, nnz, c0);
      c0 += 2 * W;
    }
    if (c0 < Hp) sparse_rank1_block<T, 1>(mat, ldm, v, idx, val, nnz, c0);
  }
}

// acc (H rows of stride Hp) += sum_{t<n} key_t rows_t^T: row j gets sum_t key_t[j] rows[t*Hp ..],
// with key_t[j] at keys[j * sj + t * st], skipping zero keys (ReLU zeros); each block of NV
// vectors of a row stays in registers over all n terms. The backward's dW^T = sum_t h_{t-1} dp_t^T.
template <typename T, int NV>
inline void outer_rows_block(T* __restrict r, const T* __restrict keys, int64_t st, const T* __restrict rows,
                             int64_t Hp, int64_t n, int64_t c0) {
  constexpr int64_t W = vec_len<T>();
  vec<T> a[NV];
  for (int v = 0; v < NV; ++v) a[v] = vload(r + c0 + v * W);
  for (int64_t t = 0; t < n; ++t) {
    const T k = keys[t * st];
    if (k == T(0)) continue;
    const T* __restrict d = rows + t * Hp + c0;
    for (int v = 0; v < NV; ++v) a[v] += vload(d + v * W) * k;
  }
  for (int v = 0; v < NV; ++v) vstore(r + c0 + v * W, a[v]);
}

template <typename T>
inline void add_outer_rows(T* __restrict acc, int64_t H, int64_t Hp, const T* __restrict keys, int64_t sj,
                           int64_t st, const T* __restrict rows, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  for (int64_t j = 0; j < H; ++j) {
    T* __restrict r = acc + j * Hp;
    const T* __restrict kj = keys + j * sj;
    int64_t c0 = 0;
    for (; c0 + 4 * W <= Hp; c0 += 4 * W) outer_rows_block<T, 4>(r, kj, st, rows, Hp, n, c0);
    for (; c0 < Hp; c0 += W) outer_rows_block<T, 1>(r, kj, st, rows, Hp, n, c0);
  }
}

// dst[0:n] = src[0:n] for a large output written once: non-temporal (streaming) stores
// with AVX-512, so the output does not evict the working set or cost a read-for-ownership.
// Call stream_fence() before the data is read by another thread.
template <typename T>
inline void stream_copy(T* __restrict dst, const T* __restrict src, int64_t n) {
#if CRNN_AVX512
  constexpr int64_t W = 64 / static_cast<int64_t>(sizeof(T));  // one zmm per streaming store
  int64_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 63u) != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + W <= n; i += W) {
    if (sizeof(T) == 4)
      _mm512_stream_ps(reinterpret_cast<float*>(dst + i), _mm512_loadu_ps(reinterpret_cast<const float*>(src + i)));
    else
      _mm512_stream_pd(reinterpret_cast<double*>(dst + i), _mm512_loadu_pd(reinterpret_cast<const double*>(src + i)));
  }
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, sizeof(T) * n);
#endif
}
inline void stream_fence() {
#if CRNN_AVX512
  _mm_sfence();
#endif
}

// Whether any of x[0:n] is nonzero (bitwise without the sign bit; NaN counts as nonzero).
template <typename T>
inline bool any_nonzero(const T* __restrict x, int64_t n) {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr int64_t BLK = 256;
  int64_t i = 0;
  for (; i < n; i += BLK) {
    const int64_t m = std::min(BLK, n - i);
    U acc = 0;
    for (int64_t l = 0; l < m; ++l) {
      U bits;
      std::memcpy(&bits, x + i + l, sizeof(U));
      acc |= static_cast<U>(bits << 1);
    }
    if (acc) return true;
  }
  return false;
}

template <typename T>
inline T sum(const T* __restrict a, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc = vzero<T>();
  for (int64_t i = 0; i < n; i += W) acc += vload(a + i);
  return hsum(acc);
}

// sum_i ((a_i - m) * mask_i)^2
template <typename T>
inline T centered_sq(const T* __restrict a, T m, const T* __restrict mask, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc = vzero<T>();
  for (int64_t i = 0; i < n; i += W) {
    const vec<T> d = (vload(a + i) - m) * vload(mask + i);
    acc += d * d;
  }
  return hsum(acc);
}

// Copy n values (unpadded source) into dst zero-padded to np.
template <typename T>
inline void load_padded(T* __restrict dst, const T* __restrict src, int64_t n, int64_t np) {
  constexpr int64_t W = vec_len<T>();
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(dst + i, vload(src + i));
  if (i < n) {
    vstore(dst + i, load_tail(src + i, n - i));
    i += W;
  }
  for (; i < np; i += W) vstore(dst + i, vzero<T>());
}

// Store the first n values of a padded buffer to an unpadded destination.
template <typename T>
inline void store_n(T* __restrict dst, const T* __restrict src, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(dst + i, vload(src + i));
  if (i < n) store_tail(dst + i, vload(src + i), n - i);
}

// dst[0:np] = src[0:np] between padded buffers.
template <typename T>
inline void copy_padded(T* __restrict dst, const T* __restrict src, int64_t np) {
  constexpr int64_t W = vec_len<T>();
  for (int64_t i = 0; i < np; i += W) vstore(dst + i, vload(src + i));
}

template <typename T>
inline void zero_padded(T* __restrict dst, int64_t np) {
  constexpr int64_t W = vec_len<T>();
  for (int64_t i = 0; i < np; i += W) vstore(dst + i, vzero<T>());
}

// dst[0:np] *= src[0:np]
template <typename T>
inline void mul_padded(T* __restrict dst, const T* __restrict src, int64_t np) {
  constexpr int64_t W = vec_len<T>();
  for (int64_t i = 0; i < np; i += W) vstore(dst + i, vload(dst + i) * vload(src + i));
}

// ---------------------------------------------------------------------------------------

template <typename T>
struct Shared {
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
inline const T* coef_row(const Shared<T>& sh, int64_t t) {
  return sh.decay + (sh.T_len - t);
}

// Example b's A_0: nullptr for A_0 = 0 (not materialised), the one shared A_0, or its own.
template <typename Params>
inline auto example_a0(const Params& io, int64_t b) -> decltype(io.A0) {
  if (io.A0 == nullptr) return nullptr;
  return io.A0_shared ? io.A0 : io.A0 + b * io.H * io.H;
}

// Row stride of the transposed A_0 (whole 16-lane blocks for the AVX-512 transpose).
inline int64_t a0t_ld(int64_t Hp) { return (Hp + 15) / 16 * 16; }

// Thread-local scratch for the forward; sized once per parallel chunk.
template <typename T>
struct FwdScratch {
  // hist: h_0..h_T as rows [T+1][Hp]; histT: the same transposed [H][Tp]
  // khist/khistT: the key history key_0..key_{T-1} for kPreliminary (else hist/histT are the keys)
  std::vector<T> hist, histT, khist, khistT, A0T, p, u, z, xh, sc, val, row, mat, wbuf, accA;
  std::vector<int32_t> idx;
  void init(const Shared<T>& sh) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len, Tp = sh.Tp;
    mat.assign(sh.H * sh.H + kSlack, T(0));
    wbuf.assign(4 * Tp, T(0));
    accA.assign(sh.H * Hp, T(0));
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign((sh.H + 4) * Tp, T(0));  // rows past H stay zero (rank_rows reads 4-row blocks)
    if (sh.a_update == kPreliminary) {
      khist.assign((Tn + 1) * Hp, T(0));
      khistT.assign((sh.H + 4) * Tp, T(0));
    }
    A0T.assign((a0t_ld(Hp) + 16) * a0t_ld(Hp), T(0));  // the AVX-512 transpose writes 16 x 16 blocks
    p.assign(Hp, T(0));
    u.assign(Hp, T(0));
    z.assign(Hp, T(0));
    xh.assign(Hp, T(0));
    sc.assign(Tp, T(0));
    val.assign(std::max(Hp, Tp) + kSlack, T(0));
    idx.assign(std::max(Hp, Tp) + kSlack, 0);
    row.assign(Hp, T(0));
  }
};

// xh <- LayerNorm(u) (normalised, before gain/bias), z <- f(gamma*xh + beta); returns rstd.
template <int ACT, typename T>
inline T layernorm_act(const Shared<T>& sh, const T* __restrict u, T* __restrict xh,
                       T* __restrict z) {
  constexpr int64_t W = vec_len<T>();
  const int64_t Hp = sh.Hp;
  const T invH = T(1) / static_cast<T>(sh.H);
  const T* __restrict m = sh.mask;
  const T mu = sum(u, Hp) * invH;  // padding of u is zero
  const T var = centered_sq(u, mu, m, Hp) * invH;
  const T r = T(1) / std::sqrt(var + sh.eps);
  const T* __restrict g = sh.gamma;
  const T* __restrict b = sh.beta;
  for (int64_t i = 0; i < Hp; i += W) {
    const vec<T> x = (vload(u + i) - mu) * r * vload(m + i);
    vstore(xh + i, x);
    vstore(z + i, vload(g + i) * x + vload(b + i));  // padding: gamma = beta = 0
  }
  for (int64_t i = 0; i < Hp; ++i) z[i] = act<ACT>(z[i]);  // f(0) = 0 in the padding
  return r;
}

// A_T = lam^T A_0 + sum_{tau<T} eta lam^(T-1-tau) h_tau h_tau^T, accumulated in a padded
// H x Hp buffer by sparse rank-1 updates (only the rows where h_tau is nonzero), then
// written out contiguously with streaming stores.
template <typename T>
inline void final_fast_weights(const Shared<T>& sh, const T* A0, bool a0nz, const T* keys, T* AT,
                               FwdScratch<T>& ws) {
  constexpr int64_t W = vec_len<T>();
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, Tp = sh.Tp;
  T* __restrict acc = ws.accA.data();
  T* __restrict mat = ws.mat.data();
  const T lT = sh.lam_pow[Tn];
  for (int64_t i = 0; i < H; ++i) {
    if (a0nz && lT != T(0)) {
      load_padded(acc + i * Hp, A0 + i * H, H, Hp);
      for (int64_t j = 0; j < Hp; j += W) vstore(acc + i * Hp + j, vload(acc + i * Hp + j) * lT);
    } else {
      zero_padded(acc + i * Hp, Hp);
    }
  }
  sparse_rank1_rows(acc, H, Hp, keys, Hp, coef_row(sh, Tn), Tn, ws.idx.data(), ws.val.data());
  for (int64_t i = 0; i < H; ++i) store_n(mat + i * H, acc + i * Hp, H);
  stream_copy(AT, mat, H * H);
}

// The forward of NE consecutive examples b0.., in lockstep (every phase of a step runs for
// each example in turn). The glue uses NE = 1: interleaving two examples (NE = 2) to
// overlap their dependency chains measured no faster on the 2-core Zen 4 machine this
// was tuned on (docs/benchmarks.md), but the structure is kept for other CPUs.
template <int ACT, typename T, int NE>
void forward_examples(const Shared<T>& sh, const FwdParams<T>& io, int64_t b0, FwdScratch<T>* ws) {
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S, Tp = sh.Tp;
  constexpr int64_t W = vec_len<T>();
  const bool save = io.zs != nullptr;
  const bool prelim = sh.a_update == kPreliminary;
  T* hist[NE];
  T* histT[NE];
  T* kh[NE];   // key rows key_0.. (= hist for kPrevious)
  T* khT[NE];  // keys transposed (= histT for kPrevious)
  T* p[NE];
  T* u[NE];
  T* z[NE];
  T* xh[NE];
  T* sc[NE];
  T* val[NE];
  int32_t* idx[NE];
  T* A0T[NE];
  const T* A0[NE];
  bool a0nz[NE];
  int64_t nz[NE];
  for (int e = 0; e < NE; ++e) {
    const int64_t b = b0 + e;
    hist[e] = ws[e].hist.data();
    histT[e] = ws[e].histT.data();
    kh[e] = prelim ? ws[e].khist.data() : hist[e];
    khT[e] = prelim ? ws[e].khistT.data() : histT[e];
    p[e] = ws[e].p.data();
    u[e] = ws[e].u.data();
    z[e] = ws[e].z.data();
    xh[e] = ws[e].xh.data();
    sc[e] = ws[e].sc.data();
    val[e] = ws[e].val.data();
    idx[e] = ws[e].idx.data();
    A0T[e] = ws[e].A0T.data();
    load_padded(hist[e], io.h0 + b * H, H, Hp);
    zero_padded(histT[e], H * Tp);
    for (int64_t i = 0; i < H; ++i) histT[e][i * Tp] = hist[e][i];
    if (prelim) zero_padded(khT[e], H * Tp);
    // A_0^T, padded, unless A_0 is zero for this example.
    A0[e] = example_a0(io, b);
    a0nz[e] = A0[e] != nullptr && any_nonzero(A0[e], H * H);
    if (a0nz[e]) transpose_square(A0[e], H, A0T[e], a0t_ld(Hp));
  }

  const int64_t K = sh.chunk;
  for (int64_t t = 1; t <= Tn; ++t) {
    // This step's chunk starts at t0; the history window is h_t0 .. h_{t-1}.
    const int64_t t0 = (t - 1) / K * K, wl = t - t0;
    const int64_t tv = (wl + W - 1) / W * W;  // score lanes in use (beyond the window: coef = 0)
    const T* coef = coef_row(sh, t) + t0;
    const T lt = sh.lam_pow[t - t0];
    // p = xp_t + W h_{t-1};  z_0 = f(p)
    for (int e = 0; e < NE; ++e) {
      load_padded(p[e], io.xp + ((b0 + e) * Tn + (t - 1)) * H, H, Hp);
      sparse_matvec(sh.WTp, Hp, hist[e] + (t - 1) * Hp, H, T(1), p[e], Hp, idx[e], val[e]);
      for (int64_t i = 0; i < Hp; ++i) z[e][i] = act<ACT>(p[e][i]);
      if (prelim) {  // k_t = z_0 joins the window before the inner loop: key_{t-1}
        copy_padded(kh[e] + (t - 1) * Hp, z[e], Hp);
        for (int64_t i = 0; i < H; ++i) khT[e][i * Tp + (t - 1)] = z[e][i];
      }
    }
    for (int64_t s = 0; s < S; ++s) {
      // scores sc[tau] = eta lam^(t-1-tau) <h_tau, z> via the transposed history, and
      // u = p + sum_tau sc[tau] h_tau + lam^t A_0 z  (z's nonzeros found once for both)
      for (int e = 0; e < NE; ++e) {
        if (save) store_n(io.zs + (((b0 + e) * Tn + (t - 1)) * S + s) * H, z[e], H);
        zero_padded(sc[e], tv);
        copy_padded(u[e], p[e], Hp);
#if CRNN_AVX512
        nz[e] = compact(z[e], H, T(1), idx[e], val[e]);
        matvec_idx(khT[e] + t0, Tp, idx[e], val[e], nz[e], sc[e], tv);
#else
        matvec(khT[e] + t0, Tp, z[e], H, sc[e], tv);
#endif
        mul_padded(sc[e], coef, tv);
      }
      for (int e = 0; e < NE; ++e) {
        matvec(kh[e] + t0 * Hp, Hp, sc[e], wl, u[e], Hp);
        if ((a0nz[e] || t0 > 0) && lt != T(0)) {  // A0T holds A_t0^T
#if CRNN_AVX512
          for (int64_t jj = 0; jj < nz[e]; ++jj) val[e][jj] *= lt;
          matvec_idx(A0T[e], a0t_ld(Hp), idx[e], val[e], nz[e], u[e], Hp);
#else
          sparse_matvec(A0T[e], a0t_ld(Hp), z[e], H, lt, u[e], Hp, idx[e], val[e]);
#endif
        }
      }
      for (int e = 0; e < NE; ++e) {
        const T r = layernorm_act<ACT>(sh, u[e], xh[e], z[e]);
        if (save) {
          const int64_t k = ((b0 + e) * Tn + (t - 1)) * S + s;
          store_n(io.xhat + k * H, xh[e], H);
          io.rstd[k] = r;
        }
      }
    }
    for (int e = 0; e < NE; ++e) {
      copy_padded(hist[e] + t * Hp, z[e], Hp);
      for (int64_t i = 0; i < H; ++i) histT[e][i * Tp + t] = z[e][i];
      store_n(io.out + ((b0 + e) * Tn + (t - 1)) * H, z[e], H);
    }
    if (t % K == 0 && t < Tn) {
      // The next chunk starts at t: A_t^T = lam^K A_t0^T + sum_{t0 <= tau < t} c_tau h_tau h_tau^T
      // (symmetric terms), in place in A0T.
      const T lK = sh.lam_pow[K];
      const int64_t ld = a0t_ld(Hp);
      for (int e = 0; e < NE; ++e) {
        for (int64_t i = 0; i < H; ++i) {
          T* r = A0T[e] + i * ld;
          if ((a0nz[e] || t0 > 0) && lK != T(0))
            for (int64_t j = 0; j < Hp; j += W) vstore(r + j, vload(r + j) * lK);
          else
            zero_padded(r, Hp);
        }
        sparse_rank1_rows(A0T[e], H, Hp, kh[e] + t0 * Hp, Hp, coef, K, idx[e], val[e], ld);
      }
    }
  }
  if (io.AT)  // nullptr: the caller does not want A_T
    for (int e = 0; e < NE; ++e) final_fast_weights(sh, A0[e], a0nz[e], kh[e], io.AT + (b0 + e) * H * H, ws[e]);
}

template <int ACT, typename T>
void forward_example(const Shared<T>& sh, const FwdParams<T>& io, int64_t b, FwdScratch<T>& ws) {
  forward_examples<ACT, T, 1>(sh, io, b, &ws);
}

// ---------------------------------------------------------------------------------------
// The forward with the batch in the vector lanes: a group of G = vec_len examples runs
// together, example e in lane e of every vector (rows [n][G]). W h, the attention scores,
// A_t z and the LayerNorm sums become vertical FMAs and adds over the G examples: no
// horizontal reductions, and H independent accumulations per step instead of one short
// dependent chain per example, which bounds the per-example kernel at the ART shape
// (docs/benchmarks.md). A per-example A_0 goes into the lanes too (lam^t A_0 z by vertical
// FMAs over [H][H][G]). ReLU zeros are not skipped (a zero in one lane is not in all).
// It saves the same zs / xhat / rstd / out as forward_examples, so the backward is shared.

// Whether a group's A_0 in lanes, [H][H][G], fits the 1 MiB the kernels keep in cache
// (float and double: H <= 128).
template <typename T>
inline bool lanes_a0_fits(int64_t H) {
  return H * H * vec_len<T>() * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 20);
}

// Whether forward_lanes runs a call: no A_T wanted, A_0 = 0 (nullptr), shared, or per
// example with lanes_a0_fits, at least one whole group, one chunk (T <= K), and a group's
// history within 1 MiB (it stays in cache).
template <typename T>
inline bool lanes_forward_applies(const Shared<T>& sh, const FwdParams<T>& io) {
  const int64_t G = vec_len<T>();
  return (io.A0 == nullptr || io.A0_shared || lanes_a0_fits<T>(sh.H)) && io.AT == nullptr && io.B >= G &&
         sh.T_len <= sh.chunk &&
         (sh.T_len + 1) * sh.H * G * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 20);
}

// A group's state, rows of G lanes: hist h_0..h_T [T+1][H][G], the keys of kPreliminary
// [T][H][G] (else hist), p, u, z, xh, zt [H][G], the scores [T][G], the inner step's 1/sigma
// per lane [G], and with a per-example A_0 the group's A_0 [H][H][G] (row i, column j at
// (i H + j) G); a shared A_0 is read where it is (io.A0).
template <typename T>
struct LanesScratch {
  std::vector<T> hist, khist, p, u, z, xh, zt, sc, rstd, A0;
  bool a0nz = false;          // this group's A_0 has a nonzero entry (else A_0 is not read)
  void init(const Shared<T>& sh, const FwdParams<T>& io) {
    const int64_t G = vec_len<T>(), H = sh.H, Tn = sh.T_len;
    hist.assign((Tn + 1) * H * G, T(0));
    if (sh.a_update == kPreliminary) khist.assign(Tn * H * G, T(0));
    for (auto* v : {&p, &u, &z, &xh, &zt}) v->assign(H * G, T(0));
    sc.assign(Tn * G, T(0));
    rstd.assign(G, T(0));
    if (io.A0 && !io.A0_shared) A0.assign(H * H * G, T(0));
  }
};

// rows[i][e] = src of example e [i] (example e at base + e * stride), i < n; lanes e >= ne are 0.
template <typename T>
inline void gather_lanes(T* __restrict rows, const T* __restrict base, int64_t stride, int64_t n, int64_t ne) {
  constexpr int64_t G = vec_len<T>();
  for (int64_t e = 0; e < G; ++e) {
    if (e < ne) {
      const T* __restrict src = base + e * stride;
      for (int64_t i = 0; i < n; ++i) rows[i * G + e] = src[i];
    } else {
      for (int64_t i = 0; i < n; ++i) rows[i * G + e] = T(0);
    }
  }
}

// dst of example e [i] = rows[i][e] (example e at base + e * stride), i < n, e < ne.
template <typename T>
inline void scatter_lanes(T* __restrict base, int64_t stride, const T* __restrict rows, int64_t n, int64_t ne) {
  constexpr int64_t G = vec_len<T>();
  for (int64_t e = 0; e < ne; ++e) {
    T* __restrict dst = base + e * stride;
    for (int64_t i = 0; i < n; ++i) dst[i] = rows[i * G + e];
  }
}

#if CRNN_AVX512 && CRNN_VEC_BYTES == 64
// float with 16 lanes: the same by 16 x 16 in-register transposes (transpose16).
inline void gather_lanes(float* __restrict rows, const float* __restrict base, int64_t stride, int64_t n, int64_t ne) {
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t nr = std::min<int64_t>(16, n - i0);
    const __mmask16 m = first_lanes(nr);
    __m512 r[16];
    for (int64_t e = 0; e < 16; ++e)
      r[e] = e < ne ? _mm512_maskz_loadu_ps(m, base + e * stride + i0) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t k = 0; k < nr; ++k) _mm512_storeu_ps(rows + (i0 + k) * 16, r[k]);
  }
}

inline void scatter_lanes(float* __restrict base, int64_t stride, const float* __restrict rows, int64_t n, int64_t ne) {
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t nr = std::min<int64_t>(16, n - i0);
    const __mmask16 m = first_lanes(nr);
    __m512 r[16];
    for (int64_t k = 0; k < 16; ++k) r[k] = k < nr ? _mm512_loadu_ps(rows + (i0 + k) * 16) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t e = 0; e < ne; ++e) _mm512_mask_storeu_ps(base + e * stride + i0, m, r[e]);
  }
}
#endif

// y[a] += sum_b M_ab x[b] for the rows [H][G]: one matrix for every lane, M_ab = M[a ra + b cb]
// (W h: ra = H, cb = 1; W^T dp: ra = 1, cb = H), or with kPerLane a matrix per lane, M_ab =
// the G lanes at M + (a ra + b cb) G (A_0 z, A_0^T du). Four output rows at a time, so each
// x[b] is loaded once per four FMAs.
template <typename T, bool kPerLane = false>
inline void lanes_matvec(const T* __restrict M, int64_t ra, int64_t cb, const T* __restrict x, T* __restrict y,
                         int64_t H) {
  constexpr int64_t G = vec_len<T>(), s = kPerLane ? G : 1;
  const auto entry = [](const T* p) {
    if constexpr (kPerLane)
      return vload(p);
    else
      return *p;
  };
  int64_t a = 0;
  for (; a + 4 <= H; a += 4) {
    vec<T> a0 = vload(y + a * G), a1 = vload(y + (a + 1) * G), a2 = vload(y + (a + 2) * G),
           a3 = vload(y + (a + 3) * G);
    for (int64_t b = 0; b < H; ++b) {
      const vec<T> xb = vload(x + b * G);
      const T* __restrict mb = M + (a * ra + b * cb) * s;
      a0 += xb * entry(mb);
      a1 += xb * entry(mb + ra * s);
      a2 += xb * entry(mb + 2 * ra * s);
      a3 += xb * entry(mb + 3 * ra * s);
    }
    vstore(y + a * G, a0);
    vstore(y + (a + 1) * G, a1);
    vstore(y + (a + 2) * G, a2);
    vstore(y + (a + 3) * G, a3);
  }
  for (; a < H; ++a) {
    vec<T> acc = vload(y + a * G);
    for (int64_t b = 0; b < H; ++b) acc += vload(x + b * G) * entry(M + (a * ra + b * cb) * s);
    vstore(y + a * G, acc);
  }
}

// A_0 of the examples [b0, b0 + ne) into lanes (see LanesScratch); returns whether any entry
// is nonzero.
template <typename T>
inline bool gather_a0_lanes(T* __restrict A0L, const T* __restrict A0, int64_t b0, int64_t ne, int64_t H) {
  constexpr int64_t G = vec_len<T>();
  bool nonzero = false;
  for (int64_t e = 0; e < ne && !nonzero; ++e) nonzero = any_nonzero(A0 + (b0 + e) * H * H, H * H);
  if (!nonzero) return false;
  for (int64_t i = 0; i < H; ++i) gather_lanes(A0L + i * H * G, A0 + b0 * H * H + i * H, H * H, H, ne);
  return true;
}

// The group's A_0 before a forward or backward: a per-example one into A0L (gather_a0_lanes);
// returns whether it has a nonzero entry (a shared one is read where it is).
template <typename Params, typename T>
inline bool lanes_a0(const Params& io, T* A0L, int64_t b0, int64_t ne) {
  if (io.A0 == nullptr) return false;
  return io.A0_shared ? any_nonzero(io.A0, io.H * io.H) : gather_a0_lanes(A0L, io.A0, b0, ne, io.H);
}

// y += A_0 x (transposed: A_0^T x) for the group, rows [H][G]: the shared A_0 as one matrix
// for every lane, else the per-example ones gathered in A0L.
template <typename Params, typename T>
inline void lanes_a0_matvec(const Params& io, const T* A0L, bool transposed, const T* x, T* y) {
  const int64_t H = io.H, ra = transposed ? 1 : H, cb = transposed ? H : 1;
  if (io.A0_shared)
    lanes_matvec(io.A0, ra, cb, x, y, H);
  else
    lanes_matvec<T, true>(A0L, ra, cb, x, y, H);
}

// out[tau] = coef[tau] (key_tau . v) for tau < t, over rows [H][G] (key_tau at keys + tau * ks):
// four partial sums each.
template <typename T>
inline void lanes_scores(const T* __restrict keys, int64_t ks, const T* __restrict v, const T* coef, int64_t t,
                         int64_t H, T* __restrict out) {
  constexpr int64_t G = vec_len<T>();
  for (int64_t tau = 0; tau < t; ++tau) {
    const T* __restrict k = keys + tau * ks;
    vec<T> s0 = vzero<T>(), s1 = vzero<T>(), s2 = vzero<T>(), s3 = vzero<T>();
    int64_t j = 0;
    for (; j + 4 <= H; j += 4) {
      s0 += vload(k + j * G) * vload(v + j * G);
      s1 += vload(k + (j + 1) * G) * vload(v + (j + 1) * G);
      s2 += vload(k + (j + 2) * G) * vload(v + (j + 2) * G);
      s3 += vload(k + (j + 3) * G) * vload(v + (j + 3) * G);
    }
    for (; j < H; ++j) s0 += vload(k + j * G) * vload(v + j * G);
    vstore(out + tau * G, ((s0 + s1) + (s2 + s3)) * coef[tau]);
  }
}

// One inner step for the group: u = p + sum_{tau < t} c_tau (key_tau . z) key_tau, then
// z = f(LayerNorm(u)); returns with xh = the normalised u and rstd = 1/sigma per lane.
template <int ACT, typename T>
inline void lanes_inner_step(const Shared<T>& sh, const FwdParams<T>& io, const T* __restrict keys, int64_t t,
                             LanesScratch<T>& ws) {
  constexpr int64_t G = vec_len<T>();
  const int64_t H = sh.H;
  T* __restrict z = ws.z.data();
  T* __restrict u = ws.u.data();
  T* __restrict xh = ws.xh.data();
  T* __restrict sc = ws.sc.data();
  lanes_scores(keys, H * G, z, coef_row(sh, t), t, H, sc);  // sc[tau] = c_tau (key_tau . z)
  const T* base = ws.p.data();
  if (ws.a0nz && sh.lam_pow[t] != T(0)) {  // u = p + lam^t A_0 z (+ the sum below)
    const T lt = sh.lam_pow[t];
    T* __restrict zt = ws.zt.data();
    for (int64_t k = 0; k < H * G; ++k) zt[k] = z[k] * lt;
    std::copy_n(ws.p.data(), H * G, u);
    lanes_a0_matvec(io, ws.A0.data(), false, zt, u);
    base = u;
  }
  vec<T> m = vzero<T>();
  for (int64_t i = 0; i < H; ++i) {  // u = p + sum_tau sc[tau] key_tau
    vec<T> a = vload(base + i * G);
    for (int64_t tau = 0; tau < t; ++tau) a += vload(sc + tau * G) * vload(keys + (tau * H + i) * G);
    vstore(u + i * G, a);
    m += a;
  }
  const T invH = T(1) / static_cast<T>(H);
  m = m * invH;
  vec<T> v = vzero<T>();
  for (int64_t i = 0; i < H; ++i) {
    const vec<T> d = vload(u + i * G) - m;
    v += d * d;
  }
  T* __restrict r = ws.rstd.data();
  for (int64_t e = 0; e < G; ++e) r[e] = T(1) / std::sqrt(v[e] * invH + sh.eps);
  const vec<T> rv = vload(r);
  for (int64_t i = 0; i < H; ++i) {
    const vec<T> x = (vload(u + i * G) - m) * rv;
    vstore(xh + i * G, x);
    vstore(z + i * G, x * sh.gamma[i] + sh.beta[i]);
  }
  for (int64_t k = 0; k < H * G; ++k) z[k] = act<ACT>(z[k]);
}

// The forward of the group of examples [b0, b0 + ne), ne <= G (lanes_forward_applies holds).
template <int ACT, typename T>
void forward_lanes(const Shared<T>& sh, const FwdParams<T>& io, int64_t b0, int64_t ne, LanesScratch<T>& ws) {
  constexpr int64_t G = vec_len<T>();
  const int64_t Tn = sh.T_len, H = sh.H, S = sh.S;
  const bool save = io.zs != nullptr;
  const bool prelim = sh.a_update == kPreliminary;
  T* __restrict hist = ws.hist.data();
  T* __restrict p = ws.p.data();
  T* __restrict z = ws.z.data();
  const T* keys = prelim ? ws.khist.data() : hist;
  ws.a0nz = lanes_a0(io, ws.A0.data(), b0, ne);
  gather_lanes(hist, io.h0 + b0 * H, H, H, ne);
  for (int64_t t = 1; t <= Tn; ++t) {
    gather_lanes(p, io.xp + (b0 * Tn + t - 1) * H, Tn * H, H, ne);  // p = xp_t + W h_{t-1}
    lanes_matvec(io.W, H, 1, hist + (t - 1) * H * G, p, H);
    for (int64_t k = 0; k < H * G; ++k) z[k] = act<ACT>(p[k]);
    if (prelim) std::copy_n(z, H * G, ws.khist.data() + (t - 1) * H * G);  // key_{t-1} = z_0 of step t
    for (int64_t s = 0; s < S; ++s) {
      const int64_t k0 = (b0 * Tn + t - 1) * S + s;  // example b0's (t, s) entry
      if (save) scatter_lanes(io.zs + k0 * H, Tn * S * H, z, H, ne);
      lanes_inner_step<ACT>(sh, io, keys, t, ws);
      if (save) {
        scatter_lanes(io.xhat + k0 * H, Tn * S * H, ws.xh.data(), H, ne);
        scatter_lanes(io.rstd + k0, Tn * S, ws.rstd.data(), 1, ne);
      }
    }
    std::copy_n(z, H * G, hist + t * H * G);
    scatter_lanes(io.out + (b0 * Tn + t - 1) * H, Tn * H, z, H, ne);
  }
}

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
inline bool sums_dA0(const BwdParams<T>& io) {
  return io.A0_shared && io.dA0 != nullptr;
}

// Example b's dA_0 (mat, H x H): into the thread's batch sum for a shared A_0, else out.
template <typename T>
inline void emit_dA0(const BwdParams<T>& io, int64_t b, const T* mat, BwdSums<T>& sum) {
  const int64_t H = io.H;
  if (io.A0_shared) {
    for (int64_t k = 0; k < H * H; ++k) sum.dA0[k] += mat[k];
  } else {
    stream_copy(io.dA0 + b * H * H, mat, H * H);
  }
}

template <typename T>
struct BwdScratch {
  // khist/khistT/dK: keys and their gradient for kPreliminary (else hist/histT/dH serve)
  std::vector<T> hist, histT, khist, khistT, dK, dH, Z, X, A0p, Bs, Sym, GT, dz, dzn, dp, g, du, a, bb,
      val, row, dgam, dbet, mat, mat2, wbuf;
  std::vector<int32_t> idx;
  int64_t Kp = 0;
  bool sums = false;  // accumulate the batch sums below (RangeSums); else only the per-example outputs
  BwdSums<T> sum;
  std::vector<T> DP;  // with sums: dp_1 .. dp_T of the example, padded
  void init(const Shared<T>& sh, bool with_sums = false, bool with_dA0_sum = false) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len, S = sh.S, H = sh.H, Tp = sh.Tp;
    sums = with_sums;
    if (sums) {
      DP.assign(Tn * Hp, T(0));
      sum.zero(H, Hp, with_dA0_sum);
    }
    mat.assign(H * H + kSlack, T(0));
    const int64_t chunks = (Tn + sh.chunk - 1) / sh.chunk;
    if (chunks > 1) {
      mat2.assign(H * H + kSlack, T(0));
      Bs.assign((chunks - 1) * H * Hp, T(0));  // A_t0 of the chunks after the first: O(T H) for K >= H
    }
    Kp = padded<T>(Tn * S);
    wbuf.assign(4 * Kp, T(0));
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign((H + 1) * Tp + vec_len<T>(), T(0));  // window reads run up to W - 1 past a row
    if (sh.a_update == kPreliminary) {
      khist.assign((Tn + 1) * Hp, T(0));
      khistT.assign((H + 1) * Tp + vec_len<T>(), T(0));
      dK.assign((Tn + 1) * Hp, T(0));
    }
    dH.assign((Tn + 1) * Hp, T(0));
    Z.assign(Tn * S * Hp, T(0));
    X.assign(Tn * S * Hp, T(0));
    A0p.assign(H * Hp, T(0));
    Sym.assign(H * Hp, T(0));
    GT.assign((H + 1) * Kp, T(0));  // rank_rows reads whole rows from a column offset
    dz.assign(Hp, T(0));
    dzn.assign(Hp, T(0));
    dp.assign(Hp, T(0));
    g.assign(Hp, T(0));
    du.assign(Hp, T(0));
    a.assign(Tp, T(0));
    bb.assign(Tp, T(0));
    const int64_t m = std::max(std::max(Hp, Tp), Kp) + kSlack;
    val.assign(m, T(0));
    idx.assign(m, 0);
    row.assign(Hp, T(0));
    dgam.assign(Hp, T(0));
    dbet.assign(Hp, T(0));
  }
};

template <int ACT, typename T>
void backward_example(const Shared<T>& sh, const BwdParams<T>& io, int64_t b, BwdScratch<T>& ws) {
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S, Tp = sh.Tp, Kp = ws.Kp;
  constexpr int64_t W = vec_len<T>();
  const T invH = T(1) / static_cast<T>(H);
  T* hist = ws.hist.data();  // no __restrict: kh below may alias it
  T* histT = ws.histT.data();
  T* dH = ws.dH.data();  // no __restrict: dK below may alias it
  T* __restrict Z = ws.Z.data();
  T* __restrict X = ws.X.data();
  T* __restrict GT = ws.GT.data();
  T* __restrict dz = ws.dz.data();
  T* __restrict dzn = ws.dzn.data();
  T* __restrict dp = ws.dp.data();
  T* __restrict g = ws.g.data();
  T* __restrict du = ws.du.data();
  T* __restrict a = ws.a.data();
  T* __restrict bb = ws.bb.data();
  T* __restrict val = ws.val.data();
  T* __restrict row = ws.row.data();
  T* __restrict dgam = ws.dgam.data();
  T* __restrict dbet = ws.dbet.data();
  int32_t* __restrict idx = ws.idx.data();
  const T* __restrict gamma = sh.gamma;
  const T* __restrict mask = sh.mask;

  // History h_0..h_T (rows and transposed), saved z's and xhat's, padded.
  load_padded(hist, io.h0 + b * H, H, Hp);
  for (int64_t t = 1; t <= Tn; ++t)
    load_padded(hist + t * Hp, io.out + (b * Tn + t - 1) * H, H, Hp);
  zero_padded(histT, H * Tp);
  for (int64_t t = 0; t <= Tn; ++t)
    for (int64_t i = 0; i < H; ++i) histT[i * Tp + t] = hist[t * Hp + i];
  for (int64_t k = 0; k < Tn * S; ++k) {
    load_padded(Z + k * Hp, io.zs + (b * Tn * S + k) * H, H, Hp);
    load_padded(X + k * Hp, io.xhat + (b * Tn * S + k) * H, H, Hp);
  }
  // Keys key_0..key_{T-1} and their gradient dK (aliases of the h history and dH for kPrevious;
  // for kPreliminary key_j = z_0 of step j+1, saved by the forward).
  const bool prelim = sh.a_update == kPreliminary;
  T* kh = prelim ? ws.khist.data() : hist;
  T* khT = prelim ? ws.khistT.data() : histT;
  T* dK = prelim ? ws.dK.data() : dH;
  if (prelim) {
    zero_padded(khT, H * Tp);
    for (int64_t j = 0; j < Tn; ++j) {
      copy_padded(kh + j * Hp, Z + (j * S) * Hp, Hp);
      for (int64_t i = 0; i < H; ++i) khT[i * Tp + j] = kh[j * Hp + i];
    }
    zero_padded(dK, (Tn + 1) * Hp);
  }
  // dH[t] = dL/dh_t, accumulated; starts with the output gradients.
  zero_padded(dH, Hp);
  for (int64_t t = 1; t <= Tn; ++t) {
    if (io.gout)
      load_padded(dH + t * Hp, io.gout + (b * Tn + t - 1) * H, H, Hp);
    else
      zero_padded(dH + t * Hp, Hp);
  }
  zero_padded(dgam, Hp);
  zero_padded(dbet, Hp);

  const T* A0 = example_a0(io, b);
  const bool a0nz = A0 != nullptr && any_nonzero(A0, H * H);
  T* __restrict A0p = ws.A0p.data();
  if (a0nz)
    for (int64_t i = 0; i < H; ++i) load_padded(A0p + i * Hp, A0 + i * H, H, Hp);

  // Gradient flowing into A_T: dh_tau += eta lam^(T-1-tau) (gA + gA^T) h_tau.
  const T* gA = io.gAT ? io.gAT + b * H * H : nullptr;
  const bool ganz = gA != nullptr && any_nonzero(gA, H * H);
  if (ganz) {
    T* __restrict Sym = ws.Sym.data();
    for (int64_t i = 0; i < H; ++i) {
      T* r = Sym + i * Hp;
      for (int64_t j = 0; j < H; ++j) r[j] = gA[i * H + j] + gA[j * H + i];
      for (int64_t j = H; j < Hp; ++j) r[j] = T(0);
    }
    const T* coefT = coef_row(sh, Tn);
    for (int64_t tau = 0; tau < Tn; ++tau)
      sparse_matvec(Sym, Hp, kh + tau * Hp, H, coefT[tau], dK + tau * Hp, Hp, idx, val);
  }

  // Chunks (see chunk_length): A_t0 for every chunk start t0 = c K, c >= 1, rebuilt from
  // A_0 and the history as the forward built it.
  const int64_t K = sh.chunk, nC = (Tn + K - 1) / K;
  T* __restrict Bs = ws.Bs.data();
  for (int64_t c = 1; c < nC; ++c) {
    T* Bc = Bs + (c - 1) * H * Hp;
    const T* Bprev = c == 1 ? (a0nz ? A0p : nullptr) : Bs + (c - 2) * H * Hp;
    const T lK = sh.lam_pow[K];
    for (int64_t i = 0; i < H; ++i) {
      if (Bprev != nullptr && lK != T(0))
        for (int64_t j = 0; j < Hp; j += W) vstore(Bc + i * Hp + j, vload(Bprev + i * Hp + j) * lK);
      else
        zero_padded(Bc + i * Hp, Hp);
    }
    sparse_rank1_rows(Bc, H, Hp, kh + (c - 1) * K * Hp, Hp, coef_row(sh, c * K) + (c - 1) * K, K, idx, val);
  }
  const bool need_G = io.dA0 != nullptr || nC > 1;
  T* __restrict Dnext = nC > 1 ? ws.mat2.data() : nullptr;  // d loss / d A_t0 of the chunk after this one

  for (int64_t t = Tn; t >= 1; --t) {
    const int64_t c = (t - 1) / K, t0 = c * K, wl = t - t0;  // window h_t0 .. h_{t-1}
    const T lt = sh.lam_pow[t - t0];
    const int64_t tv = (wl + W - 1) / W * W;
    const T* coef = coef_row(sh, t) + t0;
    const T* Bc = c == 0 ? (a0nz ? A0p : nullptr) : Bs + (c - 1) * H * Hp;
    copy_padded(dz, dH + t * Hp, Hp);
    zero_padded(dp, Hp);
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = (t - 1) * S + s;
      const T* __restrict zn = (s + 1 == S) ? hist + t * Hp : Z + (k + 1) * Hp;
      const T* __restrict xh = X + k * Hp;
      const T* __restrict zc = Z + k * Hp;
      const T r = io.rstd[base + s];
      // LayerNorm + activation backward
      vec<T> m1v = vzero<T>(), m2v = vzero<T>();
      for (int64_t i = 0; i < Hp; i += W) {
        const vec<T> d = dact_mul<ACT, T>(vload(zn + i), vload(dz + i));
        const vec<T> x = vload(xh + i);
        vstore(dgam + i, vload(dgam + i) + d * x);
        vstore(dbet + i, vload(dbet + i) + d);
        const vec<T> gv = vload(gamma + i) * d;
        vstore(g + i, gv);
        m1v += gv;
        m2v += gv * x;
      }
      const T m1 = hsum(m1v) * invH;
      const T m2 = hsum(m2v) * invH;
      for (int64_t i = 0; i < Hp; i += W) {
        const vec<T> v = (vload(g + i) - m1 - vload(xh + i) * m2) * r * vload(mask + i);
        vstore(du + i, v);
        vstore(dp + i, vload(dp + i) + v);
      }
      // a_tau = c_tau <h_tau, du>, b_tau = c_tau <h_tau, z_s>  (tau < t; coef = 0 beyond)
      // (a and bb are indexed from t0: a[j] is a_{t0+j})
      zero_padded(a, tv);
      zero_padded(bb, tv);
      matvec(khT + t0, Tp, du, H, a, tv);
      matvec(khT + t0, Tp, zc, H, bb, tv);
      mul_padded(a, coef, tv);
      mul_padded(bb, coef, tv);
      // dz_s = A_t^T du = sum_tau a_tau h_tau + lam^(t-t0) A_t0^T du
      zero_padded(dzn, Hp);
      matvec(kh + t0 * Hp, Hp, a, wl, dzn, Hp);
      if (Bc != nullptr && lt != T(0)) {
        for (int64_t i = 0; i < Hp; i += W) vstore(val + i, vload(du + i) * lt);
        matvec(Bc, Hp, val, H, dzn, Hp);
      }
      // dh_tau += a_tau z_s + b_tau du   (t0 <= tau < t)
      for (int64_t j = 0; j < wl; ++j) {
        T* __restrict d = dK + (t0 + j) * Hp;
        const T at = a[j], bt = bb[j];
        for (int64_t i = 0; i < Hp; i += W)
          vstore(d + i, vload(d + i) + vload(zc + i) * at + vload(du + i) * bt);
      }
      if (need_G)  // d loss / d A_t0 += lam^(t-t0) du z_s^T (formed per chunk below)
        for (int64_t i = 0; i < H; ++i) GT[i * Kp + k] = lt * du[i];
      copy_padded(dz, dzn, Hp);
    }
    // z_0 = f(p_t); for kPreliminary z_0 is also the key k_t = key_{t-1}, whose gradient
    // dK[t-1] is complete here (only steps >= t and later chunks use it).
    const T* __restrict z0 = Z + ((t - 1) * S) * Hp;
    if (prelim)
      for (int64_t i = 0; i < Hp; i += W) vstore(dz + i, vload(dz + i) + vload(dK + (t - 1) * Hp + i));
    for (int64_t i = 0; i < Hp; i += W)
      vstore(dp + i, vload(dp + i) + dact_mul<ACT, T>(vload(z0 + i), vload(dz + i)));
    store_n(io.dxp + (b * Tn + (t - 1)) * H, dp, H);
    if (ws.sums) copy_padded(ws.DP.data() + (t - 1) * Hp, dp, Hp);  // for dW below
    // p_t = W h_{t-1} + xp_t  ->  dh_{t-1} += W^T dp
    matvec(sh.Wp, Hp, dp, H, dH + (t - 1) * Hp, Hp);
    if (nC > 1 && t - 1 == t0) {
      // The chunk's first step is done: D = d loss / d A_t0 = sum over its steps of
      // lam^(t-t0) du z^T, plus lam^K D of the next chunk (A_{t0+K} = lam^K A_t0 + ...).
      const int64_t k0 = t0 * S, nk = (std::min(t0 + K, Tn) - t0) * S;
      T* __restrict D = c % 2 == 0 ? ws.mat.data() : ws.mat2.data();
      const T* Dn = c + 1 < nC ? Dnext : nullptr;
      rank_rows(Z + k0 * Hp, Hp, GT + k0, Kp, static_cast<const T*>(nullptr), nk, Dn, sh.lam_pow[K], H, Hp,
                ws.wbuf.data(), D);
      if (c > 0) {
        // A_t0 = lam^K A_{t0-K} + sum_{t0-K <= tau < t0} c_tau h_tau h_tau^T:
        // dh_tau += c_tau (D + D^T) h_tau.
        T* __restrict Sym = ws.Sym.data();
        for (int64_t i = 0; i < H; ++i) {
          T* r = Sym + i * Hp;
          for (int64_t j = 0; j < H; ++j) r[j] = D[i * H + j] + D[j * H + i];
          for (int64_t j = H; j < Hp; ++j) r[j] = T(0);
        }
        const T* cf = coef_row(sh, t0);
        for (int64_t tau = t0 - K; tau < t0; ++tau)
          sparse_matvec(Sym, Hp, kh + tau * Hp, H, cf[tau], dK + tau * Hp, Hp, idx, val);
      }
      Dnext = D;
    }
  }
  store_n(io.dh0 + b * H, dH, H);
  // dW^T += sum_t h_{t-1} dp_t^T (histT: h_0 .. h_T by unit, so h_{t-1} of steps 1..T are its first T)
  if (ws.sums) add_outer_rows(ws.sum.dWT.data(), H, Hp, histT, Tp, 1, ws.DP.data(), Tn);
  if (io.dgamma_part) store_n(io.dgamma_part + b * H, dgam, H);
  if (io.dbeta_part) store_n(io.dbeta_part + b * H, dbet, H);
  if (ws.sums)
    for (int64_t i = 0; i < Hp; i += W) {
      vstore(ws.sum.dgamma.data() + i, vload(ws.sum.dgamma.data() + i) + vload(dgam + i));
      vstore(ws.sum.dbeta.data() + i, vload(ws.sum.dbeta.data() + i) + vload(dbet + i));
    }

  // dA_0 = lam^T gA + sum_{t,s} lam^t du_{t,s} z_{t,s}^T  (GT holds lam^t du transposed)
  if (io.dA0 && nC == 1) {
    T* __restrict mat = ws.mat.data();
    rank_rows(Z, Hp, GT, Kp, static_cast<const T*>(nullptr), Tn * S, ganz ? gA : nullptr, sh.lam_pow[Tn], H,
              Hp, ws.wbuf.data(), mat);
    emit_dA0(io, b, mat, ws.sum);
  } else if (io.dA0) {  // chunks: dA_0 = D of the first chunk + lam^T gA
    T* __restrict mat = ws.mat.data();  // chunk 0's D (c % 2 == 0)
    if (ganz) {
      const T lT = sh.lam_pow[Tn];
      for (int64_t i = 0; i < H * H; ++i) mat[i] += lT * gA[i];
    }
    emit_dA0(io, b, mat, ws.sum);
  }
}

// ---------------------------------------------------------------------------------------
// The backward with the batch in the vector lanes, the counterpart of forward_lanes: the
// equations of backward_example (there) over G examples at once, for a call without a
// gradient of A_T, in one chunk (the ART training step, with any initial state). dW is then
// added per example (sparse in h, add_outer_rows) from the dxp just written; dA_0 =
// sum_{t,s} lam^t du_{t,s} z_{t,s}^T is formed per lane at the end from the saved lam^t du.

template <typename T>
inline bool lanes_backward_applies(const Shared<T>& sh, const BwdParams<T>& io) {
  const int64_t G = vec_len<T>();
  const int64_t rows = 2 * sh.T_len * sh.S + 3 * sh.T_len + 2 + (io.dA0 ? sh.T_len * sh.S : 0);
  const bool a0_per_lane = (io.A0 && !io.A0_shared) || sums_dA0(io);  // an [H][H][G] buffer: A_0, or dA_0's sums
  return (!a0_per_lane || lanes_a0_fits<T>(sh.H)) && io.gAT == nullptr &&
         io.B >= G && sh.T_len <= sh.chunk &&
         rows * sh.H * G * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 21);
}

// A group's backward state, rows of G lanes (see LanesScratch): with dA_0, Gs holds lam^t du
// of every inner step [T S][H][G]; with an A_0, A0 as in LanesScratch; and one example's
// padded rows h_0..h_{T-1} and dp_1..dp_T for its dW.
template <typename T>
struct LanesBwdScratch {
  std::vector<T> hist, Z, X, R, dH, dK, dz, dzn, dp, g, du, gdu, a, bb, dgam, dbet, hrow, DP, Gs, A0;
  bool a0nz = false;  // this group's A_0 has a nonzero entry (else A0 is not read)
  void init(const Shared<T>& sh, const BwdParams<T>& io) {
    const int64_t G = vec_len<T>(), H = sh.H, Tn = sh.T_len, S = sh.S, HG = H * G;
    hist.assign((Tn + 1) * HG, T(0));
    Z.assign(Tn * S * HG, T(0));
    X.assign(Tn * S * HG, T(0));
    R.assign(Tn * S * G, T(0));
    dH.assign((Tn + 1) * HG, T(0));
    if (sh.a_update == kPreliminary) dK.assign(Tn * HG, T(0));
    for (auto* v : {&dz, &dzn, &dp, &g, &du, &gdu, &dgam, &dbet}) v->assign(HG, T(0));
    a.assign(Tn * G, T(0));
    bb.assign(Tn * G, T(0));
    hrow.assign(Tn * sh.Hp, T(0));
    DP.assign(Tn * sh.Hp, T(0));
    if (io.dA0) Gs.assign(Tn * S * HG, T(0));
    if (io.A0 && !io.A0_shared) A0.assign(H * HG, T(0));
  }
};

// dA_0 of the group [b0, b0 + ne): entry (i, j) is sum_k Gs_k[i] Z_k[j] (k over the T S inner
// steps) per lane, four columns at a time. Per example: formed in row and written out. For a
// shared A_0 (acc, [H][H][G]): added to the thread's per-lane sums, whose lanes
// finish_dA0_lanes adds up once per thread (lanes beyond ne hold zeros: Gs is 0 there).
template <typename T>
inline void lanes_write_dA0(const T* __restrict Gs, const T* __restrict Z, int64_t nk, int64_t H, T* __restrict row,
                            T* __restrict dA0, int64_t b0, int64_t ne, T* __restrict acc) {
  constexpr int64_t G = vec_len<T>();
  const int64_t HG = H * G;
  for (int64_t i = 0; i < H; ++i) {
    T* __restrict dst = acc ? acc + i * HG : row;  // row i, [H][G]
    int64_t j = 0;
    for (; j + 4 <= H; j += 4) {
      vec<T> s0 = vzero<T>(), s1 = vzero<T>(), s2 = vzero<T>(), s3 = vzero<T>();
      if (acc) {
        s0 = vload(dst + j * G);
        s1 = vload(dst + (j + 1) * G);
        s2 = vload(dst + (j + 2) * G);
        s3 = vload(dst + (j + 3) * G);
      }
      for (int64_t k = 0; k < nk; ++k) {
        const vec<T> gi = vload(Gs + k * HG + i * G);
        const T* __restrict zk = Z + k * HG + j * G;
        s0 += gi * vload(zk);
        s1 += gi * vload(zk + G);
        s2 += gi * vload(zk + 2 * G);
        s3 += gi * vload(zk + 3 * G);
      }
      vstore(dst + j * G, s0);
      vstore(dst + (j + 1) * G, s1);
      vstore(dst + (j + 2) * G, s2);
      vstore(dst + (j + 3) * G, s3);
    }
    for (; j < H; ++j) {
      vec<T> s0 = acc ? vload(dst + j * G) : vzero<T>();
      for (int64_t k = 0; k < nk; ++k) s0 += vload(Gs + k * HG + i * G) * vload(Z + k * HG + j * G);
      vstore(dst + j * G, s0);
    }
    if (!acc) scatter_lanes(dA0 + b0 * H * H + i * H, H * H, row, H, ne);
  }
}

// The thread's shared-A_0 gradient: sum.dA0 = the lanes of sum.dA0L added up.
template <typename T>
inline void finish_dA0_lanes(BwdSums<T>& sum, int64_t H) {
  constexpr int64_t G = vec_len<T>();
  for (int64_t k = 0; k < H * H; ++k) {
    T acc = T(0);
    for (int64_t e = 0; e < G; ++e) acc += sum.dA0L[k * G + e];
    sum.dA0[k] = acc;
  }
}

// The backward of the group [b0, b0 + ne) (lanes_backward_applies holds); with sums, its
// share of dW, dgamma and dbeta is added there.
template <int ACT, typename T>
void backward_lanes(const Shared<T>& sh, const BwdParams<T>& io, int64_t b0, int64_t ne, LanesBwdScratch<T>& ws,
                    BwdSums<T>* sums) {
  constexpr int64_t G = vec_len<T>();
  const int64_t Tn = sh.T_len, H = sh.H, S = sh.S, Hp = sh.Hp, HG = H * G;
  const T invH = T(1) / static_cast<T>(H);
  const bool prelim = sh.a_update == kPreliminary;
  T* hist = ws.hist.data();
  T* Z = ws.Z.data();
  T* X = ws.X.data();
  T* R = ws.R.data();
  T* dH = ws.dH.data();
  T* dK = prelim ? ws.dK.data() : dH;  // d loss / d key_tau (key_tau = h_tau for kPrevious)
  const T* keys = prelim ? Z : hist;   // kPreliminary: key_tau = z_0 of step tau + 1
  const int64_t ks = prelim ? S * HG : HG;
  T* __restrict dz = ws.dz.data();
  T* __restrict dzn = ws.dzn.data();
  T* __restrict dp = ws.dp.data();
  T* __restrict g = ws.g.data();
  T* __restrict du = ws.du.data();
  T* __restrict a = ws.a.data();
  T* __restrict bb = ws.bb.data();
  T* __restrict dgam = ws.dgam.data();
  T* __restrict dbet = ws.dbet.data();

  ws.a0nz = lanes_a0(io, ws.A0.data(), b0, ne);
  gather_lanes(hist, io.h0 + b0 * H, H, H, ne);
  for (int64_t t = 1; t <= Tn; ++t) gather_lanes(hist + t * HG, io.out + (b0 * Tn + t - 1) * H, Tn * H, H, ne);
  for (int64_t k = 0; k < Tn * S; ++k) {
    gather_lanes(Z + k * HG, io.zs + (b0 * Tn * S + k) * H, Tn * S * H, H, ne);
    gather_lanes(X + k * HG, io.xhat + (b0 * Tn * S + k) * H, Tn * S * H, H, ne);
  }
  gather_lanes(R, io.rstd + b0 * Tn * S, Tn * S, Tn * S, ne);
  std::fill_n(dH, HG, T(0));
  for (int64_t t = 1; t <= Tn; ++t) {
    if (io.gout)
      gather_lanes(dH + t * HG, io.gout + (b0 * Tn + t - 1) * H, Tn * H, H, ne);
    else
      std::fill_n(dH + t * HG, HG, T(0));
  }
  if (prelim) std::fill_n(dK, Tn * HG, T(0));
  std::fill_n(dgam, HG, T(0));
  std::fill_n(dbet, HG, T(0));

  for (int64_t t = Tn; t >= 1; --t) {
    const T* coef = coef_row(sh, t);
    std::copy_n(dH + t * HG, HG, dz);
    std::fill_n(dp, HG, T(0));
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = (t - 1) * S + s;
      const T* __restrict zn = (s + 1 == S) ? hist + t * HG : Z + (k + 1) * HG;
      const T* __restrict xh = X + k * HG;
      const T* __restrict zc = Z + k * HG;
      const vec<T> r = vload(R + k * G);
      vec<T> m1 = vzero<T>(), m2 = vzero<T>();
      for (int64_t i = 0; i < H; ++i) {  // LayerNorm and activation backward
        const vec<T> d = dact_mul<ACT, T>(vload(zn + i * G), vload(dz + i * G));
        const vec<T> x = vload(xh + i * G);
        vstore(dgam + i * G, vload(dgam + i * G) + d * x);
        vstore(dbet + i * G, vload(dbet + i * G) + d);
        const vec<T> gv = d * sh.gamma[i];
        vstore(g + i * G, gv);
        m1 += gv;
        m2 += gv * x;
      }
      m1 = m1 * invH;
      m2 = m2 * invH;
      for (int64_t i = 0; i < H; ++i) {
        const vec<T> v = (vload(g + i * G) - m1 - vload(xh + i * G) * m2) * r;
        vstore(du + i * G, v);
        vstore(dp + i * G, vload(dp + i * G) + v);
      }
      lanes_scores(keys, ks, du, coef, t, H, a);   // a_tau = c_tau <key_tau, du>
      lanes_scores(keys, ks, zc, coef, t, H, bb);  // b_tau = c_tau <key_tau, z_s>
      for (int64_t i = 0; i < H; ++i) {  // dz_s = A_t^T du = sum_tau a_tau key_tau
        vec<T> acc = vzero<T>();
        for (int64_t tau = 0; tau < t; ++tau) acc += vload(a + tau * G) * vload(keys + tau * ks + i * G);
        vstore(dzn + i * G, acc);
      }
      if (io.dA0 || ws.a0nz) {  // dz_s += lam^t A_0^T du; dA_0 += lam^t du z_s^T (at the end)
        const T lt = sh.lam_pow[t];
        T* __restrict gdu = io.dA0 ? ws.Gs.data() + k * HG : ws.gdu.data();
        for (int64_t q = 0; q < HG; ++q) gdu[q] = du[q] * lt;
        if (ws.a0nz) lanes_a0_matvec(io, ws.A0.data(), true, gdu, dzn);
      }
      for (int64_t tau = 0; tau < t; ++tau) {  // d key_tau += a_tau z_s + b_tau du
        T* __restrict d = dK + tau * HG;
        const vec<T> at = vload(a + tau * G), bt = vload(bb + tau * G);
        for (int64_t i = 0; i < H; ++i)
          vstore(d + i * G, vload(d + i * G) + vload(zc + i * G) * at + vload(du + i * G) * bt);
      }
      std::copy_n(dzn, HG, dz);
    }
    const T* __restrict z0 = Z + (t - 1) * S * HG;
    for (int64_t i = 0; i < H; ++i) {
      vec<T> d = vload(dz + i * G);
      if (prelim) d += vload(dK + (t - 1) * HG + i * G);  // key_{t-1} = z_0 of step t: its gradient is complete
      vstore(dp + i * G, vload(dp + i * G) + dact_mul<ACT, T>(vload(z0 + i * G), d));
    }
    scatter_lanes(io.dxp + (b0 * Tn + t - 1) * H, Tn * H, dp, H, ne);
    lanes_matvec(io.W, 1, H, dp, dH + (t - 1) * HG, H);  // dh_{t-1} += W^T dp
  }
  scatter_lanes(io.dh0 + b0 * H, H, dH, H, ne);
  if (io.dA0)
    lanes_write_dA0(ws.Gs.data(), Z, Tn * S, H, ws.gdu.data(), io.dA0, b0, ne,
                    io.A0_shared ? sums->dA0L.data() : static_cast<T*>(nullptr));
  if (io.dgamma_part) scatter_lanes(io.dgamma_part + b0 * H, H, dgam, H, ne);
  if (io.dbeta_part) scatter_lanes(io.dbeta_part + b0 * H, H, dbet, H, ne);
  if (sums == nullptr) return;
  for (int64_t i = 0; i < H; ++i)
    for (int64_t e = 0; e < ne; ++e) {
      sums->dgamma[i] += dgam[i * G + e];
      sums->dbeta[i] += dbet[i * G + e];
    }
  for (int64_t e = 0; e < ne; ++e) {  // dW^T += sum_t h_{t-1} dp_t^T, example by example
    const int64_t b = b0 + e;
    T* __restrict hrow = ws.hrow.data();
    T* __restrict DP = ws.DP.data();
    load_padded(hrow, io.h0 + b * H, H, Hp);
    for (int64_t t = 1; t < Tn; ++t) load_padded(hrow + t * Hp, io.out + (b * Tn + t - 1) * H, H, Hp);
    for (int64_t t = 0; t < Tn; ++t) load_padded(DP + t * Hp, io.dxp + (b * Tn + t) * H, H, Hp);
    add_outer_rows(sums->dWT.data(), H, Hp, hrow, 1, Hp, DP, Tn);
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

  void finish(const BwdParams<T>& io, int64_t Hp) {
    const int64_t H = io.H;
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
    if (io.dW)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < H; ++j) io.dW[i * H + j] = acc.dWT[j * Hp + i];
    if (io.dgamma) std::copy_n(acc.dgamma.data(), H, io.dgamma);
    if (io.dbeta) std::copy_n(acc.dbeta.data(), H, io.dbeta);
    if (sums_dA0(io)) std::copy_n(acc.dA0.data(), H * H, io.dA0);
  }
};

}  // namespace cpu
}  // namespace crnn
