// The CPU kernel's paths, one per instruction set, and how the glue calls them.
//
// The kernel (fastweights_cpu_kernel.h) is compiled once per instruction set: each
// fastweights_cpu_<isa>.cpp includes fastweights_cpu_path.h under its own -march flag
// (baseline x86-64, x86-64-v3 = AVX2, x86-64-v4 = AVX-512; the list and the flags are
// in crnn_plugins/cpu_isa.py, used by setup.py and by the JIT build) and defines one
// `CpuPath` table. The glue (fastweights_op.cpp) is compiled without -march and picks
// a table at load time from what the CPU reports (__builtin_cpu_supports), as ATen's CPU
// capability dispatch does; CRNN_CPU_CAPABILITY (read in fastweights_fused.py) forces a
// lower one. Plain C++: no PyTorch types cross this interface, so the per-ISA files need
// no PyTorch headers.
#pragma once

#include <cstdint>

#include "fastweights_params.h"

namespace crnn {

// Runs body(ctx, b0, b1) over [0, n) split in ranges, possibly on several threads
// (the glue passes at::parallel_for).
using ParallelFor = void (*)(int64_t n, void* ctx, void (*body)(void* ctx, int64_t b0, int64_t b1));

// One compiled path of the CPU kernel. `fwd`/`bwd` run the whole batch of a call,
// exactly as described by the parameter structs (fastweights_params.h).
struct CpuPath {
  const char* name;  // "baseline", "avx2", "avx512", or "native" (single-target build)
  void (*fwd_f32)(const FwdParams<float>& io, ParallelFor parallel);
  void (*fwd_f64)(const FwdParams<double>& io, ParallelFor parallel);
  void (*bwd_f32)(const BwdParams<float>& io, ParallelFor parallel);
  void (*bwd_f64)(const BwdParams<double>& io, ParallelFor parallel);
};

// Defined by the per-ISA files that were built (CRNN_CPU_DISPATCH: all three on x86-64;
// otherwise only the "native" path, compiled from fastweights_cpu_baseline.cpp).
extern const CpuPath kCpuPathBaseline;
#if defined(CRNN_CPU_DISPATCH)
extern const CpuPath kCpuPathAvx2;
extern const CpuPath kCpuPathAvx512;
#endif

}  // namespace crnn
