// bench/bench_linear.cpp — the CPU linear layer on V4-Flash shapes (spec §1.1, model_traits.hpp), decode and prefill,
// next to this machine's rooflines measured in the same run.
//
// Cases:
//   read_bw/threads   the read-bandwidth baseline: `threads` threads sum a 256 MiB buffer (8x the L3; a dsv4::buffer,
//                     2 MiB pages like the weights' buffers: bench_util.hpp). Every decode case below also runs
//                     one such pass after each of its rounds (interleaved, because neighbours on this machine move
//                     the bandwidth by 30% from minute to minute) and reports `read` (GB/s) and `bw` = its GB/s /
//                     read.
//   gemv_*            T = 1 (decode) over 16 distinct weight matrices per iteration (16 x 4-32 MiB, beyond the
//                     32 MiB L3), so the weights stream from DRAM as in a model: GB/s of weight + scale bytes read.
//                     FP4 experts w1 [2048 x 4096] and w2 [4096 x 2048]; FP8 wq_b [32768 x 1024] and wo_b
//                     [4096 x 8192]. FP8 codes are either "normal" (exponent field != 0, as in trained checkpoints)
//                     or "subnormal" (a quarter of the codes have exponent 0, the slow case of a naive decode).
//   gemv4_*, gemv8_*  4 and 8 tokens (a batched decode step; the register-decode GEMV up to 8 tokens): GB/s of the
//                     weights, read once per call.
//   gemv_hot_*        the same with one matrix 16 times: what the decode
//                     instructions can do when memory is not the limit (FP4 [2048 x 4096], FP8 [1024 x 4096]: 4 MiB).
//   gemm_*            T = 512 (a prefill chunk) on the same shapes: GFLOP/s (2·T·N·K) and `peak` = GFLOP/s / 400
//                     (the fp32 FMA peak of both cores); `x_eigen` = time of an Eigen fp32 GEMM on the dequantized
//                     weight (decode excluded, single-threaded Eigen) / this time, measured in the same process.
// Every case is first checked against the scalar ref (double accumulation) on its first matrix: relative error at
// most 1e-5 of the largest output (fp32 accumulation over K <= 8192 of exactly decoded weights), or it reports an
// error instead of a number.
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>
#include <random>
#include <memory>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <vector>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/quant.hpp"

namespace {

using namespace dsv4;
using namespace dsv4::bench;
constexpr int kDistinct = 16;

// ---- read bandwidth (bench::read_pass) ----------------------------------------------------------------------
void BM_read_bw(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double gbs = 0;
  for (auto _ : state) gbs += read_pass(threads);
  state.counters["GB/s"] = gbs / static_cast<double>(state.iterations());
}

// ---- weights -----------------------------------------------------------------------------------------------------
enum class codes { fp4, fp8_normal, fp8_subnormal, bf16 };

struct matrix {
  buffer w, s;
  ops::qweight q() const { return {w.view(), s.data() ? s.view() : tensor_view()}; }
  double bytes() const { return static_cast<double>(w.nbytes() + (s.data() ? s.nbytes() : 0)); }
};

matrix make(codes c, std::int64_t N, std::int64_t K, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  matrix m;
  if (c == codes::fp4) {
    m.w = buffer(dtype::fp4_e2m1, {N, K});
    auto* p = static_cast<std::uint64_t*>(m.w.data());
    for (std::int64_t i = 0; i < N * K / 16; ++i) p[i] = rng();
    m.s = buffer(dtype::ue8m0, {N, K / 32});
    for (auto& s : m.s.host_span<ue8m0>()) s.bits = static_cast<std::uint8_t>(120 + rng() % 3);
  } else if (c == codes::bf16) {  // no scales (the compressor's and gate's BF16 weights)
    m.w = buffer(dtype::bf16, {N, K});
    std::normal_distribution<float> nd(0.f, 0.02f);
    for (auto& v : m.w.host_span<bf16>()) v = bf16::from_float(nd(rng));
  } else {
    m.w = buffer(dtype::fp8_e4m3, {N, K});
    for (auto& v : m.w.host_span<fp8_e4m3>()) {
      const auto r = rng();
      std::uint8_t e = static_cast<std::uint8_t>(1 + (r >> 8) % 14);          // exponent 1..14: normal, never NaN
      if (c == codes::fp8_subnormal && (r >> 16) % 4 == 0) e = 0;              // a quarter subnormal (or zero)
      v.bits = static_cast<std::uint8_t>((r & 0x80) | (e << 3) | ((r >> 4) & 7));
    }
    m.s = buffer(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128});
    for (auto& s : m.s.host_span<ue8m0>()) s.bits = static_cast<std::uint8_t>(112 + rng() % 4);
  }
  return m;
}

struct bank {
  std::vector<matrix> m;
};

bank& get_bank(codes c, std::int64_t N, std::int64_t K) {
  static std::map<std::tuple<int, std::int64_t, std::int64_t>, bank> banks;
  bank& b = banks[{static_cast<int>(c), N, K}];
  if (b.m.empty())
    for (int i = 0; i < kDistinct; ++i) b.m.push_back(make(c, N, K, 1000 * static_cast<std::uint64_t>(c) + i));
  return b;
}

void fill(const buffer& b, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& v : b.host_span<float>()) v = nd(rng);
}

// max |a - b| / max |b|
double rel_err(const buffer& a, const buffer& b) {
  double worst = 0, scale = 0;
  const auto pa = a.host_span<float>(), pb = b.host_span<float>();
  for (std::size_t i = 0; i < pa.size(); ++i) scale = std::max(scale, double(std::fabs(pb[i])));
  for (std::size_t i = 0; i < pa.size(); ++i) worst = std::max(worst, std::fabs(double(pa[i]) - pb[i]));
  return worst / (scale + 1e-30);
}

// cpu result of the first matrix vs the scalar ref on the first `rows_checked` tokens.
bool matches_ref(const matrix& m, const buffer& x, std::int64_t T, std::int64_t N, int threads) {
  const std::int64_t Tc = std::min<std::int64_t>(T, 4);
  buffer xc(dtype::f32, {Tc, x.view().shape(1)}), yc(dtype::f32, {Tc, N}), yr(dtype::f32, {Tc, N});
  std::copy_n(x.host_span<float>().data(), xc.host_span<float>().size(), xc.host_span<float>().data());
  ops::linear(xc, m.q(), yc, with(backend::cpu, threads));
  ops::linear(xc, m.q(), yr, with(backend::ref, 1));
  return rel_err(yc, yr) <= 1e-5;
}

void gemv_case(benchmark::State& state, codes c, std::int64_t N, std::int64_t K, bool hot = false,
               std::int64_t T = 1) {
  const int threads = static_cast<int>(state.range(0));
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  bank& b = get_bank(c, N, K);
  buffer x(dtype::f32, {T, K}), y(dtype::f32, {T, N});
  fill(x, 7);
  if (!matches_ref(b.m[0], x, T, N, threads)) return state.SkipWithError("cpu != ref");
  const exec ex = with(backend::cpu, threads);
  // Interleaved rounds: every iteration times the 16 GEMVs and then one read pass, so the neighbours' share of the
  // memory system is the same for both and `bw` is their ratio.
  double total = 0, read = 0;
  for (auto _ : state) {
    total += seconds_per_call([&] {
      for (const matrix& m : b.m) ops::linear(x, (hot ? b.m[0] : m).q(), y, ex);
    });
    read += paused_read_pass(state, threads);
  }
  const double iters = static_cast<double>(state.iterations());
  const double per = total / iters / kDistinct;
  const double gbs = b.m[0].bytes() / per / 1e9;
  state.counters["GB/s"] = gbs;
  state.counters["read"] = read / iters;
  if (!hot) state.counters["bw"] = gbs / (read / iters);
  state.counters["us"] = per * 1e6;
}

void gemm_case(benchmark::State& state, codes c, std::int64_t N, std::int64_t K, std::int64_t T = 512) {
  const int threads = static_cast<int>(state.range(0));
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  bank& b = get_bank(c, N, K);
  buffer x(dtype::f32, {T, K}), y(dtype::f32, {T, N});
  fill(x, 9);
  if (!matches_ref(b.m[0], x, T, N, threads)) return state.SkipWithError("cpu != ref");
  // Eigen baseline: the same product on the dequantized weight (dequantization not timed).
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Mat W(N, K), Y(T, N);
  const bool fp4 = c == codes::fp4;
  ops::dequantize(b.m[0].w, b.m[0].s, tensor_view(W.data(), dtype::f32, {N, K}), fp4 ? 1 : 128, fp4 ? 32 : 128);
  Eigen::Map<const Mat> X(x.host_span<float>().data(), T, K);
  const double eigen_s = seconds_per_call([&] { Y.noalias() = X * W.transpose(); });
  const exec ex = with(backend::cpu, threads);
  double total = 0;
  std::size_t i = 0;
  for (auto _ : state) total += seconds_per_call([&] { ops::linear(x, b.m[i++ % kDistinct].q(), y, ex); });
  const double per = total / static_cast<double>(state.iterations());
  const double gflops = 2.0 * T * N * K / per / 1e9;
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak"] = gflops / kPeakGFlops;
  state.counters["x_eigen"] = eigen_s / per;
}

void BM_gemv_fp4_2048x4096(benchmark::State& s) { gemv_case(s, codes::fp4, 2048, 4096); }
void BM_gemv_fp4_4096x2048(benchmark::State& s) { gemv_case(s, codes::fp4, 4096, 2048); }
void BM_gemv_fp8_32768x1024(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 32768, 1024); }
void BM_gemv_fp8_4096x8192(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 4096, 8192); }
void BM_gemv_fp8sub_32768x1024(benchmark::State& s) { gemv_case(s, codes::fp8_subnormal, 32768, 1024); }
void BM_gemv_fp8sub_4096x8192(benchmark::State& s) { gemv_case(s, codes::fp8_subnormal, 4096, 8192); }
void BM_gemv_bf16_1024x4096(benchmark::State& s) { gemv_case(s, codes::bf16, 1024, 4096); }
void BM_gemv_hot_fp4_2048x4096(benchmark::State& s) { gemv_case(s, codes::fp4, 2048, 4096, true); }
// Small batches (T = 4 and 8 tokens, as a batched decode step gives the attention projections): GB/s of weights
// read once per call.
void BM_gemv4_fp4_2048x4096(benchmark::State& s) { gemv_case(s, codes::fp4, 2048, 4096, false, 4); }
void BM_gemv4_fp8_32768x1024(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 32768, 1024, false, 4); }
void BM_gemv4_bf16_1024x4096(benchmark::State& s) { gemv_case(s, codes::bf16, 1024, 4096, false, 4); }
void BM_gemv8_fp4_2048x4096(benchmark::State& s) { gemv_case(s, codes::fp4, 2048, 4096, false, 8); }
void BM_gemv8_fp8_32768x1024(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 32768, 1024, false, 8); }
void BM_gemv4_fp8_4096x8192(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 4096, 8192, false, 4); }
void BM_gemv8_fp8_4096x8192(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 4096, 8192, false, 8); }
void BM_gemv_hot_fp8_1024x4096(benchmark::State& s) { gemv_case(s, codes::fp8_normal, 1024, 4096, true); }
void BM_gemm_fp4_2048x4096(benchmark::State& s) { gemm_case(s, codes::fp4, 2048, 4096); }
void BM_gemm_fp4_4096x2048(benchmark::State& s) { gemm_case(s, codes::fp4, 4096, 2048); }
void BM_gemm_fp8_32768x1024(benchmark::State& s) { gemm_case(s, codes::fp8_normal, 32768, 1024); }
void BM_gemm_fp8_4096x8192(benchmark::State& s) { gemm_case(s, codes::fp8_normal, 4096, 8192); }
// 12 tokens: what a routed expert of a V4-Flash MoE prefill sees (T = 512 tokens x 6 of 256 experts).
void BM_gemm12_fp4_2048x4096(benchmark::State& s) { gemm_case(s, codes::fp4, 2048, 4096, 12); }
void BM_gemm12_fp4_4096x2048(benchmark::State& s) { gemm_case(s, codes::fp4, 4096, 2048, 12); }

}  // namespace

BENCHMARK(BM_read_bw)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(16)->UseRealTime()->Unit(benchmark::kMillisecond);
#define DSV4_GEMV(f) BENCHMARK(f)->ArgName("threads")->Arg(1)->Arg(2)->MinTime(0.5)->UseRealTime()->Unit(benchmark::kMicrosecond)
DSV4_GEMV(BM_gemv_fp4_2048x4096);
DSV4_GEMV(BM_gemv_fp4_4096x2048);
DSV4_GEMV(BM_gemv_fp8_32768x1024);
DSV4_GEMV(BM_gemv_fp8_4096x8192);
DSV4_GEMV(BM_gemv_fp8sub_32768x1024);
DSV4_GEMV(BM_gemv_fp8sub_4096x8192);
DSV4_GEMV(BM_gemv_bf16_1024x4096);
DSV4_GEMV(BM_gemv_hot_fp4_2048x4096);
DSV4_GEMV(BM_gemv4_fp4_2048x4096);
DSV4_GEMV(BM_gemv4_fp8_32768x1024);
DSV4_GEMV(BM_gemv4_bf16_1024x4096);
DSV4_GEMV(BM_gemv8_fp4_2048x4096);
DSV4_GEMV(BM_gemv8_fp8_32768x1024);
DSV4_GEMV(BM_gemv4_fp8_4096x8192);
DSV4_GEMV(BM_gemv8_fp8_4096x8192);
DSV4_GEMV(BM_gemv_hot_fp8_1024x4096);
#define DSV4_GEMM(f) BENCHMARK(f)->ArgName("threads")->Arg(2)->Iterations(4)->UseRealTime()->Unit(benchmark::kMillisecond)
DSV4_GEMM(BM_gemm_fp4_2048x4096);
DSV4_GEMM(BM_gemm_fp4_4096x2048);
DSV4_GEMM(BM_gemm_fp8_32768x1024);
DSV4_GEMM(BM_gemm_fp8_4096x8192);
DSV4_GEMM(BM_gemm12_fp4_2048x4096);
DSV4_GEMM(BM_gemm12_fp4_4096x2048);
BENCHMARK_MAIN();
