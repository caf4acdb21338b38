// bench/bench_cuda.cpp — the CUDA backends on V4-Flash / V4-Pro shapes (model_traits.hpp), next to the ceilings of
// the GPU they run on, measured or derived in the same run:
//   copy_bw          device-to-device copy of 1 GiB: GB/s of bytes read + written (the HBM ceiling decode compares to);
//   fp32 peak        SMs x 128 fp32 lanes x 2 flops x the SM clock (cudaDevAttrClockRate): the CUDA-core ceiling of the
//                    fp32 policy (no tensor cores: exact decode, fp32 fma);
//   linear_decode    T = 1 over as many distinct copies of the matrix as exceed 4x the L2 (weights from HBM): GB/s of
//                    weight + scale bytes, and bw = that / copy_bw;
//   linear_prefill   T = 512: TFLOP/s (2·T·N·K) and peak = that / fp32 peak;
//   moe_ffn          a full routed-expert bank (Flash: 256 x 3 FP4 matrices, 3.4 GB; Pro: 384, 8.6 GB) + the FP8
//                    shared expert; T = 1 reports GB/s of the 6 + 1 experts' bytes, T = 512 TFLOP/s;
//   hc_pre / moe_route  microseconds per call at T = 1 and 512;
//   indexer          ops::indexer_topk over FP4 key pages (64 heads x 128, top-512, one query row) at 64K and 1M
//                    tokens of context (ctx/4 keys of 68 B): GB/s of key bytes and bw = that / copy_bw;
//   sparse_mqa       decode of 64 query rows over fp8_ds_mla pages: V4-Flash (64 heads, 128 window + 512 picked),
//                    V4-Pro (128 heads, 128 + 1024), HCA at 1M context (64 heads, 128 + 8192): TFLOP/s (QK and PV,
//                    2 per multiply-add), peak = that / fp32 peak, and µs per token-layer.
//   block_decode     one V4-Flash block (real dims, random weights: bench/block_model.hpp) decoding at 4K and 64K
//                    context, CSA and HCA, through the graph runner: ms per token, weight GB/s and bw;
//   small_decode     the whole forward pass of the `small` preset (6 layers, head_dim 128, 16 experts) on the GPU: one
//                    decode step after a 512-token prompt, ms per token through the graph runner (the time reported),
//                    eagerly under check_policy::deferred (one wait per step) and under sync (a wait per op), next to
//                    the CPU backend's step on the same checkpoint in the same run (cpu_ms, speedup_vs_cpu). The
//                    small model is latency-bound: this measures launches, host bookkeeping and waits, not HBM.
// Times are CUDA events around 20 back-to-back calls on one stream (check_policy::deferred: no host synchronization
// inside the loop). Without a GPU every case reports "no CUDA device" and the binary exits 0.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <unistd.h>
#include <cstdio>
#include <memory>
#include <cstdint>
#include <vector>

#include "block_model.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/graph.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model_traits.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ops/paged.hpp"

namespace {

using namespace dsv4;

bool have_gpu() { return ops::cuda_device_count() > 0; }

// The device's CUDA-core fp32 peak (FLOP/s): 128 fp32 lanes per SM on sm_90 / sm_100.
double fp32_peak() {
  int sms = 0, khz = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0);
  return double(sms) * 128 * 2 * double(khz) * 1e3;
}

// One stream, a status word, events; seconds per call of f over `reps` calls (after one warm-up call).
struct timer {
  cudaStream_t s{};
  std::uint32_t* status = nullptr;
  cudaEvent_t a{}, b{};
  timer() {
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaMalloc(reinterpret_cast<void**>(&status), 4);
    cudaMemset(status, 0, 4);
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(status);
    cudaStreamDestroy(s);
  }
  exec ex(void* scratch = nullptr, std::size_t bytes = 0) const {
    exec e;
    e.cuda_stream = s;
    e.checks = check_policy::deferred;
    e.status = status;
    e.scratch = {scratch, bytes};
    return e;
  }
  template <class F>
  double seconds(F&& f, int reps = 20) {
    f(0);
    cudaEventRecord(a, s);
    for (int r = 0; r < reps; ++r) f(r + 1);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    check_status(ex());
    return ms / 1e3 / reps;
  }
};

double copy_bw() {
  static const double v = [] {
    const std::size_t n = std::size_t{1} << 30;
    void *src = nullptr, *dst = nullptr;
    cudaMalloc(&src, n);
    cudaMalloc(&dst, n);
    cudaMemset(src, 1, n);
    timer t;
    const double s = t.seconds([&](int) { cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, t.s); }, 10);
    cudaFree(src);
    cudaFree(dst);
    return 2.0 * double(n) / s / 1e9;
  }();
  return v;
}

// Random code bytes (no NaN code: 0x7F / 0xFF become 0x7E / 0xFE), 64 MiB made once and copied into every weight,
// so HBM sees incompressible data; scales are a fixed 2^-3 (timing only: the tests check values).
const std::vector<std::uint8_t>& random_codes() {
  static const std::vector<std::uint8_t> v = [] {
    std::vector<std::uint8_t> b(std::size_t{64} << 20);
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (auto& c : b) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      c = static_cast<std::uint8_t>(x >> 56);
      if ((c & 0x7F) == 0x7F) c = static_cast<std::uint8_t>(c - 1);
    }
    return b;
  }();
  return v;
}

struct dev_weight {
  std::unique_ptr<buffer> w, s;
  dev_weight(dtype dt, std::int64_t N, std::int64_t K) {
    const device g = device::cuda(0);
    w = std::make_unique<buffer>(dt, std::initializer_list<std::int64_t>{N, K}, g);
    const auto& r = random_codes();
    for (std::size_t off = 0, n = static_cast<std::size_t>(w->nbytes()); off < n; off += r.size())
      cudaMemcpy(static_cast<char*>(w->data()) + off, r.data(), std::min(r.size(), n - off), cudaMemcpyHostToDevice);
    if (dt == dtype::fp8_e4m3)
      s = std::make_unique<buffer>(dtype::ue8m0, std::initializer_list<std::int64_t>{(N + 127) / 128, (K + 127) / 128}, g);
    else
      s = std::make_unique<buffer>(dtype::ue8m0, std::initializer_list<std::int64_t>{N, K / 32}, g);
    cudaMemset(s->data(), 124, static_cast<std::size_t>(s->nbytes()));
  }
  ops::qweight q() const { return {w->view(), s->view()}; }
  double bytes() const { return double(w->nbytes() + s->nbytes()); }
};

void linear_case(benchmark::State& state, dtype dt, std::int64_t N, std::int64_t K, std::int64_t T) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  int l2 = 0;
  cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
  std::vector<std::unique_ptr<dev_weight>> ws;
  ws.push_back(std::make_unique<dev_weight>(dt, N, K));
  if (T == 1)  // distinct copies until 4x the L2: every call streams its weight from HBM
    while (double(ws.size()) * ws[0]->bytes() < 4.0 * l2) ws.push_back(std::make_unique<dev_weight>(dt, N, K));
  const device g = device::cuda(0);
  buffer x(dtype::bf16, {T, K}, g), y(dtype::f32, {T, N}, g);
  cudaMemset(x.data(), 0x3c, static_cast<std::size_t>(x.nbytes()));
  timer t;
  double sec = 0;
  for (auto _ : state) {
    sec = t.seconds([&](int r) { ops::linear(x, ws[static_cast<std::size_t>(r) % ws.size()]->q(), y, t.ex()); });
    state.SetIterationTime(sec);
  }
  if (T == 1) {
    state.counters["GB/s"] = ws[0]->bytes() / sec / 1e9;
    state.counters["bw"] = ws[0]->bytes() / sec / 1e9 / copy_bw();
    state.counters["copy_GB/s"] = copy_bw();
  } else {
    state.counters["TFLOP/s"] = 2.0 * double(T) * double(N) * double(K) / sec / 1e12;
    state.counters["peak"] = 2.0 * double(T) * double(N) * double(K) / sec / fp32_peak();
  }
}

template <class M>
void moe_case(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const std::int64_t T = state.range(0), D = M::dim, I = M::moe_inter_dim, E = M::n_routed_experts;
  const int k = static_cast<int>(M::n_activated_experts);
  std::vector<std::unique_ptr<dev_weight>> keep;
  std::vector<ops::ffn_weights> routed;
  auto w = [&](dtype dt, std::int64_t n, std::int64_t kk) {
    keep.push_back(std::make_unique<dev_weight>(dt, n, kk));
    return keep.back()->q();
  };
  for (std::int64_t e = 0; e < E; ++e) {
    const ops::qweight w1 = w(dtype::fp4_e2m1, I, D), w2 = w(dtype::fp4_e2m1, D, I), w3 = w(dtype::fp4_e2m1, I, D);
    routed.push_back({w1, w2, w3});
  }
  const ops::ffn_weights shared{w(dtype::fp8_e4m3, I, D), w(dtype::fp8_e4m3, D, I), w(dtype::fp8_e4m3, I, D)};
  const device g = device::cuda(0);
  buffer x(dtype::bf16, {T, D}, g), wt(dtype::f32, {T, k}, g), idx(dtype::i32, {T, k}, g), y(dtype::bf16, {T, D}, g);
  cudaMemset(x.data(), 0x3c, static_cast<std::size_t>(x.nbytes()));
  cudaMemset(wt.data(), 0, static_cast<std::size_t>(wt.nbytes()));
  {  // token t routes to experts (t·k + i) mod E: a spread like real routing
    std::vector<std::int32_t> h(static_cast<std::size_t>(T * k));
    for (std::int64_t i = 0; i < T * k; ++i) h[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 37) % E);
    cudaMemcpy(idx.data(), h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  }
  const std::size_t need = ops::moe_ffn_workspace_bytes(T, k, routed, &shared);
  void* scratch = nullptr;
  cudaMalloc(&scratch, need);
  timer t;
  double sec = 0;
  for (auto _ : state) {
    sec = t.seconds([&](int) { ops::moe_ffn(x, wt, idx, routed, &shared, M::swiglu_limit, y, t.ex(scratch, need)); },
                    T == 1 ? 20 : 3);
    state.SetIterationTime(sec);
  }
  cudaFree(scratch);
  const double per_expert = 3.0 * keep[0]->bytes(), shared_bytes = 3.0 * keep.back()->bytes();
  if (T == 1) {
    state.counters["GB/s"] = (k * per_expert + shared_bytes) / sec / 1e9;
    state.counters["bw"] = (k * per_expert + shared_bytes) / sec / 1e9 / copy_bw();
  } else {
    const double flops = 2.0 * 3 * double(I) * double(D) * double(T) * double(k + 1);
    state.counters["TFLOP/s"] = flops / sec / 1e12;
    state.counters["peak"] = flops / sec / fp32_peak();
  }
}

template <class M>
void hc_pre_case(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const std::int64_t T = state.range(0), n = M::hc_mult, D = M::dim, m = 2 * n + n * n;
  const device g = device::cuda(0);
  buffer x(dtype::bf16, {T, n, D}, g), fn(dtype::f32, {m, n * D}, g), scale(dtype::f32, {3}, g),
      base(dtype::f32, {m}, g), y(dtype::bf16, {T, D}, g), post(dtype::f32, {T, n}, g), comb(dtype::f32, {T, n, n}, g);
  for (buffer* b : {&x, &fn, &scale, &base}) cudaMemset(b->data(), 0x3c, static_cast<std::size_t>(b->nbytes()));
  timer t;
  double sec = 0;
  for (auto _ : state) {
    sec = t.seconds([&](int) { ops::hc_pre(x, fn, scale, base, y, post, comb, {}, t.ex()); });
    state.SetIterationTime(sec);
  }
  state.counters["us"] = sec * 1e6;
}

template <class M>
void route_case(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const std::int64_t T = state.range(0), E = M::n_routed_experts;
  const int k = static_cast<int>(M::n_activated_experts);
  const device g = device::cuda(0);
  buffer logits(dtype::f32, {T, E}, g), w(dtype::f32, {T, k}, g), idx(dtype::i32, {T, k}, g);
  cudaMemset(logits.data(), 0x3c, static_cast<std::size_t>(logits.nbytes()));
  timer t;
  double sec = 0;
  for (auto _ : state) {
    sec = t.seconds([&](int) {
      ops::moe_route(logits, {ops::score_func::sqrtsoftplus, k, M::route_scale}, tensor_view(), w, idx,
                     t.ex());
    });
    state.SetIterationTime(sec);
  }
  state.counters["us"] = sec * 1e6;
}


// ---- paged attention ops ------------------------------------------------------------------------------------------

// Pages whose bytes are random codes with valid scales (FP4 keys: scale bytes 120..127; fp8_ds_mla: scales 120..127,
// rope BF16 bytes random but finite).
buffer random_pages(std::int64_t pages, std::int64_t page_bytes) {
  buffer b(dtype::u8, {pages, page_bytes}, device::cuda(0));
  const auto& r = random_codes();
  for (std::size_t off = 0, n = static_cast<std::size_t>(b.nbytes()); off < n; off += r.size())
    cudaMemcpy(static_cast<char*>(b.data()) + off, r.data(), std::min(r.size(), n - off), cudaMemcpyHostToDevice);
  return b;
}

void indexer_case(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const std::int64_t ctx = state.range(0), nkeys = ctx / 4, H = 64, C = 128, B = 64, K = 512;
  const std::int64_t pages = (nkeys + B - 1) / B;
  const cache::key_geometry g{cache::key_format::fp4, C, B};
  buffer kp = random_pages(pages, g.page_bytes());
  {  // scale bytes: fixed 124 (2^-3) so no key is NaN
    std::vector<std::uint8_t> page(static_cast<std::size_t>(g.page_bytes()));
    cudaMemcpy(page.data(), kp.data(), page.size(), cudaMemcpyDeviceToHost);
    std::fill(page.begin() + g.scale_offset(0), page.end(), 124);
    for (std::int64_t p = 0; p < pages; ++p)
      cudaMemcpy(static_cast<char*>(kp.data()) + p * g.page_bytes() + g.scale_offset(0), page.data() + g.scale_offset(0),
                 static_cast<std::size_t>(g.page_bytes() - g.scale_offset(0)), cudaMemcpyHostToDevice);
  }
  const device d = device::cuda(0);
  buffer q(dtype::f32, {1, H, C}, d), w(dtype::f32, {1, H}, d), table(dtype::i32, {1, pages}, d), req(dtype::i32, {1}, d),
      nk(dtype::i32, {1}, d), idx(dtype::i32, {1, K}, d), len(dtype::i32, {1}, d), slots(dtype::i32, {1, K}, d);
  cudaMemset(q.data(), 0x3c, static_cast<std::size_t>(q.nbytes()));
  cudaMemset(w.data(), 0x3c, static_cast<std::size_t>(w.nbytes()));
  std::vector<std::int32_t> t(static_cast<std::size_t>(pages));
  for (std::int64_t i = 0; i < pages; ++i) t[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  cudaMemcpy(table.data(), t.data(), t.size() * 4, cudaMemcpyHostToDevice);
  cudaMemset(req.data(), 0, 4);
  const std::int32_t n32 = static_cast<std::int32_t>(nkeys);
  cudaMemcpy(nk.data(), &n32, 4, cudaMemcpyHostToDevice);
  const cache::key_pages keys{kp.view(), g};
  const std::size_t need = ops::indexer_topk_workspace_bytes(1, keys);
  void* scratch = nullptr;
  cudaMalloc(&scratch, need);
  timer tm;
  double sec = 0;
  for (auto _ : state) {
    sec = tm.seconds([&](int) {
      ops::indexer_topk(q, w, keys, table, req, nk, idx, len, slots, tm.ex(scratch, need));
    });
    state.SetIterationTime(sec);
  }
  cudaFree(scratch);
  const double bytes = double(nkeys) * double(g.key_bytes());
  state.counters["GB/s"] = bytes / sec / 1e9;
  state.counters["bw"] = bytes / sec / 1e9 / copy_bw();
  state.counters["us"] = sec * 1e6;
}

void mqa_case(benchmark::State& state, std::int64_t H, std::int64_t Kc) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const std::int64_t T = 64, D = 512, Kw = 128, B = 64;
  const cache::kv_geometry g{cache::kv_format::fp8_ds_mla, D, 64, B};
  const std::int64_t per_row = Kw + Kc, pages = (T * per_row + B - 1) / B;
  buffer kp = random_pages(pages, g.page_bytes());
  {  // valid scale bytes and finite rope values: rewrite the scale section and the rope bytes of every entry
    std::vector<std::uint8_t> page(static_cast<std::size_t>(g.page_bytes()));
    for (std::int64_t p = 0; p < pages; ++p) {
      char* dst = static_cast<char*>(kp.data()) + p * g.page_bytes();
      cudaMemcpy(page.data(), dst, page.size(), cudaMemcpyDeviceToHost);
      for (std::int64_t e = 0; e < B; ++e) {
        for (std::int64_t j = 0; j < g.scale_stride(); ++j) page[static_cast<std::size_t>(g.scale_offset(e) + j)] = 120;
        for (std::int64_t i = 0; i < 64; ++i) page[static_cast<std::size_t>(g.data_offset(e) + g.nope() + 2 * i + 1)] = 0x3c;
        for (std::int64_t i = 0; i < g.nope(); ++i)
          if ((page[static_cast<std::size_t>(g.data_offset(e) + i)] & 0x7F) == 0x7F) page[static_cast<std::size_t>(g.data_offset(e) + i)] = 0;
      }
      cudaMemcpy(dst, page.data(), page.size(), cudaMemcpyHostToDevice);
    }
  }
  const device d = device::cuda(0);
  buffer q(dtype::f32, {T, H, D}, d), sink(dtype::f32, {H}, d), out(dtype::f32, {T, H, D}, d), lse(dtype::f32, {T, H}, d),
      ws(dtype::i32, {T, Kw}, d), cs(dtype::i32, {T, Kc}, d);
  cudaMemset(q.data(), 0, static_cast<std::size_t>(q.nbytes()));
  cudaMemset(sink.data(), 0, static_cast<std::size_t>(sink.nbytes()));
  std::vector<std::int32_t> w(static_cast<std::size_t>(T * Kw)), c(static_cast<std::size_t>(T * Kc));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t i = 0; i < Kw; ++i) w[static_cast<std::size_t>(t * Kw + i)] = static_cast<std::int32_t>(t * per_row + i);
    for (std::int64_t i = 0; i < Kc; ++i) c[static_cast<std::size_t>(t * Kc + i)] = static_cast<std::int32_t>(t * per_row + Kw + i);
  }
  cudaMemcpy(ws.data(), w.data(), w.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(cs.data(), c.data(), c.size() * 4, cudaMemcpyHostToDevice);
  const cache::kv_pages kv{kp.view(), g};
  const ops::sparse_segment win{kv, ws.view(), tensor_view()}, cmp{kv, cs.view(), tensor_view()};
  timer tm;
  double sec = 0;
  for (auto _ : state) {
    sec = tm.seconds([&](int) { ops::sparse_mqa(q, win, &cmp, sink, 0.044f, out, lse, tm.ex()); });
    state.SetIterationTime(sec);
  }
  const double flops = 4.0 * double(T) * double(H) * double(per_row) * double(D);
  state.counters["TFLOP/s"] = flops / sec / 1e12;
  state.counters["peak"] = flops / sec / fp32_peak();
  state.counters["us_per_token"] = sec * 1e6 / double(T);
}

void BM_cuda_indexer_fp4(benchmark::State& s) { indexer_case(s); }
void BM_cuda_sparse_mqa_flash(benchmark::State& s) { mqa_case(s, 64, 512); }
void BM_cuda_sparse_mqa_pro(benchmark::State& s) { mqa_case(s, 128, 1024); }
void BM_cuda_hca_1m(benchmark::State& s) { mqa_case(s, 64, 8192); }

// Milliseconds per decode step after a 512-token prompt: `steps` steps of one sequence through forward (graph ==
// nullptr) or through a graph_runner (logits into a device row).
double decode_ms(const model::transformer& tf, int steps, bool graph) {
  const std::int64_t V = tf.config().vocab_size;
  model::sequence_state s = tf.new_sequence();
  std::vector<std::int64_t> prompt(512);
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<std::int64_t>((i * 7919) % V);
  tf.forward(prompt, s, {});
  std::vector<float> logits(static_cast<std::size_t>(V));
  const std::int64_t tok[1] = {1};
  std::unique_ptr<model::graph_runner> g;
  buffer dl;
  if (graph) {
    g = std::make_unique<model::graph_runner>(tf);
    dl = buffer(dtype::f32, {1, V}, tf.dev());
  }
  auto one = [&] {
    if (!graph) return tf.forward(tok, s, tensor_view(logits.data(), dtype::f32, {1, V}));
    const model::transformer::batch_entry e[1] = {{tok, &s, dl.view(), {}}};
    g->step(e);
  };
  one();  // warm-up (the graph's first recording, the arena's first chunks)
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) one();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
}

void BM_cuda_small_decode(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const auto dir = std::filesystem::temp_directory_path() / ("dsv4_bench_small_" + std::to_string(::getpid()));
  const model::model_config cfg = model::preset("small");
  model::synthesize(cfg, dir, {});
  {
    const io::checkpoint ck = io::checkpoint::open(dir);
    const model::model_weights host = model::bind_weights(ck, model::load_config(dir));
    const model::device_weights dev = model::upload_weights(host, device::cuda(0));
    timer tm;
    const model::transformer cpu(cfg, host), gpu(cfg, dev.weights), gpu_deferred(cfg, dev.weights, tm.ex());
    double graph_ms = 0;
    for (auto _ : state) {
      graph_ms = decode_ms(gpu_deferred, 20, true);
      state.SetIterationTime(graph_ms * 1e-3);
    }
    const double sync_ms = decode_ms(gpu, 10, false), deferred_ms = decode_ms(gpu_deferred, 20, false);
    const double cpu_ms = decode_ms(cpu, 5, false);
    state.counters["graph_ms"] = graph_ms;
    state.counters["deferred_ms"] = deferred_ms;
    state.counters["sync_ms"] = sync_ms;
    state.counters["cpu_ms"] = cpu_ms;
    state.counters["speedup_vs_cpu"] = cpu_ms / graph_ms;
  }
  std::filesystem::remove_all(dir);
}

// One V4-Flash block (bench/block_model.hpp: real dims, random FP8 / FP4 weights, 3.5 GB) on the GPU with `ctx`
// tokens of random context in its pages: decode steps through the graph runner on a deferred stream. Reports ms per
// token and the weight bytes a step reads (attention + shared expert + the 6 routed experts) per second, next to
// the device copy bandwidth (bw).
void block_case(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  const int ratio = static_cast<int>(state.range(0));
  const std::int64_t ctx = state.range(1);
  struct uploaded {
    std::unique_ptr<bench::block_model> m;
    model::device_weights w;
  };
  static std::map<int, uploaded> models;
  uploaded& u = models[ratio];
  if (!u.m) {
    u.m = std::make_unique<bench::block_model>(ratio, false);
    u.w = model::upload_weights(u.m->w, device::cuda(0));
  }
  const model::model_config& cfg = u.m->cfg;
  device_stream ds(0);
  const model::transformer tf(cfg, u.w.weights, ds.deferred());
  model::sequence_state s = bench::filled(tf, ctx);
  model::graph_runner g(tf);
  buffer dl(dtype::f32, {1, cfg.vocab_size}, device::cuda(0));
  std::int64_t tok = 17;
  auto one = [&] {
    const model::transformer::batch_entry e[1] = {{std::span<const std::int64_t>(&tok, 1), &s, dl.view(), {}}};
    g.step(e);
    tok = (tok * 31 + 7) % cfg.vocab_size;
    if (s.pos() >= ctx + 16) s.truncate(s.pos() - 1);  // keep the context at ctx
  };
  for (int i = 0; i < 3; ++i) one();  // warm-up: the first recording, the arena
  constexpr int kSteps = 20;
  double ms = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kSteps; ++i) one();
    ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kSteps;
    state.SetIterationTime(ms * 1e-3);
  }
  const auto& L = u.m->w.layers[0];
  const double bytes = bench::attention_bytes(L) + bench::expert_bytes(*L.ffn.shared) +
                       double(cfg.n_activated_experts) * bench::expert_bytes(L.ffn.experts[0]);
  state.counters["ms/token"] = ms;
  state.counters["weight_GB/s"] = bytes / (ms * 1e-3) / 1e9;
  state.counters["bw"] = bytes / (ms * 1e-3) / 1e9 / copy_bw();
  state.counters["graph_updates"] = double(g.updates());
}
void BM_cuda_block_decode(benchmark::State& s) { block_case(s); }

void BM_cuda_copy_bw(benchmark::State& state) {
  if (!have_gpu()) return state.SkipWithError("no CUDA device");
  for (auto _ : state) state.SetIterationTime(1e-3);
  state.counters["GB/s"] = copy_bw();
  state.counters["fp32_TFLOP/s"] = fp32_peak() / 1e12;
}
void BM_cuda_linear_decode_fp4_2048x4096(benchmark::State& s) { linear_case(s, dtype::fp4_e2m1, 2048, 4096, 1); }
void BM_cuda_linear_decode_fp4_4096x2048(benchmark::State& s) { linear_case(s, dtype::fp4_e2m1, 4096, 2048, 1); }
void BM_cuda_linear_decode_fp8_32768x1024(benchmark::State& s) { linear_case(s, dtype::fp8_e4m3, 32768, 1024, 1); }
void BM_cuda_linear_decode_fp8_4096x8192(benchmark::State& s) { linear_case(s, dtype::fp8_e4m3, 4096, 8192, 1); }
void BM_cuda_linear_prefill_fp4_2048x4096(benchmark::State& s) { linear_case(s, dtype::fp4_e2m1, 2048, 4096, 512); }
void BM_cuda_linear_prefill_fp8_4096x8192(benchmark::State& s) { linear_case(s, dtype::fp8_e4m3, 4096, 8192, 512); }
void BM_cuda_moe_ffn_flash(benchmark::State& s) { moe_case<v4_flash_traits>(s); }
void BM_cuda_moe_ffn_pro(benchmark::State& s) { moe_case<v4_pro_traits>(s); }
void BM_cuda_hc_pre_flash(benchmark::State& s) { hc_pre_case<v4_flash_traits>(s); }
void BM_cuda_hc_pre_pro(benchmark::State& s) { hc_pre_case<v4_pro_traits>(s); }
void BM_cuda_route_flash(benchmark::State& s) { route_case<v4_flash_traits>(s); }
void BM_cuda_route_pro(benchmark::State& s) { route_case<v4_pro_traits>(s); }

}  // namespace

#define DSV4_CUDA_BENCH(fn) BENCHMARK(fn)->UseManualTime()->Iterations(1)->Unit(benchmark::kMicrosecond)
DSV4_CUDA_BENCH(BM_cuda_copy_bw);
DSV4_CUDA_BENCH(BM_cuda_linear_decode_fp4_2048x4096);
DSV4_CUDA_BENCH(BM_cuda_linear_decode_fp4_4096x2048);
DSV4_CUDA_BENCH(BM_cuda_linear_decode_fp8_32768x1024);
DSV4_CUDA_BENCH(BM_cuda_linear_decode_fp8_4096x8192);
DSV4_CUDA_BENCH(BM_cuda_linear_prefill_fp4_2048x4096);
DSV4_CUDA_BENCH(BM_cuda_linear_prefill_fp8_4096x8192);
DSV4_CUDA_BENCH(BM_cuda_moe_ffn_flash)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_moe_ffn_pro)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_hc_pre_flash)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_hc_pre_pro)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_route_flash)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_route_pro)->Arg(1)->Arg(512);
DSV4_CUDA_BENCH(BM_cuda_indexer_fp4)->Arg(65536)->Arg(1048576);
DSV4_CUDA_BENCH(BM_cuda_sparse_mqa_flash);
DSV4_CUDA_BENCH(BM_cuda_sparse_mqa_pro);
DSV4_CUDA_BENCH(BM_cuda_hca_1m);
DSV4_CUDA_BENCH(BM_cuda_small_decode);
DSV4_CUDA_BENCH(BM_cuda_block_decode)->ArgNames({"ratio", "ctx"})->Args({4, 4096})->Args({4, 65536})
    ->Args({128, 4096})->Args({128, 65536});
BENCHMARK_MAIN();
