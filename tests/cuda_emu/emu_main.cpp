// Runs csrc/fastweights_cuda.cu's kernels on the CPU through the emulated CUDA runtime in
// this directory (cuda_runtime.h), for tests/test_cuda_emulation.py.
//
//   emu_main DIR
//   emu_main --refuse-huge-batch   (exit 0 if launches with B = 2^31 are refused)
//
// DIR/meta.txt: "dtype B T H S act lam eta eps has_gout has_gAT need_G [a_update]" (dtype 4
// or 8 bytes, act 0 relu / 1 tanh, a_update 0 previous (default) / 1 preliminary). DIR/{xp,h0,A0,W,gamma,beta}.bin and, if present,
// {gout,gAT}.bin: raw little-endian arrays; DIR/lengths.bin (int64 [B]), if present, is
// FwdParams/BwdParams::lengths. Outputs and workspaces start as 12345 (any contents, as
// at::empty). Writes DIR/{out,AT,zs,xhat,rstd}.bin (forward,
// saving), out_nosave.bin / AT_nosave.bin (forward, saving nothing), out_noAT.bin (forward,
// saving nothing, A_T not wanted: FwdParams::AT = nullptr), {dxp,dh0,dgamma_part,
// dbeta_part}.bin and G.bin if need_G (backward, from this forward's saved tensors), and
// stats.txt: "fwd_smem bwd_smem max_smem_attribute launches fwd_threads bwd_threads"
// (threads: the block size). Exit status 2 on a launch error.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fastweights_cuda.h"

namespace {

template <typename T>
std::vector<T> read(const std::string& path, size_t n) {
  std::vector<T> v(n);
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(3);
  }
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * sizeof(T)));
  if (static_cast<size_t>(f.gcount()) != n * sizeof(T)) {
    std::fprintf(stderr, "%s is short\n", path.c_str());
    std::exit(3);
  }
  return v;
}

template <typename T>
void write(const std::string& path, const std::vector<T>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: launch error %d\n", what, static_cast<int>(e));
    std::exit(2);
  }
}

template <typename T>
int run(const std::string& dir, int64_t B, int64_t Tn, int64_t H, int64_t S, int act, double lam,
        double eta, double eps, bool need_G, int a_update) {
  const size_t nx = B * Tn * H, nh = B * H, nA = B * H * H, nz = B * Tn * S * H, nr = B * Tn * S;
  auto xp = read<T>(dir + "/xp.bin", nx);
  auto h0 = read<T>(dir + "/h0.bin", nh);
  auto A0 = read<T>(dir + "/A0.bin", nA);
  auto W = read<T>(dir + "/W.bin", H * H);
  auto gamma = read<T>(dir + "/gamma.bin", H);
  auto beta = read<T>(dir + "/beta.bin", H);
  std::vector<T> gout, gAT;
  if (exists(dir + "/gout.bin")) gout = read<T>(dir + "/gout.bin", nx);
  if (exists(dir + "/gAT.bin")) gAT = read<T>(dir + "/gAT.bin", nA);

  std::vector<int64_t> lengths;
  if (exists(dir + "/lengths.bin")) lengths = read<int64_t>(dir + "/lengths.bin", B);
  std::vector<T> out(nx, T(12345)), AT(nA, T(12345)), zs(nz, T(12345)), xhat(nz, T(12345)), rstd(nr, T(12345));
  crnn::FwdParams<T> f{};
  f.lengths = lengths.empty() ? nullptr : lengths.data();
  f.B = B;
  f.T_len = Tn;
  f.H = H;
  f.S = S;
  f.act = act;
  f.lam = lam;
  f.eta = eta;
  f.eps = eps;
  f.a_update = a_update;
  std::vector<T> keys(a_update == crnn::kPreliminary ? nx : 0, T(12345));  // the glue's workspace
  f.keys = keys.empty() ? nullptr : keys.data();
  f.xp = xp.data();
  f.h0 = h0.data();
  f.A0 = A0.data();
  f.W = W.data();
  f.gamma = gamma.data();
  f.beta = beta.data();
  f.out = out.data();
  f.AT = AT.data();
  f.zs = zs.data();
  f.xhat = xhat.data();
  f.rstd = rstd.data();
  check(crnn::cuda::launch_forward(f, nullptr), "forward");
  const size_t fwd_smem = crnn_emu::stats().last_launch_smem;
  const unsigned fwd_threads = crnn_emu::stats().last_launch_threads;
  write(dir + "/out.bin", out);
  write(dir + "/AT.bin", AT);
  write(dir + "/zs.bin", zs);
  write(dir + "/xhat.bin", xhat);
  write(dir + "/rstd.bin", rstd);

  std::vector<T> out2(nx, T(12345)), AT2(nA, T(12345));
  crnn::FwdParams<T> f2 = f;
  f2.out = out2.data();
  f2.AT = AT2.data();
  f2.zs = f2.xhat = f2.rstd = nullptr;
  check(crnn::cuda::launch_forward(f2, nullptr), "forward (no saving)");
  write(dir + "/out_nosave.bin", out2);
  write(dir + "/AT_nosave.bin", AT2);

  std::vector<T> out3(nx, T(12345));
  crnn::FwdParams<T> f3 = f2;
  f3.out = out3.data();
  f3.AT = nullptr;
  check(crnn::cuda::launch_forward(f3, nullptr), "forward (no A_T)");
  write(dir + "/out_noAT.bin", out3);

  std::vector<T> dxp(nx, T(12345)), dh0(nh), dgp(nh), dbp(nh), dH(B * (Tn + 1) * H, T(12345)),
      G(need_G ? nz : 0, T(12345));
  crnn::BwdParams<T> g{};
  g.lengths = f.lengths;
  g.B = B;
  g.T_len = Tn;
  g.H = H;
  g.S = S;
  g.act = act;
  g.lam = lam;
  g.eta = eta;
  g.a_update = a_update;
  std::vector<T> dK(a_update == crnn::kPreliminary ? nx : 0, T(12345));  // any contents, as at::empty
  g.dK = dK.empty() ? nullptr : dK.data();
  g.gout = gout.empty() ? nullptr : gout.data();
  g.gAT = gAT.empty() ? nullptr : gAT.data();
  g.h0 = h0.data();
  g.A0 = A0.data();
  g.W = W.data();
  g.gamma = gamma.data();
  g.out = out.data();
  g.zs = zs.data();
  g.xhat = xhat.data();
  g.rstd = rstd.data();
  g.dxp = dxp.data();
  g.dh0 = dh0.data();
  g.dgamma_part = dgp.data();
  g.dbeta_part = dbp.data();
  g.dH = dH.data();
  g.G = need_G ? G.data() : nullptr;
  check(crnn::cuda::launch_backward(g, nullptr), "backward");
  const size_t bwd_smem = crnn_emu::stats().last_launch_smem;
  const unsigned bwd_threads = crnn_emu::stats().last_launch_threads;
  write(dir + "/dxp.bin", dxp);
  write(dir + "/dh0.bin", dh0);
  write(dir + "/dgamma_part.bin", dgp);
  write(dir + "/dbeta_part.bin", dbp);
  if (need_G) write(dir + "/G.bin", G);

  std::ofstream st(dir + "/stats.txt");
  st << fwd_smem << " " << bwd_smem << " " << crnn_emu::stats().max_dynamic_smem_set << " "
     << crnn_emu::stats().launches << " " << fwd_threads << " " << bwd_threads << "\n";
  return 0;
}

}  // namespace

// B above 2^31 - 1 (more blocks than a grid holds) must be refused, not truncated.
int refuse_huge_batch() {
  crnn::FwdParams<float> f{};
  f.B = int64_t(1) << 31;
  f.T_len = f.H = f.S = 1;
  crnn::BwdParams<float> g{};
  g.B = f.B;
  g.T_len = g.H = g.S = 1;
  const cudaError_t ef = crnn::cuda::launch_forward(f, nullptr);
  const cudaError_t eb = crnn::cuda::launch_backward(g, nullptr);
  std::printf("%d %d %d\n", static_cast<int>(ef), static_cast<int>(eb), crnn_emu::stats().launches);
  return ef == cudaErrorInvalidValue && eb == cudaErrorInvalidValue && crnn_emu::stats().launches == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--refuse-huge-batch") return refuse_huge_batch();
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 1;
  }
  const std::string dir = argv[1];
  std::ifstream meta(dir + "/meta.txt");
  int dtype = 0, act = 0, has_gout = 0, has_gAT = 0, need_G = 0;
  int64_t B = 0, Tn = 0, H = 0, S = 0;
  double lam = 0, eta = 0, eps = 0;
  if (!(meta >> dtype >> B >> Tn >> H >> S >> act >> lam >> eta >> eps >> has_gout >> has_gAT >> need_G)) {
    std::fprintf(stderr, "bad meta.txt\n");
    return 1;
  }
  int a_update = 0;
  if (!(meta >> a_update)) a_update = 0;  // optional last field
  (void)has_gout;
  (void)has_gAT;
  if (dtype == 4) return run<float>(dir, B, Tn, H, S, act, lam, eta, eps, need_G != 0, a_update);
  return run<double>(dir, B, Tn, H, S, act, lam, eta, eps, need_G != 0, a_update);
}
