// Standalone driver of the CPU fast-weights kernel (no PyTorch): runs forward and backward
// on a fixed pseudo-random problem and prints every output, so tests/test_cpu_isa.py can
// compile it for several -march targets (AVX-512, AVX2, SSE2: different code paths and
// vector widths) and check that they agree. Usage: isa_check B T H S act(0|1) a0(0|1) f64(0|1)
// [lanes(0|1)]. With lanes=1 it prints the per-example forward's out, zs, xhat and rstd,
// then the same from forward_lanes (the batch in the vector lanes; with a0=1 the A_0 too),
// and stops.
#define CRNN_CPU_PATH_NS cpu_check  // the kernel's namespace (see fastweights_cpu_path.h)
#include "../../csrc/fastweights_cpu_kernel.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace crnn;
using namespace crnn::cpu_check;

template <typename T>
struct Problem {
  int64_t B, Tn, H, S;
  std::vector<T> xp, h0, A0, W, gamma, beta, gout, gAT;
};

static double lcg(uint64_t& s) {  // deterministic uniform(-1, 1)
  s = s * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<double>((s >> 11) & ((1ULL << 53) - 1)) / static_cast<double>(1ULL << 52) - 1.0;
}

template <typename T, int ACT>
int run(int64_t B, int64_t Tn, int64_t H, int64_t S, bool a0, bool lanes) {
  uint64_t seed = 12345;
  auto fill = [&](std::vector<T>& v, size_t n, double scale, double offset = 0.0) {
    v.resize(n);
    for (auto& x : v) x = static_cast<T>(offset + scale * lcg(seed));
  };
  std::vector<T> xp, h0, A0, W, gamma, beta, gout, gAT;
  fill(xp, B * Tn * H, 1.0);
  fill(h0, B * H, 1.0);
  fill(A0, B * H * H, a0 ? 0.2 : 0.0);
  fill(W, H * H, 0.5 / std::sqrt(static_cast<double>(H)));
  fill(gamma, H, 0.1, 1.0);
  fill(beta, H, 0.1);
  fill(gout, B * Tn * H, 1.0);
  fill(gAT, B * H * H, 1.0);
  const double lam = 0.95, eta = 0.5, eps = 1e-5;
  const int64_t Hp = padded<T>(H), Tp = padded<T>(Tn + 1);
  std::vector<T> WTp(H * Hp, 0), Wp(H * Hp, 0), g(Hp, 0), bt(Hp, 0), mask(Hp, 0), lp(Tn + 1), decay(Tn + vec_len<T>() + kSlack, 0);
  for (int64_t j = 0; j < H; ++j)
    for (int64_t i = 0; i < H; ++i) {
      WTp[j * Hp + i] = W[i * H + j];
      Wp[i * Hp + j] = W[i * H + j];
    }
  for (int64_t i = 0; i < H; ++i) {
    g[i] = gamma[i];
    bt[i] = beta[i];
    mask[i] = 1;
  }
  for (int64_t k = 0; k <= Tn; ++k) lp[k] = static_cast<T>(std::pow(lam, static_cast<double>(k)));
  for (int64_t j = 0; j < Tn; ++j) decay[j] = static_cast<T>(eta * std::pow(lam, static_cast<double>(Tn - 1 - j)));
  CallConstants<T> consts{B, Tn, H, Hp, S, Tp, static_cast<T>(lam), static_cast<T>(eta), static_cast<T>(eps),
               WTp.data(), Wp.data(), g.data(), bt.data(), mask.data(), lp.data(), decay.data(), chunk_length(H)};
  std::vector<T> out(B * Tn * H), AT(B * H * H), zs(B * Tn * S * H), xh(B * Tn * S * H), rs(B * Tn * S);
  FwdParams<T> fio{};
  fio.B = B;
  fio.T_len = Tn;
  fio.H = H;
  fio.S = S;
  fio.act = ACT;
  fio.lam = lam;
  fio.eta = eta;
  fio.eps = eps;
  fio.xp = xp.data();
  fio.h0 = h0.data();
  fio.A0 = A0.data();
  fio.W = W.data();
  fio.gamma = gamma.data();
  fio.beta = beta.data();
  fio.out = out.data();
  fio.AT = AT.data();
  fio.zs = zs.data();
  fio.xhat = xh.data();
  fio.rstd = rs.data();
  FwdScratch<T> fws;
  fws.init(consts);
  for (int64_t b = 0; b < B; ++b) forward_example<ACT, T>(consts, fio, b, fws);
  stream_fence();
  if (lanes) {
    std::vector<T> out2(out.size()), zs2(zs.size()), xh2(xh.size()), rs2(rs.size());
    FwdParams<T> lio = fio;
    lio.A0 = a0 ? A0.data() : nullptr;
    lio.AT = nullptr;
    lio.out = out2.data();
    lio.zs = zs2.data();
    lio.xhat = xh2.data();
    lio.rstd = rs2.data();
    if (!lanes_forward_applies(consts, lio)) {
      std::fprintf(stderr, "forward_lanes does not apply to this case\n");
      return 3;
    }
    LanesScratch<T> lws;
    lws.init(consts, lio);
    const int64_t G = vec_len<T>();
    for (int64_t b0 = 0; b0 < B; b0 += G) forward_lanes<ACT, T>(consts, lio, b0, std::min(G, B - b0), lws);
    for (const auto* v : {&out, &zs, &xh, &rs, &out2, &zs2, &xh2, &rs2})
      for (T x : *v) std::printf("%.17g\n", static_cast<double>(x));
    return 0;
  }
  std::vector<T> dxp(B * Tn * H), dh0(B * H), dA0(B * H * H), dg(B * H), db(B * H);
  BwdParams<T> bio{};
  bio.B = B;
  bio.T_len = Tn;
  bio.H = H;
  bio.S = S;
  bio.act = ACT;
  bio.lam = lam;
  bio.eta = eta;
  bio.gout = gout.data();
  bio.gAT = gAT.data();
  bio.h0 = h0.data();
  bio.A0 = A0.data();
  bio.W = W.data();
  bio.gamma = gamma.data();
  bio.out = out.data();
  bio.zs = zs.data();
  bio.xhat = xh.data();
  bio.rstd = rs.data();
  bio.dxp = dxp.data();
  bio.dh0 = dh0.data();
  bio.dgamma_part = dg.data();
  bio.dbeta_part = db.data();
  bio.dA0 = dA0.data();
  BwdScratch<T> bws;
  bws.init(consts);
  for (int64_t b = 0; b < B; ++b) backward_example<ACT, T>(consts, bio, b, bws);
  stream_fence();
  for (const auto* v : {&out, &AT, &dxp, &dh0, &dA0, &dg, &db})
    for (T x : *v) std::printf("%.17g\n", static_cast<double>(x));
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 8) return 2;
  const int64_t B = atoi(argv[1]), Tn = atoi(argv[2]), H = atoi(argv[3]), S = atoi(argv[4]);
  const int act = atoi(argv[5]);
  const bool a0 = atoi(argv[6]) != 0, dbl = atoi(argv[7]) != 0, lanes = argc > 8 && atoi(argv[8]) != 0;
  if (dbl) return act == 0 ? run<double, kRelu>(B, Tn, H, S, a0, lanes) : run<double, kTanh>(B, Tn, H, S, a0, lanes);
  return act == 0 ? run<float, kRelu>(B, Tn, H, S, a0, lanes) : run<float, kTanh>(B, Tn, H, S, a0, lanes);
}
