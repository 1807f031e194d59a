// Input validation and parameter filling shared by the CPU and CUDA glue of the crnn:: ops.
#pragma once

#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

#include "fastweights_params.h"

namespace crnn {

// Numbers in error messages are formatted here, never streamed. On the first GPU machine
// (PyTorch 2.11.0+cu130's wheel, the image's g++), streaming an integer from this extension
// into TORCH_CHECK's ostream crashed with SIGSEGV inside std::ostream::_M_insert<long>, so
// every bad input killed the process instead of raising (docs/kernels.md). Strings stream
// safely; so every message part is a string or a c10 type printed by libc10 itself.
inline std::string num(int64_t v) { return std::to_string(v); }
inline std::string num(double v) { return std::to_string(v); }
inline std::string dims(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

inline int parse_activation(c10::string_view activation) {
  if (activation == "relu") return kRelu;
  if (activation == "tanh") return kTanh;
  TORCH_CHECK(false, "crnn::fastweights: activation must be 'relu' or 'tanh', got '",
              std::string(activation), "'");
  return -1;
}

inline int parse_a_update(c10::string_view a_update) {
  if (a_update == "previous") return kPrevious;
  if (a_update == "preliminary") return kPreliminary;
  TORCH_CHECK(false, "crnn::fastweights: a_update must be 'previous' or 'preliminary', got '",
              std::string(a_update), "'");
  return -1;
}

inline void check_same(const char* op, const at::Tensor& ref, const char* ref_name,
                       const std::vector<std::pair<const char*, const at::Tensor*>>& ts) {
  TORCH_CHECK(ref.scalar_type() == at::kFloat || ref.scalar_type() == at::kDouble, op, ": ",
              ref_name, " must be float32 or float64, got ", ref.scalar_type());
  for (const auto& nt : ts) {
    const at::Tensor& t = *nt.second;
    TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", nt.first, " has dtype ",
                t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type(),
                "; all tensors must have the same dtype");
    TORCH_CHECK(t.device() == ref.device(), op, ": ", nt.first, " is on ", t.device(), " but ",
                ref_name, " is on ", ref.device(), "; all tensors must be on the same device");
  }
}

inline void check_contiguous(const char* op, const at::Tensor& ref, const char* ref_name,
                             const std::vector<std::pair<const char*, const at::Tensor*>>& ts) {
  TORCH_CHECK(ref.is_contiguous(), op, ": ", ref_name, " must be contiguous (call .contiguous())");
  for (const auto& nt : ts)
    TORCH_CHECK(nt.second->is_contiguous(), op, ": ", nt.first,
                " must be contiguous (call .contiguous())");
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef expected, const char* symbolic) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", symbolic, " = ",
              dims(expected), ", got ", dims(t.sizes()));
}

// A0 is [B, H, H] (per example), [H, H] (one A_0 shared by the batch: its gradient is the
// batch sum), or the empty [0]: all-zero initial fast weights, never materialised.
inline bool zero_a0(const at::Tensor& A0) { return A0.dim() == 1 && A0.size(0) == 0; }
inline bool shared_a0(const at::Tensor& A0) { return A0.dim() == 2; }

inline void check_a0(const char* op, const at::Tensor& A0, int64_t B, int64_t H) {
  TORCH_CHECK(zero_a0(A0) || A0.sizes() == at::IntArrayRef({B, H, H}) || A0.sizes() == at::IntArrayRef({H, H}), op,
              ": A0 must have shape [B, H, H] = ", dims({B, H, H}), ", [H, H] = ", dims({H, H}),
              " (shared by the batch) or be empty ([0]: zero fast weights), got ", dims(A0.sizes()));
}

// Returns the activation id; validates shapes, dtypes, devices, contiguity and scalars.
inline int check_forward_args(const at::Tensor& xp, const at::Tensor& h0, const at::Tensor& A0,
                              const at::Tensor& W, const at::Tensor& gamma,
                              const at::Tensor& beta, double lam, double eta,
                              int64_t inner_steps, c10::string_view activation, double eps) {
  const char* op = "crnn::fastweights_fwd";
  TORCH_CHECK(xp.dim() == 3, op, ": xp must be [B, T, H], got shape ", dims(xp.sizes()));
  const int64_t B = xp.size(0), T = xp.size(1), H = xp.size(2);
  TORCH_CHECK(T >= 1, op, ": the sequence length T must be >= 1, got ", num(T));
  TORCH_CHECK(H >= 1, op, ": the hidden size H must be >= 1, got ", num(H));
  const std::vector<std::pair<const char*, const at::Tensor*>> ts = {
      {"h0", &h0}, {"A0", &A0}, {"W", &W}, {"gamma", &gamma}, {"beta", &beta}};
  check_same(op, xp, "xp", ts);
  check_shape(op, "h0", h0, {B, H}, "[B, H]");
  check_a0(op, A0, B, H);
  check_shape(op, "W", W, {H, H}, "[H, H]");
  check_shape(op, "gamma", gamma, {H}, "[H]");
  check_shape(op, "beta", beta, {H}, "[H]");
  check_contiguous(op, xp, "xp", ts);
  TORCH_CHECK(inner_steps >= 1, op, ": inner_steps must be >= 1, got ", num(inner_steps));
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", num(eps));
  TORCH_CHECK(std::isfinite(lam) && std::isfinite(eta), op, ": lam and eta must be finite");
  return parse_activation(activation);
}

inline int check_backward_args(const c10::optional<at::Tensor>& grad_out,
                               const c10::optional<at::Tensor>& grad_AT, const at::Tensor& h0,
                               const at::Tensor& A0, const at::Tensor& W,
                               const at::Tensor& gamma, const at::Tensor& out,
                               const at::Tensor& zs, const at::Tensor& xhat,
                               const at::Tensor& rstd, int64_t inner_steps,
                               c10::string_view activation) {
  const char* op = "crnn::fastweights_bwd";
  TORCH_CHECK(out.dim() == 3, op, ": out must be [B, T, H], got shape ", dims(out.sizes()));
  const int64_t B = out.size(0), T = out.size(1), H = out.size(2), S = inner_steps;
  TORCH_CHECK(T >= 1 && H >= 1, op, ": empty sequence or hidden size");
  TORCH_CHECK(inner_steps >= 1, op, ": inner_steps must be >= 1, got ", num(inner_steps));
  std::vector<std::pair<const char*, const at::Tensor*>> ts = {
      {"h0", &h0}, {"A0", &A0}, {"W", &W}, {"gamma", &gamma},
      {"zs", &zs}, {"xhat", &xhat}, {"rstd", &rstd}};
  if (grad_out.has_value()) ts.emplace_back("grad_out", &*grad_out);
  if (grad_AT.has_value()) ts.emplace_back("grad_AT", &*grad_AT);
  check_same(op, out, "out", ts);
  check_shape(op, "h0", h0, {B, H}, "[B, H]");
  check_a0(op, A0, B, H);
  check_shape(op, "W", W, {H, H}, "[H, H]");
  check_shape(op, "gamma", gamma, {H}, "[H]");
  TORCH_CHECK(zs.numel() > 0 || B == 0, op,
              ": the forward was run with save=False, so nothing was saved for the backward");
  check_shape(op, "zs", zs, {B, T, S, H}, "[B, T, S, H]");
  check_shape(op, "xhat", xhat, {B, T, S, H}, "[B, T, S, H]");
  check_shape(op, "rstd", rstd, {B, T, S}, "[B, T, S]");
  if (grad_out.has_value()) check_shape(op, "grad_out", *grad_out, {B, T, H}, "[B, T, H]");
  if (grad_AT.has_value()) check_shape(op, "grad_AT", *grad_AT, {B, H, H}, "[B, H, H]");
  check_contiguous(op, out, "out", ts);
  return parse_activation(activation);
}

// lengths (optional): a 1-D int64 tensor of B values in [1, T] on xp's device. Returns the
// tensor the kernels read (contiguous), or an undefined one for none, and also for lengths
// that are all T (the no-lengths path, at its cost and with its results). Reads the values
// (on CUDA: one synchronising copy of two numbers).
inline at::Tensor checked_lengths(const char* op, const c10::optional<at::Tensor>& lengths, const at::Tensor& xp,
                                  int64_t B, int64_t T) {
  if (!lengths.has_value() || !lengths->defined()) return at::Tensor();
  const at::Tensor& n = *lengths;
  TORCH_CHECK(n.scalar_type() == at::kLong, op, ": lengths must be an int64 tensor, got ", n.scalar_type());
  TORCH_CHECK(n.dim() == 1 && n.size(0) == B, op, ": lengths must be 1-D with one value per example (",
              num(B), "), got shape ", dims(n.sizes()));
  TORCH_CHECK(n.device() == xp.device(), op, ": lengths is on ", n.device(), " but xp is on ", xp.device());
  if (B == 0) return at::Tensor();
  const at::Tensor range = at::stack({n.min(), n.max()}).cpu();
  const int64_t lo = range[0].item<int64_t>(), hi = range[1].item<int64_t>();
  TORCH_CHECK(lo >= 1 && hi <= T, op, ": lengths must be in [1, ", num(T), "] (the number of steps), got values in [",
              num(lo), ", ", num(hi), "]");
  return lo == T ? at::Tensor() : n.contiguous();
}

// The data pointer of t, or nullptr for an undefined or empty tensor (an absent gradient,
// nothing saved, no dA_0 wanted).
template <typename T>
inline T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}
template <typename T>
inline const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? ptr_or_null<T>(*t) : nullptr;
}

// FwdParams from the checked forward arguments and the allocated outputs (zs/xhat/rstd
// empty when nothing is saved, AT empty when final_state is false, A0 empty for zero
// fast weights). Used by both the CPU and the CUDA glue.
template <typename T>
inline FwdParams<T> make_fwd_params(const at::Tensor& xp, const at::Tensor& h0, const at::Tensor& A0,
                                    const at::Tensor& W, const at::Tensor& gamma,
                                    const at::Tensor& beta, double lam, double eta,
                                    int64_t inner_steps, int act, double eps,
                                    const at::Tensor& out, const at::Tensor& AT,
                                    const at::Tensor& zs, const at::Tensor& xhat,
                                    const at::Tensor& rstd, int a_update = kPrevious,
                                    const at::Tensor& keys = at::Tensor(),
                                    const at::Tensor& lengths = at::Tensor()) {
  FwdParams<T> p;
  p.a_update = a_update;
  p.lengths = ptr_or_null<int64_t>(lengths);  // nullptr: every example runs all T steps
  p.keys = ptr_or_null<T>(keys);
  p.B = xp.size(0);
  p.T_len = xp.size(1);
  p.H = xp.size(2);
  p.S = inner_steps;
  p.act = act;
  p.lam = lam;
  p.eta = eta;
  p.eps = eps;
  p.xp = xp.data_ptr<T>();
  p.h0 = h0.data_ptr<T>();
  p.A0 = ptr_or_null<T>(A0);  // nullptr: A_0 = 0
  p.A0_shared = shared_a0(A0);
  p.W = W.data_ptr<T>();
  p.gamma = gamma.data_ptr<T>();
  p.beta = beta.data_ptr<T>();
  p.out = out.data_ptr<T>();
  p.AT = ptr_or_null<T>(AT);  // nullptr: A_T not wanted
  p.zs = ptr_or_null<T>(zs);
  p.xhat = ptr_or_null<T>(xhat);
  p.rstd = ptr_or_null<T>(rstd);
  return p;
}

// BwdParams from the checked backward arguments and the allocated outputs; dA0 (CPU),
// dH and G (CUDA) may be undefined/empty where the path does not use them.
template <typename T>
inline BwdParams<T> make_bwd_params(const c10::optional<at::Tensor>& grad_out,
                                    const c10::optional<at::Tensor>& grad_AT,
                                    const at::Tensor& h0, const at::Tensor& A0,
                                    const at::Tensor& W, const at::Tensor& gamma,
                                    const at::Tensor& out, const at::Tensor& zs,
                                    const at::Tensor& xhat, const at::Tensor& rstd, double lam,
                                    double eta, int64_t inner_steps, int act,
                                    const at::Tensor& dxp, const at::Tensor& dh0,
                                    const at::Tensor& dgamma_part, const at::Tensor& dbeta_part,
                                    const at::Tensor& dA0, const at::Tensor& dH,
                                    const at::Tensor& G, int a_update = kPrevious,
                                    const at::Tensor& dK = at::Tensor(),
                                    const at::Tensor& lengths = at::Tensor()) {
  BwdParams<T> p;
  p.a_update = a_update;
  p.lengths = ptr_or_null<int64_t>(lengths);
  p.dK = ptr_or_null<T>(dK);
  p.B = out.size(0);
  p.T_len = out.size(1);
  p.H = out.size(2);
  p.S = inner_steps;
  p.act = act;
  p.lam = lam;
  p.eta = eta;
  p.gout = ptr_or_null<T>(grad_out);
  p.gAT = ptr_or_null<T>(grad_AT);
  p.h0 = h0.data_ptr<T>();
  p.A0 = ptr_or_null<T>(A0);  // nullptr: A_0 = 0
  p.A0_shared = shared_a0(A0);
  p.W = W.data_ptr<T>();
  p.gamma = gamma.data_ptr<T>();
  p.out = out.data_ptr<T>();
  p.zs = zs.data_ptr<T>();
  p.xhat = xhat.data_ptr<T>();
  p.rstd = rstd.data_ptr<T>();
  p.dxp = dxp.data_ptr<T>();
  p.dh0 = dh0.data_ptr<T>();
  p.dgamma_part = ptr_or_null<T>(dgamma_part);
  p.dbeta_part = ptr_or_null<T>(dbeta_part);
  p.dA0 = ptr_or_null<T>(dA0);
  p.dH = ptr_or_null<T>(dH);
  p.G = ptr_or_null<T>(G);
  return p;
}

// dW = sum_{b,t} dp_{b,t} h_{b,t-1}^T as one GEMM, with dp = dxp (the CUDA glue; the CPU
// kernel forms dW itself, BwdParams::dW).
inline at::Tensor weight_grad(const at::Tensor& dxp, const at::Tensor& h0, const at::Tensor& out) {
  const int64_t B = out.size(0), T = out.size(1), H = out.size(2);
  const at::Tensor hprev = T == 1 ? h0.unsqueeze(1) : at::cat({h0.unsqueeze(1), out.narrow(1, 0, T - 1)}, 1);
  return at::mm(dxp.reshape({B * T, H}).t(), hprev.reshape({B * T, H}));
}

}  // namespace crnn
