// The CPU kernel's per-example paths: forward_example and backward_example run one example
// at a time, with vectors along the hidden units, the ReLU sparsity of h and z used where
// AVX-512 has vcompress, and sequences longer than the chunk length cut into chunks.
// Part of the CPU kernel (fastweights_cpu_kernel.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fastweights_cpu_call.h"
#include "fastweights_cpu_simd.h"
#include "fastweights_params.h"

namespace crnn {
namespace CRNN_CPU_PATH_NS {

// Thread-local scratch for the forward; sized once per parallel chunk.
template <typename T>
struct FwdScratch {
  // hist: h_0..h_T as rows [T+1][Hp]; histT: the same transposed [H][Tp]
  // khist/khistT: the key history key_0..key_{T-1} for kPreliminary (else hist/histT are the keys)
  std::vector<T> hist, histT, khist, khistT, A0T, p, u, z, xh, sc, val, row, mat, wbuf, accA;
  std::vector<int32_t> idx;
  void init(const CallConstants<T>& consts) {
    const int64_t Hp = consts.Hp, Tn = consts.T_len, Tp = consts.Tp;
    mat.assign(consts.H * consts.H + kSlack, T(0));
    wbuf.assign(4 * Tp, T(0));
    accA.assign(consts.H * Hp, T(0));
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign((consts.H + 4) * Tp, T(0));  // rows past H stay zero (rank_rows reads 4-row blocks)
    if (consts.a_update == kPreliminary) {
      khist.assign((Tn + 1) * Hp, T(0));
      khistT.assign((consts.H + 4) * Tp, T(0));
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
inline T layernorm_act(const CallConstants<T>& consts, const T* __restrict u, T* __restrict xh,
                       T* __restrict z) {
  constexpr int64_t W = vec_len<T>();
  const int64_t Hp = consts.Hp;
  const T invH = T(1) / static_cast<T>(consts.H);
  const T* __restrict m = consts.mask;
  const T mu = sum(u, Hp) * invH;  // padding of u is zero
  const T var = centered_sq(u, mu, m, Hp) * invH;
  const T r = T(1) / std::sqrt(var + consts.eps);
  const T* __restrict g = consts.gamma;
  const T* __restrict b = consts.beta;
  for (int64_t i = 0; i < Hp; i += W) {
    const vec<T> x = (vload(u + i) - mu) * r * vload(m + i);
    vstore(xh + i, x);
    vstore(z + i, vload(g + i) * x + vload(b + i));  // padding: gamma = beta = 0
  }
  for (int64_t i = 0; i < Hp; ++i) z[i] = act<ACT>(z[i]);  // f(0) = 0 in the padding
  return r;
}

// A_L = lam^L A_0 + sum_{tau<L} eta lam^(L-1-tau) h_tau h_tau^T after the example's L
// steps, accumulated in a padded H x Hp buffer by sparse rank-1 updates (only the rows where
// h_tau is nonzero), then written out contiguously with streaming stores.
template <typename T>
inline void final_fast_weights(const CallConstants<T>& consts, const T* A0, bool a0nz, const T* keys, int64_t L, T* AT,
                               FwdScratch<T>& scratch) {
  constexpr int64_t W = vec_len<T>();
  const int64_t H = consts.H, Hp = consts.Hp;
  T* __restrict acc = scratch.accA.data();
  T* __restrict mat = scratch.mat.data();
  const T lT = consts.lam_pow[L];
  for (int64_t i = 0; i < H; ++i) {
    if (a0nz && lT != T(0)) {
      load_padded(acc + i * Hp, A0 + i * H, H, Hp);
      for (int64_t j = 0; j < Hp; j += W) vstore(acc + i * Hp + j, vload(acc + i * Hp + j) * lT);
    } else {
      zero_padded(acc + i * Hp, Hp);
    }
  }
  sparse_rank1_rows(acc, H, Hp, keys, Hp, coef_row(consts, L), L, scratch.idx.data(), scratch.val.data());
  for (int64_t i = 0; i < H; ++i) store_n(mat + i * H, acc + i * Hp, H);
  stream_copy(AT, mat, H * H);
}

// The forward of example b.
template <int ACT, typename T>
void forward_example(const CallConstants<T>& consts, const FwdParams<T>& params, int64_t b, FwdScratch<T>& scratch) {
  const int64_t Tn = consts.T_len, H = consts.H, Hp = consts.Hp, S = consts.S, Tp = consts.Tp;
  constexpr int64_t W = vec_len<T>();
  const bool save = params.zs != nullptr;
  const bool prelim = consts.a_update == kPreliminary;
  T* hist = scratch.hist.data();
  T* histT = scratch.histT.data();
  T* kh = prelim ? scratch.khist.data() : hist;     // key rows key_0.. (= hist for kPrevious)
  T* khT = prelim ? scratch.khistT.data() : histT;  // keys transposed (= histT for kPrevious)
  T* p = scratch.p.data();
  T* u = scratch.u.data();
  T* z = scratch.z.data();
  T* xh = scratch.xh.data();
  T* sc = scratch.sc.data();
  T* val = scratch.val.data();
  int32_t* idx = scratch.idx.data();
  T* A0T = scratch.A0T.data();
  load_padded(hist, params.h0 + b * H, H, Hp);
  zero_padded(histT, H * Tp);
  for (int64_t i = 0; i < H; ++i) histT[i * Tp] = hist[i];
  if (prelim) zero_padded(khT, H * Tp);
  // A_0^T, padded, unless A_0 is zero for this example.
  const T* A0 = example_a0(params, b);
  const bool a0nz = A0 != nullptr && any_nonzero(A0, H * H);
  if (a0nz) transpose_square(A0, H, A0T, a0t_ld(Hp));
  // Whether the keys and A_0 are finite so far: only then may the products with z skip the
  // zeros of z (0 * inf is NaN). A NaN or inf from x shows in p first.
  bool finite = all_finite(hist, Hp) && (A0 == nullptr || all_finite(A0, H * H));

  const int64_t K = consts.chunk, L = example_steps(params, b);  // Tn: the row stride
  for (int64_t t = 1; t <= L; ++t) {
    // This step's chunk starts at t0; the history window is h_t0 .. h_{t-1}.
    const int64_t t0 = (t - 1) / K * K, wl = t - t0;
    const int64_t tv = (wl + W - 1) / W * W;  // score lanes in use (beyond the window: coef = 0)
    const T* coef = coef_row(consts, t) + t0;
    const T lt = consts.lam_pow[t - t0];
    // p = xp_t + W h_{t-1};  z_0 = f(p)
    load_padded(p, params.xp + (b * Tn + (t - 1)) * H, H, Hp);
    sparse_matvec(consts.WTp, Hp, hist + (t - 1) * Hp, H, T(1), p, Hp, idx, val, consts.w_finite);
    for (int64_t i = 0; i < Hp; ++i) z[i] = act<ACT>(p[i]);
    finite = finite && all_finite(p, Hp);
    if (prelim) {  // k_t = z_0 joins the window before the inner loop: key_{t-1}
      copy_padded(kh + (t - 1) * Hp, z, Hp);
      for (int64_t i = 0; i < H; ++i) khT[i * Tp + (t - 1)] = z[i];
    }
    for (int64_t s = 0; s < S; ++s) {
      // scores sc[tau] = eta lam^(t-1-tau) <h_tau, z> via the transposed history, and
      // u = p + sum_tau sc[tau] h_tau + lam^t A_0 z  (z's nonzeros found once for both)
      if (save) store_n(params.zs + ((b * Tn + (t - 1)) * S + s) * H, z, H);
      zero_padded(sc, tv);
      copy_padded(u, p, Hp);
#if CRNN_AVX512
      const int64_t nz = entries(z, H, T(1), idx, val, finite);
      matvec_idx(khT + t0, Tp, idx, val, nz, sc, tv);
#else
      matvec(khT + t0, Tp, z, H, sc, tv);
#endif
      mul_padded(sc, coef, tv);
      matvec(kh + t0 * Hp, Hp, sc, wl, u, Hp);
      if ((a0nz || t0 > 0) && lt != T(0)) {  // A0T holds A_t0^T
#if CRNN_AVX512
        for (int64_t jj = 0; jj < nz; ++jj) val[jj] *= lt;
        matvec_idx(A0T, a0t_ld(Hp), idx, val, nz, u, Hp);
#else
        sparse_matvec(A0T, a0t_ld(Hp), z, H, lt, u, Hp, idx, val, finite);
#endif
      }
      const T r = layernorm_act<ACT>(consts, u, xh, z);
      if (save) {
        const int64_t k = (b * Tn + (t - 1)) * S + s;
        store_n(params.xhat + k * H, xh, H);
        params.rstd[k] = r;
      }
    }
    copy_padded(hist + t * Hp, z, Hp);
    for (int64_t i = 0; i < H; ++i) histT[i * Tp + t] = z[i];
    store_n(params.out + (b * Tn + (t - 1)) * H, z, H);
    if (t % K == 0 && t < L) {
      // The next chunk starts at t: A_t^T = lam^K A_t0^T + sum_{t0 <= tau < t} c_tau h_tau h_tau^T
      // (symmetric terms), in place in A0T.
      const T lK = consts.lam_pow[K];
      const int64_t ld = a0t_ld(Hp);
      for (int64_t i = 0; i < H; ++i) {
        T* r = A0T + i * ld;
        if ((a0nz || t0 > 0) && lK != T(0))
          for (int64_t j = 0; j < Hp; j += W) vstore(r + j, vload(r + j) * lK);
        else
          zero_padded(r, Hp);
      }
      sparse_rank1_rows(A0T, H, Hp, kh + t0 * Hp, Hp, coef, K, idx, val, ld);
    }
  }
  if (params.AT)  // nullptr: the caller does not want A_T
    final_fast_weights(consts, A0, a0nz, kh, L, params.AT + b * H * H, scratch);
  zero_after_end(params, b, L);
}

template <typename T>
struct BwdScratch {
  // khist/khistT/dK: keys and their gradient for kPreliminary (else hist/histT/dH serve)
  std::vector<T> hist, histT, khist, khistT, dK, dH, Z, X, A0p, chunk_A, grad_sym, scaled_du_T, dz, dzn, dp, dxhat, du, score_du, score_z,
      val, row, dgam, dbet, mat, mat2, wbuf;
  std::vector<int32_t> idx;
  int64_t Kp = 0;
  bool sums = false;  // accumulate the batch sums below (RangeSums); else only the per-example outputs
  BwdSums<T> sum;
  std::vector<T> DP;  // with sums: dp_1 .. dp_T of the example, padded
  void init(const CallConstants<T>& consts, bool with_sums = false, bool with_dA0_sum = false) {
    const int64_t Hp = consts.Hp, Tn = consts.T_len, S = consts.S, H = consts.H, Tp = consts.Tp;
    sums = with_sums;
    if (sums) {
      DP.assign(Tn * Hp, T(0));
      sum.zero(H, Hp, with_dA0_sum);
    }
    mat.assign(H * H + kSlack, T(0));
    const int64_t chunks = (Tn + consts.chunk - 1) / consts.chunk;
    if (chunks > 1) {
      mat2.assign(H * H + kSlack, T(0));
      chunk_A.assign((chunks - 1) * H * Hp, T(0));  // A_t0 of the chunks after the first: O(T H) for K >= H
    }
    Kp = padded<T>(Tn * S);
    wbuf.assign(4 * Kp, T(0));
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign((H + 1) * Tp + vec_len<T>(), T(0));  // window reads run up to W - 1 past a row
    if (consts.a_update == kPreliminary) {
      khist.assign((Tn + 1) * Hp, T(0));
      khistT.assign((H + 1) * Tp + vec_len<T>(), T(0));
      dK.assign((Tn + 1) * Hp, T(0));
    }
    dH.assign((Tn + 1) * Hp, T(0));
    Z.assign(Tn * S * Hp, T(0));
    X.assign(Tn * S * Hp, T(0));
    A0p.assign(H * Hp, T(0));
    grad_sym.assign(H * Hp, T(0));
    scaled_du_T.assign((H + 1) * Kp, T(0));  // rank_rows reads whole rows from a column offset
    dz.assign(Hp, T(0));
    dzn.assign(Hp, T(0));
    dp.assign(Hp, T(0));
    dxhat.assign(Hp, T(0));
    du.assign(Hp, T(0));
    score_du.assign(Tp, T(0));
    score_z.assign(Tp, T(0));
    const int64_t m = std::max(std::max(Hp, Tp), Kp) + kSlack;
    val.assign(m, T(0));
    idx.assign(m, 0);
    row.assign(Hp, T(0));
    dgam.assign(Hp, T(0));
    dbet.assign(Hp, T(0));
  }
};

// out (H rows of stride Hp, zero padding) = M + M^T for an H x H matrix M.
template <typename T>
inline void add_transpose(const T* __restrict M, int64_t H, int64_t Hp, T* __restrict out) {
  for (int64_t i = 0; i < H; ++i) {
    T* r = out + i * Hp;
    for (int64_t j = 0; j < H; ++j) r[j] = M[i * H + j] + M[j * H + i];
    for (int64_t j = H; j < Hp; ++j) r[j] = T(0);
  }
}

template <int ACT, typename T>
void backward_example(const CallConstants<T>& consts, const BwdParams<T>& params, int64_t b, BwdScratch<T>& scratch) {
  const int64_t Tn = consts.T_len, H = consts.H, Hp = consts.Hp, S = consts.S, Tp = consts.Tp, Kp = scratch.Kp;
  constexpr int64_t W = vec_len<T>();
  const T invH = T(1) / static_cast<T>(H);
  T* hist = scratch.hist.data();  // no __restrict: kh below may alias it
  T* histT = scratch.histT.data();
  T* dH = scratch.dH.data();  // no __restrict: dK below may alias it
  T* __restrict Z = scratch.Z.data();
  T* __restrict X = scratch.X.data();
  T* __restrict scaled_du_T = scratch.scaled_du_T.data();
  T* __restrict dz = scratch.dz.data();
  T* __restrict dzn = scratch.dzn.data();
  T* __restrict dp = scratch.dp.data();
  T* __restrict dxhat = scratch.dxhat.data();
  T* __restrict du = scratch.du.data();
  T* __restrict score_du = scratch.score_du.data();
  T* __restrict score_z = scratch.score_z.data();
  T* __restrict val = scratch.val.data();
  T* __restrict dgam = scratch.dgam.data();
  T* __restrict dbet = scratch.dbet.data();
  int32_t* __restrict idx = scratch.idx.data();
  const T* __restrict gamma = consts.gamma;
  const T* __restrict mask = consts.mask;

  // The example's L steps (Tn: the row stride). History h_0..h_L (rows and transposed),
  // saved z's and xhat's, padded.
  const int64_t L = example_steps(params, b);
  load_padded(hist, params.h0 + b * H, H, Hp);
  for (int64_t t = 1; t <= L; ++t)
    load_padded(hist + t * Hp, params.out + (b * Tn + t - 1) * H, H, Hp);
  zero_padded(histT, H * Tp);
  for (int64_t t = 0; t <= L; ++t)
    for (int64_t i = 0; i < H; ++i) histT[i * Tp + t] = hist[t * Hp + i];
  for (int64_t k = 0; k < L * S; ++k) {
    load_padded(Z + k * Hp, params.zs + (b * Tn * S + k) * H, H, Hp);
    load_padded(X + k * Hp, params.xhat + (b * Tn * S + k) * H, H, Hp);
  }
  // Keys key_0..key_{T-1} and their gradient dK (aliases of the h history and dH for kPrevious;
  // for kPreliminary key_j = z_0 of step j+1, saved by the forward).
  const bool prelim = consts.a_update == kPreliminary;
  T* kh = prelim ? scratch.khist.data() : hist;
  T* khT = prelim ? scratch.khistT.data() : histT;
  T* dK = prelim ? scratch.dK.data() : dH;
  if (prelim) {
    zero_padded(khT, H * Tp);
    for (int64_t j = 0; j < L; ++j) {
      copy_padded(kh + j * Hp, Z + (j * S) * Hp, Hp);
      for (int64_t i = 0; i < H; ++i) khT[i * Tp + j] = kh[j * Hp + i];
    }
    zero_padded(dK, (Tn + 1) * Hp);
  }
  // dH[t] = dL/dh_t, accumulated; starts with the output gradients.
  zero_padded(dH, Hp);
  for (int64_t t = 1; t <= L; ++t) {
    if (params.gout)
      load_padded(dH + t * Hp, params.gout + (b * Tn + t - 1) * H, H, Hp);
    else
      zero_padded(dH + t * Hp, Hp);
  }
  zero_padded(dgam, Hp);
  zero_padded(dbet, Hp);

  const T* A0 = example_a0(params, b);
  const bool a0nz = A0 != nullptr && any_nonzero(A0, H * H);
  T* __restrict A0p = scratch.A0p.data();
  if (a0nz)
    for (int64_t i = 0; i < H; ++i) load_padded(A0p + i * Hp, A0 + i * H, H, Hp);

  // Gradient flowing into A_T: dh_tau += eta lam^(T-1-tau) (gA + gA^T) h_tau.
  const T* gA = params.gAT ? params.gAT + b * H * H : nullptr;
  // (A zero gA is skipped unless a key has a NaN or inf, which 0 * inf turns into NaN.)
  const bool ganz = gA != nullptr && (any_nonzero(gA, H * H) || !all_finite(kh, L * Hp));
  if (ganz) {
    T* __restrict grad_sym = scratch.grad_sym.data();
    add_transpose(gA, H, Hp, grad_sym);
    const T* coefT = coef_row(consts, L);
    const bool sym_finite = all_finite(grad_sym, H * Hp);
    for (int64_t tau = 0; tau < L; ++tau)
      sparse_matvec(grad_sym, Hp, kh + tau * Hp, H, coefT[tau], dK + tau * Hp, Hp, idx, val, sym_finite);
  }

  // Chunks (see chunk_length): A_t0 for every chunk start t0 = c K, c >= 1, rebuilt from
  // A_0 and the history as the forward built it.
  const int64_t K = consts.chunk, nC = (L + K - 1) / K;
  T* __restrict chunk_A = scratch.chunk_A.data();
  for (int64_t c = 1; c < nC; ++c) {
    T* chunk_A0 = chunk_A + (c - 1) * H * Hp;
    const T* prev_chunk_A0 = c == 1 ? (a0nz ? A0p : nullptr) : chunk_A + (c - 2) * H * Hp;
    const T lK = consts.lam_pow[K];
    for (int64_t i = 0; i < H; ++i) {
      if (prev_chunk_A0 != nullptr && lK != T(0))
        for (int64_t j = 0; j < Hp; j += W) vstore(chunk_A0 + i * Hp + j, vload(prev_chunk_A0 + i * Hp + j) * lK);
      else
        zero_padded(chunk_A0 + i * Hp, Hp);
    }
    sparse_rank1_rows(chunk_A0, H, Hp, kh + (c - 1) * K * Hp, Hp, coef_row(consts, c * K) + (c - 1) * K, K, idx, val);
  }
  const bool need_G = params.dA0 != nullptr || nC > 1;
  T* __restrict Dnext = nC > 1 ? scratch.mat2.data() : nullptr;  // d loss / d A_t0 of the chunk after this one

  for (int64_t t = L; t >= 1; --t) {
    const int64_t c = (t - 1) / K, t0 = c * K, wl = t - t0;  // window h_t0 .. h_{t-1}
    const T lt = consts.lam_pow[t - t0];
    const int64_t tv = (wl + W - 1) / W * W;
    const T* coef = coef_row(consts, t) + t0;
    const T* chunk_A0 = c == 0 ? (a0nz ? A0p : nullptr) : chunk_A + (c - 1) * H * Hp;
    copy_padded(dz, dH + t * Hp, Hp);
    zero_padded(dp, Hp);
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = (t - 1) * S + s;
      const T* __restrict zn = (s + 1 == S) ? hist + t * Hp : Z + (k + 1) * Hp;
      const T* __restrict xh = X + k * Hp;
      const T* __restrict zc = Z + k * Hp;
      const T r = params.rstd[base + s];
      // LayerNorm + activation backward
      vec<T> m1v = vzero<T>(), m2v = vzero<T>();
      for (int64_t i = 0; i < Hp; i += W) {
        const vec<T> d = dact_mul<ACT, T>(vload(zn + i), vload(dz + i));
        const vec<T> x = vload(xh + i);
        vstore(dgam + i, vload(dgam + i) + d * x);
        vstore(dbet + i, vload(dbet + i) + d);
        const vec<T> gv = vload(gamma + i) * d;
        vstore(dxhat + i, gv);
        m1v += gv;
        m2v += gv * x;
      }
      const T m1 = hsum(m1v) * invH;
      const T m2 = hsum(m2v) * invH;
      for (int64_t i = 0; i < Hp; i += W) {
        const vec<T> v = (vload(dxhat + i) - m1 - vload(xh + i) * m2) * r * vload(mask + i);
        vstore(du + i, v);
        vstore(dp + i, vload(dp + i) + v);
      }
      // a_tau = c_tau <h_tau, du>, b_tau = c_tau <h_tau, z_s>  (tau < t; coef = 0 beyond)
      // (score_du and score_z are indexed from t0: score_du[j] is a_{t0+j})
      zero_padded(score_du, tv);
      zero_padded(score_z, tv);
      matvec(khT + t0, Tp, du, H, score_du, tv);
      matvec(khT + t0, Tp, zc, H, score_z, tv);
      mul_padded(score_du, coef, tv);
      mul_padded(score_z, coef, tv);
      // dz_s = A_t^T du = sum_tau a_tau h_tau + lam^(t-t0) A_t0^T du
      zero_padded(dzn, Hp);
      matvec(kh + t0 * Hp, Hp, score_du, wl, dzn, Hp);
      if (chunk_A0 != nullptr && lt != T(0)) {
        for (int64_t i = 0; i < Hp; i += W) vstore(val + i, vload(du + i) * lt);
        matvec(chunk_A0, Hp, val, H, dzn, Hp);
      }
      // dh_tau += a_tau z_s + b_tau du   (t0 <= tau < t)
      for (int64_t j = 0; j < wl; ++j) {
        T* __restrict d = dK + (t0 + j) * Hp;
        const T at = score_du[j], bt = score_z[j];
        for (int64_t i = 0; i < Hp; i += W)
          vstore(d + i, vload(d + i) + vload(zc + i) * at + vload(du + i) * bt);
      }
      if (need_G)  // d loss / d A_t0 += lam^(t-t0) du z_s^T (formed per chunk below)
        for (int64_t i = 0; i < H; ++i) scaled_du_T[i * Kp + k] = lt * du[i];
      copy_padded(dz, dzn, Hp);
    }
    // z_0 = f(p_t); for kPreliminary z_0 is also the key k_t = key_{t-1}, whose gradient
    // dK[t-1] is complete here (only steps >= t and later chunks use it).
    const T* __restrict z0 = Z + ((t - 1) * S) * Hp;
    if (prelim)
      for (int64_t i = 0; i < Hp; i += W) vstore(dz + i, vload(dz + i) + vload(dK + (t - 1) * Hp + i));
    for (int64_t i = 0; i < Hp; i += W)
      vstore(dp + i, vload(dp + i) + dact_mul<ACT, T>(vload(z0 + i), vload(dz + i)));
    store_n(params.dxp + (b * Tn + (t - 1)) * H, dp, H);
    if (scratch.sums) copy_padded(scratch.DP.data() + (t - 1) * Hp, dp, Hp);  // for dW below
    // p_t = W h_{t-1} + xp_t  ->  dh_{t-1} += W^T dp
    matvec(consts.Wp, Hp, dp, H, dH + (t - 1) * Hp, Hp);
    if (nC > 1 && t - 1 == t0) {
      // The chunk's first step is done: D = d loss / d A_t0 = sum over its steps of
      // lam^(t-t0) du z^T, plus lam^K D of the next chunk (A_{t0+K} = lam^K A_t0 + ...).
      const int64_t k0 = t0 * S, nk = (std::min(t0 + K, L) - t0) * S;
      T* __restrict D = c % 2 == 0 ? scratch.mat.data() : scratch.mat2.data();
      const T* Dn = c + 1 < nC ? Dnext : nullptr;
      rank_rows(Z + k0 * Hp, Hp, scaled_du_T + k0, Kp, static_cast<const T*>(nullptr), nk, Dn, consts.lam_pow[K], H, Hp,
                scratch.wbuf.data(), D);
      if (c > 0) {
        // A_t0 = lam^K A_{t0-K} + sum_{t0-K <= tau < t0} c_tau h_tau h_tau^T:
        // dh_tau += c_tau (D + D^T) h_tau.
        T* __restrict grad_sym = scratch.grad_sym.data();
        add_transpose(D, H, Hp, grad_sym);
        const T* cf = coef_row(consts, t0);
        const bool sym_finite = all_finite(grad_sym, H * Hp);
        for (int64_t tau = t0 - K; tau < t0; ++tau)
          sparse_matvec(grad_sym, Hp, kh + tau * Hp, H, cf[tau], dK + tau * Hp, Hp, idx, val, sym_finite);
      }
      Dnext = D;
    }
  }
  store_n(params.dh0 + b * H, dH, H);
  // dW^T += sum_t h_{t-1} dp_t^T (histT: h_0 .. h_L by unit, so h_{t-1} of steps 1..L are its first L)
  if (scratch.sums) add_outer_rows(scratch.sum.dWT.data(), H, Hp, histT, Tp, 1, scratch.DP.data(), L);
  if (params.dgamma_part) store_n(params.dgamma_part + b * H, dgam, H);
  if (params.dbeta_part) store_n(params.dbeta_part + b * H, dbet, H);
  if (scratch.sums)
    for (int64_t i = 0; i < Hp; i += W) {
      vstore(scratch.sum.dgamma.data() + i, vload(scratch.sum.dgamma.data() + i) + vload(dgam + i));
      vstore(scratch.sum.dbeta.data() + i, vload(scratch.sum.dbeta.data() + i) + vload(dbet + i));
    }

  // dA_0 = lam^L gA + sum_{t,s} lam^t du_{t,s} z_{t,s}^T  (scaled_du_T holds lam^t du transposed)
  if (params.dA0 && nC == 1) {
    T* __restrict mat = scratch.mat.data();
    rank_rows(Z, Hp, scaled_du_T, Kp, static_cast<const T*>(nullptr), L * S, ganz ? gA : nullptr, consts.lam_pow[L], H,
              Hp, scratch.wbuf.data(), mat);
    emit_dA0(params, b, mat, scratch.sum);
  } else if (params.dA0) {  // chunks: dA_0 = D of the first chunk + lam^T gA
    T* __restrict mat = scratch.mat.data();  // chunk 0's D (c % 2 == 0)
    if (ganz) {
      const T lT = consts.lam_pow[L];
      for (int64_t i = 0; i < H * H; ++i) mat[i] += lT * gA[i];
    }
    emit_dA0(params, b, mat, scratch.sum);
  }
  zero_after_end(params, b, L);
}

}  // namespace CRNN_CPU_PATH_NS
}  // namespace crnn
