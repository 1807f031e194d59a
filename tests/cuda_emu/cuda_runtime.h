// A CPU emulation of the small part of the CUDA runtime and device language that
// csrc/fastweights_cuda.cu uses, so that its kernels compile as plain C++ and run on the
// CPU in the test suite (tests/test_cuda_emulation.py).
//
// Execution model, as on a GPU as far as the kernels can tell:
// * a launch runs its blocks one after another; each block's threads are OS threads
//   (std::thread), all alive at once;
// * __syncthreads / __syncthreads_or are a pthread barrier over the block's threads;
// * each block gets its own dynamic shared memory (filled with a NaN pattern, so a read
//   of a value nobody wrote shows up as a mismatch);
// * __shfl_xor_sync exchanges values among the 32 threads of a warp through per-warp
//   slots and a warp-wide barrier; __syncwarp is that warp barrier alone (all 32 lanes:
//   the kernels only pass the full mask).
// pthread barriers are understood by ThreadSanitizer: built with -fsanitize=thread, a
// missing __syncthreads or __syncwarp between a shared-memory write and another thread's
// read is reported as a data race. Each barrier is a pair of pthread barriers used in
// turn: ThreadSanitizer's model of one reused barrier lets a thread that leaves it late
// acquire what a faster thread released at the *next* round, hiding races.
//
// The emulated device has `CRNN_EMU_SMEM_OPTIN` bytes of opt-in shared memory per block
// (environment variable, default 232448 as on an H100), so the tests can force the
// kernels' global-memory (W, history) paths at small shapes, and `CRNN_EMU_SMS`
// multiprocessors (default 132, an H100's), which the warp-per-example launcher reads to
// choose how many examples share a block.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

// ---- the CUDA language keywords --------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__
#define __align__(n) alignas(n)

// ---- runtime types ---------------------------------------------------------------------
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 4 };
typedef struct CUstream_st* cudaStream_t;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace crnn_emu {

constexpr int kWarp = 32;

inline size_t smem_optin() {
  const char* env = std::getenv("CRNN_EMU_SMEM_OPTIN");
  return env && *env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : size_t(232448);
}

inline int multiprocessors() {
  const char* env = std::getenv("CRNN_EMU_SMS");
  return env && *env ? std::atoi(env) : 132;
}

// What the runtime calls record, for the harness to report.
struct Stats {
  size_t max_dynamic_smem_set = 0;  // largest cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
  size_t last_launch_smem = 0;
  unsigned last_launch_threads = 0;  // block size of the last launch
  int launches = 0;
};
inline Stats& stats() {
  static Stats s;
  return s;
}

struct Barrier {
  pthread_barrier_t b;
  explicit Barrier(unsigned n) { pthread_barrier_init(&b, nullptr, n); }
  ~Barrier() { pthread_barrier_destroy(&b); }
  void wait() { pthread_barrier_wait(&b); }
};

// Two pthread barriers used in turn (see the top of this file); each thread counts its rounds.
struct AlternatingBarrier {
  Barrier first, second;
  explicit AlternatingBarrier(unsigned n) : first(n), second(n) {}
  void wait(unsigned& rounds) { (rounds++ & 1u ? second : first).wait(); }
};

struct Block {
  std::unique_ptr<AlternatingBarrier> bar;
  std::vector<std::unique_ptr<AlternatingBarrier>> warp_bar;
  std::vector<std::array<unsigned char, 8>> slots;  // two banks of one 8-byte slot per thread (shuffles)
  int or_flag[3] = {0, 0, 0};                        // __syncthreads_or, rotating
  unsigned char* smem = nullptr;
};

struct ThreadState {
  dim3 thread, block, block_dim, grid_dim;
  Block* blk = nullptr;
  int or_round = 0;
  unsigned shuffles = 0;  // this thread's shuffle count (its bank parity)
  unsigned block_rounds = 0, warp_rounds = 0;  // barrier rounds passed (AlternatingBarrier)
};
inline thread_local ThreadState tls;

}  // namespace crnn_emu

#define threadIdx (::crnn_emu::tls.thread)
#define blockIdx (::crnn_emu::tls.block)
#define blockDim (::crnn_emu::tls.block_dim)
#define gridDim (::crnn_emu::tls.grid_dim)

#define CRNN_DYNAMIC_SMEM(name) unsigned char* name = ::crnn_emu::tls.blk->smem

inline void __syncthreads() { crnn_emu::tls.blk->bar->wait(crnn_emu::tls.block_rounds); }

// A barrier over the calling thread's warp (the mask must be the full warp's).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) std::abort();
  crnn_emu::tls.blk->warp_bar[crnn_emu::tls.thread.x / crnn_emu::kWarp]->wait(crnn_emu::tls.warp_rounds);
}

// Barrier, then the OR of every thread's predicate (three barriers: the flag of a round is
// cleared only after every thread has read it, and is next set two rounds later).
inline int __syncthreads_or(int pred) {
  using namespace crnn_emu;
  Block& b = *tls.blk;
  const int r = tls.or_round;
  tls.or_round = (r + 1) % 3;
  b.bar->wait(tls.block_rounds);
  if (pred) __atomic_store_n(&b.or_flag[r], 1, __ATOMIC_RELAXED);
  b.bar->wait(tls.block_rounds);
  const int v = __atomic_load_n(&b.or_flag[r], __ATOMIC_RELAXED);
  b.bar->wait(tls.block_rounds);
  if (tls.thread.x == 0) __atomic_store_n(&b.or_flag[(r + 2) % 3], 0, __ATOMIC_RELAXED);
  return v;
}

// One warp barrier per shuffle: the slots alternate between two banks, and a thread can
// only write bank k again (two shuffles later) after every thread of its warp has passed
// the barrier of the shuffle in between, i.e. finished reading bank k.
template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  using namespace crnn_emu;
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a small POD");
  Block& b = *tls.blk;
  const unsigned tid = tls.thread.x, warp = tid / kWarp, lane = tid % kWarp;
  const unsigned bank = (tls.shuffles++ & 1u) * b.slots.size() / 2;
  std::memcpy(b.slots[bank + tid].data(), &v, sizeof(T));
  b.warp_bar[warp]->wait(tls.warp_rounds);
  T out;
  std::memcpy(&out, b.slots[bank + warp * kWarp + (lane ^ static_cast<unsigned>(lane_mask))].data(),
              sizeof(T));
  return out;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*dev*/) {
  if (attr == cudaDevAttrMultiProcessorCount) {
    *value = crnn_emu::multiprocessors();
    return cudaSuccess;
  }
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *value = static_cast<int>(crnn_emu::smem_optin());
  return cudaSuccess;
}
template <typename K>
inline cudaError_t cudaFuncSetAttribute(K /*kernel*/, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > crnn_emu::smem_optin())
    return cudaErrorInvalidValue;
  auto& s = crnn_emu::stats();
  s.max_dynamic_smem_set = std::max(s.max_dynamic_smem_set, static_cast<size_t>(value));
  return cudaSuccess;
}
inline cudaError_t& emu_last_error() {
  static cudaError_t e = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu_last_error();
  emu_last_error() = cudaSuccess;
  return e;
}

namespace crnn_emu {

// Runs kernel(args...) on grid x block threads, block after block.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, Args... args) {
  auto& st = stats();
  st.launches++;
  st.last_launch_smem = smem_bytes;
  st.last_launch_threads = block.x;
  // The default limit is 48 KiB; more needs cudaFuncSetAttribute first (as on a GPU).
  if ((smem_bytes > 48 * 1024 && smem_bytes > st.max_dynamic_smem_set) || block.x % kWarp != 0 ||
      block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1) {
    emu_last_error() = cudaErrorInvalidValue;
    return;
  }
  const unsigned nt = block.x;
  std::vector<unsigned char> smem(smem_bytes + 16);
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    Block blk;
    blk.bar.reset(new AlternatingBarrier(nt));
    for (unsigned w = 0; w < nt / kWarp; ++w) blk.warp_bar.emplace_back(new AlternatingBarrier(kWarp));
    blk.slots.resize(2 * nt);
    // Garbage that reads back as NaN in float and double (0xFF bytes).
    std::memset(smem.data(), 0xFF, smem.size());
    blk.smem = smem.data();
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned tx = 0; tx < nt; ++tx) {
      threads.emplace_back([&, tx] {
        tls.thread = dim3(tx);
        tls.block = dim3(bx);
        tls.block_dim = block;
        tls.grid_dim = grid;
        tls.blk = &blk;
        tls.or_round = 0;
        tls.shuffles = 0;
        tls.block_rounds = tls.warp_rounds = 0;
        kernel(args...);
      });
    }
    for (auto& t : threads) t.join();
  }
}

}  // namespace crnn_emu

#define CRNN_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::crnn_emu::launch(kernel, dim3(grid), dim3(block), (smem), __VA_ARGS__)

// Unqualified math calls in device code resolve to the float/double overloads, as in CUDA.
using std::pow;
using std::tanh;
