// The CPU kernel's vector helpers: vectors of the target's register width (GCC/Clang vector
// extensions), the activation and its derivative, small matrix-vector and rank-1 kernels on
// padded rows, the AVX-512 compaction of nonzero entries and the in-register transposes.
// Part of the CPU kernel (fastweights_cpu_kernel.h); inside the per-instruction-set
// namespace CRNN_CPU_PATH_NS (see fastweights_cpu_path.h).
#pragma once

#ifndef CRNN_CPU_PATH_NS
#error "define CRNN_CPU_PATH_NS (the kernel's namespace for this instruction set) before including the CPU kernel"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
namespace CRNN_CPU_PATH_NS {

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

// Whether every one of x[0:n] is finite (no NaN, no inf): the exponent bits not all set.
// The zero-skipping shortcuts are exact only where the other factor is finite (0 * inf and
// 0 * NaN are NaN), so they run only where this holds.
template <typename T>
inline bool all_finite(const T* __restrict x, int64_t n) {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr U kExp = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U bits;
    std::memcpy(&bits, x + i, sizeof(U));
    bad |= static_cast<U>((bits & kExp) == kExp);
  }
  return bad == 0;
}

// f(x). ReLU keeps a NaN (NaN < 0 is false), as torch.relu does; vectorised it is a compare
// and a masked move, no branch.
template <int ACT, typename T>
inline T act(T x) {
  if (ACT == kRelu) return x < T(0) ? T(0) : x;
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
// ReLU: 0 where y <= 0, else g (g itself for y = NaN), selected by a bit mask as torch's
// threshold_backward does, so a NaN or inf in g does not leak through y <= 0 (0 * NaN).
template <int ACT, typename T>
inline vec<T> dact_mul(vec<T> y, vec<T> g) {
  if (ACT == kTanh) return g * (vzero<T>() + T(1) - y * y);
  using Mask = decltype(y <= y);  // integer lanes of the same width, -1 / 0 per lane
  return reinterpret_cast<vec<T>>(reinterpret_cast<Mask>(g) & ~(y <= vzero<T>()));
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
// with AVX-512 and skip_zeros (the caller knows M is finite) only the nonzero rows are
// visited, otherwise all k rows.
template <typename T>
inline void sparse_matvec(const T* M, int64_t ld, const T* x, int64_t k, T scale, T* y, int64_t n,
                          int32_t* idx, T* val, bool skip_zeros) {
#if CRNN_AVX512
  if (skip_zeros) {
    const int64_t nnz = compact(x, k, scale, idx, val);
    matvec_idx(M, ld, idx, val, nnz, y, n);
    return;
  }
#endif
  (void)idx;
  (void)skip_zeros;
  if (scale == T(1)) {
    matvec(M, ld, x, k, y, n);
  } else {
    for (int64_t j = 0; j < k; ++j) val[j] = scale * x[j];
    matvec(M, ld, val, k, y, n);
  }
}

// The entries of x[0:k] (times `scale`) as (idx, val) lists: the nonzero ones (compact) with
// skip_zeros, else all k. Returns their count.
template <typename T>
inline int64_t entries(const T* x, int64_t k, T scale, int32_t* idx, T* val, bool skip_zeros) {
  if (skip_zeros) return compact(x, k, scale, idx, val);
  for (int64_t j = 0; j < k; ++j) {
    idx[j] = static_cast<int32_t>(j);
    val[j] = x[j] * scale;
  }
  return k;
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
// whose factors h_tau are mostly zero under ReLU). A v_k with a NaN or inf is applied in
// full (0 * inf is NaN), as is a zero c_k then.
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
    const T* v = V + k * ldv;
    const bool finite = all_finite(v, H);
    if (coef[k] == T(0) && finite) continue;
    const int64_t nnz = entries(v, H, coef[k], idx, val, finite);
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
// with key_t[j] at keys[j * sj + t * st], skipping zero keys (ReLU zeros) unless a row has a
// NaN or inf; each block of NV vectors of a row stays in registers over all n terms. The
// backward's dW^T = sum_t h_{t-1} dp_t^T.
template <typename T, int NV, bool kSkipZeros>
inline void outer_rows_block(T* __restrict r, const T* __restrict keys, int64_t st, const T* __restrict rows,
                             int64_t Hp, int64_t n, int64_t c0) {
  constexpr int64_t W = vec_len<T>();
  vec<T> a[NV];
  for (int v = 0; v < NV; ++v) a[v] = vload(r + c0 + v * W);
  for (int64_t t = 0; t < n; ++t) {
    const T k = keys[t * st];
    if (kSkipZeros && k == T(0)) continue;
    const T* __restrict d = rows + t * Hp + c0;
    for (int v = 0; v < NV; ++v) a[v] += vload(d + v * W) * k;
  }
  for (int v = 0; v < NV; ++v) vstore(r + c0 + v * W, a[v]);
}

template <typename T>
inline void add_outer_rows(T* __restrict acc, int64_t H, int64_t Hp, const T* __restrict keys, int64_t sj,
                           int64_t st, const T* __restrict rows, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  const bool skip_zeros = all_finite(rows, n * Hp);
  for (int64_t j = 0; j < H; ++j) {
    T* __restrict r = acc + j * Hp;
    const T* __restrict kj = keys + j * sj;
    int64_t c0 = 0;
    if (skip_zeros) {
      for (; c0 + 4 * W <= Hp; c0 += 4 * W) outer_rows_block<T, 4, true>(r, kj, st, rows, Hp, n, c0);
      for (; c0 < Hp; c0 += W) outer_rows_block<T, 1, true>(r, kj, st, rows, Hp, n, c0);
    } else {
      for (; c0 + 4 * W <= Hp; c0 += 4 * W) outer_rows_block<T, 4, false>(r, kj, st, rows, Hp, n, c0);
      for (; c0 < Hp; c0 += W) outer_rows_block<T, 1, false>(r, kj, st, rows, Hp, n, c0);
    }
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

}  // namespace CRNN_CPU_PATH_NS
}  // namespace crnn
