// CUDA fast-weights forward and backward (Ba et al. 2016), persistent over the sequence.
//
// One launch per direction for the whole sequence. Small H (<= 64) runs one warp per
// example (fastweights_cuda_warp.h); the kernels here run one block per example, one thread
// per hidden unit (blockDim = H rounded up to a warp, H <= kMaxHidden). W, the
// per-step vectors, the score vectors and, where they fit, the history h_0..h_T live
// in shared memory; everything a thread owns (its unit's p, z, du, dz, dp, and its
// column of the gradient accumulator dH) stays in registers or is touched by that
// thread only, so the only barriers are around shared vectors and block reductions.
//
// Same math as the CPU kernel (see fastweights_cpu_kernel.h): A_t is never formed;
// A_t z = lam^t A_0 z + sum_{tau<t} eta lam^(t-1-tau) key_tau (key_tau . z), where the key
// history is h_0..h_{T-1} (a_update = kPrevious) or the preliminary vectors f(p_1)..f(p_T)
// (kPreliminary: kept in p.keys by the forward, read from the saved z_0's by the backward,
// with their gradient accumulated in p.dK).
// Matrix-vector products are "warp per row" (coalesced rows, shuffle reduction) when
// the row index is the output, and "thread per column" when the column is.
//
// Includes only CUDA and standard headers: compile-check with
//   nvcc -std=c++17 -arch=sm_90 -c csrc/fastweights_cuda.cu -o /tmp/fw.o
// The tests also compile this file as plain C++ against a CPU emulation of the CUDA
// runtime (tests/cuda_emu): the two hooks in fastweights_cuda_device.h, the dynamic
// shared-memory declaration and the launch, are all it replaces.
#include "fastweights_cuda.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "fastweights_cuda_device.h"
#include "fastweights_cuda_warp.h"

namespace crnn {
namespace cuda {
namespace {

using device::act;
using device::dact_mul;
using device::rsqrt_t;
using device::warp_sum;

// Block-wide sums of a and b (blockDim.x is a multiple of 32); every thread gets both.
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();  // red may still be read from the previous reduction
  if (lane == 0) {
    red[warp] = a;
    red[32 + warp] = b;
  }
  __syncthreads();
  T sa = T(0), sb = T(0);
  for (int k = 0; k < nw; ++k) {
    sa += red[k];
    sb += red[32 + k];
  }
  a = sa;
  b = sb;
}

// Shared memory sizes (in elements of T).
__host__ __device__ inline int64_t fwd_base_elems(int64_t H, int64_t Tn) {
  return 3 * H + 2 * (Tn + 1) + 64;  // z, p, az | scores, lam powers | reduction scratch
}
__host__ __device__ inline int64_t bwd_base_elems(int64_t H, int64_t Tn) {
  return 3 * H + 3 * (Tn + 1) + 64;  // du, zc, dp | a, b, lam powers | reduction scratch
}

template <typename T, int ACT>
__global__ void __launch_bounds__(1024) fastweights_forward_kernel(FwdParams<T> p, int w_in_smem, int hist_in_smem) {
  CRNN_DYNAMIC_SMEM(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int64_t H = p.H, Tn = p.T_len, S = p.S;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
  const bool active = tid < H;
  const bool save = p.zs != nullptr;

  T* s_z = smem;
  T* s_p = s_z + H;
  T* s_az = s_p + H;
  T* s_sc = s_az + H;
  T* s_lp = s_sc + (Tn + 1);
  T* s_red = s_lp + (Tn + 1);
  T* s_W = s_red + 64;
  T* s_hist = s_W + (w_in_smem ? H * H : 0);

  const T* A0 = p.A0 + b * H * H;
  const T* Wm = w_in_smem ? s_W : p.W;
  auto hrow = [&](int64_t tau) -> const T* {
    if (hist_in_smem) return s_hist + tau * H;
    return tau == 0 ? p.h0 + b * H : p.out + (b * Tn + tau - 1) * H;
  };
  const bool prelim = p.a_update == kPreliminary;
  auto krow = [&](int64_t tau) -> const T* {  // key_tau
    return prelim ? p.keys + (b * Tn + tau) * H : hrow(tau);
  };

  if (w_in_smem)
    for (int64_t k = tid; k < H * H; k += nt) s_W[k] = p.W[k];
  if (hist_in_smem && active) s_hist[tid] = p.h0[b * H + tid];
  for (int64_t k = tid; k <= Tn; k += nt) s_lp[k] = static_cast<T>(pow(p.lam, static_cast<double>(k)));
  int nz = 0;
  for (int64_t k = tid; k < H * H; k += nt) nz |= (A0[k] != T(0));
  const bool a0nz = __syncthreads_or(nz) != 0;  // also the barrier for the loads above

  const T gamma = active ? p.gamma[tid] : T(0);
  const T beta = active ? p.beta[tid] : T(0);
  const T eta = static_cast<T>(p.eta);
  const T eps = static_cast<T>(p.eps);
  const T invH = T(1) / static_cast<T>(H);
  T zi = T(0);
  const int64_t L = p.lengths ? p.lengths[b] : Tn;  // the example's steps; Tn: the row stride

  for (int64_t t = 1; t <= L; ++t) {
    const T* hprev = hrow(t - 1);
    const T* xpt = p.xp + (b * Tn + t - 1) * H;
    // p = W h_{t-1} + xp_t, warp per row
    for (int64_t i = warp; i < H; i += nw) {
      T acc = T(0);
      for (int64_t j = lane; j < H; j += 32) acc += Wm[i * H + j] * hprev[j];
      acc = warp_sum(acc);
      if (lane == 0) s_p[i] = acc + xpt[i];
    }
    __syncthreads();
    const T pi = active ? s_p[tid] : T(0);
    zi = active ? act<ACT>(pi) : T(0);
    if (active) s_z[tid] = zi;
    if (prelim && active) p.keys[(b * Tn + t - 1) * H + tid] = zi;  // k_t = f(p_t) = key_{t-1}
    __syncthreads();
    const T lt = s_lp[t];
    const int64_t base = (b * Tn + t - 1) * S;
    for (int64_t s = 0; s < S; ++s) {
      if (save && active) p.zs[(base + s) * H + tid] = zi;
      // scores eta lam^(t-1-tau) <h_tau, z>, warp per tau
      for (int64_t tau = warp; tau < t; tau += nw) {
        const T* h = krow(tau);
        T acc = T(0);
        for (int64_t j = lane; j < H; j += 32) acc += h[j] * s_z[j];
        acc = warp_sum(acc);
        if (lane == 0) s_sc[tau] = eta * s_lp[t - 1 - tau] * acc;
      }
      // lam^t A_0 z, warp per row
      if (a0nz && lt != T(0)) {
        for (int64_t i = warp; i < H; i += nw) {
          T acc = T(0);
          for (int64_t j = lane; j < H; j += 32) acc += A0[i * H + j] * s_z[j];
          acc = warp_sum(acc);
          if (lane == 0) s_az[i] = lt * acc;
        }
      }
      __syncthreads();
      T u = T(0);
      if (active) {
        u = pi + ((a0nz && lt != T(0)) ? s_az[tid] : T(0));
        for (int64_t tau = 0; tau < t; ++tau) u += s_sc[tau] * krow(tau)[tid];
      }
      // LayerNorm over the H units (two passes), then the activation
      T m = active ? u : T(0), unused = T(0);
      block_sum2(m, unused, s_red);
      const T mu = m * invH;
      const T d = active ? u - mu : T(0);
      T v = d * d;
      unused = T(0);
      block_sum2(v, unused, s_red);
      const T r = rsqrt_t<T>(v * invH + eps);
      const T xh = d * r;
      zi = active ? act<ACT>(gamma * xh + beta) : T(0);
      if (save) {
        if (active) p.xhat[(base + s) * H + tid] = xh;
        if (tid == 0) p.rstd[base + s] = r;
      }
      // All reads of s_z, s_sc and s_az for this inner step came before the barriers in
      // block_sum2, so s_z can be rewritten at once.
      if (active) s_z[tid] = zi;
      __syncthreads();
    }
    if (active) {
      p.out[(b * Tn + t - 1) * H + tid] = zi;
      if (hist_in_smem) s_hist[t * H + tid] = zi;
    }
    __syncthreads();  // h_t visible to the block (shared or global) before step t+1
  }

  // After the example's end: zero outputs and saved rows.
  for (int64_t k = tid; k < (Tn - L) * H; k += nt) p.out[(b * Tn + L) * H + k] = T(0);
  if (save) {
    for (int64_t k = tid; k < (Tn - L) * S * H; k += nt) {
      p.zs[(b * Tn + L) * S * H + k] = T(0);
      p.xhat[(b * Tn + L) * S * H + k] = T(0);
    }
    for (int64_t k = tid; k < (Tn - L) * S; k += nt) p.rstd[(b * Tn + L) * S + k] = T(0);
  }

  // A_L = lam^L A_0 + sum_{tau<L} eta lam^(L-1-tau) h_tau h_tau^T after the example's L steps
  if (p.AT == nullptr) return;  // A_T not wanted (final_state=False); no barrier follows
  const T lT = s_lp[L];
  T* AT = p.AT + b * H * H;
  for (int64_t k = tid; k < H * H; k += nt) {
    const int64_t i = k / H, j = k % H;
    T v = a0nz ? lT * A0[k] : T(0);
    for (int64_t tau = 0; tau < L; ++tau) {
      const T* h = krow(tau);
      v += eta * s_lp[L - 1 - tau] * h[i] * h[j];
    }
    AT[k] = v;
  }
}

template <typename T, int ACT>
__global__ void __launch_bounds__(1024) fastweights_backward_kernel(BwdParams<T> p, int w_in_smem, int hist_in_smem) {
  CRNN_DYNAMIC_SMEM(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int64_t H = p.H, Tn = p.T_len, S = p.S;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
  const bool active = tid < H;

  T* s_du = smem;
  T* s_zc = s_du + H;
  T* s_dp = s_zc + H;
  T* s_a = s_dp + H;
  T* s_b = s_a + (Tn + 1);
  T* s_lp = s_b + (Tn + 1);
  T* s_red = s_lp + (Tn + 1);
  T* s_W = s_red + 64;
  T* s_hist = s_W + (w_in_smem ? H * H : 0);

  const T* A0 = p.A0 + b * H * H;
  const T* gA = p.gAT ? p.gAT + b * H * H : nullptr;
  const T* Wm = w_in_smem ? s_W : p.W;
  T* dH = p.dH + b * (Tn + 1) * H;  // dH[tau*H + j] is only ever touched by thread j, except at init
  auto hrow = [&](int64_t tau) -> const T* {
    if (hist_in_smem) return s_hist + tau * H;
    return tau == 0 ? p.h0 + b * H : p.out + (b * Tn + tau - 1) * H;
  };
  const bool prelim = p.a_update == kPreliminary;
  auto krow = [&](int64_t tau) -> const T* {  // key_tau: h_tau, or z_0 of step tau+1
    return prelim ? p.zs + ((b * Tn + tau) * S) * H : hrow(tau);
  };
  T* dK = prelim ? p.dK + b * Tn * H : dH;  // d loss / d key_tau, same ownership as dH

  if (w_in_smem)
    for (int64_t k = tid; k < H * H; k += nt) s_W[k] = p.W[k];
  const int64_t L = p.lengths ? p.lengths[b] : Tn;  // the example's steps; Tn: the row stride
  if (hist_in_smem && active) {
    s_hist[tid] = p.h0[b * H + tid];
    for (int64_t t = 1; t <= L; ++t) s_hist[t * H + tid] = p.out[(b * Tn + t - 1) * H + tid];
  }
  for (int64_t k = tid; k <= Tn; k += nt) s_lp[k] = static_cast<T>(pow(p.lam, static_cast<double>(k)));
  int nz = 0, gnz = 0;
  for (int64_t k = tid; k < H * H; k += nt) {
    nz |= (A0[k] != T(0));
    if (gA) gnz |= (gA[k] != T(0));
  }
  const bool a0nz = __syncthreads_or(nz) != 0;
  const bool ganz = __syncthreads_or(gnz) != 0;
  const T eta = static_cast<T>(p.eta);
  const T invH = T(1) / static_cast<T>(H);

  // dH[t] = grad of h_t from the outputs, plus the A_L term eta lam^(L-1-tau) (gA + gA^T) h_tau
  if (active) {
    dH[tid] = T(0);
    for (int64_t t = 1; t <= L; ++t)
      dH[t * H + tid] = p.gout ? p.gout[(b * Tn + t - 1) * H + tid] : T(0);
    if (prelim)
      for (int64_t tau = 0; tau < L; ++tau) dK[tau * H + tid] = T(0);
    if (ganz) {
      for (int64_t tau = 0; tau < L; ++tau) {  // (gA^T h)_j = sum_i gA[i][j] h_i, thread per column
        const T* h = krow(tau);
        T acc = T(0);
        for (int64_t i = 0; i < H; ++i) acc += gA[i * H + tid] * h[i];
        dK[tau * H + tid] += eta * s_lp[L - 1 - tau] * acc;
      }
    }
  }
  __syncthreads();
  if (ganz) {
    for (int64_t tau = 0; tau < L; ++tau) {  // (gA h)_j, warp per row j
      const T* h = krow(tau);
      for (int64_t j = warp; j < H; j += nw) {
        T acc = T(0);
        for (int64_t i = lane; i < H; i += 32) acc += gA[j * H + i] * h[i];
        acc = warp_sum(acc);
        if (lane == 0) dK[tau * H + j] += eta * s_lp[L - 1 - tau] * acc;
      }
    }
  }
  __syncthreads();

  const T gamma = active ? p.gamma[tid] : T(0);
  T dgam = T(0), dbet = T(0);
  for (int64_t t = L; t >= 1; --t) {
    const T lt = s_lp[t];
    T dz = active ? dH[t * H + tid] : T(0);
    T dp = T(0);
    const int64_t base = (b * Tn + t - 1) * S;
    for (int64_t s = S - 1; s >= 0; --s) {
      const int64_t k = base + s;
      T zn = T(0), xh = T(0), zc = T(0);
      if (active) {
        zn = (s + 1 == S) ? hrow(t)[tid] : p.zs[(k + 1) * H + tid];
        xh = p.xhat[k * H + tid];
        zc = p.zs[k * H + tid];
      }
      const T r = p.rstd[k];
      const T d = dact_mul<ACT>(zn, dz);
      dgam += d * xh;
      dbet += d;
      const T g = gamma * d;
      T m1 = g, m2 = g * xh;
      block_sum2(m1, m2, s_red);
      const T du = active ? r * (g - m1 * invH - xh * m2 * invH) : T(0);
      dp += du;
      if (active) {
        s_du[tid] = du;
        s_zc[tid] = zc;
      }
      __syncthreads();
      // a_tau = c_tau <h_tau, du>, b_tau = c_tau <h_tau, z_s>, warp per tau
      for (int64_t tau = warp; tau < t; tau += nw) {
        const T* h = krow(tau);
        T acc_a = T(0), acc_b = T(0);
        for (int64_t j = lane; j < H; j += 32) {
          acc_a += h[j] * s_du[j];
          acc_b += h[j] * s_zc[j];
        }
        acc_a = warp_sum(acc_a);
        acc_b = warp_sum(acc_b);
        if (lane == 0) {
          const T c = eta * s_lp[t - 1 - tau];
          s_a[tau] = c * acc_a;
          s_b[tau] = c * acc_b;
        }
      }
      __syncthreads();
      T dzn = T(0);
      if (active) {
        for (int64_t tau = 0; tau < t; ++tau) {
          dzn += s_a[tau] * krow(tau)[tid];
          dK[tau * H + tid] += s_a[tau] * zc + s_b[tau] * du;
        }
        if (a0nz && lt != T(0)) {  // (A_0^T du)_j, thread per column
          T acc = T(0);
          for (int64_t i = 0; i < H; ++i) acc += A0[i * H + tid] * s_du[i];
          dzn += lt * acc;
        }
        if (p.G) p.G[k * H + tid] = lt * du;
      }
      dz = dzn;
      // No barrier here: s_du, s_zc, s_a and s_b are next written after the first barrier
      // of the next step's block_sum2 (or after the s_dp barrier below).
    }
    const T z0 = active ? p.zs[base * H + tid] : T(0);
    // for kPreliminary z_0 is also the key k_t = key_{t-1}; its gradient is complete here
    if (prelim && active) dz += dK[(t - 1) * H + tid];
    dp += dact_mul<ACT>(z0, dz);
    if (active) {
      p.dxp[(b * Tn + t - 1) * H + tid] = dp;
      s_dp[tid] = dp;
    }
    __syncthreads();
    if (active) {  // dh_{t-1} += W^T dp, thread per column
      T acc = T(0);
      for (int64_t i = 0; i < H; ++i) acc += Wm[i * H + tid] * s_dp[i];
      dH[(t - 1) * H + tid] += acc;
    }
    __syncthreads();
  }
  if (active) {
    p.dh0[b * H + tid] = dH[tid];
    p.dgamma_part[b * H + tid] = dgam;
    p.dbeta_part[b * H + tid] = dbet;
  }
  // After the example's end: dxp is zero, and so is G (dA_0 = G^T zs reads every row).
  for (int64_t k = tid; k < (Tn - L) * H; k += nt) p.dxp[(b * Tn + L) * H + k] = T(0);
  if (p.G)
    for (int64_t k = tid; k < (Tn - L) * S * H; k += nt) p.G[(b * Tn + L) * S * H + k] = T(0);
}

struct SmemPlan {
  size_t bytes;
  int w_in_smem, hist_in_smem;
};

template <typename T>
cudaError_t plan_smem(int64_t base_elems, int64_t H, int64_t Tn, SmemPlan* plan) {
  int dev = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  const size_t limit = static_cast<size_t>(optin);
  size_t bytes = static_cast<size_t>(base_elems) * sizeof(T);
  const size_t w_bytes = static_cast<size_t>(H * H) * sizeof(T);
  const size_t h_bytes = static_cast<size_t>((Tn + 1) * H) * sizeof(T);
  plan->w_in_smem = bytes + w_bytes <= limit;
  if (plan->w_in_smem) bytes += w_bytes;
  plan->hist_in_smem = bytes + h_bytes <= limit;
  if (plan->hist_in_smem) bytes += h_bytes;
  plan->bytes = bytes;
  return bytes <= limit ? cudaSuccess : cudaErrorInvalidValue;
}

inline int threads_for(int64_t H) { return static_cast<int>((H + 31) / 32 * 32); }

// Plans shared memory for one block per sequence, raises the block's shared-memory limit
// where the plan needs more than the default 48 KiB, and launches `kernel` on `p`.
template <typename T, typename Params>
cudaError_t launch_planned(void (*kernel)(Params, int, int), int64_t base_elems, const Params& p,
                           cudaStream_t stream) {
  SmemPlan plan;
  cudaError_t err = plan_smem<T>(base_elems, p.H, p.T_len, &plan);
  if (err != cudaSuccess) return err;
  err = allow_smem(kernel, plan.bytes);
  if (err != cudaSuccess) return err;
  CRNN_LAUNCH(kernel, static_cast<unsigned>(p.B), threads_for(p.H), plan.bytes, stream, p,
              plan.w_in_smem, plan.hist_in_smem);
  return cudaGetLastError();
}

// H <= warp::kWarpMaxHidden: one warp per example (fastweights_cuda_warp.h); else one block.
template <typename T, int ACT>
cudaError_t forward_impl(const FwdParams<T>& p, cudaStream_t stream) {
  if (p.H <= warp::kWarpMaxHidden) return warp::forward<T, ACT>(p, stream);
  return launch_planned<T>(fastweights_forward_kernel<T, ACT>, fwd_base_elems(p.H, p.T_len), p, stream);
}

template <typename T, int ACT>
cudaError_t backward_impl(const BwdParams<T>& p, cudaStream_t stream) {
  if (p.H <= warp::kWarpMaxHidden) return warp::backward<T, ACT>(p, stream);
  return launch_planned<T>(fastweights_backward_kernel<T, ACT>, bwd_base_elems(p.H, p.T_len), p, stream);
}

}  // namespace

template <typename T>
cudaError_t launch_forward(const FwdParams<T>& p, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  if (p.B < 0 || p.B > kMaxBatch || p.H < 1 || p.H > kMaxHidden || p.T_len < 1 ||
      p.T_len > kMaxLength || p.S < 1)
    return cudaErrorInvalidValue;
  return p.act == kRelu ? forward_impl<T, kRelu>(p, stream) : forward_impl<T, kTanh>(p, stream);
}

template <typename T>
cudaError_t launch_backward(const BwdParams<T>& p, cudaStream_t stream) {
  if (p.B == 0) return cudaSuccess;
  if (p.B < 0 || p.B > kMaxBatch || p.H < 1 || p.H > kMaxHidden || p.T_len < 1 ||
      p.T_len > kMaxLength || p.S < 1)
    return cudaErrorInvalidValue;
  return p.act == kRelu ? backward_impl<T, kRelu>(p, stream) : backward_impl<T, kTanh>(p, stream);
}

template cudaError_t launch_forward<float>(const FwdParams<float>&, cudaStream_t);
template cudaError_t launch_forward<double>(const FwdParams<double>&, cudaStream_t);
template cudaError_t launch_backward<float>(const BwdParams<float>&, cudaStream_t);
template cudaError_t launch_backward<double>(const BwdParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace crnn
