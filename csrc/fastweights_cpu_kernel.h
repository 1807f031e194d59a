// Fused fast-weights forward/backward for the CPU (Ba et al. 2016), whole sequence per call.
//
// Plain C++ (no PyTorch types): the glue in fastweights_op.cpp fills the argument
// structs, prepares the shared padded copies of W, gamma, beta and runs
// `forward_example` / `backward_example` for each example inside at::parallel_for.
//
// Semantics (per example; xp_t = U x_t + b precomputed):
//   p_t = W h_{t-1} + xp_t
//   A_t = lam A_{t-1} + eta h_{t-1} h_{t-1}^T
//       = lam^t A_0 + sum_{tau<t} eta lam^(t-1-tau) h_tau h_tau^T     ("attention form")
//   z_0 = f(p_t);  u_s = p_t + A_t z_s;  z_{s+1} = f(gamma * xhat_s + beta),
//   xhat_s = (u_s - mean(u_s)) * rstd_s,  rstd_s = 1/sqrt(var(u_s) + eps);  h_t = z_S.
//
// A_t is never materialised: A_t z is computed in attention form from the history
// h_0..h_{t-1} (kept per example in thread-local buffers, row-wise and transposed)
// plus lam^t A_0 z (skipped when A_0 is zero for the example). Saved for the
// backward: z_0..z_{S-1}, xhat_0..xhat_{S-1} and rstd per step ([B,T,S,H], [B,T,S,H],
// [B,T,S]) besides the outputs, i.e. O(B*T*S*H) memory; the backward recomputes the
// rest (the history scores, A_t^T du, the A_T/A_0 terms).
//
// Inner vectors live in thread-local buffers padded to Hp = H rounded up to 64 bytes
// (zeros in the padding), and the hot loops are written with 64-byte vector types
// (GCC/Clang vector extensions: AVX-512, AVX2 or SSE/NEON code depending on -march),
// so no loop depends on -ffast-math to vectorise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace crnn {
namespace cpu {

enum Activation : int { kRelu = 0, kTanh = 1 };

template <typename T>
constexpr int64_t vec_len() {
  return 64 / static_cast<int64_t>(sizeof(T));  // 16 float, 8 double
}

template <typename T>
inline int64_t padded(int64_t n) {
  const int64_t v = vec_len<T>();
  return (n + v - 1) / v * v;
}

template <int ACT, typename T>
inline T act(T x) {
  if (ACT == kRelu) return x > T(0) ? x : T(0);
  return std::tanh(x);
}

// f'(x) expressed through y = f(x).
template <int ACT, typename T>
inline T dact(T y) {
  if (ACT == kRelu) return y > T(0) ? T(1) : T(0);
  return T(1) - y * y;
}

// ---------------------------------------------------------------------------------------
// 64-byte vectors.
#if defined(__GNUC__) || defined(__clang__)
template <typename T>
struct VecType;
template <>
struct VecType<float> {
  typedef float type __attribute__((vector_size(64), aligned(4), __may_alias__));
};
template <>
struct VecType<double> {
  typedef double type __attribute__((vector_size(64), aligned(8), __may_alias__));
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
template <typename T>
inline T hsum(vec<T> v) {
  T s = T(0);
  for (int64_t l = 0; l < vec_len<T>(); ++l) s += v[l];
  return s;
}
#else
// Portable fallback: a struct of lanes with the few operations used below.
template <typename T>
struct vec {
  T v[vec_len<T>()];
  vec operator+(const vec& o) const { vec r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = v[l] + o.v[l]; return r; }
  vec operator-(const vec& o) const { vec r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = v[l] - o.v[l]; return r; }
  vec operator*(const vec& o) const { vec r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = v[l] * o.v[l]; return r; }
  vec operator*(T s) const { vec r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = v[l] * s; return r; }
  vec operator-(T s) const { vec r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = v[l] - s; return r; }
  vec& operator+=(const vec& o) { for (int64_t l = 0; l < vec_len<T>(); ++l) v[l] += o.v[l]; return *this; }
};
template <typename T>
inline vec<T> vload(const T* p) { vec<T> r; std::memcpy(r.v, p, sizeof(r.v)); return r; }
template <typename T>
inline void vstore(T* p, vec<T> x) { std::memcpy(p, x.v, sizeof(x.v)); }
template <typename T>
inline vec<T> vzero() { vec<T> r; for (int64_t l = 0; l < vec_len<T>(); ++l) r.v[l] = T(0); return r; }
template <typename T>
inline T hsum(vec<T> x) { T s = T(0); for (int64_t l = 0; l < vec_len<T>(); ++l) s += x.v[l]; return s; }
#endif

// ---------------------------------------------------------------------------------------
// Small vector kernels. Lengths n are multiples of vec_len<T>().

// y[0:NV*W] += sum_jj x[jj] * M[rows(jj), 0:NV*W], accumulators in registers.
// rows(jj) = idx[jj] when idx is given, else jj.
template <typename T, int NV, bool IDX>
inline void mv_block(const T* __restrict M, int64_t ld, const int32_t* __restrict idx,
                     const T* __restrict x, int64_t k, T* __restrict y) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc[NV];
  for (int n = 0; n < NV; ++n) acc[n] = vload(y + n * W);
  for (int64_t jj = 0; jj < k; ++jj) {
    const T xj = x[jj];
    const T* __restrict r = M + (IDX ? static_cast<int64_t>(idx[jj]) : jj) * ld;
    for (int n = 0; n < NV; ++n) acc[n] += vload(r + n * W) * xj;
  }
  for (int n = 0; n < NV; ++n) vstore(y + n * W, acc[n]);
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

// Nonzero entries of x[0:k] (scaled by `scale`) as (idx, val) lists; returns their count.
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

// Whether any of x[0:n] is nonzero (vectorised blocks, early exit between blocks).
template <typename T>
inline bool any_nonzero(const T* __restrict x, int64_t n) {
  constexpr int64_t BLK = 256;
  int64_t i = 0;
  for (; i + BLK <= n; i += BLK) {
    int32_t cnt = 0;
    for (int64_t l = 0; l < BLK; ++l) cnt += (x[i + l] != T(0)) ? 1 : 0;
    if (cnt) return true;
  }
  for (; i < n; ++i)
    if (x[i] != T(0)) return true;
  return false;
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc0 = vzero<T>(), acc1 = vzero<T>();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    acc0 += vload(a + i) * vload(b + i);
    acc1 += vload(a + i + W) * vload(b + i + W);
  }
  if (i < n) acc0 += vload(a + i) * vload(b + i);
  return hsum<T>(acc0 + acc1);
}

template <typename T>
inline T sum(const T* __restrict a, int64_t n) {
  constexpr int64_t W = vec_len<T>();
  vec<T> acc = vzero<T>();
  for (int64_t i = 0; i < n; i += W) acc += vload(a + i);
  return hsum<T>(acc);
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
  return hsum<T>(acc);
}

// Copy n values into a zero-padded buffer of length np.
template <typename T>
inline void load_padded(T* __restrict dst, const T* __restrict src, int64_t n, int64_t np) {
  std::memcpy(dst, src, sizeof(T) * n);
  for (int64_t i = n; i < np; ++i) dst[i] = T(0);
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
};

template <typename T>
struct FwdIO {
  const T* xp;  // [B,T,H]
  const T* h0;  // [B,H]
  const T* A0;  // [B,H,H]
  T* out;       // [B,T,H]
  T* AT;        // [B,H,H]
  T* zs;        // [B,T,S,H] or null (no saving)
  T* xhat;      // [B,T,S,H] or null
  T* rstd;      // [B,T,S]   or null
};

// Thread-local scratch for the forward; sized once per parallel chunk.
template <typename T>
struct FwdScratch {
  // hist: h_0..h_T as rows [T+1][Hp]; histT: the same transposed [H][Tp]
  std::vector<T> hist, histT, A0T, p, u, z, xh, coef, sc, val, row;
  std::vector<int32_t> idx;
  void init(const Shared<T>& sh) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len, Tp = sh.Tp;
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign(sh.H * Tp, T(0));
    A0T.assign(sh.H * Hp, T(0));
    p.assign(Hp, T(0));
    u.assign(Hp, T(0));
    z.assign(Hp, T(0));
    xh.assign(Hp, T(0));
    coef.assign(Tp, T(0));
    sc.assign(Tp, T(0));
    val.assign(std::max(Hp, Tp), T(0));
    idx.assign(std::max(Hp, Tp), 0);
    row.assign(Hp, T(0));
  }
};

// xh <- LayerNorm(u) (normalised, before gain/bias), z <- f(gamma*xh + beta); returns rstd.
template <int ACT, typename T>
inline T layernorm_act(const Shared<T>& sh, const T* __restrict u, T* __restrict xh,
                       T* __restrict z) {
  const int64_t Hp = sh.Hp;
  const T invH = T(1) / static_cast<T>(sh.H);
  const T* __restrict m = sh.mask;
  const T mu = sum(u, Hp) * invH;  // padding of u is zero
  const T var = centered_sq(u, mu, m, Hp) * invH;
  const T r = T(1) / std::sqrt(var + sh.eps);
  const T* __restrict g = sh.gamma;
  const T* __restrict b = sh.beta;
  for (int64_t i = 0; i < Hp; ++i) {
    const T x = (u[i] - mu) * r * m[i];
    xh[i] = x;
    z[i] = act<ACT>(g[i] * x + b[i]);  // padding: gamma = beta = 0 -> f(0) = 0
  }
  return r;
}

template <int ACT, typename T>
void forward_example(const Shared<T>& sh, const FwdIO<T>& io, int64_t b, FwdScratch<T>& ws) {
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S, Tp = sh.Tp;
  constexpr int64_t W = vec_len<T>();
  T* __restrict hist = ws.hist.data();
  T* __restrict histT = ws.histT.data();
  T* __restrict p = ws.p.data();
  T* __restrict u = ws.u.data();
  T* __restrict z = ws.z.data();
  T* __restrict xh = ws.xh.data();
  T* __restrict coef = ws.coef.data();
  T* __restrict sc = ws.sc.data();
  T* __restrict val = ws.val.data();
  int32_t* __restrict idx = ws.idx.data();
  const bool save = io.zs != nullptr;

  load_padded(hist, io.h0 + b * H, H, Hp);
  std::fill(histT, histT + H * Tp, T(0));
  for (int64_t i = 0; i < H; ++i) histT[i * Tp] = hist[i];

  // A_0^T, padded, unless A_0 is zero for this example.
  const T* A0 = io.A0 + b * H * H;
  const bool a0nz = any_nonzero(A0, H * H);
  T* __restrict A0T = ws.A0T.data();
  if (a0nz) {
    for (int64_t j = 0; j < H; ++j) {
      T* r = A0T + j * Hp;
      for (int64_t i = 0; i < H; ++i) r[i] = A0[i * H + j];
      for (int64_t i = H; i < Hp; ++i) r[i] = T(0);
    }
  }

  for (int64_t t = 1; t <= Tn; ++t) {
    const T* hprev = hist + (t - 1) * Hp;
    // p = xp_t + W h_{t-1}
    load_padded(p, io.xp + (b * Tn + (t - 1)) * H, H, Hp);
    {
      const int64_t nnz = compact(hprev, H, T(1), idx, val);
      matvec_idx(sh.WTp, Hp, idx, val, nnz, p, Hp);
    }
    for (int64_t i = 0; i < Hp; ++i) z[i] = act<ACT>(p[i]);
    // attention coefficients eta * lam^(t-1-tau) for tau < t, zero beyond
    const int64_t tv = (t + W - 1) / W * W;  // score lanes in use
    for (int64_t tau = 0; tau < tv; ++tau) coef[tau] = tau < t ? sh.eta * sh.lam_pow[t - 1 - tau] : T(0);
    const T lt = sh.lam_pow[t];
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = 0; s < S; ++s) {
      if (save) std::memcpy(io.zs + (base + s) * H, z, sizeof(T) * H);
      // scores sc[tau] = coef[tau] <h_tau, z> via the transposed history
      const int64_t nz = compact(z, H, T(1), idx, val);
      std::fill(sc, sc + tv, T(0));
      matvec_idx(histT, Tp, idx, val, nz, sc, tv);
      for (int64_t tau = 0; tau < tv; ++tau) sc[tau] *= coef[tau];
      // u = p + sum_tau sc[tau] h_tau + lam^t A_0 z
      std::memcpy(u, p, sizeof(T) * Hp);
      matvec(hist, Hp, sc, t, u, Hp);
      if (a0nz && lt != T(0)) {
        for (int64_t jj = 0; jj < nz; ++jj) val[jj] *= lt;
        matvec_idx(A0T, Hp, idx, val, nz, u, Hp);
      }
      const T r = layernorm_act<ACT>(sh, u, xh, z);
      if (save) {
        std::memcpy(io.xhat + (base + s) * H, xh, sizeof(T) * H);
        io.rstd[base + s] = r;
      }
    }
    std::memcpy(hist + t * Hp, z, sizeof(T) * Hp);
    for (int64_t i = 0; i < H; ++i) histT[i * Tp + t] = z[i];
    std::memcpy(io.out + (b * Tn + (t - 1)) * H, z, sizeof(T) * H);
  }

  // A_T = lam^T A_0 + sum_{tau<T} eta lam^(T-1-tau) h_tau h_tau^T, row by row.
  T* AT = io.AT + b * H * H;
  T* __restrict row = ws.row.data();
  const T lT = sh.lam_pow[Tn];
  for (int64_t tau = 0; tau < Tn; ++tau) coef[tau] = sh.eta * sh.lam_pow[Tn - 1 - tau];
  for (int64_t i = 0; i < H; ++i) {
    if (a0nz) {
      for (int64_t j = 0; j < H; ++j) row[j] = lT * A0[i * H + j];
      for (int64_t j = H; j < Hp; ++j) row[j] = T(0);
    } else {
      std::fill(row, row + Hp, T(0));
    }
    const T* hi = histT + i * Tp;  // h_tau[i], tau = 0..T
    int64_t nnz = 0;
    for (int64_t tau = 0; tau < Tn; ++tau) {
      const T v = hi[tau];
      idx[nnz] = static_cast<int32_t>(tau);
      val[nnz] = coef[tau] * v;
      nnz += (v != T(0));
    }
    matvec_idx(hist, Hp, idx, val, nnz, row, Hp);
    std::memcpy(AT + i * H, row, sizeof(T) * H);
  }
}

// ---------------------------------------------------------------------------------------

template <typename T>
struct BwdIO {
  const T* gout;   // [B,T,H] or null (zero)
  const T* gAT;    // [B,H,H] or null (zero)
  const T* h0;     // [B,H]
  const T* A0;     // [B,H,H]
  const T* out;    // [B,T,H]
  const T* zs;     // [B,T,S,H]
  const T* xhat;   // [B,T,S,H]
  const T* rstd;   // [B,T,S]
  T* dxp;          // [B,T,H]
  T* dh0;          // [B,H]
  T* dA0;          // [B,H,H] or null (not needed)
  T* dgamma_part;  // [B,H] per-example partial sums
  T* dbeta_part;   // [B,H]
};

template <typename T>
struct BwdScratch {
  std::vector<T> hist, histT, dH, Z, X, A0p, Sym, GT, dz, dzn, dp, g, du, a, bb, coef, val, row,
      dgam, dbet;
  std::vector<int32_t> idx;
  int64_t Kp = 0;
  void init(const Shared<T>& sh) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len, S = sh.S, H = sh.H, Tp = sh.Tp;
    Kp = padded<T>(Tn * S);
    hist.assign((Tn + 1) * Hp, T(0));
    histT.assign(H * Tp, T(0));
    dH.assign((Tn + 1) * Hp, T(0));
    Z.assign(Tn * S * Hp, T(0));
    X.assign(Tn * S * Hp, T(0));
    A0p.assign(H * Hp, T(0));
    Sym.assign(H * Hp, T(0));
    GT.assign(H * Kp, T(0));
    dz.assign(Hp, T(0));
    dzn.assign(Hp, T(0));
    dp.assign(Hp, T(0));
    g.assign(Hp, T(0));
    du.assign(Hp, T(0));
    a.assign(Tp, T(0));
    bb.assign(Tp, T(0));
    coef.assign(Tp, T(0));
    const int64_t m = std::max(std::max(Hp, Tp), Kp);
    val.assign(m, T(0));
    idx.assign(m, 0);
    row.assign(Hp, T(0));
    dgam.assign(Hp, T(0));
    dbet.assign(Hp, T(0));
  }
};

template <int ACT, typename T>
void backward_example(const Shared<T>& sh, const BwdIO<T>& io, int64_t b, BwdScratch<T>& ws) {
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S, Tp = sh.Tp, Kp = ws.Kp;
  constexpr int64_t W = vec_len<T>();
  const T invH = T(1) / static_cast<T>(H);
  T* __restrict hist = ws.hist.data();
  T* __restrict histT = ws.histT.data();
  T* __restrict dH = ws.dH.data();
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
  T* __restrict coef = ws.coef.data();
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
  std::fill(histT, histT + H * Tp, T(0));
  for (int64_t t = 0; t <= Tn; ++t)
    for (int64_t i = 0; i < H; ++i) histT[i * Tp + t] = hist[t * Hp + i];
  for (int64_t k = 0; k < Tn * S; ++k) {
    load_padded(Z + k * Hp, io.zs + (b * Tn * S + k) * H, H, Hp);
    load_padded(X + k * Hp, io.xhat + (b * Tn * S + k) * H, H, Hp);
  }
  // dH[t] = dL/dh_t, accumulated; starts with the output gradients.
  std::fill(dH, dH + (Tn + 1) * Hp, T(0));
  if (io.gout)
    for (int64_t t = 1; t <= Tn; ++t)
      load_padded(dH + t * Hp, io.gout + (b * Tn + t - 1) * H, H, Hp);
  std::fill(dgam, dgam + Hp, T(0));
  std::fill(dbet, dbet + Hp, T(0));
  if (io.dA0) std::fill(GT, GT + H * Kp, T(0));

  const T* A0 = io.A0 + b * H * H;
  const bool a0nz = any_nonzero(A0, H * H);
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
    for (int64_t tau = 0; tau < Tn; ++tau) {
      const T c = sh.eta * sh.lam_pow[Tn - 1 - tau];
      const int64_t nnz = compact(hist + tau * Hp, H, c, idx, val);
      matvec_idx(Sym, Hp, idx, val, nnz, dH + tau * Hp, Hp);
    }
  }

  for (int64_t t = Tn; t >= 1; --t) {
    const T lt = sh.lam_pow[t];
    const int64_t tv = (t + W - 1) / W * W;
    for (int64_t tau = 0; tau < tv; ++tau) coef[tau] = tau < t ? sh.eta * sh.lam_pow[t - 1 - tau] : T(0);
    std::memcpy(dz, dH + t * Hp, sizeof(T) * Hp);
    std::fill(dp, dp + Hp, T(0));
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = (t - 1) * S + s;
      const T* __restrict zn = (s + 1 == S) ? hist + t * Hp : Z + (k + 1) * Hp;
      const T* __restrict xh = X + k * Hp;
      const T* __restrict zc = Z + k * Hp;
      const T r = io.rstd[base + s];
      // LayerNorm + activation backward
      for (int64_t i = 0; i < Hp; ++i) {
        const T d = dz[i] * dact<ACT>(zn[i]);
        dgam[i] += d * xh[i];
        dbet[i] += d;
        g[i] = gamma[i] * d;
      }
      const T m1 = sum(g, Hp) * invH;
      const T m2 = dot(g, xh, Hp) * invH;
      for (int64_t i = 0; i < Hp; ++i) {
        const T v = r * (g[i] - m1 - xh[i] * m2) * mask[i];
        du[i] = v;
        dp[i] += v;
      }
      // a_tau = c_tau <h_tau, du>, b_tau = c_tau <h_tau, z_s>  (tau < t)
      std::fill(a, a + tv, T(0));
      std::fill(bb, bb + tv, T(0));
      matvec(histT, Tp, du, H, a, tv);
      {
        const int64_t nz = compact(zc, H, T(1), idx, val);
        matvec_idx(histT, Tp, idx, val, nz, bb, tv);
      }
      for (int64_t tau = 0; tau < tv; ++tau) {
        a[tau] *= coef[tau];
        bb[tau] *= coef[tau];
      }
      // dz_s = A_t^T du = sum_tau a_tau h_tau + lam^t A_0^T du
      std::fill(dzn, dzn + Hp, T(0));
      matvec(hist, Hp, a, t, dzn, Hp);
      if (a0nz && lt != T(0)) {
        for (int64_t i = 0; i < H; ++i) val[i] = lt * du[i];
        matvec(A0p, Hp, val, H, dzn, Hp);
      }
      // dh_tau += a_tau z_s + b_tau du   (tau < t)
      for (int64_t tau = 0; tau < t; ++tau) {
        T* __restrict d = dH + tau * Hp;
        const T at = a[tau], bt = bb[tau];
        for (int64_t i = 0; i < Hp; i += W)
          vstore(d + i, vload(d + i) + vload(zc + i) * at + vload(du + i) * bt);
      }
      if (io.dA0)
        for (int64_t i = 0; i < H; ++i) GT[i * Kp + k] = lt * du[i];
      std::memcpy(dz, dzn, sizeof(T) * Hp);
    }
    // z_0 = f(p_t)
    const T* __restrict z0 = Z + ((t - 1) * S) * Hp;
    for (int64_t i = 0; i < Hp; ++i) dp[i] += dz[i] * dact<ACT>(z0[i]);
    std::memcpy(io.dxp + (b * Tn + (t - 1)) * H, dp, sizeof(T) * H);
    // p_t = W h_{t-1} + xp_t  ->  dh_{t-1} += W^T dp
    matvec(sh.Wp, Hp, dp, H, dH + (t - 1) * Hp, Hp);
  }
  std::memcpy(io.dh0 + b * H, dH, sizeof(T) * H);
  std::memcpy(io.dgamma_part + b * H, dgam, sizeof(T) * H);
  std::memcpy(io.dbeta_part + b * H, dbet, sizeof(T) * H);

  // dA_0 = lam^T gA + sum_{t,s} lam^t du_{t,s} z_{t,s}^T, row by row.
  if (io.dA0) {
    T* dA0 = io.dA0 + b * H * H;
    const T lT = sh.lam_pow[Tn];
    const int64_t K = Tn * S;
    for (int64_t i = 0; i < H; ++i) {
      if (ganz) {
        for (int64_t j = 0; j < H; ++j) row[j] = lT * gA[i * H + j];
        for (int64_t j = H; j < Hp; ++j) row[j] = T(0);
      } else {
        std::fill(row, row + Hp, T(0));
      }
      const int64_t nnz = compact(GT + i * Kp, K, T(1), idx, val);
      matvec_idx(Z, Hp, idx, val, nnz, row, Hp);
      std::memcpy(dA0 + i * H, row, sizeof(T) * H);
    }
  }
}

}  // namespace cpu
}  // namespace crnn
