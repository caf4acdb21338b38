// bench/bench_quant.cpp — block quantizers and the Hadamard transform on V4-Flash shapes, per backend.
//
// Shapes (spec §1.1, §3): activation quantization in front of FP8 linears, [T, D = 4096] block 128; the KV FP8 round
// trip, [T, 448] block 64; the indexer FP4 round trip, [T · 64 heads, 128] block 32; the indexer Hadamard,
// [T · 64, 128]. T = 512 (a prefill chunk).
//
// Reported per run: GB/s of bytes read + written (SetBytesProcessed), `roofline` = that / 40 GB/s (this machine's
// DRAM bandwidth for both cores; the working sets here are a few MiB, so cache-resident runs can exceed 1), and
// `x_ref` = ref time / this time, with ref timed in the same process. BM_memcpy_* moves the same bytes with memcpy:
// the copy baseline. Every run first checks its output against ref (quantizers bitwise, Hadamard to 1e-5) and
// refuses to post a number when wrong.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/quant.hpp"

namespace {

using namespace dsv4;
using namespace dsv4::bench;
constexpr std::int64_t kT = 512;

buffer random_input(std::int64_t rows, std::int64_t k) {
  buffer b(dtype::f32, {rows, k});
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& v : b.host_span<float>()) v = nd(rng);
  return b;
}

// Runs `call(exec)` under the benchmark loop, after checking `same(output of ref, output of be)`.
template <class Call, class Output, class Same>
void run(benchmark::State& state, backend be, std::int64_t bytes, Call&& call, Output&& output, Same&& same) {
  const int threads = static_cast<int>(state.range(0));
  if (be == backend::cpu && !cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  call(with(backend::ref, 1));
  const auto want = output();
  call(with(be, threads));
  if (!same(output(), want)) return state.SkipWithError("output differs from ref");
  const double t_ref = seconds_per_call([&] { call(with(backend::ref, 1)); }, 2);
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) call(with(be, threads));
  const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                   static_cast<double>(state.iterations());
  state.SetBytesProcessed(state.iterations() * bytes);
  state.counters["roofline"] = static_cast<double>(bytes) / t / 1e9 / kDramGBs;
  state.counters["x_ref"] = t_ref / t;
}

std::vector<std::uint8_t> bytes_of(const buffer& b) {
  const auto* p = static_cast<const std::uint8_t*>(b.data());
  return {p, p + b.nbytes()};
}

void quantize_case(benchmark::State& state, backend be, std::int64_t rows, std::int64_t k, dtype code, int block) {
  const buffer x = random_input(rows, k);
  buffer q(code, {rows, k}), s(dtype::ue8m0, {rows, k / block});
  run(state, be, x.nbytes() + q.nbytes() + s.nbytes(),
      [&](const exec& ex) { ops::block_quantize(x, q, s, block, ex); }, [&] { return bytes_of(q); }, std::equal_to<>());
}

void round_trip_case(benchmark::State& state, backend be, std::int64_t rows, std::int64_t k, ops::quant_format f,
                     int block) {
  const buffer x = random_input(rows, k);
  buffer y(dtype::bf16, {rows, k});
  run(state, be, x.nbytes() + y.nbytes(), [&](const exec& ex) { ops::block_round_trip(x, y, f, block, ex); },
      [&] { return bytes_of(y); }, std::equal_to<>());
}

void hadamard_case(benchmark::State& state, backend be, std::int64_t rows, std::int64_t n) {
  const buffer x = random_input(rows, n);
  buffer y(dtype::f32, {rows, n});
  // fp32 results may differ from ref by re-association of the sums: the tests' bound is far below 1e-5 here
  const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    for (std::size_t i = 0; i < a.size(); ++i)
      if (std::fabs(a[i] - b[i]) > 1e-5f) return false;
    return a.size() == b.size();
  };
  run(state, be, 2 * x.nbytes(), [&](const exec& ex) { ops::hadamard(x, y, ex); },
      [&] { return std::vector<float>(y.host_span<float>().begin(), y.host_span<float>().end()); }, same);
}

void memcpy_case(benchmark::State& state, std::int64_t bytes) {
  std::vector<char> a(static_cast<std::size_t>(bytes / 2), 1), b(static_cast<std::size_t>(bytes / 2));
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), a.size());
    benchmark::DoNotOptimize(b.data());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}

// [T, 4096] f32 -> fp8 codes + scales (block 128): activation quantization in front of an FP8 linear.
void BM_act_quant_fp8_ref(benchmark::State& s) { quantize_case(s, backend::ref, kT, 4096, dtype::fp8_e4m3, 128); }
void BM_act_quant_fp8_cpu(benchmark::State& s) { quantize_case(s, backend::cpu, kT, 4096, dtype::fp8_e4m3, 128); }
// [T, 448] f32 -> bf16 KV round trip (block 64).
void BM_kv_round_trip_fp8_cpu(benchmark::State& s) {
  round_trip_case(s, backend::cpu, kT, 448, ops::quant_format::fp8_e4m3, 64);
}
// [T·64, 128] f32 -> bf16 indexer round trip (FP4, block 32).
void BM_indexer_round_trip_fp4_cpu(benchmark::State& s) {
  round_trip_case(s, backend::cpu, kT * 64, 128, ops::quant_format::fp4_e2m1, 32);
}
// [T·64, 128] Hadamard.
void BM_hadamard_128_ref(benchmark::State& s) { hadamard_case(s, backend::ref, kT * 64, 128); }
void BM_hadamard_128_cpu(benchmark::State& s) { hadamard_case(s, backend::cpu, kT * 64, 128); }
void BM_memcpy_act(benchmark::State& s) { memcpy_case(s, kT * 4096 * 4 * 2); }
void BM_memcpy_indexer(benchmark::State& s) { memcpy_case(s, kT * 64 * 128 * 4 * 2); }

}  // namespace

BENCHMARK(BM_act_quant_fp8_ref)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_act_quant_fp8_cpu)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_kv_round_trip_fp8_cpu)->Arg(1)->Arg(2)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_indexer_round_trip_fp4_cpu)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_hadamard_128_ref)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_hadamard_128_cpu)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_memcpy_act)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_memcpy_indexer)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
