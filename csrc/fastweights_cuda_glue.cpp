// PyTorch glue for the CUDA fast-weights kernels: checks, allocation, stream, launch.
// Compiled only into CUDA builds (setup.py / the JIT build add it with -DCRNN_WITH_CUDA
// when PyTorch has CUDA and nvcc is found). The kernels are in fastweights_cuda.cu.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "fastweights_checks.h"
#include "fastweights_cuda.h"

namespace crnn {
namespace {

using at::Tensor;

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

// The sizes the CUDA kernels take (fastweights_cuda.h), for the forward and the backward alike.
void check_cuda_limits(const char* op, int64_t B, int64_t Tn, int64_t H) {
  TORCH_CHECK(H <= cuda::kMaxHidden, op, ": the CUDA kernel takes H <= ", num(cuda::kMaxHidden),
              ", got ", num(H));
  TORCH_CHECK(Tn <= cuda::kMaxLength, op, ": the CUDA kernel takes T <= ", num(cuda::kMaxLength),
              " (per-step scores live in shared memory), got ", num(Tn));
  TORCH_CHECK(B <= cuda::kMaxBatch, op, ": the CUDA kernel takes B <= ", num(cuda::kMaxBatch),
              " (one block per example), got ", num(B));
}

// The CUDA kernels read A_0 as [B, H, H]: an empty A0 (zero fast weights) becomes zeros here,
// and a shared [H, H] one is tiled (its gradient is summed over the batch below).
Tensor dense_a0(const Tensor& A0, int64_t B, int64_t H) {
  if (shared_a0(A0)) return A0.expand({B, H, H}).contiguous();
  return zero_a0(A0) ? at::zeros({B, H, H}, A0.options()) : A0;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_fwd_cuda(
    const Tensor& xp, const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma,
    const Tensor& beta, double lam, double eta, int64_t inner_steps,
    c10::string_view activation, double eps, bool save, c10::string_view a_update,
    bool final_state, const c10::optional<Tensor>& lengths) {
  const int act = check_forward_args(xp, h0, A0, W, gamma, beta, lam, eta, inner_steps,
                                     activation, eps);
  const int au = parse_a_update(a_update);
  TORCH_CHECK(xp.is_cuda(), "crnn::fastweights_fwd: CUDA implementation got ", xp.device());
  const int64_t B = xp.size(0), Tn = xp.size(1), H = xp.size(2), S = inner_steps;
  check_cuda_limits("crnn::fastweights_fwd", B, Tn, H);
  const c10::cuda::CUDAGuard guard(xp.device());
  const Tensor steps = checked_lengths("crnn::fastweights_fwd", lengths, xp, B, Tn);
  Tensor out = at::empty({B, Tn, H}, xp.options());
  Tensor AT = final_state ? at::empty({B, H, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor zs = save ? at::empty({B, Tn, S, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor xhat = save ? at::empty({B, Tn, S, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor rstd = save ? at::empty({B, Tn, S}, xp.options()) : at::empty({0}, xp.options());
  if (B == 0) return {out, AT, zs, xhat, rstd};
  // kPreliminary: the keys k_t = f(p_t) are kept in a [B,T,H] workspace.
  Tensor keys = au == kPreliminary ? at::empty({B, Tn, H}, xp.options()) : Tensor();
  const Tensor A0m = dense_a0(A0, B, H);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "crnn_fastweights_fwd_cuda", [&] {
    const FwdParams<scalar_t> p = make_fwd_params<scalar_t>(xp, h0, A0m, W, gamma, beta, lam, eta, S,
                                                            act, eps, out, AT, zs, xhat, rstd, au, keys, steps);
    check_launch(cuda::launch_forward(p, c10::cuda::getCurrentCUDAStream().stream()),
                 "crnn::fastweights_fwd CUDA launch");
  });
  return {out, AT, zs, xhat, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_bwd_cuda(
    const c10::optional<Tensor>& grad_out, const c10::optional<Tensor>& grad_AT,
    const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma, const Tensor& out,
    const Tensor& zs, const Tensor& xhat, const Tensor& rstd, double lam, double eta,
    int64_t inner_steps, c10::string_view activation, bool need_dA0, c10::string_view a_update,
    const c10::optional<Tensor>& lengths) {
  const int act = check_backward_args(grad_out, grad_AT, h0, A0, W, gamma, out, zs, xhat, rstd,
                                      inner_steps, activation);
  const int au = parse_a_update(a_update);
  TORCH_CHECK(out.is_cuda(), "crnn::fastweights_bwd: CUDA implementation got ", out.device());
  const int64_t B = out.size(0), Tn = out.size(1), H = out.size(2), S = inner_steps;
  check_cuda_limits("crnn::fastweights_bwd", B, Tn, H);
  const c10::cuda::CUDAGuard guard(out.device());
  const Tensor steps = checked_lengths("crnn::fastweights_bwd", lengths, out, B, Tn);
  if (B == 0) {
    return {at::empty({0, Tn, H}, out.options()), at::empty({0, H}, out.options()),
            !need_dA0 ? at::empty({0}, out.options())
            : shared_a0(A0) ? at::zeros({H, H}, out.options()) : at::empty({0, H, H}, out.options()),
            at::zeros({H, H}, out.options()), at::zeros({H}, out.options()),
            at::zeros({H}, out.options())};
  }
  Tensor dxp = at::empty({B, Tn, H}, out.options());
  Tensor dh0 = at::empty({B, H}, out.options());
  Tensor dgamma_part = at::empty({B, H}, out.options());
  Tensor dbeta_part = at::empty({B, H}, out.options());
  Tensor dH = at::empty({B, Tn + 1, H}, out.options());
  Tensor G = need_dA0 ? at::empty({B, Tn, S, H}, out.options()) : Tensor();
  Tensor dK = au == kPreliminary ? at::empty({B, Tn, H}, out.options()) : Tensor();  // d loss / d k_t
  const Tensor A0m = dense_a0(A0, B, H);
  {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "crnn_fastweights_bwd_cuda", [&] {
      const BwdParams<scalar_t> p = make_bwd_params<scalar_t>(
          grad_out, grad_AT, h0, A0m, W, gamma, out, zs, xhat, rstd, lam, eta, S, act, dxp, dh0,
          dgamma_part, dbeta_part, Tensor(), dH, G, au, dK, steps);
      check_launch(cuda::launch_backward(p, c10::cuda::getCurrentCUDAStream().stream()),
                   "crnn::fastweights_bwd CUDA launch");
    });
  }
  Tensor dA0 = at::empty({0}, out.options());
  if (need_dA0) {
    // dA_0 = lam^L gA + sum_{t,s} (lam^t du_{t,s}) z_{t,s}^T = lam^L gA + G^T Z per example
    // (L = T, or the example's length: G and zs are zero after it)
    dA0 = at::bmm(G.view({B, Tn * S, H}).transpose(1, 2), zs.view({B, Tn * S, H}));
    if (grad_AT.has_value() && steps.defined())
      dA0.add_(*grad_AT * at::pow(lam, steps.to(at::kDouble)).to(out.scalar_type()).view({B, 1, 1}));
    else if (grad_AT.has_value())
      dA0.add_(*grad_AT, std::pow(lam, static_cast<double>(Tn)));
    if (shared_a0(A0)) dA0 = dA0.sum(0);
  }
  Tensor dW = weight_grad(dxp, h0, out);
  return {dxp, dh0, dA0, dW, dgamma_part.sum(0), dbeta_part.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(crnn, CUDA, m) {
  m.impl("fastweights_fwd", &fastweights_fwd_cuda);
  m.impl("fastweights_bwd", &fastweights_bwd_cuda);
}

}  // namespace crnn
