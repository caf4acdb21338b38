// bench/bench_blocks.cpp — mHC and MoE blocks on V4-Flash / V4-Pro shapes (dsv4/model_traits.hpp), per backend.
//
// Cases, each at T = 1 (decode) and T = 512 (a prefill chunk), CPU backend with 1 and 2 threads:
//   hc_pre   x [T, 4, D] f32, fn [24, 4D] f32: reports GB/s of bytes read (fn + x) and GFLOP/s (2·24·4D per token
//            for the mixes + 2·4D for the RMS + 2·4D for the collapse);
//   hc_post  f [T, D], x [T, 4, D] -> [T, 4, D] f32: GB/s of bytes read + written;
//   route    logits [T, E] -> top-6 (sqrtsoftplus + bias): tokens/s;
//   moe_ffn  6 routed FP4 experts + the FP8 shared expert, SwiGLU with clamp: at T = 1 GB/s of weight bytes read,
//            `read` = bench::read_pass GB/s measured after every step and `bw` = their ratio
//            (memory-bound decode), at T = 512 GFLOP/s (2·3·I·D per token and expert, 7 experts per token).
// Counters: `dram` = GB/s / 40 (this machine's DRAM bandwidth, both cores), `peak` = GFLOP/s / 400 (its fp32 FMA
// peak), `x_ref` = scalar-ref time / this time, `x_eigen` = Eigen baseline time / this time, both baselines timed in
// the same process. The Eigen baseline of the prefill FFN decodes each expert to fp32 (ops::dequantize) and runs
// three Eigen GEMMs on the gathered tokens (single-threaded: Eigen without OpenMP). Every CPU run is first checked
// against the ref (or, where ref would take minutes, against the Eigen baseline) and posts no number when wrong.
// Routed experts: 16 distinct weight sets (200 MiB Flash / 530 MiB Pro of FP4, far beyond the 32 MiB L3) cycled
// over the E expert ids, so decode reads come from DRAM as in a real model.
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/model_traits.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ops/quant.hpp"

namespace {

using namespace dsv4;
using namespace dsv4::bench;
constexpr int kDistinctExperts = 16;

void fill(const buffer& b, std::uint64_t seed, float sd) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  for (float& v : b.host_span<float>()) v = nd(rng);
}

double max_rel_diff(const buffer& a, const buffer& b) {
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < a.host_span<float>().size(); ++i) scale = std::max(scale, double(std::fabs(a.host_span<float>()[i])));
  for (std::size_t i = 0; i < a.host_span<float>().size(); ++i)
    worst = std::max(worst, std::fabs(double(a.host_span<float>()[i]) - b.host_span<float>()[i]) / (scale + 1e-30));
  return worst;
}

// Times `call` under the loop; `baseline_s` (ref or Eigen, measured once) becomes the ratio counter `ratio_name`.
template <class Call>
void loop(benchmark::State& state, Call&& call, double bytes, double flops, double baseline_s, const char* ratio_name) {
  double total = 0;
  for (auto _ : state) total += seconds_per_call(call);
  const double per = total / static_cast<double>(state.iterations());
  if (bytes > 0) {
    state.counters["GB/s"] = bytes / per / 1e9;
    state.counters["dram"] = bytes / per / 1e9 / kDramGBs;
  }
  if (flops > 0) {
    state.counters["GFLOP/s"] = flops / per / 1e9;
    state.counters["peak"] = flops / per / 1e9 / kPeakGFlops;
  }
  if (baseline_s > 0) state.counters[ratio_name] = baseline_s / per;
}

// ---- mHC -------------------------------------------------------------------------------------------------------
template <class M>
void hc_pre_case(benchmark::State& state) {
  const std::int64_t T = state.range(0), n = M::hc_mult, D = M::dim, m = 2 * n + n * n;
  const int threads = static_cast<int>(state.range(1));
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  buffer x(dtype::f32, {T, n, D}), fn(dtype::f32, {m, n * D}), scale(dtype::f32, {3}), base(dtype::f32, {m});
  fill(x, 1, 1.f);
  fill(fn, 2, 0.01f);
  fill(base, 3, 1.f);
  for (float& v : scale.host_span<float>()) v = 1.f;
  buffer y(dtype::f32, {T, D}), post(dtype::f32, {T, n}), comb(dtype::f32, {T, n, n});
  buffer yr(dtype::f32, {T, D}), pr(dtype::f32, {T, n}), cr(dtype::f32, {T, n, n});
  const double ref_s = seconds_per_call([&] { ops::hc_pre(x, fn, scale, base, yr, pr, cr, {}, with(backend::ref, 1)); });
  ops::hc_pre(x, fn, scale, base, y, post, comb, {}, with(backend::cpu, threads));
  if (max_rel_diff(yr, y) > 1e-5 || max_rel_diff(cr, comb) > 1e-5) return state.SkipWithError("cpu != ref");
  const double bytes = 4.0 * (m * n * D + T * n * D), flops = 2.0 * T * (m + 2) * n * D;
  loop(state, [&] { ops::hc_pre(x, fn, scale, base, y, post, comb, {}, with(backend::cpu, threads)); }, bytes, flops,
       ref_s, "x_ref");
}

template <class M>
void hc_post_case(benchmark::State& state) {
  const std::int64_t T = state.range(0), n = M::hc_mult, D = M::dim;
  const int threads = static_cast<int>(state.range(1));
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  buffer f(dtype::f32, {T, D}), x(dtype::f32, {T, n, D}), post(dtype::f32, {T, n}), comb(dtype::f32, {T, n, n});
  buffer out(dtype::f32, {T, n, D}), outr(dtype::f32, {T, n, D});
  fill(f, 4, 1.f);
  fill(x, 5, 1.f);
  fill(post, 6, 1.f);
  fill(comb, 7, 0.3f);
  const double ref_s = seconds_per_call([&] { ops::hc_post(f, x, post, comb, outr, with(backend::ref, 1)); });
  ops::hc_post(f, x, post, comb, out, with(backend::cpu, threads));
  if (max_rel_diff(outr, out) > 1e-6) return state.SkipWithError("cpu != ref");
  loop(state, [&] { ops::hc_post(f, x, post, comb, out, with(backend::cpu, threads)); }, 4.0 * T * (2 * n + 1) * D,
       2.0 * T * n * (n + 1) * D, ref_s, "x_ref");
}

// ---- MoE ---------------------------------------------------------------------------------------------------------
template <class M>
void route_case(benchmark::State& state) {
  const std::int64_t T = state.range(0), E = M::n_routed_experts;
  const int threads = static_cast<int>(state.range(1)), k = static_cast<int>(M::n_activated_experts);
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  buffer logits(dtype::f32, {T, E}), bias(dtype::f32, {E}), w(dtype::f32, {T, k}), idx(dtype::i32, {T, k}),
      wr(dtype::f32, {T, k}), ir(dtype::i32, {T, k});
  fill(logits, 8, 2.f);
  fill(bias, 9, 0.05f);
  const ops::route_config cfg{ops::score_func::sqrtsoftplus, k, M::route_scale};
  const double ref_s = seconds_per_call([&] { ops::moe_route(logits, cfg, bias, wr, ir, with(backend::ref, 1)); });
  ops::moe_route(logits, cfg, bias, w, idx, with(backend::cpu, threads));
  for (std::int64_t i = 0; i < T * k; ++i)
    if (idx.host_span<std::int32_t>()[i] != ir.host_span<std::int32_t>()[i]) return state.SkipWithError("cpu != ref");
  loop(state, [&] { ops::moe_route(logits, cfg, bias, w, idx, with(backend::cpu, threads)); }, 4.0 * T * E, 0, ref_s,
       "x_ref");
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
}

// The expert weights of one model shape, built once per process.
template <class M>
struct expert_bank {
  static constexpr std::int64_t D = M::dim, I = M::moe_inter_dim;
  std::vector<buffer> store;
  std::vector<ops::ffn_weights> routed;
  ops::ffn_weights shared;
  double routed_bytes_each = 0, shared_bytes = 0;

  static buffer fp4(std::int64_t N, std::int64_t K, std::uint64_t seed, buffer& scale) {
    buffer w(dtype::fp4_e2m1, {N, K});
    std::mt19937_64 rng(seed);
    auto* p = static_cast<std::uint64_t*>(w.data());
    for (std::int64_t i = 0; i < N * K / 16; ++i) p[i] = rng();
    scale = buffer(dtype::ue8m0, {N, K / 32});
    for (auto& s : scale.host_span<ue8m0>()) s.bits = static_cast<std::uint8_t>(120 + rng() % 3);  // ~1/sqrt(K) sized
    return w;
  }
  static buffer fp8(std::int64_t N, std::int64_t K, std::uint64_t seed, buffer& scale) {
    buffer w(dtype::fp8_e4m3, {N, K});
    std::mt19937_64 rng(seed);
    for (auto& c : w.host_span<fp8_e4m3>()) {
      c.bits = static_cast<std::uint8_t>(rng() & 0xF7);  // never the NaN code S.1111.111
    }
    scale = buffer(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128});
    for (auto& s : scale.host_span<ue8m0>()) s.bits = 112;
    return w;
  }
  ops::qweight add(buffer&& w, buffer&& s) {
    store.push_back(std::move(w));
    store.push_back(std::move(s));
    return {store[store.size() - 2].view(), store.back().view()};
  }

  expert_bank() {
    store.reserve(6 * kDistinctExperts + 6);
    std::vector<ops::ffn_weights> distinct;
    for (int e = 0; e < kDistinctExperts; ++e) {
      buffer s1, s2, s3;
      buffer w1 = fp4(I, D, 100 + e, s1), w2 = fp4(D, I, 200 + e, s2), w3 = fp4(I, D, 300 + e, s3);
      ops::ffn_weights f;
      f.w1 = add(std::move(w1), std::move(s1));
      f.w2 = add(std::move(w2), std::move(s2));
      f.w3 = add(std::move(w3), std::move(s3));
      distinct.push_back(f);
    }
    for (std::int64_t e = 0; e < M::n_routed_experts; ++e) routed.push_back(distinct[e % kDistinctExperts]);
    buffer s1, s2, s3;
    buffer w1 = fp8(I, D, 1, s1), w2 = fp8(D, I, 2, s2), w3 = fp8(I, D, 3, s3);
    shared.w1 = add(std::move(w1), std::move(s1));
    shared.w2 = add(std::move(w2), std::move(s2));
    shared.w3 = add(std::move(w3), std::move(s3));
    routed_bytes_each = 3.0 * (I * D / 2 + I * D / 32);
    shared_bytes = 3.0 * I * D + 3.0 * ((I + 127) / 128) * ((D + 127) / 128);
  }
  static expert_bank& get() {
    static expert_bank b;
    return b;
  }
};

// Experts for T tokens: distinct weight sets per token at decode (6 different experts), random at prefill.
void pick_experts(std::int64_t T, int k, std::int64_t E, const buffer& w, const buffer& idx) {
  std::mt19937 rng(11);
  for (std::int64_t t = 0; t < T; ++t)
    for (int i = 0; i < k; ++i) {
      idx.host_span<std::int32_t>()[t * k + i] =
          T == 1 ? i : static_cast<std::int32_t>((rng() % (E / k)) * k + i);  // distinct per token
      w.host_span<float>()[t * k + i] = 0.25f;
    }
}

// Eigen baseline: per expert, dequantize to fp32, gather tokens, three GEMMs, SwiGLU with the same clamp.
template <class M>
void eigen_ffn(expert_bank<M>& bank, const buffer& x, const buffer& w, const buffer& idx, int k, buffer& y) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const std::int64_t T = x.view().shape(0), D = M::dim, I = M::moe_inter_dim;
  Eigen::Map<const Mat> X(x.host_span<float>().data(), T, D);
  Eigen::Map<Mat> Y(y.host_span<float>().data(), T, D);
  Y.setZero();
  Mat W1(I, D), W3(I, D), W2(D, I);
  auto deq = [](const ops::qweight& q, Mat& out) {
    const bool fp4 = q.weight.dt() == dtype::fp4_e2m1;
    const tensor_view o(out.data(), dtype::f32, {out.rows(), out.cols()});
    ops::dequantize(q.weight, q.scale, o, fp4 ? 1 : 128, fp4 ? 32 : 128);
  };
  auto run = [&](const ops::ffn_weights& f, const std::vector<std::int64_t>& rows, const std::vector<float>& wr) {
    deq(f.w1, W1);
    deq(f.w3, W3);
    deq(f.w2, W2);
    Mat Xe(static_cast<Eigen::Index>(rows.size()), D);
    for (std::size_t r = 0; r < rows.size(); ++r) Xe.row(static_cast<Eigen::Index>(r)) = X.row(rows[r]);
    Mat G = Xe * W1.transpose(), U = Xe * W3.transpose();
    for (Eigen::Index r = 0; r < G.rows(); ++r)
      for (Eigen::Index i = 0; i < G.cols(); ++i) {
        const float g = std::min(G(r, i), M::swiglu_limit), u = std::clamp(U(r, i), -M::swiglu_limit, M::swiglu_limit);
        G(r, i) = g / (1.f + std::exp(-g)) * u * wr[static_cast<std::size_t>(r)];
      }
    const Mat O = G * W2.transpose();
    for (std::size_t r = 0; r < rows.size(); ++r) Y.row(rows[r]) += O.row(static_cast<Eigen::Index>(r));
  };
  for (std::int64_t e = 0; e < M::n_routed_experts; ++e) {
    std::vector<std::int64_t> rows;
    std::vector<float> wr;
    for (std::int64_t t = 0; t < T; ++t)
      for (int i = 0; i < k; ++i)
        if (idx.host_span<std::int32_t>()[t * k + i] == e) {
          rows.push_back(t);
          wr.push_back(w.host_span<float>()[t * k + i]);
        }
    if (!rows.empty()) run(bank.routed[e], rows, wr);
  }
  std::vector<std::int64_t> all(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) all[t] = t;
  run(bank.shared, all, std::vector<float>(static_cast<std::size_t>(T), 1.f));
}

template <class M>
void moe_ffn_case(benchmark::State& state) {
  const std::int64_t T = state.range(0), D = M::dim, I = M::moe_inter_dim;
  const int threads = static_cast<int>(state.range(1)), k = static_cast<int>(M::n_activated_experts);
  if (!cpu::simd_isa()) return state.SkipWithError("no CPU SIMD kernels here");
  auto& bank = expert_bank<M>::get();
  buffer x(dtype::f32, {T, D}), w(dtype::f32, {T, k}), idx(dtype::i32, {T, k}), y(dtype::f32, {T, D}),
      yb(dtype::f32, {T, D});
  fill(x, 12, 1.f);
  pick_experts(T, k, M::n_routed_experts, w, idx);
  const auto run_cpu = [&] {
    ops::moe_ffn(x, w, idx, bank.routed, &bank.shared, M::swiglu_limit, y, with(backend::cpu, threads));
  };
  double base_s;
  const char* ratio;
  if (T == 1) {  // ref is affordable at decode
    base_s = seconds_per_call([&] {
      ops::moe_ffn(x, w, idx, bank.routed, &bank.shared, M::swiglu_limit, yb, with(backend::ref, 1));
    });
    ratio = "x_ref";
  } else {
    base_s = seconds_per_call([&] { eigen_ffn(bank, x, w, idx, k, yb); });
    ratio = "x_eigen";
  }
  run_cpu();
  if (max_rel_diff(yb, y) > 1e-4) return state.SkipWithError("cpu != baseline");
  if (T == 1) {  // decode: weights stream from DRAM; a fraction of the read bandwidth measured after every step
    const double bytes = k * bank.routed_bytes_each + bank.shared_bytes;
    double total = 0, read = 0;
    std::int64_t step = 0;
    for (auto _ : state) {
      // consecutive tokens route to different experts: 6 of the 16 distinct weight sets, moving by 6 every step
      for (int i = 0; i < k; ++i)
        idx.host_span<std::int32_t>()[i] = static_cast<std::int32_t>((step * k + i) % M::n_routed_experts);
      total += seconds_per_call(run_cpu);
      read += paused_read_pass(state, threads);
      ++step;
    }
    const double iters = static_cast<double>(state.iterations()), per = total / iters, rd = read / iters;
    state.counters["GB/s"] = bytes / per / 1e9;
    state.counters["read"] = rd;
    state.counters["bw"] = bytes / per / 1e9 / rd;
    state.counters[ratio] = base_s / per;
    return;
  }
  loop(state, run_cpu, 0, 2.0 * 3 * I * D * T * (k + 1), base_s, ratio);
}

void BM_hc_pre_flash(benchmark::State& s) { hc_pre_case<v4_flash_traits>(s); }
void BM_hc_pre_pro(benchmark::State& s) { hc_pre_case<v4_pro_traits>(s); }
void BM_hc_post_flash(benchmark::State& s) { hc_post_case<v4_flash_traits>(s); }
void BM_hc_post_pro(benchmark::State& s) { hc_post_case<v4_pro_traits>(s); }
void BM_route_flash(benchmark::State& s) { route_case<v4_flash_traits>(s); }
void BM_route_pro(benchmark::State& s) { route_case<v4_pro_traits>(s); }
void BM_moe_ffn_flash(benchmark::State& s) { moe_ffn_case<v4_flash_traits>(s); }
void BM_moe_ffn_pro(benchmark::State& s) { moe_ffn_case<v4_pro_traits>(s); }

}  // namespace

// Args: {T, threads}.
#define DSV4_SHAPES ->Args({1, 1})->Args({1, 2})->Args({512, 1})->Args({512, 2})
BENCHMARK(BM_hc_pre_flash) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_hc_pre_pro) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_hc_post_flash) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_hc_post_pro) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_route_flash) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_route_pro) DSV4_SHAPES->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_moe_ffn_flash)->Args({1, 1})->Args({1, 2})->MinTime(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_moe_ffn_flash)->Args({512, 2})->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_moe_ffn_pro)->Args({1, 1})->Args({1, 2})->MinTime(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_moe_ffn_pro)->Args({512, 2})->Iterations(2)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
