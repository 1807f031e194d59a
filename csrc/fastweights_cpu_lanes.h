// The CPU kernel's batch-in-lanes paths: forward_lanes and backward_lanes run a group of
// vec_len examples together, example e in lane e of every vector, for the calls where
// lanes_forward_applies / lanes_backward_applies hold (one chunk, the group's state in cache).
// They save and read the same tensors as the per-example paths.
// Part of the CPU kernel (fastweights_cpu_kernel.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fastweights_cpu_call.h"
#include "fastweights_cpu_simd.h"
#include "fastweights_params.h"

namespace crnn {
namespace CRNN_CPU_PATH_NS {

// ---------------------------------------------------------------------------------------
// The forward with the batch in the vector lanes: a group of G = vec_len examples runs
// together, example e in lane e of every vector (rows [n][G]). W h, the attention scores,
// A_t z and the LayerNorm sums become vertical FMAs and adds over the G examples: no
// horizontal reductions, and H independent accumulations per step instead of one short
// dependent chain per example, which bounds the per-example kernel at the ART shape
// (docs/performance.md). A per-example A_0 goes into the lanes too (lam^t A_0 z by vertical
// FMAs over [H][H][G]). ReLU zeros are not skipped (a zero in one lane is not in all).
// It saves the same zs / xhat / rstd / out as forward_examples, so the backward is shared.
// With lengths, a group runs to its longest example; a lane past its example's end computes
// on (its own) padding, which nothing reads: its rows are zeroed afterwards (zero_after_end).

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
inline bool lanes_forward_applies(const CallConstants<T>& consts, const FwdParams<T>& params) {
  const int64_t G = vec_len<T>();
  return (params.A0 == nullptr || params.A0_shared || lanes_a0_fits<T>(consts.H)) && params.AT == nullptr && params.B >= G &&
         consts.T_len <= consts.chunk &&
         (consts.T_len + 1) * consts.H * G * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 20);
}

// A group's state, rows of G lanes: hist h_0..h_T [T+1][H][G], the keys of kPreliminary
// [T][H][G] (else hist), p, u, z, xh, zt [H][G], the scores [T][G], the inner step's 1/sigma
// per lane [G], and with a per-example A_0 the group's A_0 [H][H][G] (row i, column j at
// (i H + j) G); a shared A_0 is read where it is (params.A0).
template <typename T>
struct LanesScratch {
  std::vector<T> hist, khist, p, u, z, xh, zt, sc, rstd, A0;
  bool a0nz = false;          // this group's A_0 has a nonzero entry (else A_0 is not read)
  void init(const CallConstants<T>& consts, const FwdParams<T>& params) {
    const int64_t G = vec_len<T>(), H = consts.H, Tn = consts.T_len;
    hist.assign((Tn + 1) * H * G, T(0));
    if (consts.a_update == kPreliminary) khist.assign(Tn * H * G, T(0));
    for (auto* v : {&p, &u, &z, &xh, &zt}) v->assign(H * G, T(0));
    sc.assign(Tn * G, T(0));
    rstd.assign(G, T(0));
    if (params.A0 && !params.A0_shared) A0.assign(H * H * G, T(0));
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
inline bool lanes_a0(const Params& params, T* A0L, int64_t b0, int64_t ne) {
  if (params.A0 == nullptr) return false;
  return params.A0_shared ? any_nonzero(params.A0, params.H * params.H) : gather_a0_lanes(A0L, params.A0, b0, ne, params.H);
}

// y += A_0 x (transposed: A_0^T x) for the group, rows [H][G]: the shared A_0 as one matrix
// for every lane, else the per-example ones gathered in A0L.
template <typename Params, typename T>
inline void lanes_a0_matvec(const Params& params, const T* A0L, bool transposed, const T* x, T* y) {
  const int64_t H = params.H, ra = transposed ? 1 : H, cb = transposed ? H : 1;
  if (params.A0_shared)
    lanes_matvec(params.A0, ra, cb, x, y, H);
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
inline void lanes_inner_step(const CallConstants<T>& consts, const FwdParams<T>& params, const T* __restrict keys, int64_t t,
                             LanesScratch<T>& scratch) {
  constexpr int64_t G = vec_len<T>();
  const int64_t H = consts.H;
  T* __restrict z = scratch.z.data();
  T* __restrict u = scratch.u.data();
  T* __restrict xh = scratch.xh.data();
  T* __restrict sc = scratch.sc.data();
  lanes_scores(keys, H * G, z, coef_row(consts, t), t, H, sc);  // sc[tau] = c_tau (key_tau . z)
  const T* base = scratch.p.data();
  if (scratch.a0nz && consts.lam_pow[t] != T(0)) {  // u = p + lam^t A_0 z (+ the sum below)
    const T lt = consts.lam_pow[t];
    T* __restrict zt = scratch.zt.data();
    for (int64_t k = 0; k < H * G; ++k) zt[k] = z[k] * lt;
    std::copy_n(scratch.p.data(), H * G, u);
    lanes_a0_matvec(params, scratch.A0.data(), false, zt, u);
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
  T* __restrict r = scratch.rstd.data();
  for (int64_t e = 0; e < G; ++e) r[e] = T(1) / std::sqrt(v[e] * invH + consts.eps);
  const vec<T> rv = vload(r);
  for (int64_t i = 0; i < H; ++i) {
    const vec<T> x = (vload(u + i * G) - m) * rv;
    vstore(xh + i * G, x);
    vstore(z + i * G, x * consts.gamma[i] + consts.beta[i]);
  }
  for (int64_t k = 0; k < H * G; ++k) z[k] = act<ACT>(z[k]);
}

// The most steps of the examples [b0, b0 + ne): T without lengths.
template <typename Params>
inline int64_t group_steps(const Params& params, int64_t b0, int64_t ne) {
  int64_t steps = 0;
  for (int64_t e = 0; e < ne; ++e) steps = std::max(steps, example_steps(params, b0 + e));
  return steps;
}

// The forward of the group of examples [b0, b0 + ne), ne <= G (lanes_forward_applies holds).
template <int ACT, typename T>
void forward_lanes(const CallConstants<T>& consts, const FwdParams<T>& params, int64_t b0, int64_t ne, LanesScratch<T>& scratch) {
  constexpr int64_t G = vec_len<T>();
  const int64_t Tn = consts.T_len, H = consts.H, S = consts.S;
  const bool save = params.zs != nullptr;
  const bool prelim = consts.a_update == kPreliminary;
  T* __restrict hist = scratch.hist.data();
  T* __restrict p = scratch.p.data();
  T* __restrict z = scratch.z.data();
  const T* keys = prelim ? scratch.khist.data() : hist;
  scratch.a0nz = lanes_a0(params, scratch.A0.data(), b0, ne);
  gather_lanes(hist, params.h0 + b0 * H, H, H, ne);
  const int64_t L = group_steps(params, b0, ne);  // Tn: the row stride
  for (int64_t t = 1; t <= L; ++t) {
    gather_lanes(p, params.xp + (b0 * Tn + t - 1) * H, Tn * H, H, ne);  // p = xp_t + W h_{t-1}
    lanes_matvec(params.W, H, 1, hist + (t - 1) * H * G, p, H);
    for (int64_t k = 0; k < H * G; ++k) z[k] = act<ACT>(p[k]);
    if (prelim) std::copy_n(z, H * G, scratch.khist.data() + (t - 1) * H * G);  // key_{t-1} = z_0 of step t
    for (int64_t s = 0; s < S; ++s) {
      const int64_t k0 = (b0 * Tn + t - 1) * S + s;  // example b0's (t, s) entry
      if (save) scatter_lanes(params.zs + k0 * H, Tn * S * H, z, H, ne);
      lanes_inner_step<ACT>(consts, params, keys, t, scratch);
      if (save) {
        scatter_lanes(params.xhat + k0 * H, Tn * S * H, scratch.xh.data(), H, ne);
        scatter_lanes(params.rstd + k0, Tn * S, scratch.rstd.data(), 1, ne);
      }
    }
    std::copy_n(z, H * G, hist + t * H * G);
    scatter_lanes(params.out + (b0 * Tn + t - 1) * H, Tn * H, z, H, ne);
  }
  if (params.lengths)
    for (int64_t e = 0; e < ne; ++e) zero_after_end(params, b0 + e, example_steps(params, b0 + e));
}

// ---------------------------------------------------------------------------------------
// The backward with the batch in the vector lanes, the counterpart of forward_lanes: the
// equations of backward_example (there) over G examples at once, for a call without a
// gradient of A_T, in one chunk (the ART training step, with any initial state). dW is then
// added per example (sparse in h, add_outer_rows) from the dxp just written; dA_0 =
// sum_{t,s} lam^t du_{t,s} z_{t,s}^T is formed per lane at the end from the saved lam^t du.

template <typename T>
inline bool lanes_backward_applies(const CallConstants<T>& consts, const BwdParams<T>& params) {
  const int64_t G = vec_len<T>();
  const int64_t rows = 2 * consts.T_len * consts.S + 3 * consts.T_len + 2 + (params.dA0 ? consts.T_len * consts.S : 0);
  const bool a0_per_lane = (params.A0 && !params.A0_shared) || sums_dA0(params);  // an [H][H][G] buffer: A_0, or dA_0's sums
  return (!a0_per_lane || lanes_a0_fits<T>(consts.H)) && params.gAT == nullptr &&
         params.B >= G && consts.T_len <= consts.chunk &&
         rows * consts.H * G * static_cast<int64_t>(sizeof(T)) <= (int64_t(1) << 21);
}

// A group's backward state, rows of G lanes (see LanesScratch): with dA_0, scaled_du holds lam^t du
// of every inner step [T S][H][G]; with an A_0, A0 as in LanesScratch; and one example's
// padded rows h_0..h_{T-1} and dp_1..dp_T for its dW.
template <typename T>
struct LanesBwdScratch {
  std::vector<T> hist, Z, X, R, dH, dK, dz, dzn, dp, dxhat, du, gdu, score_du, score_z, dgam, dbet, hrow, DP, scaled_du, A0;
  bool a0nz = false;  // this group's A_0 has a nonzero entry (else A0 is not read)
  void init(const CallConstants<T>& consts, const BwdParams<T>& params) {
    const int64_t G = vec_len<T>(), H = consts.H, Tn = consts.T_len, S = consts.S, HG = H * G;
    hist.assign((Tn + 1) * HG, T(0));
    Z.assign(Tn * S * HG, T(0));
    X.assign(Tn * S * HG, T(0));
    R.assign(Tn * S * G, T(0));
    dH.assign((Tn + 1) * HG, T(0));
    if (consts.a_update == kPreliminary) dK.assign(Tn * HG, T(0));
    for (auto* v : {&dz, &dzn, &dp, &dxhat, &du, &gdu, &dgam, &dbet}) v->assign(HG, T(0));
    score_du.assign(Tn * G, T(0));
    score_z.assign(Tn * G, T(0));
    hrow.assign(Tn * consts.Hp, T(0));
    DP.assign(Tn * consts.Hp, T(0));
    if (params.dA0) scaled_du.assign(Tn * S * HG, T(0));
    if (params.A0 && !params.A0_shared) A0.assign(H * HG, T(0));
  }
};

// dA_0 of the group [b0, b0 + ne): entry (i, j) is sum_k Gs_k[i] Z_k[j] (k over the T S inner
// steps) per lane, four columns at a time. Per example: formed in row and written out. For a
// shared A_0 (acc, [H][H][G]): added to the thread's per-lane sums, whose lanes
// finish_dA0_lanes adds up once per thread (lanes beyond ne hold zeros: scaled_du is 0 there).
template <typename T>
inline void lanes_write_dA0(const T* __restrict scaled_du, const T* __restrict Z, int64_t nk, int64_t H, T* __restrict row,
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
        const vec<T> gi = vload(scaled_du + k * HG + i * G);
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
      for (int64_t k = 0; k < nk; ++k) s0 += vload(scaled_du + k * HG + i * G) * vload(Z + k * HG + j * G);
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
// share of dW, dgamma and dbeta is added there. With lengths the group runs back from its
// longest example's end; a lane past its example's end has zero output gradients and (as
// the forward saved them) zero saved rows, so everything it adds is zero.
template <int ACT, typename T>
void backward_lanes(const CallConstants<T>& consts, const BwdParams<T>& params, int64_t b0, int64_t ne, LanesBwdScratch<T>& scratch,
                    BwdSums<T>* sums) {
  constexpr int64_t G = vec_len<T>();
  const int64_t Tn = consts.T_len, H = consts.H, S = consts.S, Hp = consts.Hp, HG = H * G;
  const T invH = T(1) / static_cast<T>(H);
  const bool prelim = consts.a_update == kPreliminary;
  T* hist = scratch.hist.data();
  T* Z = scratch.Z.data();
  T* X = scratch.X.data();
  T* R = scratch.R.data();
  T* dH = scratch.dH.data();
  T* dK = prelim ? scratch.dK.data() : dH;  // d loss / d key_tau (key_tau = h_tau for kPrevious)
  const T* keys = prelim ? Z : hist;   // kPreliminary: key_tau = z_0 of step tau + 1
  const int64_t ks = prelim ? S * HG : HG;
  T* __restrict dz = scratch.dz.data();
  T* __restrict dzn = scratch.dzn.data();
  T* __restrict dp = scratch.dp.data();
  T* __restrict dxhat = scratch.dxhat.data();
  T* __restrict du = scratch.du.data();
  T* __restrict score_du = scratch.score_du.data();
  T* __restrict score_z = scratch.score_z.data();
  T* __restrict dgam = scratch.dgam.data();
  T* __restrict dbet = scratch.dbet.data();

  scratch.a0nz = lanes_a0(params, scratch.A0.data(), b0, ne);
  const int64_t L = group_steps(params, b0, ne);  // Tn: the row stride
  gather_lanes(hist, params.h0 + b0 * H, H, H, ne);
  for (int64_t t = 1; t <= L; ++t) gather_lanes(hist + t * HG, params.out + (b0 * Tn + t - 1) * H, Tn * H, H, ne);
  for (int64_t k = 0; k < L * S; ++k) {
    gather_lanes(Z + k * HG, params.zs + (b0 * Tn * S + k) * H, Tn * S * H, H, ne);
    gather_lanes(X + k * HG, params.xhat + (b0 * Tn * S + k) * H, Tn * S * H, H, ne);
  }
  gather_lanes(R, params.rstd + b0 * Tn * S, Tn * S, Tn * S, ne);
  std::fill_n(dH, HG, T(0));
  for (int64_t t = 1; t <= L; ++t) {
    if (params.gout)
      gather_lanes(dH + t * HG, params.gout + (b0 * Tn + t - 1) * H, Tn * H, H, ne);
    else
      std::fill_n(dH + t * HG, HG, T(0));
  }
  if (params.lengths && params.gout)  // no output gradient after an example's end
    for (int64_t e = 0; e < ne; ++e)
      for (int64_t t = example_steps(params, b0 + e) + 1; t <= L; ++t)
        for (int64_t i = 0; i < H; ++i) dH[t * HG + i * G + e] = T(0);
  if (prelim) std::fill_n(dK, Tn * HG, T(0));
  std::fill_n(dgam, HG, T(0));
  std::fill_n(dbet, HG, T(0));

  for (int64_t t = L; t >= 1; --t) {
    const T* coef = coef_row(consts, t);
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
        const vec<T> gv = d * consts.gamma[i];
        vstore(dxhat + i * G, gv);
        m1 += gv;
        m2 += gv * x;
      }
      m1 = m1 * invH;
      m2 = m2 * invH;
      for (int64_t i = 0; i < H; ++i) {
        const vec<T> v = (vload(dxhat + i * G) - m1 - vload(xh + i * G) * m2) * r;
        vstore(du + i * G, v);
        vstore(dp + i * G, vload(dp + i * G) + v);
      }
      lanes_scores(keys, ks, du, coef, t, H, score_du);   // a_tau = c_tau <key_tau, du>
      lanes_scores(keys, ks, zc, coef, t, H, score_z);  // b_tau = c_tau <key_tau, z_s>
      for (int64_t i = 0; i < H; ++i) {  // dz_s = A_t^T du = sum_tau a_tau key_tau
        vec<T> acc = vzero<T>();
        for (int64_t tau = 0; tau < t; ++tau) acc += vload(score_du + tau * G) * vload(keys + tau * ks + i * G);
        vstore(dzn + i * G, acc);
      }
      if (params.dA0 || scratch.a0nz) {  // dz_s += lam^t A_0^T du; dA_0 += lam^t du z_s^T (at the end)
        const T lt = consts.lam_pow[t];
        T* __restrict gdu = params.dA0 ? scratch.scaled_du.data() + k * HG : scratch.gdu.data();
        for (int64_t q = 0; q < HG; ++q) gdu[q] = du[q] * lt;
        if (scratch.a0nz) lanes_a0_matvec(params, scratch.A0.data(), true, gdu, dzn);
      }
      for (int64_t tau = 0; tau < t; ++tau) {  // d key_tau += a_tau z_s + b_tau du
        T* __restrict d = dK + tau * HG;
        const vec<T> at = vload(score_du + tau * G), bt = vload(score_z + tau * G);
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
    scatter_lanes(params.dxp + (b0 * Tn + t - 1) * H, Tn * H, dp, H, ne);
    lanes_matvec(params.W, 1, H, dp, dH + (t - 1) * HG, H);  // dh_{t-1} += W^T dp
  }
  scatter_lanes(params.dh0 + b0 * H, H, dH, H, ne);
  if (params.dA0)
    lanes_write_dA0(scratch.scaled_du.data(), Z, L * S, H, scratch.gdu.data(), params.dA0, b0, ne,
                    params.A0_shared ? sums->dA0L.data() : static_cast<T*>(nullptr));
  if (params.dgamma_part) scatter_lanes(params.dgamma_part + b0 * H, H, dgam, H, ne);
  if (params.dbeta_part) scatter_lanes(params.dbeta_part + b0 * H, H, dbet, H, ne);
  for (int64_t e = 0; e < ne; ++e) zero_after_end(params, b0 + e, example_steps(params, b0 + e));
  if (sums == nullptr) return;
  for (int64_t i = 0; i < H; ++i)
    for (int64_t e = 0; e < ne; ++e) {
      sums->dgamma[i] += dgam[i * G + e];
      sums->dbeta[i] += dbet[i * G + e];
    }
  for (int64_t e = 0; e < ne; ++e) {  // dW^T += sum_t h_{t-1} dp_t^T, example by example
    const int64_t b = b0 + e, Le = example_steps(params, b);
    T* __restrict hrow = scratch.hrow.data();
    T* __restrict DP = scratch.DP.data();
    load_padded(hrow, params.h0 + b * H, H, Hp);
    for (int64_t t = 1; t < Le; ++t) load_padded(hrow + t * Hp, params.out + (b * Tn + t - 1) * H, H, Hp);
    for (int64_t t = 0; t < Le; ++t) load_padded(DP + t * Hp, params.dxp + (b * Tn + t) * H, H, Hp);
    add_outer_rows(sums->dWT.data(), H, Hp, hrow, 1, Hp, DP, Le);
  }
}

}  // namespace CRNN_CPU_PATH_NS
}  // namespace crnn
