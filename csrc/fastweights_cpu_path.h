// The body of one per-ISA translation unit (fastweights_cpu_<isa>.cpp): the CPU kernel
// compiled for the -march that file is built with, behind a `CpuPath` table
// (fastweights_cpu_dispatch.h). Include it once, after defining
//   CRNN_CPU_PATH_NS    a namespace name unique to the instruction set (cpu_avx2, ...)
//   CRNN_CPU_PATH_NAME  the path's name as `crnn kernels` shows it ("avx2", ...)
//   CRNN_CPU_PATH_TABLE the table's name (kCpuPathAvx2, ...)
//
// Why the namespace: the kernel's functions are inline templates, and the linker keeps
// ONE copy of each inline function of a given name for the whole library. Without a
// namespace per instruction set, the AVX-512 copy of e.g. forward_example could
// replace the baseline one and crash a CPU without AVX-512. The kernel headers
// (fastweights_cpu_kernel.h and the four it includes) therefore open
// `namespace crnn::CRNN_CPU_PATH_NS` themselves, with the name defined by the including file.
// Standard-library inline functions are shared the same way: the extension links the
// glue and the baseline object first (crnn_plugins/cpu_isa.py), so where several
// objects define one, the linker keeps the copy built for the lowest instruction set.
#pragma once

#if !defined(CRNN_CPU_PATH_NS) || !defined(CRNN_CPU_PATH_NAME) || !defined(CRNN_CPU_PATH_TABLE)
#error "define CRNN_CPU_PATH_NS, CRNN_CPU_PATH_NAME and CRNN_CPU_PATH_TABLE before including fastweights_cpu_path.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "fastweights_cpu_dispatch.h"
#include "fastweights_params.h"

#include "fastweights_cpu_kernel.h"

namespace crnn {
namespace CRNN_CPU_PATH_NS {
namespace {

// The per-call read-only inputs of the kernel (`CallConstants`), filled once from the call's
// parameters (FwdParams or BwdParams): W (transposed for the forward), gamma and beta
// padded to the vector width of this path, the powers of lam and the decay table.
template <typename T>
struct CallConstantBuffers {
  std::vector<T> WTp, Wp, gamma, beta, mask, lam_pow, decay;
  CallConstants<T> consts;

  template <typename Params>
  explicit CallConstantBuffers(const Params& params) {
    constexpr bool forward = std::is_same_v<Params, FwdParams<T>>;
    const T* w = params.W;
    const T* gamma_in = params.gamma;
    const T* bt = nullptr;
    double eps = 0.0;  // the backward reads the saved rstd, not eps
    if constexpr (forward) {
      bt = params.beta;
      eps = params.eps;
    }
    const int64_t B = params.B, Tn = params.T_len, H = params.H, S = params.S;
    const double lam = params.lam, eta = params.eta;
    const int64_t Hp = padded<T>(H);
    if (forward) {
      WTp.assign(H * Hp, T(0));
      for (int64_t j = 0; j < H; ++j)
        for (int64_t i = 0; i < H; ++i) WTp[j * Hp + i] = w[i * H + j];
    } else {
      Wp.assign(H * Hp, T(0));
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < H; ++j) Wp[i * Hp + j] = w[i * H + j];
    }
    gamma.assign(Hp, T(0));
    beta.assign(Hp, T(0));
    mask.assign(Hp, T(0));
    for (int64_t i = 0; i < H; ++i) {
      gamma[i] = gamma_in[i];
      mask[i] = T(1);
    }
    if (bt)
      for (int64_t i = 0; i < H; ++i) beta[i] = bt[i];
    std::vector<double> lp(Tn + 1);
    double l = 1.0;
    for (int64_t k = 0; k <= Tn; ++k) {
      lp[k] = l;
      l *= lam;
    }
    lam_pow.assign(lp.begin(), lp.end());
    const int64_t Tp = padded<T>(Tn + 1);
    decay.assign(Tn + vec_len<T>() + kSlack, T(0));  // see coef_row
    for (int64_t j = 0; j < Tn; ++j) decay[j] = static_cast<T>(eta * lp[Tn - 1 - j]);
    consts.B = B;
    consts.T_len = Tn;
    consts.H = H;
    consts.Hp = Hp;
    consts.S = S;
    consts.Tp = Tp;
    consts.lam = static_cast<T>(lam);
    consts.eta = static_cast<T>(eta);
    consts.eps = static_cast<T>(eps);
    consts.WTp = WTp.empty() ? nullptr : WTp.data();
    consts.Wp = Wp.empty() ? nullptr : Wp.data();
    consts.gamma = gamma.data();
    consts.beta = beta.data();
    consts.mask = mask.data();
    consts.lam_pow = lam_pow.data();
    consts.decay = decay.data();
    consts.chunk = chunk_length(H);
    consts.a_update = params.a_update;
    consts.w_finite = all_finite(w, H * H);
  }
};

// One call's data for the examples [b0, b1) that at::parallel_for gives a thread.
template <typename T, typename Params>
struct Call {
  const CallConstants<T>* consts;
  const Params* params;
  RangeSums<T>* sums = nullptr;  // backward: where each range hands its batch sums (dW, dgamma, dbeta)
};

// The forward (Params = FwdParams<T>) or backward of the examples [b0, b1), with scratch
// buffers of this thread.
template <typename T, typename Params>
void run_range(void* ctx, int64_t b0, int64_t b1) {
  constexpr bool kForward = std::is_same_v<Params, FwdParams<T>>;
  const auto& c = *static_cast<const Call<T, Params>*>(ctx);
  std::conditional_t<kForward, FwdScratch<T>, BwdScratch<T>> scratch;
  if constexpr (kForward)
    scratch.init(*c.consts);
  else
    scratch.init(*c.consts, c.sums != nullptr, sums_dA0(*c.params));
  for (int64_t b = b0; b < b1; ++b) {
    if constexpr (kForward) {
      if (c.params->act == kRelu)
        forward_example<kRelu, T>(*c.consts, *c.params, b, scratch);
      else
        forward_example<kTanh, T>(*c.consts, *c.params, b, scratch);
    } else {
      if (c.params->act == kRelu)
        backward_example<kRelu, T>(*c.consts, *c.params, b, scratch);
      else
        backward_example<kTanh, T>(*c.consts, *c.params, b, scratch);
    }
  }
  if constexpr (!kForward)
    if (c.sums) c.sums->add(b0, std::move(scratch.sum));
}

// The forward (Params = FwdParams<T>) or backward of the groups [g0, g1) of vec_len
// examples each, batch in the lanes (forward_lanes / backward_lanes).
template <typename T, typename Params>
void run_groups(void* ctx, int64_t g0, int64_t g1) {
  constexpr bool kForward = std::is_same_v<Params, FwdParams<T>>;
  constexpr int64_t G = vec_len<T>();
  const auto& c = *static_cast<const Call<T, Params>*>(ctx);
  std::conditional_t<kForward, LanesScratch<T>, LanesBwdScratch<T>> scratch;
  scratch.init(*c.consts, *c.params);
  BwdSums<T> sum;
  if constexpr (!kForward)
    if (c.sums) sum.zero(c.consts->H, c.consts->Hp, sums_dA0(*c.params), true);
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t b0 = g * G, ne = std::min(G, c.params->B - b0);
    if constexpr (kForward) {
      if (c.params->act == kRelu)
        forward_lanes<kRelu, T>(*c.consts, *c.params, b0, ne, scratch);
      else
        forward_lanes<kTanh, T>(*c.consts, *c.params, b0, ne, scratch);
    } else {
      if (c.params->act == kRelu)
        backward_lanes<kRelu, T>(*c.consts, *c.params, b0, ne, scratch, c.sums ? &sum : nullptr);
      else
        backward_lanes<kTanh, T>(*c.consts, *c.params, b0, ne, scratch, c.sums ? &sum : nullptr);
    }
  }
  if constexpr (!kForward)
    if (c.sums && !sum.dA0L.empty()) finish_dA0_lanes(sum, c.consts->H);
  if (c.sums) c.sums->add(g0 * G, std::move(sum));
}

// The forward: batch in the lanes where it applies (lanes_forward_applies), else per example.
template <typename T>
void fwd(const FwdParams<T>& params, ParallelFor parallel) {
  CallConstantBuffers<T> buf(params);
  Call<T, FwdParams<T>> call{&buf.consts, &params};
  if (lanes_forward_applies(buf.consts, params)) {
    constexpr int64_t G = vec_len<T>();
    parallel((params.B + G - 1) / G, &call, &run_groups<T, FwdParams<T>>);
  } else {
    parallel(params.B, &call, &run_range<T, FwdParams<T>>);
  }
}

// The backward: batch in the lanes where it applies (lanes_backward_applies), else per
// example; with params.dW set (the CPU glue), also the batch sums dW, dgamma and dbeta,
// accumulated per range of examples (RangeSums) instead of by a GEMM and reductions afterwards.
template <typename T>
void bwd(const BwdParams<T>& params, ParallelFor parallel) {
  CallConstantBuffers<T> buf(params);
  RangeSums<T> sums;
  const bool with_sums = params.dW != nullptr || sums_dA0(params);  // a shared A_0's gradient is a batch sum too
  Call<T, BwdParams<T>> call{&buf.consts, &params, with_sums ? &sums : nullptr};
  if (lanes_backward_applies(buf.consts, params)) {
    constexpr int64_t G = vec_len<T>();
    parallel((params.B + G - 1) / G, &call, &run_groups<T, BwdParams<T>>);
  } else {
    parallel(params.B, &call, &run_range<T, BwdParams<T>>);
  }
  if (with_sums) sums.finish(params, buf.consts.Hp);
}

}  // namespace
}  // namespace CRNN_CPU_PATH_NS

extern const CpuPath CRNN_CPU_PATH_TABLE = {
    CRNN_CPU_PATH_NAME,
    &CRNN_CPU_PATH_NS::fwd<float>,
    &CRNN_CPU_PATH_NS::fwd<double>,
    &CRNN_CPU_PATH_NS::bwd<float>,
    &CRNN_CPU_PATH_NS::bwd<double>,
};

}  // namespace crnn
