// The crnn:: fast-weights custom ops: schema, CPU implementation and the Python module.
//
//   crnn::fastweights_fwd(xp, h0, A0, W, gamma, beta, lam, eta, inner_steps, activation,
//                         eps, save, a_update="previous", final_state=True, lengths=None)
//                         -> (out, A_T, zs, xhat, rstd)
//   crnn::fastweights_bwd(grad_out?, grad_AT?, h0, A0, W, gamma, out, zs, xhat, rstd,
//                         lam, eta, inner_steps, activation, need_dA0, a_update="previous",
//                         lengths=None) -> (dxp, dh0, dA0, dW, dgamma, dbeta)
//
// zs/xhat/rstd are what the backward needs besides the inputs and `out` ([B,T,S,H],
// [B,T,S,H], [B,T,S]); with save=False they are empty. a_update ("previous" / "preliminary")
// picks the vector that updates A (AUpdate, fastweights_params.h). dA0 is empty unless need_dA0.
// lengths (int64 [B] in [1, T], or None) runs each example on its own first steps
// (FwdParams::lengths); the backward takes the forward's lengths.
// Autograd and the fake (meta) implementations are registered from Python
// (crnn_plugins/fastweights_fused.py). The CUDA implementation is in fastweights_cuda_glue.cpp.
// Under torch.autocast (CPU or CUDA) both ops run in float32: float16/bfloat16 inputs are
// cast up (float64 stays float64) and the outputs are float32 (the "fp32" cast policy).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "fastweights_checks.h"
#include "fastweights_cpu_dispatch.h"

namespace crnn {
namespace {

using at::Tensor;

// A small cache of the CPU blocks behind the op's large outputs. glibc hands large freed
// blocks back to the kernel, so every call would otherwise fault in fresh pages for A_T,
// dA_0 and the per-step tensors. Blocks return here when their tensors die and are
// reused by the next call of the same size; at most kPoolBytes are kept. CRNN_NO_POOL=1
// turns it off; `crnn kernels` says whether it is active (block_pool_info below).
// Measured with perf stat (1 thread, 1500 fused forward+backward steps at B=128, T=11,
// H=50, 2026-11-27): without it 131 more page faults per step and 3.36 instead of
// 3.01 ms of CPU time per step.
class BlockPool {
 public:
  static constexpr size_t kPoolBytes = size_t(256) << 20;
  static constexpr size_t kMinBytes = size_t(64) << 10;

  static BlockPool& get() {
    static BlockPool* pool = new BlockPool();  // leaked: tensors may outlive static destructors
    return *pool;
  }

  bool enabled() const { return enabled_; }
  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
    if (!enabled_ || bytes < kMinBytes) return at::empty(sizes, options);
    void* ptr = take(bytes);
    if (ptr == nullptr) ptr = c10::alloc_cpu(bytes);
    return at::from_blob(ptr, sizes, [this, bytes](void* p) { give(p, bytes); }, options);
  }

 private:
  BlockPool() {
    const char* env = std::getenv("CRNN_NO_POOL");
    enabled_ = env == nullptr || env[0] == '\0' || env[0] == '0';
  }
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= bytes;
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= kPoolBytes) {
        free_[bytes].push_back(p);
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(p);
  }
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  bool enabled_ = true;
};

Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return BlockPool::get().empty(sizes, options);
}

// The CPU kernel path in use (fastweights_cpu_dispatch.h): the best one this CPU runs,
// chosen once at load time, or a lower one set by set_cpu_path (CRNN_CPU_CAPABILITY).
bool cpu_runs(const CpuPath& path) {
#if defined(CRNN_CPU_DISPATCH)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  if (&path == &kCpuPathAvx512) return __builtin_cpu_supports("x86-64-v4");
  if (&path == &kCpuPathAvx2) return __builtin_cpu_supports("x86-64-v3");
#else  // the features of the two levels that compilers use in vector code
  if (&path == &kCpuPathAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && cpu_runs(kCpuPathAvx2);
  if (&path == &kCpuPathAvx2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("f16c");
#endif
#endif
  (void)path;
  return true;  // baseline, or the one "native" path of a CRNN_CPU_ARCH build
}

// Every compiled path, lowest first.
std::vector<const CpuPath*> compiled_paths() {
#if defined(CRNN_CPU_DISPATCH)
  return {&kCpuPathBaseline, &kCpuPathAvx2, &kCpuPathAvx512};
#else
  return {&kCpuPathBaseline};
#endif
}

const CpuPath* best_path() {
#if defined(CRNN_CPU_DISPATCH)
  __builtin_cpu_init();  // harmless if the runtime already did
#endif
  const CpuPath* best = &kCpuPathBaseline;
  for (const CpuPath* p : compiled_paths())
    if (cpu_runs(*p)) best = p;
  return best;
}

std::atomic<const CpuPath*>& current_path() {
  static std::atomic<const CpuPath*> path{best_path()};
  return path;
}

// Selects the compiled path `name` if this CPU runs it; returns false (and changes
// nothing) otherwise.
bool set_cpu_path(const std::string& name) {
  for (const CpuPath* p : compiled_paths())
    if (name == p->name && cpu_runs(*p)) {
      current_path().store(p);
      return true;
    }
  return false;
}

void run_parallel(int64_t n, void* ctx, void (*body)(void*, int64_t, int64_t)) {
  at::parallel_for(0, n, 1, [&](int64_t b0, int64_t b1) { body(ctx, b0, b1); });
}

void run_fwd(const CpuPath& path, const FwdParams<float>& io) { path.fwd_f32(io, &run_parallel); }
void run_fwd(const CpuPath& path, const FwdParams<double>& io) { path.fwd_f64(io, &run_parallel); }
void run_bwd(const CpuPath& path, const BwdParams<float>& io) { path.bwd_f32(io, &run_parallel); }
void run_bwd(const CpuPath& path, const BwdParams<double>& io) { path.bwd_f64(io, &run_parallel); }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_fwd_cpu(
    const Tensor& xp, const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma,
    const Tensor& beta, double lam, double eta, int64_t inner_steps,
    c10::string_view activation, double eps, bool save, c10::string_view a_update,
    bool final_state, const c10::optional<Tensor>& lengths) {
  const int act = check_forward_args(xp, h0, A0, W, gamma, beta, lam, eta, inner_steps,
                                     activation, eps);
  const int au = parse_a_update(a_update);
  TORCH_CHECK(xp.device().is_cpu(), "crnn::fastweights_fwd: CPU implementation got ",
              xp.device(), " tensors");
  const int64_t B = xp.size(0), Tn = xp.size(1), H = xp.size(2), S = inner_steps;
  const Tensor steps = checked_lengths("crnn::fastweights_fwd", lengths, xp, B, Tn);
  Tensor out = pooled_empty({B, Tn, H}, xp.options());
  Tensor AT = final_state ? pooled_empty({B, H, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor zs = save ? pooled_empty({B, Tn, S, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor xhat = save ? pooled_empty({B, Tn, S, H}, xp.options()) : at::empty({0}, xp.options());
  Tensor rstd = save ? at::empty({B, Tn, S}, xp.options()) : at::empty({0}, xp.options());
  if (B == 0) return {out, AT, zs, xhat, rstd};

  const CpuPath& path = *current_path().load();
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "crnn_fastweights_fwd_cpu", [&] {
    using T = scalar_t;
    const FwdParams<T> io = make_fwd_params<T>(xp, h0, A0, W, gamma, beta, lam, eta, S, act, eps,
                                               out, AT, zs, xhat, rstd, au, Tensor(), steps);
    run_fwd(path, io);
  });
  return {out, AT, zs, xhat, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_bwd_cpu(
    const c10::optional<Tensor>& grad_out, const c10::optional<Tensor>& grad_AT,
    const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma, const Tensor& out,
    const Tensor& zs, const Tensor& xhat, const Tensor& rstd, double lam, double eta,
    int64_t inner_steps, c10::string_view activation, bool need_dA0, c10::string_view a_update,
    const c10::optional<Tensor>& lengths) {
  const int act = check_backward_args(grad_out, grad_AT, h0, A0, W, gamma, out, zs, xhat, rstd,
                                      inner_steps, activation);
  const int au = parse_a_update(a_update);
  TORCH_CHECK(out.device().is_cpu(), "crnn::fastweights_bwd: CPU implementation got ",
              out.device(), " tensors");
  const int64_t B = out.size(0), Tn = out.size(1), H = out.size(2), S = inner_steps;
  const Tensor steps = checked_lengths("crnn::fastweights_bwd", lengths, out, B, Tn);
  Tensor dxp = pooled_empty({B, Tn, H}, out.options());
  Tensor dh0 = at::empty({B, H}, out.options());
  Tensor dA0 = !need_dA0        ? at::empty({0}, out.options())
               : shared_a0(A0) ? at::zeros({H, H}, out.options())  // the batch sum (also for B = 0)
                               : pooled_empty({B, H, H}, out.options());
  Tensor dW = at::empty({H, H}, out.options());
  Tensor dgamma = at::empty({H}, out.options());
  Tensor dbeta = at::empty({H}, out.options());
  if (B == 0) {
    return {dxp, dh0, dA0, at::zeros({H, H}, out.options()), at::zeros({H}, out.options()),
            at::zeros({H}, out.options())};
  }

  const CpuPath& path = *current_path().load();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "crnn_fastweights_bwd_cpu", [&] {
    using T = scalar_t;
    BwdParams<T> io = make_bwd_params<T>(grad_out, grad_AT, h0, A0, W, gamma, out, zs, xhat, rstd,
                                         lam, eta, S, act, dxp, dh0, Tensor(), Tensor(),
                                         dA0, Tensor(), Tensor(), au, Tensor(), steps);
    io.dW = dW.data_ptr<T>();  // the kernel forms the batch sums (RangeSums)
    io.dgamma = dgamma.data_ptr<T>();
    io.dbeta = dbeta.data_ptr<T>();
    run_bwd(path, io);
  });
  return {dxp, dh0, dA0, dW, dgamma, dbeta};
}

using FwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
    double, int64_t, c10::string_view, double, bool, c10::string_view, bool, const c10::optional<Tensor>&);
using BwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const c10::optional<Tensor>&, const c10::optional<Tensor>&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
    double, int64_t, c10::string_view, bool, c10::string_view, const c10::optional<Tensor>&);

// The autocast kernels: cast float16/bfloat16 tensors of this device type to float32, then
// call the op again below autocast (autograd, then the CPU or CUDA kernel), as PyTorch's
// own "fp32" ops do. The casts are recorded by autograd, so gradients come back in the
// inputs' dtypes.
template <c10::DeviceType DEV>
Tensor to_f32(const Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, DEV);
}
template <c10::DeviceType DEV>
c10::optional<Tensor> to_f32(const c10::optional<Tensor>& t) {
  return t.has_value() ? c10::optional<Tensor>(to_f32<DEV>(*t)) : c10::nullopt;
}

template <c10::DeviceType DEV>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_fwd_autocast(
    const Tensor& xp, const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma,
    const Tensor& beta, double lam, double eta, int64_t inner_steps,
    c10::string_view activation, double eps, bool save, c10::string_view a_update,
    bool final_state, const c10::optional<Tensor>& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(DEV));
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("crnn::fastweights_fwd", "")
                             .typed<FwdSig>();
  return op.call(to_f32<DEV>(xp), to_f32<DEV>(h0), to_f32<DEV>(A0), to_f32<DEV>(W),
                 to_f32<DEV>(gamma), to_f32<DEV>(beta), lam, eta, inner_steps, activation, eps,
                 save, a_update, final_state, lengths);
}

template <c10::DeviceType DEV>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fastweights_bwd_autocast(
    const c10::optional<Tensor>& grad_out, const c10::optional<Tensor>& grad_AT,
    const Tensor& h0, const Tensor& A0, const Tensor& W, const Tensor& gamma, const Tensor& out,
    const Tensor& zs, const Tensor& xhat, const Tensor& rstd, double lam, double eta,
    int64_t inner_steps, c10::string_view activation, bool need_dA0, c10::string_view a_update,
    const c10::optional<Tensor>& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(DEV));
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("crnn::fastweights_bwd", "")
                             .typed<BwdSig>();
  return op.call(to_f32<DEV>(grad_out), to_f32<DEV>(grad_AT), to_f32<DEV>(h0), to_f32<DEV>(A0),
                 to_f32<DEV>(W), to_f32<DEV>(gamma), to_f32<DEV>(out), to_f32<DEV>(zs),
                 to_f32<DEV>(xhat), to_f32<DEV>(rstd), lam, eta, inner_steps, activation,
                 need_dA0, a_update, lengths);
}

}  // namespace

TORCH_LIBRARY(crnn, m) {
  m.def(
      "fastweights_fwd(Tensor xp, Tensor h0, Tensor A0, Tensor W, Tensor gamma, Tensor beta, "
      "float lam, float eta, int inner_steps, str activation, float eps, bool save, "
      "str a_update=\"previous\", bool final_state=True, Tensor? lengths=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "fastweights_bwd(Tensor? grad_out, Tensor? grad_AT, Tensor h0, Tensor A0, Tensor W, "
      "Tensor gamma, Tensor out, Tensor zs, Tensor xhat, Tensor rstd, float lam, float eta, "
      "int inner_steps, str activation, bool need_dA0, str a_update=\"previous\", Tensor? lengths=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(crnn, CPU, m) {
  m.impl("fastweights_fwd", &fastweights_fwd_cpu);
  m.impl("fastweights_bwd", &fastweights_bwd_cpu);
}

// Registered in every build (a CPU-only build simply never sees CUDA tensors).
TORCH_LIBRARY_IMPL(crnn, AutocastCPU, m) {
  m.impl("fastweights_fwd", &fastweights_fwd_autocast<c10::DeviceType::CPU>);
  m.impl("fastweights_bwd", &fastweights_bwd_autocast<c10::DeviceType::CPU>);
}
TORCH_LIBRARY_IMPL(crnn, AutocastCUDA, m) {
  m.impl("fastweights_fwd", &fastweights_fwd_autocast<c10::DeviceType::CUDA>);
  m.impl("fastweights_bwd", &fastweights_bwd_autocast<c10::DeviceType::CUDA>);
}

}  // namespace crnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "crnn fused fast-weights kernels; the ops are torch.ops.crnn.fastweights_fwd/_bwd";
  m.def("build_info", []() {
    pybind11::dict d;
#ifdef CRNN_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    d["cpu_isa"] = crnn::current_path().load()->name;
    pybind11::list compiled, runnable;
    for (const crnn::CpuPath* p : crnn::compiled_paths()) {
      compiled.append(p->name);
      if (crnn::cpu_runs(*p)) runnable.append(p->name);
    }
    d["cpu_paths"] = compiled;
    d["cpu_paths_runnable"] = runnable;
    d["cpu_path_best"] = crnn::best_path()->name;
    d["openmp"] = static_cast<bool>(AT_PARALLEL_OPENMP);
    return d;
  });
  m.def("set_cpu_path", &crnn::set_cpu_path, pybind11::arg("name"),
        "Use the compiled CPU kernel path `name` (build_info()['cpu_paths']) from now on; "
        "False (nothing changed) if it was not compiled or this CPU cannot run it");
  m.def("block_pool_info", []() {
    auto& pool = crnn::BlockPool::get();
    pybind11::dict d;
    d["enabled"] = pool.enabled();
    d["cached_bytes"] = pool.cached_bytes();
    d["limit_bytes"] = crnn::BlockPool::kPoolBytes;
    d["min_block_bytes"] = crnn::BlockPool::kMinBytes;
    return d;
  });
}
