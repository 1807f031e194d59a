// Fused fast-weights forward/backward for the CPU (Ba et al. 2016), whole sequence per call.
//
// Plain C++ (no PyTorch types): the glue in fastweights_cpu.cpp fills the argument
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
// h_0..h_{t-1} (kept per example in a thread-local buffer) plus lam^t A_0 z (skipped
// when A_0 is zero for the example). Saved for the backward: z_0..z_{S-1}, xhat_0..
// xhat_{S-1} and rstd per step ([B,T,S,H], [B,T,S,H], [B,T,S]) besides the outputs,
// i.e. O(B*T*S*H) memory; the backward recomputes everything else.
//
// Inner vectors live in thread-local buffers padded to Hp = H rounded up to 64 bytes,
// with zeros in the padding, so every inner loop has a fixed vector-sized body the
// compiler vectorises (no reductions that need -ffast-math: lane-wise accumulators).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <vector>

namespace crnn {
namespace cpu {

enum Activation : int { kRelu = 0, kTanh = 1 };

template <typename T>
constexpr int64_t vec_len() {
  return 64 / static_cast<int64_t>(sizeof(T));  // one 64-byte cache line: 16 float, 8 double
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
// Small vector kernels. n is always a multiple of vec_len<T>().

// y[0:L] += sum_jj M[idx[jj]*ld + 0:L] * x[jj]   (accumulators stay in registers)
template <typename T, int L>
inline void mv_block(const T* __restrict M, int64_t ld, const int32_t* __restrict idx,
                     const T* __restrict x, int64_t k, T* __restrict y) {
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = y[l];
  for (int64_t jj = 0; jj < k; ++jj) {
    const T xj = x[jj];
    const T* __restrict r = M + static_cast<int64_t>(idx[jj]) * ld;
    for (int l = 0; l < L; ++l) acc[l] += r[l] * xj;
  }
  for (int l = 0; l < L; ++l) y[l] = acc[l];
}

// Dense rows variant: y[0:L] += sum_j M[j*ld + 0:L] * x[j]
template <typename T, int L>
inline void mv_block_dense(const T* __restrict M, int64_t ld, const T* __restrict x, int64_t k,
                           T* __restrict y) {
  T acc[L];
  for (int l = 0; l < L; ++l) acc[l] = y[l];
  for (int64_t j = 0; j < k; ++j) {
    const T xj = x[j];
    const T* __restrict r = M + j * ld;
    for (int l = 0; l < L; ++l) acc[l] += r[l] * xj;
  }
  for (int l = 0; l < L; ++l) y[l] = acc[l];
}

// y[0:n] += sum_jj x[jj] * M[idx[jj], 0:n]  (a matrix-vector product over the rows listed)
template <typename T>
inline void matvec_idx(const T* M, int64_t ld, const int32_t* idx, const T* x, int64_t k, T* y,
                       int64_t n) {
  constexpr int64_t V = vec_len<T>();
  int64_t c = 0;
  for (; c + 4 * V <= n; c += 4 * V) mv_block<T, 4 * V>(M + c, ld, idx, x, k, y + c);
  for (; c + 2 * V <= n; c += 2 * V) mv_block<T, 2 * V>(M + c, ld, idx, x, k, y + c);
  for (; c < n; c += V) mv_block<T, V>(M + c, ld, idx, x, k, y + c);
}

// y[0:n] += sum_{j<k} x[j] * M[j, 0:n]
template <typename T>
inline void matvec(const T* M, int64_t ld, const T* x, int64_t k, T* y, int64_t n) {
  constexpr int64_t V = vec_len<T>();
  int64_t c = 0;
  for (; c + 4 * V <= n; c += 4 * V) mv_block_dense<T, 4 * V>(M + c, ld, x, k, y + c);
  for (; c + 2 * V <= n; c += 2 * V) mv_block_dense<T, 2 * V>(M + c, ld, x, k, y + c);
  for (; c < n; c += V) mv_block_dense<T, V>(M + c, ld, x, k, y + c);
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
  constexpr int64_t V = vec_len<T>();
  T acc[V];
  for (int64_t l = 0; l < V; ++l) acc[l] = T(0);
  for (int64_t i = 0; i < n; i += V)
    for (int64_t l = 0; l < V; ++l) acc[l] += a[i + l] * b[i + l];
  T s = T(0);
  for (int64_t l = 0; l < V; ++l) s += acc[l];
  return s;
}

template <typename T>
inline T sum(const T* __restrict a, int64_t n) {
  constexpr int64_t V = vec_len<T>();
  T acc[V];
  for (int64_t l = 0; l < V; ++l) acc[l] = T(0);
  for (int64_t i = 0; i < n; i += V)
    for (int64_t l = 0; l < V; ++l) acc[l] += a[i + l];
  T s = T(0);
  for (int64_t l = 0; l < V; ++l) s += acc[l];
  return s;
}

// Scores of t history rows against v, scaled by coef: out[tau] = coef[tau] * <hist[tau], v>
template <typename T>
inline void scores(const T* __restrict hist, int64_t ld, const T* __restrict v,
                   const T* __restrict coef, int64_t t, int64_t n, T* __restrict out) {
  for (int64_t tau = 0; tau < t; ++tau) out[tau] = coef[tau] * dot(hist + tau * ld, v, n);
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
  int64_t B, T_len, H, Hp, S;
  T lam, eta, eps;
  const T* WTp;    // [H][Hp]  W transposed (row j = column j of W), padded  (forward)
  const T* Wp;     // [H][Hp]  W, padded                                     (backward)
  const T* gamma;  // [Hp] padded with zeros
  const T* beta;   // [Hp]
  const T* mask;   // [Hp] 1 for i < H, 0 in the padding
  const T* lam_pow;  // [T+1] lam^k
};

template <typename T>
struct FwdIO {
  const T* xp;   // [B,T,H]
  const T* h0;   // [B,H]
  const T* A0;   // [B,H,H]
  T* out;        // [B,T,H]
  T* AT;         // [B,H,H]
  T* zs;         // [B,T,S,H] or null (no saving)
  T* xhat;       // [B,T,S,H] or null
  T* rstd;       // [B,T,S]   or null
};

// Thread-local scratch for the forward; sized once per parallel chunk.
template <typename T>
struct FwdScratch {
  std::vector<T> hist, A0T, p, u, z, coef, sc, val, row;
  std::vector<int32_t> idx;
  void init(const Shared<T>& sh) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len;
    hist.assign((Tn + 1) * Hp, T(0));
    A0T.assign(sh.H * Hp, T(0));
    p.assign(Hp, T(0));
    u.assign(Hp, T(0));
    z.assign(Hp, T(0));
    coef.assign(Tn + 1, T(0));
    sc.assign(Tn + 1, T(0));
    val.assign(std::max(Hp, Tn + 1), T(0));
    idx.assign(std::max(Hp, Tn + 1), 0);
    row.assign(Hp, T(0));
  }
};

// u <- LayerNorm(u) then z <- f(gamma*xhat + beta); returns rstd; xhat written to `xh`.
template <int ACT, typename T>
inline T layernorm_act(const Shared<T>& sh, const T* __restrict u, T* __restrict xh,
                       T* __restrict z) {
  const int64_t Hp = sh.Hp;
  const T invH = T(1) / static_cast<T>(sh.H);
  const T mu = sum(u, Hp) * invH;  // padding of u is zero
  constexpr int64_t V = vec_len<T>();
  T acc[V];
  for (int64_t l = 0; l < V; ++l) acc[l] = T(0);
  const T* __restrict m = sh.mask;
  for (int64_t i = 0; i < Hp; i += V)
    for (int64_t l = 0; l < V; ++l) {
      const T d = (u[i + l] - mu) * m[i + l];
      acc[l] += d * d;
    }
  T var = T(0);
  for (int64_t l = 0; l < V; ++l) var += acc[l];
  var *= invH;
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
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S;
  T* hist = ws.hist.data();
  T* p = ws.p.data();
  T* u = ws.u.data();
  T* z = ws.z.data();
  T* coef = ws.coef.data();
  T* sc = ws.sc.data();
  T* val = ws.val.data();
  int32_t* idx = ws.idx.data();
  const bool save = io.zs != nullptr;

  load_padded(hist, io.h0 + b * H, H, Hp);

  // A_0^T, padded, and whether A_0 is zero for this example.
  const T* A0 = io.A0 + b * H * H;
  const bool a0nz = any_nonzero(A0, H * H);
  T* A0T = ws.A0T.data();
  if (a0nz) {
    for (int64_t j = 0; j < H; ++j) {
      T* r = A0T + j * Hp;
      for (int64_t i = 0; i < H; ++i) r[i] = A0[i * H + j];
      for (int64_t i = H; i < Hp; ++i) r[i] = T(0);
    }
  }

  T* xh_tmp = ws.row.data();

  for (int64_t t = 1; t <= Tn; ++t) {
    const T* hprev = hist + (t - 1) * Hp;
    // p = xp_t + W h_{t-1}
    load_padded(p, io.xp + (b * Tn + (t - 1)) * H, H, Hp);
    {
      const int64_t nnz = compact(hprev, H, T(1), idx, val);
      matvec_idx(sh.WTp, Hp, idx, val, nnz, p, Hp);
    }
    for (int64_t i = 0; i < Hp; ++i) z[i] = act<ACT>(p[i]);
    // attention coefficients eta * lam^(t-1-tau), tau = 0..t-1
    for (int64_t tau = 0; tau < t; ++tau) coef[tau] = sh.eta * sh.lam_pow[t - 1 - tau];
    const T lt = sh.lam_pow[t];
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = 0; s < S; ++s) {
      if (save) std::memcpy(io.zs + (base + s) * H, z, sizeof(T) * H);
      std::memcpy(u, p, sizeof(T) * Hp);
      scores(hist, Hp, z, coef, t, Hp, sc);
      matvec(hist, Hp, sc, t, u, Hp);
      if (a0nz && lt != T(0)) {
        const int64_t nnz = compact(z, H, lt, idx, val);
        matvec_idx(A0T, Hp, idx, val, nnz, u, Hp);
      }
      const T r = layernorm_act<ACT>(sh, u, xh_tmp, z);
      if (save) {
        std::memcpy(io.xhat + (base + s) * H, xh_tmp, sizeof(T) * H);
        io.rstd[base + s] = r;
      }
    }
    std::memcpy(hist + t * Hp, z, sizeof(T) * Hp);
    std::memcpy(io.out + (b * Tn + (t - 1)) * H, z, sizeof(T) * H);
  }

  // A_T = lam^T A_0 + sum_{tau<T} eta lam^(T-1-tau) h_tau h_tau^T, row by row.
  T* AT = io.AT + b * H * H;
  T* row = ws.row.data();
  const T lT = sh.lam_pow[Tn];
  for (int64_t tau = 0; tau < Tn; ++tau) coef[tau] = sh.eta * sh.lam_pow[Tn - 1 - tau];
  for (int64_t i = 0; i < H; ++i) {
    if (a0nz) {
      for (int64_t j = 0; j < H; ++j) row[j] = lT * A0[i * H + j];
      for (int64_t j = H; j < Hp; ++j) row[j] = T(0);
    } else {
      for (int64_t j = 0; j < Hp; ++j) row[j] = T(0);
    }
    int64_t nnz = 0;
    for (int64_t tau = 0; tau < Tn; ++tau) {
      const T v = hist[tau * Hp + i];
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
  const T* gout;  // [B,T,H] or null (zero)
  const T* gAT;   // [B,H,H] or null (zero)
  const T* h0;    // [B,H]
  const T* A0;    // [B,H,H]
  const T* out;   // [B,T,H]
  const T* zs;    // [B,T,S,H]
  const T* xhat;  // [B,T,S,H]
  const T* rstd;  // [B,T,S]
  T* dxp;         // [B,T,H]
  T* dh0;         // [B,H]
  T* dA0;         // [B,H,H] or null (not needed)
  T* dgamma_part;  // [B,H] per-example partial sums
  T* dbeta_part;   // [B,H]
};

template <typename T>
struct BwdScratch {
  std::vector<T> hist, dH, Z, X, A0p, Sym, G, dz, dzn, dp, dn, g, du, a, bb, val, row, dgam, dbet;
  std::vector<int32_t> idx;
  void init(const Shared<T>& sh) {
    const int64_t Hp = sh.Hp, Tn = sh.T_len, S = sh.S, H = sh.H;
    hist.assign((Tn + 1) * Hp, T(0));
    dH.assign((Tn + 1) * Hp, T(0));
    Z.assign(Tn * S * Hp, T(0));
    X.assign(Tn * S * Hp, T(0));
    A0p.assign(H * Hp, T(0));
    Sym.assign(H * Hp, T(0));
    G.assign(Tn * S * Hp, T(0));
    dz.assign(Hp, T(0));
    dzn.assign(Hp, T(0));
    dp.assign(Hp, T(0));
    dn.assign(Hp, T(0));
    g.assign(Hp, T(0));
    du.assign(Hp, T(0));
    a.assign(Tn + 1, T(0));
    bb.assign(Tn + 1, T(0));
    const int64_t m = std::max(Hp, Tn * S + 1);
    val.assign(m, T(0));
    idx.assign(m, 0);
    row.assign(Hp, T(0));
    dgam.assign(Hp, T(0));
    dbet.assign(Hp, T(0));
  }
};

template <int ACT, typename T>
void backward_example(const Shared<T>& sh, const BwdIO<T>& io, int64_t b, BwdScratch<T>& ws) {
  const int64_t Tn = sh.T_len, H = sh.H, Hp = sh.Hp, S = sh.S;
  const T invH = T(1) / static_cast<T>(H);
  T* hist = ws.hist.data();
  T* dH = ws.dH.data();
  T* Z = ws.Z.data();
  T* X = ws.X.data();
  T* G = ws.G.data();
  T* dz = ws.dz.data();
  T* dzn = ws.dzn.data();
  T* dp = ws.dp.data();
  T* dn = ws.dn.data();
  T* g = ws.g.data();
  T* du = ws.du.data();
  T* a = ws.a.data();
  T* bb = ws.bb.data();
  T* val = ws.val.data();
  T* row = ws.row.data();
  T* dgam = ws.dgam.data();
  T* dbet = ws.dbet.data();
  int32_t* idx = ws.idx.data();
  const T* gamma = sh.gamma;
  const T* mask = sh.mask;

  // History h_0..h_T, saved z's and xhat's, padded.
  load_padded(hist, io.h0 + b * H, H, Hp);
  for (int64_t t = 1; t <= Tn; ++t) load_padded(hist + t * Hp, io.out + (b * Tn + t - 1) * H, H, Hp);
  for (int64_t k = 0; k < Tn * S; ++k) {
    load_padded(Z + k * Hp, io.zs + (b * Tn * S + k) * H, H, Hp);
    load_padded(X + k * Hp, io.xhat + (b * Tn * S + k) * H, H, Hp);
  }
  // dH[t] = dL/dh_t, accumulated; starts with the output gradients.
  std::fill(dH, dH + (Tn + 1) * Hp, T(0));
  if (io.gout)
    for (int64_t t = 1; t <= Tn; ++t) load_padded(dH + t * Hp, io.gout + (b * Tn + t - 1) * H, H, Hp);
  std::fill(dgam, dgam + Hp, T(0));
  std::fill(dbet, dbet + Hp, T(0));

  const T* A0 = io.A0 + b * H * H;
  const bool a0nz = any_nonzero(A0, H * H);
  T* A0p = ws.A0p.data();
  if (a0nz)
    for (int64_t i = 0; i < H; ++i) load_padded(A0p + i * Hp, A0 + i * H, H, Hp);

  // Gradient flowing into A_T: dh_tau += eta lam^(T-1-tau) (gA + gA^T) h_tau.
  const T* gA = io.gAT ? io.gAT + b * H * H : nullptr;
  const bool ganz = gA != nullptr && any_nonzero(gA, H * H);
  if (ganz) {
    T* Sym = ws.Sym.data();
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
    std::memcpy(dz, dH + t * Hp, sizeof(T) * Hp);
    std::fill(dp, dp + Hp, T(0));
    const int64_t base = (b * Tn + (t - 1)) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = (t - 1) * S + s;
      const T* zn = (s + 1 == S) ? hist + t * Hp : Z + (k + 1) * Hp;
      const T* xh = X + k * Hp;
      const T* zc = Z + k * Hp;
      const T r = io.rstd[base + s];
      // LayerNorm + activation backward
      for (int64_t i = 0; i < Hp; ++i) {
        const T d = dz[i] * dact<ACT>(zn[i]);
        dn[i] = d;
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
      // Attention part of A_t: a_tau = c_tau <h_tau, du>, b_tau = c_tau <h_tau, z_s>
      for (int64_t tau = 0; tau < t; ++tau) {
        const T c = sh.eta * sh.lam_pow[t - 1 - tau];
        const T* h = hist + tau * Hp;
        a[tau] = c * dot(h, du, Hp);
        bb[tau] = c * dot(h, zc, Hp);
      }
      // dz_s = A_t^T du = sum_tau a_tau h_tau + lam^t A_0^T du
      std::fill(dzn, dzn + Hp, T(0));
      matvec(hist, Hp, a, t, dzn, Hp);
      if (a0nz && lt != T(0)) {
        for (int64_t i = 0; i < H; ++i) val[i] = lt * du[i];
        matvec(A0p, Hp, val, H, dzn, Hp);
      }
      // dh_tau += a_tau z_s + b_tau du
      for (int64_t tau = 0; tau < t; ++tau) {
        T* d = dH + tau * Hp;
        const T at = a[tau], bt = bb[tau];
        for (int64_t i = 0; i < Hp; ++i) d[i] += at * zc[i] + bt * du[i];
      }
      if (io.dA0) {
        T* gk = G + k * Hp;
        for (int64_t i = 0; i < Hp; ++i) gk[i] = lt * du[i];
      }
      std::memcpy(dz, dzn, sizeof(T) * Hp);
    }
    // z_0 = f(p_t)
    const T* z0 = Z + ((t - 1) * S) * Hp;
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
      int64_t nnz = 0;
      for (int64_t kk = 0; kk < K; ++kk) {
        const T v = G[kk * Hp + i];
        idx[nnz] = static_cast<int32_t>(kk);
        val[nnz] = v;
        nnz += (v != T(0));
      }
      matvec_idx(Z, Hp, idx, val, nnz, row, Hp);
      std::memcpy(dA0 + i * H, row, sizeof(T) * H);
    }
  }
}

}  // namespace cpu
}  // namespace crnn
