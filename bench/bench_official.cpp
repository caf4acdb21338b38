// bench/bench_official.cpp — the `official` numerics policy's fast CPU path (BF16 dot products, src/cpu/
// linear_official.cpp) against the fp32 policy in the same run, on V4-Flash prefill shapes (T = 512).
//
// Cases:
//   peak/threads      this machine's ceilings measured here: `bf16` = GFLOP/s of independent vdpbf16ps chains (2 bf16
//                     products = 4 flops per lane), `fp32` = GFLOP/s of independent fp32 FMA chains, both on
//                     `threads` threads (0 for bf16 where the CPU lacks AVX512-BF16).
//   gemm_*            y = x · W^T at T = 512: each iteration times the official linear and then the fp32-policy
//                     linear on the same x and W (interleaved, so neighbours weigh on both alike). GFLOP/s = 2·T·N·K /
//                     time; `x_fp32` = official GFLOP/s / fp32-policy GFLOP/s; `of_bf16` = official GFLOP/s / the
//                     bf16 peak measured in the same process.
//   moe_*             the MoE FFN of V4-Flash / V4-Pro at T = 512 (6 routed FP4 experts of 16 distinct weight sets +
//                     the FP8 shared expert per token, random routing): official vs fp32, the same counters with
//                     2·3·I·D flops per token and expert.
// Every case first checks official cpu against official ref on a slice (a BF16 step at most, see tests/
// test_official.cpp), or it reports an error instead of a number.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/cpu/linear.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/model_traits.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/moe.hpp"

using namespace dsv4;
using namespace dsv4::bench;

namespace {

// ---- ceilings ------------------------------------------------------------------------------------------------------
#if defined(__x86_64__)
// 12 independent accumulator chains in registers (named, so the compiler cannot put them in memory; distinct starting
// values from a volatile, so it cannot merge them into one); the operands come through volatile loads so nothing folds.
#define DSV4_CHAINS(OP)                                                                              \
  __m512 a0 = _mm512_set1_ps(seed), a1 = _mm512_set1_ps(seed + 1), a2 = _mm512_set1_ps(seed + 2),     \
         a3 = _mm512_set1_ps(seed + 3), a4 = _mm512_set1_ps(seed + 4), a5 = _mm512_set1_ps(seed + 5),   \
         a6 = _mm512_set1_ps(seed + 6), a7 = _mm512_set1_ps(seed + 7), a8 = _mm512_set1_ps(seed + 8),   \
         a9 = _mm512_set1_ps(seed + 9), a10 = _mm512_set1_ps(seed + 10), a11 = _mm512_set1_ps(seed + 11); \
  for (long it = 0; it < iters; ++it) {                                                              \
    a0 = OP(a0); a1 = OP(a1); a2 = OP(a2); a3 = OP(a3); a4 = OP(a4); a5 = OP(a5);                    \
    a6 = OP(a6); a7 = OP(a7); a8 = OP(a8); a9 = OP(a9); a10 = OP(a10); a11 = OP(a11);                \
  }                                                                                                  \
  const __m512 sum = _mm512_add_ps(                                                                  \
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),                     \
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),                    \
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));

__attribute__((target("avx512f,avx512bf16"))) double bf16_chains(long iters) {
  volatile int one = 0x3F803F80, zero = 0x0D800D80;  // 1.0 and 2^-100 (normal: no flush)
  volatile float seed_v = 0.f;
  const float seed = seed_v;
  const __m512bh x = (__m512bh)_mm512_set1_epi32(one), y = (__m512bh)_mm512_set1_epi32(zero);
#define DSV4_DP(acc) _mm512_dpbf16_ps(acc, x, y)
  DSV4_CHAINS(DSV4_DP)
#undef DSV4_DP
  return _mm512_reduce_add_ps(sum) + 12.0 * 64.0 * static_cast<double>(iters);  // 16 lanes x 2 products x 2 flops
}
__attribute__((target("avx512f,fma"))) double fma_chains(long iters) {
  volatile float one = 1.f, zero = 0x1p-100f, seed_v = 0.f;
  const float seed = seed_v;
  const __m512 x = _mm512_set1_ps(one), y = _mm512_set1_ps(zero);
#define DSV4_FMA(acc) _mm512_fmadd_ps(x, y, acc)
  DSV4_CHAINS(DSV4_FMA)
#undef DSV4_FMA
  return _mm512_reduce_add_ps(sum) + 12.0 * 32.0 * static_cast<double>(iters);  // 16 lanes x 2 flops
}
#undef DSV4_CHAINS
#endif

// GFLOP/s of `threads` threads each running kernel(iters).
template <class F>
double ceiling(int threads, F kernel) {
  constexpr long iters = 20'000'000;
  tbb::task_arena arena(threads);
  double flops = 0;
  const double s = seconds_per_call([&] {
    arena.execute([&] {
      std::vector<double> f(static_cast<std::size_t>(threads));
      tbb::parallel_for(0, threads, [&](int i) { f[static_cast<std::size_t>(i)] = kernel(iters); }, tbb::static_partitioner());
      for (double v : f) flops += v;
    });
  });
  return flops / s / 1e9;
}

// The ceiling of one instruction kind; 0 where the CPU lacks it.
double bf16_peak(int threads) {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512bf16") ? ceiling(threads, bf16_chains) : 0;
#else
  return threads * 0.0;
#endif
}
double fp32_peak(int threads) {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") ? ceiling(threads, fma_chains) : 0;
#else
  return threads * 0.0;
#endif
}

double cached_bf16_peak(int threads) {
  static double p[3] = {-1, -1, -1};
  const int i = std::min(threads, 2);
  if (p[i] < 0) p[i] = bf16_peak(threads);
  return p[i];
}

void BM_peak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double b = 0, f = 0;
  for (auto _ : state) {
    b = bf16_peak(threads);
    f = fp32_peak(threads);
  }
  state.counters["bf16"] = b;
  state.counters["fp32"] = f;
}

// ---- weights --------------------------------------------------------------------------------------------------------
std::mt19937_64& rng() {
  static std::mt19937_64 r(2026);
  return r;
}

// FP8 (normal codes, scales around 2^-8) or FP4 weights [N, K] as a checkpoint stores them.
struct matrix {
  buffer w, s;
  ops::qweight q() const { return {w.view(), s.view()}; }
};

matrix make(bool fp4, std::int64_t N, std::int64_t K) {
  matrix m;
  std::uniform_int_distribution<int> byte(0, 255), sexp(118, 124);
  if (fp4) {
    m.w = buffer(dtype::fp4_e2m1, {N, K});
    m.s = buffer(dtype::ue8m0, {N, K / 32});
  } else {
    m.w = buffer(dtype::fp8_e4m3, {N, K});
    m.s = buffer(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128});
  }
  auto* p = static_cast<std::uint8_t*>(m.w.data());
  for (std::int64_t i = 0; i < static_cast<std::int64_t>(m.w.nbytes()); ++i) {
    std::uint8_t c = static_cast<std::uint8_t>(byte(rng()));
    if (!fp4) {  // normal E4M3 codes, no NaN
      if ((c & 0x78) == 0) c |= 0x08;
      if ((c & 0x7F) == 0x7F) c = static_cast<std::uint8_t>(c & 0xFE);
    }
    p[i] = c;
  }
  for (auto& s : m.s.host_span<ue8m0>()) s.bits = static_cast<std::uint8_t>(sexp(rng()));
  return m;
}

void fill(const buffer& x, float sd) {
  std::normal_distribution<float> nd(0.f, sd);
  for (float& v : x.host_span<float>()) v = nd(rng());
}

// Official cpu vs official ref on the first `rows` rows and the first 64 outputs: at most one BF16 step apart.
bool matches_ref(const ops::qweight& w, const buffer& x, std::int64_t rows) {
  const std::int64_t N = std::min<std::int64_t>(64, w.weight.shape(0));
  const ops::qweight part{w.weight.narrow(0, 0, N),
                          w.weight.dt() == dtype::fp4_e2m1 ? w.scale.narrow(0, 0, N) : w.scale.narrow(0, 0, 1), {}};
  const tensor_view xs = x.view().narrow(0, 0, rows);
  buffer a(dtype::f32, {rows, N}), b(dtype::f32, {rows, N});
  ops::linear(xs, part, a, with(backend::cpu, 2), numerics::official);
  ops::linear(xs, part, b, with(backend::ref, 1), numerics::official);
  for (std::int64_t i = 0; i < rows * N; ++i) {
    const float r = b.host_span<float>()[i], c = a.host_span<float>()[i];
    if (!(std::fabs(c - r) <= std::ldexp(std::fabs(r), -7) + 1e-30f)) return false;
  }
  return true;
}

void gemm_case(benchmark::State& state, bool fp4, std::int64_t N, std::int64_t K) {
  const int threads = static_cast<int>(state.range(0));
  const std::int64_t T = state.range(1);
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  const matrix m = make(fp4, N, K);
  buffer x(dtype::f32, {T, K}), y(dtype::f32, {T, N});
  fill(x, 1.f);
  if (!matches_ref(m.q(), x, std::min<std::int64_t>(3, T))) return state.SkipWithError("official cpu != official ref");
  const exec ex = with(backend::cpu, threads);
  double off = 0, f32 = 0;
  for (auto _ : state) {
    off += seconds_per_call([&] { ops::linear(x, m.q(), y, ex, numerics::official); });
    f32 += seconds_per_call([&] { ops::linear(x, m.q(), y, ex, numerics::fp32); });
  }
  const double it = static_cast<double>(state.iterations()), flops = 2.0 * T * N * K;
  const double g_off = flops / (off / it) / 1e9, g_f32 = flops / (f32 / it) / 1e9;
  state.counters["GFLOP/s"] = g_off;
  state.counters["fp32_GFLOP/s"] = g_f32;
  state.counters["x_fp32"] = g_off / g_f32;
  const double peak = cached_bf16_peak(threads);
  if (peak > 0) state.counters["of_bf16"] = g_off / peak;
  state.counters["bf16_dot"] = cpu::official_bf16_dot() ? 1 : 0;
}

// ---- MoE FFN ------------------------------------------------------------------------------------------------------
template <class M>
struct expert_bank {
  static constexpr int kDistinct = 16;  // distinct routed weight sets, cycled over the E experts
  std::vector<matrix> store;
  std::vector<ops::ffn_weights> routed;
  ops::ffn_weights shared;
  expert_bank() {
    const std::int64_t D = M::dim, I = M::moe_inter_dim;
    store.reserve(3 * kDistinct + 3);
    auto ffn = [&](bool fp4) {
      store.push_back(make(fp4, I, D));
      store.push_back(make(fp4, D, I));
      store.push_back(make(fp4, I, D));
      const std::size_t n = store.size();
      return ops::ffn_weights{store[n - 3].q(), store[n - 2].q(), store[n - 1].q()};
    };
    std::vector<ops::ffn_weights> distinct;
    for (int e = 0; e < kDistinct; ++e) distinct.push_back(ffn(true));
    for (std::int64_t e = 0; e < M::n_routed_experts; ++e) routed.push_back(distinct[static_cast<std::size_t>(e % kDistinct)]);
    shared = ffn(false);
  }
};

template <class M>
void moe_case(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0)), k = static_cast<int>(M::n_activated_experts);
  constexpr std::int64_t T = 512;
  const std::int64_t D = M::dim, I = M::moe_inter_dim, E = M::n_routed_experts;
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  static expert_bank<M> bank;
  buffer x(dtype::f32, {T, D}), w(dtype::f32, {T, k}), idx(dtype::i32, {T, k}), y(dtype::f32, {T, D});
  fill(x, 1.f);
  std::mt19937 r(11);
  for (std::int64_t t = 0; t < T; ++t)  // k distinct experts per token, uniformly over E
    for (int i = 0; i < k; ++i) {
      idx.host_span<std::int32_t>()[t * k + i] = static_cast<std::int32_t>((r() % (E / k)) * k + i);
      w.host_span<float>()[t * k + i] = 0.25f;
    }
  // official cpu vs official ref on the first two tokens: relative L2 below 1e-2 (BF16 outputs, block-sum rounding).
  {
    const tensor_view x2 = x.view().narrow(0, 0, 2), w2 = w.view().narrow(0, 0, 2), i2 = idx.view().narrow(0, 0, 2);
    buffer a(dtype::f32, {2, D}), b(dtype::f32, {2, D});
    ops::moe_ffn(x2, w2, i2, bank.routed, &bank.shared, M::swiglu_limit, a, with(backend::cpu, threads), numerics::official);
    ops::moe_ffn(x2, w2, i2, bank.routed, &bank.shared, M::swiglu_limit, b, with(backend::ref, 1), numerics::official);
    double num = 0, den = 0;
    for (std::int64_t i = 0; i < 2 * D; ++i) {
      const double d = double(a.host_span<float>()[i]) - b.host_span<float>()[i];
      num += d * d;
      den += double(b.host_span<float>()[i]) * b.host_span<float>()[i];
    }
    if (!(num <= 1e-4 * den)) return state.SkipWithError("official cpu != official ref");
  }
  const exec ex = with(backend::cpu, threads);
  double off = 0, f32 = 0;
  for (auto _ : state) {
    off += seconds_per_call([&] { ops::moe_ffn(x, w, idx, bank.routed, &bank.shared, M::swiglu_limit, y, ex, numerics::official); });
    f32 += seconds_per_call([&] { ops::moe_ffn(x, w, idx, bank.routed, &bank.shared, M::swiglu_limit, y, ex); });
  }
  const double it = static_cast<double>(state.iterations()), flops = 2.0 * 3 * I * D * T * (k + 1);
  const double g_off = flops / (off / it) / 1e9, g_f32 = flops / (f32 / it) / 1e9;
  state.counters["GFLOP/s"] = g_off;
  state.counters["fp32_GFLOP/s"] = g_f32;
  state.counters["x_fp32"] = g_off / g_f32;
  const double peak = cached_bf16_peak(threads);
  if (peak > 0) state.counters["of_bf16"] = g_off / peak;
}

void BM_moe_flash(benchmark::State& s) { moe_case<v4_flash_traits>(s); }
void BM_moe_pro(benchmark::State& s) { moe_case<v4_pro_traits>(s); }

void BM_gemm_fp4_2048x4096(benchmark::State& s) { gemm_case(s, true, 2048, 4096); }
void BM_gemm_fp4_4096x2048(benchmark::State& s) { gemm_case(s, true, 4096, 2048); }
void BM_gemm_fp8_32768x1024(benchmark::State& s) { gemm_case(s, false, 32768, 1024); }
void BM_gemm_fp8_4096x8192(benchmark::State& s) { gemm_case(s, false, 4096, 8192); }

}  // namespace

BENCHMARK(BM_peak)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);
#define DSV4_GEMM(f) \
  BENCHMARK(f)->ArgNames({"threads", "T"})->Args({2, 512})->Args({2, 12})->Args({1, 12})->Args({2, 1})->MinTime(0.3)->UseRealTime()->Unit(benchmark::kMillisecond)
DSV4_GEMM(BM_gemm_fp4_2048x4096);
DSV4_GEMM(BM_gemm_fp4_4096x2048);
DSV4_GEMM(BM_gemm_fp8_32768x1024);
DSV4_GEMM(BM_gemm_fp8_4096x8192);
BENCHMARK(BM_moe_flash)->ArgName("threads")->Arg(2)->Iterations(3)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_moe_pro)->ArgName("threads")->Arg(2)->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
