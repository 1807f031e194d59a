// CUDA fast-weights forward and backward for small hidden sizes (H <= kWarpMaxHidden = 64):
// one warp per example, several examples (warps) per block.
//
// The block-per-example kernels of fastweights_cuda.cu spend a small-H step in block-wide
// barriers and reductions; here a warp holds the whole vector, so every reduction is a
// warp shuffle and every other synchronisation a __syncwarp. Lane l owns the hidden units
// l, l + 32, ... (R = ceil(H / 32) of them, in registers): its p, z, du, dz, dp, its LayerNorm
// terms and its column of the dH / dK accumulators (global workspaces, touched by that lane
// only). W (the forward stages W^T, the backward W, so that lanes read consecutive words)
// and the decay powers lam^k are staged in shared memory once per block; each warp has its
// own shared vectors (h, z, scores; du, z_s, dp, the two score vectors) and, where they fit,
// its key history key_0..key_{T-1} (rows padded to an odd stride: the lane-per-key score
// loop reads one column of it without bank conflicts).
//
// Same math and order of operations as the block kernels (attention form, see
// fastweights_cuda.cu): scores "lane per key" (lane l dots key_l, key_{l+32}, ... with the
// shared z), "lane per row" for W h, A_0 z, and the transposed products. The only
// block-wide barrier is the one after staging W; a block's warps then run independently
// (a warp without an example leaves after it).
//
// Included by fastweights_cuda.cu; CUDA and standard headers only.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fastweights_cuda_device.h"
#include "fastweights_params.h"

// The largest H the warp-per-example kernels take; larger H goes to the block kernels. The
// tests build the emulation with 0 too, to run the block kernels at small H.
#ifndef CRNN_CUDA_WARP_MAX_HIDDEN
#define CRNN_CUDA_WARP_MAX_HIDDEN 64
#endif

namespace crnn {
namespace cuda {
namespace warp {

constexpr int64_t kWarpMaxHidden = CRNN_CUDA_WARP_MAX_HIDDEN;
static_assert(kWarpMaxHidden <= 64, "a lane holds at most two hidden units");
// Examples (warps) per block at most.
constexpr int kMaxWarpsPerBlock = 8;

// Row stride of a shared key history: odd, so that 32 lanes reading one column of 32
// rows hit 32 banks.
__host__ __device__ inline int64_t key_stride(int64_t H) { return H | 1; }

// Shared memory, in elements of T: per block (lam powers), per warp (vectors and scores),
// and the optional parts (W per block, the key history per warp).
__host__ __device__ inline int64_t block_elems(int64_t Tn) { return Tn + 1; }
__host__ __device__ inline int64_t fwd_warp_elems(int64_t H, int64_t Tn) { return 2 * H + (Tn + 1); }
__host__ __device__ inline int64_t bwd_warp_elems(int64_t H, int64_t Tn) { return 3 * H + 2 * (Tn + 1); }
__host__ __device__ inline int64_t hist_elems(int64_t H, int64_t Tn) { return Tn * key_stride(H); }

using device::act;
using device::dact_mul;
using device::rsqrt_t;
using device::warp_or;
using device::warp_sum;

// Lane's r-th unit.
__device__ __forceinline__ int64_t unit(int lane, int r) { return lane + 32 * r; }

// A thread's place in a warp-per-example launch and its block's staged data.
template <typename T>
struct WarpSetup {
  int lane;
  int64_t b;  // the warp's example
  bool live;  // b < B: a block's last warps may have none
  T* lp;      // lam^0 .. lam^Tn, shared by the block
  T* W;       // W in shared memory (W^T where `transpose`), or unused
  T* mine;    // the warp's own shared area (warp_elems elements)
};

// Finds the thread's warp and example and stages, block-wide, the lam powers and (where
// w_in_smem) W; the caller's __syncthreads makes them visible.
template <typename T>
__device__ WarpSetup<T> setup_warp(int64_t B, int64_t H, int64_t Tn, double lam, const T* W, int w_in_smem,
                                   bool transpose, int64_t warp_elems) {
  CRNN_DYNAMIC_SMEM(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int warp = threadIdx.x >> 5;
  WarpSetup<T> w;
  w.lane = threadIdx.x & 31;
  w.b = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  w.live = w.b < B;
  w.lp = smem;
  w.W = w.lp + block_elems(Tn);
  w.mine = w.W + (w_in_smem ? H * H : 0) + warp * warp_elems;
  if (w_in_smem)
    for (int64_t k = threadIdx.x; k < H * H; k += blockDim.x) w.W[transpose ? (k % H) * H + k / H : k] = W[k];
  for (int64_t k = threadIdx.x; k <= Tn; k += blockDim.x) w.lp[k] = static_cast<T>(pow(lam, static_cast<double>(k)));
  return w;
}

template <typename T, int ACT, int R>
__global__ void __launch_bounds__(32 * kMaxWarpsPerBlock)
    warp_forward_kernel(FwdParams<T> p, int w_in_smem, int hist_in_smem) {
  const int64_t H = p.H, Tn = p.T_len, S = p.S, Hs = key_stride(H);
  // W^T staged (s_Wt[j * H + i] = W[i][j]: lanes of consecutive rows i read consecutive words)
  const WarpSetup<T> ws = setup_warp<T>(p.B, H, Tn, p.lam, p.W, w_in_smem, true,
                                        fwd_warp_elems(H, Tn) + (hist_in_smem ? hist_elems(H, Tn) : 0));
  const int lane = ws.lane;
  const int64_t b = ws.b;
  const bool live = ws.live;
  const bool save = p.zs != nullptr;
  const bool prelim = p.a_update == kPreliminary;
  const T* s_lp = ws.lp;
  T* s_h = ws.mine;
  T* s_z = s_h + H;
  T* s_sc = s_z + H;
  T* s_keys = s_sc + (Tn + 1);
  // W[i][j] = Wm[i * wi + j * wj], in shared memory or global
  const T* Wm = w_in_smem ? ws.W : p.W;
  const int64_t wi = w_in_smem ? 1 : H, wj = w_in_smem ? H : 1;

  const T* A0 = p.A0 + (live ? b : 0) * H * H;
  bool a0nz = false;
  if (live) {  // warp-uniform
    int nz = 0;
    for (int64_t k = lane; k < H * H; k += 32) nz |= (A0[k] != T(0));
    a0nz = warp_or(nz) != 0;
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = unit(lane, r);
      if (i >= H) continue;
      s_h[i] = p.h0[b * H + i];
      if (hist_in_smem && !prelim) s_keys[i] = s_h[i];
    }
  }
  __syncthreads();  // W, the lam powers and each warp's h_0 staged
  if (!live) return;

  auto key = [&](int64_t tau) -> const T* {  // key_tau
    if (hist_in_smem) return s_keys + tau * Hs;
    if (prelim) return p.keys + (b * Tn + tau) * H;
    return tau == 0 ? p.h0 + b * H : p.out + (b * Tn + tau - 1) * H;
  };
  T* const key_out = hist_in_smem ? s_keys : p.keys + b * Tn * H;  // where step t writes key_{t-1} (prelim)
  const int64_t key_out_stride = hist_in_smem ? Hs : H;

  const T eta = static_cast<T>(p.eta);
  const T eps = static_cast<T>(p.eps);
  const T invH = T(1) / static_cast<T>(H);
  T gamma[R], beta[R], pr[R], z[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = unit(lane, r);
    gamma[r] = i < H ? p.gamma[i] : T(0);
    beta[r] = i < H ? p.beta[i] : T(0);
    z[r] = T(0);
  }
  const int64_t L = p.lengths ? p.lengths[b] : Tn;  // the example's steps; Tn: the row stride

  for (int64_t t = 1; t <= L; ++t) {
    const T* xpt = p.xp + (b * Tn + t - 1) * H;
    // p = W h_{t-1} + xp_t, lane per row; h_{t-1} from the warp's shared copy
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = unit(lane, r);
      pr[r] = z[r] = T(0);
      if (i >= H) continue;
      T acc = T(0);
      for (int64_t j = 0; j < H; ++j) acc += Wm[i * wi + j * wj] * s_h[j];
      pr[r] = acc + xpt[i];
      z[r] = act<ACT>(pr[r]);
      if (prelim) key_out[(t - 1) * key_out_stride + i] = z[r];  // k_t = f(p_t) = key_{t-1}
    }
    const T lt = s_lp[t];
    const bool use_a0 = a0nz && lt != T(0);
    const int64_t base = (b * Tn + t - 1) * S;
    for (int64_t s = 0; s < S; ++s) {
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        if (i >= H) continue;
        if (save) p.zs[(base + s) * H + i] = z[r];
        s_z[i] = z[r];
      }
      __syncwarp();  // z (and a new key) visible to the warp
      // scores eta lam^(t-1-tau) <key_tau, z>, lane per tau
      for (int64_t tau = lane; tau < t; tau += 32) {
        const T* k = key(tau);
        T acc = T(0);
        for (int64_t j = 0; j < H; ++j) acc += k[j] * s_z[j];
        s_sc[tau] = eta * s_lp[t - 1 - tau] * acc;
      }
      // lam^t A_0 z, lane per row
      T az[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        az[r] = T(0);
        if (!use_a0 || i >= H) continue;
        T acc = T(0);
        for (int64_t j = 0; j < H; ++j) acc += A0[i * H + j] * s_z[j];
        az[r] = lt * acc;
      }
      __syncwarp();  // scores visible; every read of s_z for this inner step is done
      T u[R], m = T(0);
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        u[r] = T(0);
        if (i >= H) continue;
        u[r] = pr[r] + (use_a0 ? az[r] : T(0));
        for (int64_t tau = 0; tau < t; ++tau) u[r] += s_sc[tau] * key(tau)[i];
        m += u[r];
      }
      // LayerNorm over the H units (two passes), then the activation
      const T mu = warp_sum(m) * invH;
      T v = T(0);
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        u[r] = unit(lane, r) < H ? u[r] - mu : T(0);
        v += u[r] * u[r];
      }
      const T rs = rsqrt_t<T>(warp_sum(v) * invH + eps);
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        if (i >= H) continue;
        const T xh = u[r] * rs;
        z[r] = act<ACT>(gamma[r] * xh + beta[r]);
        if (save) p.xhat[(base + s) * H + i] = xh;
      }
      if (save && lane == 0) p.rstd[base + s] = rs;
    }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = unit(lane, r);
      if (i >= H) continue;
      p.out[(b * Tn + t - 1) * H + i] = z[r];
      s_h[i] = z[r];  // every read of s_h for this step came before the inner loop's first __syncwarp
      if (hist_in_smem && !prelim && t < L) s_keys[t * Hs + i] = z[r];
    }
    __syncwarp();  // h_t visible to the warp (shared or global) before step t+1
  }

  // After the example's end: zero outputs and saved rows.
  for (int64_t k = lane; k < (Tn - L) * H; k += 32) p.out[(b * Tn + L) * H + k] = T(0);
  if (save) {
    for (int64_t k = lane; k < (Tn - L) * S * H; k += 32) {
      p.zs[(b * Tn + L) * S * H + k] = T(0);
      p.xhat[(b * Tn + L) * S * H + k] = T(0);
    }
    for (int64_t k = lane; k < (Tn - L) * S; k += 32) p.rstd[(b * Tn + L) * S + k] = T(0);
  }

  // A_L = lam^L A_0 + sum_{tau<L} eta lam^(L-1-tau) key_tau key_tau^T after the example's L steps
  if (p.AT == nullptr) return;
  const T lL = s_lp[L];
  T* AT = p.AT + b * H * H;
  for (int64_t k = lane; k < H * H; k += 32) {
    const int64_t i = k / H, j = k % H;
    T v = a0nz ? lL * A0[k] : T(0);
    for (int64_t tau = 0; tau < L; ++tau) {
      const T* h = key(tau);
      v += eta * s_lp[L - 1 - tau] * h[i] * h[j];
    }
    AT[k] = v;
  }
}

template <typename T, int ACT, int R>
__global__ void __launch_bounds__(32 * kMaxWarpsPerBlock)
    warp_backward_kernel(BwdParams<T> p, int w_in_smem, int hist_in_smem) {
  const int64_t H = p.H, Tn = p.T_len, S = p.S, Hs = key_stride(H);
  // W staged as it is (lanes of consecutive columns read consecutive words)
  const WarpSetup<T> ws = setup_warp<T>(p.B, H, Tn, p.lam, p.W, w_in_smem, false,
                                        bwd_warp_elems(H, Tn) + (hist_in_smem ? hist_elems(H, Tn) : 0));
  const int lane = ws.lane;
  const int64_t b = ws.b;
  const bool live = ws.live;
  const bool prelim = p.a_update == kPreliminary;
  const T* s_lp = ws.lp;
  T* s_du = ws.mine;
  T* s_zc = s_du + H;
  T* s_dp = s_zc + H;
  T* s_a = s_dp + H;
  T* s_b = s_a + (Tn + 1);
  T* s_keys = s_b + (Tn + 1);
  const T* Wm = w_in_smem ? ws.W : p.W;

  const int64_t bb = live ? b : 0;
  const T* A0 = p.A0 + bb * H * H;
  const T* gA = p.gAT ? p.gAT + bb * H * H : nullptr;
  auto key_global = [&](int64_t tau) -> const T* {  // key_tau: h_tau, or z_0 of step tau+1
    if (prelim) return p.zs + ((b * Tn + tau) * S) * H;
    return tau == 0 ? p.h0 + b * H : p.out + (b * Tn + tau - 1) * H;
  };
  const int64_t L = live ? (p.lengths ? p.lengths[b] : Tn) : 0;  // the example's steps
  bool a0nz = false, ganz = false;
  if (live) {  // warp-uniform
    int nz = 0, gnz = 0;
    for (int64_t k = lane; k < H * H; k += 32) {
      nz |= (A0[k] != T(0));
      if (gA) gnz |= (gA[k] != T(0));
    }
    a0nz = warp_or(nz) != 0;
    ganz = warp_or(gnz) != 0;
    if (hist_in_smem)
      for (int64_t tau = 0; tau < L; ++tau)
        #pragma unroll
        for (int r = 0; r < R; ++r)
          if (unit(lane, r) < H) s_keys[tau * Hs + unit(lane, r)] = key_global(tau)[unit(lane, r)];
  }
  __syncthreads();  // W, the lam powers and each warp's keys staged
  if (!live) return;

  auto key = [&](int64_t tau) -> const T* { return hist_in_smem ? s_keys + tau * Hs : key_global(tau); };
  T* dH = p.dH + b * (Tn + 1) * H;  // dH[tau * H + i]: touched by unit i's lane only
  T* dK = prelim ? p.dK + b * Tn * H : dH;  // d loss / d key_tau, same ownership
  const T eta = static_cast<T>(p.eta);
  const T invH = T(1) / static_cast<T>(H);

  // dH[t] = grad of h_t from the outputs, plus the A_L term eta lam^(L-1-tau) (gA + gA^T) key_tau
  T gamma[R], dgam[R], dbet[R];
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = unit(lane, r);
    gamma[r] = i < H ? p.gamma[i] : T(0);
    dgam[r] = dbet[r] = T(0);
    if (i >= H) continue;
    dH[i] = T(0);
    for (int64_t t = 1; t <= L; ++t) dH[t * H + i] = p.gout ? p.gout[(b * Tn + t - 1) * H + i] : T(0);
    if (prelim)
      for (int64_t tau = 0; tau < L; ++tau) dK[tau * H + i] = T(0);
    if (!ganz) continue;
    for (int64_t tau = 0; tau < L; ++tau) {
      const T* h = key(tau);
      T acc_t = T(0), acc = T(0);  // (gA^T h)_i, (gA h)_i
      for (int64_t j = 0; j < H; ++j) {
        acc_t += gA[j * H + i] * h[j];
        acc += gA[i * H + j] * h[j];
      }
      const T c = eta * s_lp[L - 1 - tau];
      dK[tau * H + i] += c * acc_t;
      dK[tau * H + i] += c * acc;
    }
  }

  for (int64_t t = L; t >= 1; --t) {
    const T lt = s_lp[t];
    const bool use_a0 = a0nz && lt != T(0);
    T dz[R], dp[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      dz[r] = unit(lane, r) < H ? dH[t * H + unit(lane, r)] : T(0);
      dp[r] = T(0);
    }
    const int64_t base = (b * Tn + t - 1) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = base + s;
      const T rs = p.rstd[k];
      T xh[R], zc[R], g[R], m1 = T(0), m2 = T(0);
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        xh[r] = zc[r] = g[r] = T(0);
        if (i >= H) continue;
        const T zn = (s + 1 == S) ? p.out[(b * Tn + t - 1) * H + i] : p.zs[(k + 1) * H + i];
        xh[r] = p.xhat[k * H + i];
        zc[r] = p.zs[k * H + i];
        const T d = dact_mul<ACT>(zn, dz[r]);
        dgam[r] += d * xh[r];
        dbet[r] += d;
        g[r] = gamma[r] * d;
        m1 += g[r];
        m2 += g[r] * xh[r];
      }
      m1 = warp_sum(m1);
      m2 = warp_sum(m2);
      T du[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        du[r] = T(0);
        if (i >= H) continue;
        du[r] = rs * (g[r] - m1 * invH - xh[r] * m2 * invH);
        dp[r] += du[r];
        s_du[i] = du[r];
        s_zc[i] = zc[r];
      }
      __syncwarp();  // du and z_s visible to the warp
      // a_tau = c_tau <key_tau, du>, b_tau = c_tau <key_tau, z_s>, lane per tau
      for (int64_t tau = lane; tau < t; tau += 32) {
        const T* h = key(tau);
        T acc_a = T(0), acc_b = T(0);
        for (int64_t j = 0; j < H; ++j) {
          acc_a += h[j] * s_du[j];
          acc_b += h[j] * s_zc[j];
        }
        const T c = eta * s_lp[t - 1 - tau];
        s_a[tau] = c * acc_a;
        s_b[tau] = c * acc_b;
      }
      // lam^t (A_0^T du)_i, lane per column
      T a0du[R];
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        a0du[r] = T(0);
        if (!use_a0 || i >= H) continue;
        T acc = T(0);
        for (int64_t j = 0; j < H; ++j) acc += A0[j * H + i] * s_du[j];
        a0du[r] = lt * acc;
      }
      __syncwarp();  // a, b visible; every read of s_du and s_zc for this inner step is done
      #pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t i = unit(lane, r);
        if (i >= H) continue;
        T dzn = T(0);
        for (int64_t tau = 0; tau < t; ++tau) {
          dzn += s_a[tau] * key(tau)[i];
          dK[tau * H + i] += s_a[tau] * zc[r] + s_b[tau] * du[r];
        }
        if (use_a0) dzn += a0du[r];
        if (p.G) p.G[k * H + i] = lt * du[r];
        dz[r] = dzn;
      }
    }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = unit(lane, r);
      if (i >= H) continue;
      const T z0 = p.zs[base * H + i];
      // for kPreliminary z_0 is also the key k_t = key_{t-1}; its gradient is complete here
      if (prelim) dz[r] += dK[(t - 1) * H + i];
      dp[r] += dact_mul<ACT>(z0, dz[r]);
      p.dxp[(b * Tn + t - 1) * H + i] = dp[r];
      s_dp[i] = dp[r];
    }
    __syncwarp();  // dp visible to the warp
    #pragma unroll
    for (int r = 0; r < R; ++r) {  // dh_{t-1} += W^T dp, lane per column
      const int64_t i = unit(lane, r);
      if (i >= H) continue;
      T acc = T(0);
      for (int64_t j = 0; j < H; ++j) acc += Wm[j * H + i] * s_dp[j];
      dH[(t - 1) * H + i] += acc;
    }
  }
  #pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = unit(lane, r);
    if (i >= H) continue;
    p.dh0[b * H + i] = dH[i];
    p.dgamma_part[b * H + i] = dgam[r];
    p.dbeta_part[b * H + i] = dbet[r];
  }
  // After the example's end: dxp is zero, and so is G (dA_0 = G^T zs reads every row).
  for (int64_t k = lane; k < (Tn - L) * H; k += 32) p.dxp[(b * Tn + L) * H + k] = T(0);
  if (p.G)
    for (int64_t k = lane; k < (Tn - L) * S * H; k += 32) p.G[(b * Tn + L) * S * H + k] = T(0);
}

// Launch geometry and shared memory of one call.
struct WarpPlan {
  size_t bytes;
  int warps_per_block, w_in_smem, hist_in_smem;
};

// Examples per block: enough blocks to cover the multiprocessors first (one warp each for a
// batch up to their count), then up to kMaxWarpsPerBlock per block, fewer where their
// shared vectors would not fit; then W, then the key histories, where they fit.
template <typename T>
cudaError_t plan_warp(int64_t warp_elems, int64_t B, int64_t H, int64_t Tn, WarpPlan* plan) {
  size_t limit = 0;
  int sms = 1;
  const cudaError_t err = device_limits(&limit, &sms);
  if (err != cudaSuccess) return err;
  const size_t sz = sizeof(T);
  int64_t wpb = (B + sms - 1) / sms;
  wpb = wpb < 1 ? 1 : (wpb > kMaxWarpsPerBlock ? kMaxWarpsPerBlock : wpb);
  while (wpb > 1 && static_cast<size_t>(block_elems(Tn) + wpb * warp_elems) * sz > limit) --wpb;
  size_t bytes = static_cast<size_t>(block_elems(Tn) + wpb * warp_elems) * sz;
  const size_t w_bytes = static_cast<size_t>(H * H) * sz;
  const size_t h_bytes = static_cast<size_t>(wpb * hist_elems(H, Tn)) * sz;
  plan->w_in_smem = bytes + w_bytes <= limit;
  if (plan->w_in_smem) bytes += w_bytes;
  plan->hist_in_smem = bytes + h_bytes <= limit;
  if (plan->hist_in_smem) bytes += h_bytes;
  plan->bytes = bytes;
  plan->warps_per_block = static_cast<int>(wpb);
  return bytes <= limit ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename T, typename Params>
cudaError_t launch_warp(void (*kernel)(Params, int, int), int64_t warp_elems, const Params& p,
                        cudaStream_t stream) {
  WarpPlan plan;
  cudaError_t err = plan_warp<T>(warp_elems, p.B, p.H, p.T_len, &plan);
  if (err != cudaSuccess) return err;
  err = allow_smem(kernel, plan.bytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks = (p.B + plan.warps_per_block - 1) / plan.warps_per_block;
  CRNN_LAUNCH(kernel, static_cast<unsigned>(blocks), 32 * plan.warps_per_block, plan.bytes, stream, p,
              plan.w_in_smem, plan.hist_in_smem);
  return cudaGetLastError();
}

// Forward / backward of one call with H <= kWarpMaxHidden.
template <typename T, int ACT>
cudaError_t forward(const FwdParams<T>& p, cudaStream_t stream) {
  const int64_t e = fwd_warp_elems(p.H, p.T_len);
  return p.H <= 32 ? launch_warp<T>(warp_forward_kernel<T, ACT, 1>, e, p, stream)
                   : launch_warp<T>(warp_forward_kernel<T, ACT, 2>, e, p, stream);
}

template <typename T, int ACT>
cudaError_t backward(const BwdParams<T>& p, cudaStream_t stream) {
  const int64_t e = bwd_warp_elems(p.H, p.T_len);
  return p.H <= 32 ? launch_warp<T>(warp_backward_kernel<T, ACT, 1>, e, p, stream)
                   : launch_warp<T>(warp_backward_kernel<T, ACT, 2>, e, p, stream);
}

}  // namespace warp
}  // namespace cuda
}  // namespace crnn
