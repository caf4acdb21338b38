// bench_attention — decode-time attention kernels on V4-Flash shapes (64 heads, head_dim 512, indexer 64 x 128,
// top-512, window 128) at 8K, 64K, 256K and 1M tokens of context:
//   BM_indexer   lightning-indexer scores over ctx/4 compressed keys + top-512 selection (one query token), fp32
//                keys in one contiguous tensor (ops::indexer_scores + topk_select);
//   BM_indexer_fp4_paged  the same over FP4 key pages as the model runs it (ops::indexer_topk: the exact FP4 score
//                with AVX512-VNNI integer dots, fused top-512);
//   BM_csa       sparse attention of 64 heads over 128 window + 512 selected compressed entries;
//   BM_hca       attention over 128 window + every one of the ctx/128 compressed entries.
// Counters: GB/s of cache bytes read (fp32 cache rows; each row counted once per token) and `dram` = GB/s / 40 GB/s;
// GOP/s or GFLOP/s (2 per multiply-add) and `peak` against the 400 GFLOP/s fp32 peak — with 64 heads sharing one
// K = V row, attention does 64 FLOPs per cached byte and is compute-bound, not bandwidth-bound; `x_ref` = the
// scalar ref's time for the same call measured once in the same run. Every case checks its result against ref.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/model_traits.hpp"
#include "dsv4/cache.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;
using dsv4::bench::kDramGBs;
using dsv4::bench::kPeakGFlops;

namespace {

using traits = v4_flash_traits;
constexpr std::int64_t kH = 64, kD = 512, kIH = 64, kIC = 128, kTopK = 512, kWindow = 128;  // spec §1.1 (V4-Flash)

void fill(const buffer& b, std::uint64_t seed, float sd = 1.f) {
  std::mt19937_64 r(seed);
  std::normal_distribution<float> nd(0.f, sd);
  auto s = b.host_span<float>();
  for (auto& v : s) v = nd(r);
}

// The ref's time and output for one case, computed once per (kind, context): Google Benchmark calls a case
// function several times while it sizes the iteration count, and the ref takes seconds at 1M.
struct ref_run {
  double seconds = 0;
  std::vector<char> out;
};
const ref_run& ref_result(const std::string& key, const std::function<void()>& f, const buffer& out) {
  static std::map<std::string, ref_run> cache;
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  ref_run r;
  r.seconds = bench::seconds_per_call(f);
  const auto* p = static_cast<const char*>(out.data());
  r.out.assign(p, p + out.nbytes());
  return cache[key] = std::move(r);
}

void BM_indexer(benchmark::State& st) {
  const std::int64_t ctx = st.range(0), E = ctx / 4;
  const int threads = static_cast<int>(st.range(1));
  buffer q(dtype::f32, {1, kIH, kIC}), k(dtype::f32, {E, kIC}), w(dtype::f32, {1, kIH}), s(dtype::f32, {1, E}),
      idx(dtype::i32, {1, kTopK}), vis(dtype::i64, {1});
  fill(q, 1);
  fill(k, 2);
  fill(w, 3, 0.1f);
  vis.host_span<std::int64_t>()[0] = E;
  auto call = [&](const exec& ex) {
    ops::indexer_scores(q, k, w, vis, s, ex);
    ops::topk_select(s, vis, idx, ex);
  };
  // Check: the same picks as ref.
  const ref_run& rr = ref_result("indexer" + std::to_string(ctx), [&] { call(bench::with(backend::ref, 1)); }, idx);
  const double tref = rr.seconds;
  call(bench::with(backend::cpu, threads));
  if (std::memcmp(idx.data(), rr.out.data(), rr.out.size()) != 0) st.SkipWithError("cpu top-k differs from ref");
  const exec ex = bench::with(backend::cpu, threads);
  for (auto _ : st) call(ex);
  const double it = static_cast<double>(st.iterations());
  const double bytes = double(E) * kIC * 4, ops = 2.0 * kIH * kIC * double(E);
  st.counters["GB/s"] = benchmark::Counter(bytes * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["GOP/s"] = benchmark::Counter(ops * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["dram"] = benchmark::Counter(bytes * it / 1e9 / kDramGBs, benchmark::Counter::kIsRate);
  st.counters["peak"] = benchmark::Counter(ops * it / 1e9 / kPeakGFlops, benchmark::Counter::kIsRate);
  st.counters["x_ref"] = benchmark::Counter(tref * it, benchmark::Counter::kIsRate);
}

// The model's path: FP4 key pages (64 keys per page, as compressor_emit stores them: Gaussian rows, Hadamard, FP4
// round trip), the fused indexer_topk of one query token (its q Hadamard'd like the model's), top-512. Checked against
// the ref: the same picks, bit for bit (the FP4 score is defined exactly, dsv4/ref/indexer.hpp).
void BM_indexer_fp4_paged(benchmark::State& st) {
  const std::int64_t ctx = st.range(0), E = ctx / 4, B = 64, pages = (E + B - 1) / B;
  const int threads = static_cast<int>(st.range(1));
  static std::map<std::int64_t, std::pair<std::vector<std::uint8_t>, std::vector<std::int32_t>>> made;
  auto& [mem, table] = made[ctx];
  const cache::key_geometry g{cache::key_format::fp4, kIC, B};
  if (mem.empty()) {
    mem.resize(static_cast<std::size_t>(pages * g.page_bytes()));
    table.resize(static_cast<std::size_t>(pages));
    std::iota(table.begin(), table.end(), 0);
    const cache::key_pages kp{tensor_view(mem.data(), dtype::u8, {pages, g.page_bytes()}), g};
    constexpr std::int64_t kChunk = 16384;
    for (std::int64_t s0 = 0; s0 < E; s0 += kChunk) {
      const std::int64_t m = std::min(kChunk, E - s0);
      buffer k(dtype::f32, {m, kIC}), slots(dtype::i32, {m});
      fill(k, 100 + static_cast<std::uint64_t>(s0));
      for (std::int64_t i = 0; i < m; ++i) slots.host_span<std::int32_t>()[i] = static_cast<std::int32_t>(s0 + i);
      ops::hadamard(k, k, bench::with(backend::cpu, 2));
      ops::key_store(k, slots, kp, bench::with(backend::cpu, 2));
    }
  }
  const cache::key_pages kp{tensor_view(mem.data(), dtype::u8, {pages, g.page_bytes()}), g};
  buffer q(dtype::f32, {1, kIH, kIC}), w(dtype::f32, {1, kIH}), idx(dtype::i32, {1, kTopK}), len(dtype::i32, {1}),
      req(dtype::i32, {1}), nk(dtype::i32, {1});
  fill(q, 1);
  const tensor_view q2(q.data(), dtype::f32, {kIH, kIC});
  ops::hadamard(q2, q2);
  fill(w, 3, 0.1f);
  req.host_span<std::int32_t>()[0] = 0;
  nk.host_span<std::int32_t>()[0] = static_cast<std::int32_t>(E);
  const tensor_view tv(table.data(), dtype::i32, {1, pages});
  auto call = [&](const exec& ex) { ops::indexer_topk(q, w, kp, tv, req, nk, idx, len, tensor_view(), ex); };
  const ref_run& rr = ref_result("indexer_fp4" + std::to_string(ctx), [&] { call(bench::with(backend::ref, 1)); }, idx);
  call(bench::with(backend::cpu, threads));
  if (std::memcmp(idx.data(), rr.out.data(), rr.out.size()) != 0) st.SkipWithError("cpu top-k differs from ref");
  const exec ex = bench::with(backend::cpu, threads);
  for (auto _ : st) call(ex);
  const double it = static_cast<double>(st.iterations());
  const double bytes = double(E) * double(g.key_bytes()), ops = 2.0 * kIH * kIC * double(E);
  st.counters["keys"] = double(E);
  st.counters["GB/s"] = benchmark::Counter(bytes * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["GOP/s"] = benchmark::Counter(ops * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["x_ref"] = benchmark::Counter(rr.seconds * it, benchmark::Counter::kIsRate);
}

// Attention of one token over 128 window rows + `n_sel` compressed rows chosen from `n_comp` (all of them when
// n_sel == n_comp).
void attention_case(benchmark::State& st, const std::string& name, std::int64_t n_comp, std::int64_t n_sel) {
  const int threads = static_cast<int>(st.range(1));
  buffer q(dtype::f32, {1, kH, kD}), win(dtype::f32, {kWindow, kD}), comp(dtype::f32, {std::max<std::int64_t>(n_comp, 1), kD}),
      sink(dtype::f32, {kH}), out(dtype::f32, {1, kH, kD}), ref_out(dtype::f32, {1, kH, kD});
  fill(q, 4, 0.05f);
  fill(win, 5);
  fill(comp, 6);
  fill(sink, 7);
  std::vector<std::int32_t> sel(static_cast<std::size_t>(n_comp));
  std::iota(sel.begin(), sel.end(), 0);
  std::mt19937 r(8);
  std::shuffle(sel.begin(), sel.end(), r);
  sel.resize(static_cast<std::size_t>(n_sel));
  std::sort(sel.begin(), sel.end());
  const std::int64_t K = kWindow + n_sel;
  buffer idx(dtype::i32, {1, K});
  auto iv = idx.host_span<std::int32_t>();
  for (std::int64_t i = 0; i < kWindow; ++i) iv[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  for (std::int64_t i = 0; i < n_sel; ++i)
    iv[static_cast<std::size_t>(kWindow + i)] = static_cast<std::int32_t>(kWindow + sel[static_cast<std::size_t>(i)]);
  const float scale = 1.f / std::sqrt(float(kD));
  const tensor_view cv = n_comp > 0 ? comp.view() : tensor_view();
  const ref_run& rr = ref_result(name + std::to_string(st.range(0)), [&] {
    ops::sparse_attention(q, win, cv, idx, sink, scale, ref_out, bench::with(backend::ref, 1));
  }, ref_out);
  const double tref = rr.seconds;
  std::memcpy(ref_out.data(), rr.out.data(), rr.out.size());
  const exec ex = bench::with(backend::cpu, threads);
  ops::sparse_attention(q, win, cv, idx, sink, scale, out, ex);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < out.host_span<float>().size(); ++i) {
    const double a = out.host_span<float>()[i], b = ref_out.host_span<float>()[i];
    num += (a - b) * (a - b);
    den += b * b;
  }
  if (!(std::sqrt(num / den) < 1e-5)) st.SkipWithError("cpu differs from ref");
  for (auto _ : st) ops::sparse_attention(q, win, cv, idx, sink, scale, out, ex);
  const double it = static_cast<double>(st.iterations());
  const double bytes = double(K) * kD * 4, flops = 4.0 * kH * kD * double(K);  // QK and PV, 2 per multiply-add
  st.counters["rows"] = double(K);
  st.counters["GFLOP/s"] = benchmark::Counter(flops * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["peak"] = benchmark::Counter(flops * it / 1e9 / kPeakGFlops, benchmark::Counter::kIsRate);
  st.counters["GB/s"] = benchmark::Counter(bytes * it / 1e9, benchmark::Counter::kIsRate);
  st.counters["dram"] = benchmark::Counter(bytes * it / 1e9 / kDramGBs, benchmark::Counter::kIsRate);
  st.counters["x_ref"] = benchmark::Counter(tref * it, benchmark::Counter::kIsRate);
}

void BM_csa(benchmark::State& st) {
  const std::int64_t n = st.range(0) / 4;
  attention_case(st, "csa", n, std::min(kTopK, n));
}

void BM_hca(benchmark::State& st) {
  const std::int64_t n = st.range(0) / 128;
  attention_case(st, "hca", n, n);
}

}  // namespace

#define DSV4_CONTEXTS                                                                                           \
  ->ArgNames({"ctx", "threads"})->Args({8192, 2})->Args({65536, 2})->Args({262144, 2})->Args({1048576, 1})        \
      ->Args({1048576, 2})
BENCHMARK(BM_indexer) DSV4_CONTEXTS->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_indexer_fp4_paged) DSV4_CONTEXTS->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_csa) DSV4_CONTEXTS->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_hca) DSV4_CONTEXTS->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
