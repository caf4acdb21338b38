// CUDA backends of the dense blocks against ref (linear, mHC, MoE): within stated fp32 tolerances where the GPU sums
// in another order than ref's double accumulation, bitwise where the result is deterministic by construction, and
// the CUDA backend's own invariants bitwise: a row does not depend on the batch (T = 1 decode kernel == T = 19
// prefill kernel), 20 runs are identical, aligned (vector loads) == unaligned (scalar loads).
#include <cmath>

#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ref/moe.hpp"
#include "cuda_harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

// A weight's buffers copied to the device (same layout).
struct device_weight {
  buffer w, s;
  explicit device_weight(const test_weight& h)
      : w(clone_to(h.w, kGpu)), s(h.s.data() ? clone_to(h.s, kGpu) : buffer()) {}
  ops::qweight q() const { return {w.view(), s.data() ? s.view() : tensor_view()}; }
};

// |y - exact| <= 2·K·2^-24·Σ_k |x_k·w_k| + 1e-30 per output: the bound of any fp32 fma summation order over K terms
// of exactly decoded weights (plus the final rounding), against the exact dot product in double.
void check_linear_close(const buffer& x, const test_weight& tw, std::int64_t N, std::int64_t K, const buffer& y) {
  const auto xs = x.host_span<float>();
  const auto ys = y.host_span<float>();
  const std::int64_t T = x.view().shape(0);
  std::int64_t bad = 0;
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t n = 0; n < N; ++n) {
      double dot = 0, mag = 0;
      for (std::int64_t k = 0; k < K; ++k) {
        const double p = double(xs[t * K + k]) * tw.exact[static_cast<std::size_t>(n * K + k)];
        dot += p;
        mag += std::fabs(p);
      }
      bad += !(std::fabs(ys[t * N + n] - dot) <= 2.0 * double(K) * 0x1p-24 * mag + 1e-30);
    }
  CHECK(bad == 0);
}
buffer f32_of(std::initializer_list<std::int64_t> shape, const std::vector<float>& v) {
  buffer b(dtype::f32, shape);
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// max |a - b| / (1 + |a|) over two f32 buffers of the same size
double max_rel(const buffer& a, const buffer& b) {
  double m = 0;
  const auto x = a.host_span<float>(), y = b.host_span<float>();
  for (std::size_t i = 0; i < x.size(); ++i) m = std::max(m, std::fabs(double(x[i]) - y[i]) / (1 + std::fabs(double(x[i]))));
  return m;
}
// A weight view copied to the device.
buffer on_gpu(const tensor_view& v) {
  buffer b(v.dt(), v.shape(), kGpu);
  ops::copy(v, b);
  return b;
}

// An expert_set (FP4 routed, FP8 shared) on the device.
struct device_experts {
  std::vector<buffer> keep;
  std::vector<ops::ffn_weights> routed;
  ops::ffn_weights shared;
  ops::qweight dev(const ops::qweight& q) {
    keep.push_back(on_gpu(q.weight));
    keep.push_back(on_gpu(q.scale));
    return {keep[keep.size() - 2].view(), keep.back().view()};
  }
  explicit device_experts(const expert_set& h) {
    keep.reserve(6 * h.routed.size() + 6);  // the views point into keep: no reallocation
    for (const auto& f : h.routed) routed.push_back({dev(f.w1), dev(f.w2), dev(f.w3)});
    shared = {dev(h.shared.w1), dev(h.shared.w2), dev(h.shared.w3)};
  }
};

// Device scratch of `bytes`, freed at scope exit.
struct device_scratch {
  void* p = nullptr;
  explicit device_scratch(std::size_t bytes) { REQUIRE(cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess); }
  ~device_scratch() { cudaFree(p); }
};
}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("linear, fp32 policy: every weight format, ragged shapes, within the fp32 summation bound of exact") {
  struct shape { std::int64_t N, K; };
  for (dtype dt : {dtype::f32, dtype::bf16, dtype::fp8_e4m3, dtype::fp4_e2m1})
    for (shape sh : {shape{37, 320}, shape{256, 1024}, shape{130, 4096}}) {
      CAPTURE(dtype_name(dt));
      CAPTURE(sh.N);
      CAPTURE(sh.K);
      const test_weight tw = make_weight(dt, sh.N, sh.K, 3 + sh.N);
      const device_weight dw(tw);
      for (std::int64_t T : {1, 5, 19}) {
        const buffer x = host_f32(T, sh.K, randn(static_cast<std::size_t>(T * sh.K), 7 + T));
        buffer yd(dtype::f32, {T, sh.N}, kGpu);
        ops::linear(clone_to(x, kGpu), dw.q(), yd);
        check_linear_close(x, tw, sh.N, sh.K, to_host(yd));
      }
    }
}

TEST_CASE("linear: a row is the same bits at T = 1 (decode kernel), inside T = 19 and T = 64, and over 20 runs") {
  const std::int64_t N = 300, K = 2048;
  for (dtype dt : {dtype::f32, dtype::bf16, dtype::fp8_e4m3, dtype::fp4_e2m1}) {
    CAPTURE(dtype_name(dt));
    const test_weight tw = make_weight(dt, N, K, 11);
    const device_weight dw(tw);
    const std::int64_t T = 64;
    const buffer x = host_f32(T, K, randn(static_cast<std::size_t>(T * K), 12));
    const buffer xd = clone_to(x, kGpu);
    buffer y64(dtype::f32, {T, N}, kGpu), y19(dtype::f32, {19, N}, kGpu), y1(dtype::f32, {1, N}, kGpu);
    ops::linear(xd, dw.q(), y64);
    ops::linear(xd.view().narrow(0, 3, 19), dw.q(), y19);
    const auto all = bytes_of(to_host(y64));
    const auto part = bytes_of(to_host(y19));
    CHECK(std::equal(part.begin(), part.end(), all.begin() + 3 * N * 4));
    for (std::int64_t t : {0, 17, 63}) {
      ops::linear(xd.view().narrow(0, t, 1), dw.q(), y1);
      const auto one = bytes_of(to_host(y1));
      CHECK(std::equal(one.begin(), one.end(), all.begin() + t * N * 4));
    }
    for (int run = 0; run < 20; ++run) {
      ops::linear(xd, dw.q(), y64);
      CHECK(bytes_of(to_host(y64)) == all);
    }
    // bf16 in and out: the same sums, rounded once at the end
    buffer ybf(dtype::bf16, {T, N}, kGpu);
    ops::linear(xd, dw.q(), ybf);
    const auto yf = to_host(y64), yb = to_host(ybf);
    std::int64_t off = 0;
    for (std::int64_t i = 0; i < T * N; ++i)
      off += yb.host_span<bf16>()[i].bits != bf16::from_float(yf.host_span<float>()[i]).bits;
    CHECK(off == 0);
  }
}

TEST_CASE("linear: rows not aligned for vector loads give the aligned bits (scalar loads of the same values)") {
  const std::int64_t N = 70, K = 512, T = 9;
  for (dtype dt : {dtype::f32, dtype::bf16, dtype::fp8_e4m3, dtype::fp4_e2m1}) {
    CAPTURE(dtype_name(dt));
    const test_weight tw = make_weight(dt, N, K, 21);
    // the same weight in rows of K + 2 elements (row starts no longer 4/8/16-byte aligned)
    const std::int64_t Kp = K + 2;
    buffer wide(dt, {N, Kp});
    const std::int64_t row_bytes = dtype_bytes(dt, K), wide_bytes = dtype_bytes(dt, Kp);
    for (std::int64_t n = 0; n < N; ++n)
      std::memcpy(static_cast<char*>(wide.data()) + n * wide_bytes, static_cast<const char*>(tw.w.data()) + n * row_bytes,
                  static_cast<std::size_t>(row_bytes));
    const device_weight dw(tw);
    const buffer wide_d = clone_to(wide, kGpu);
    const ops::qweight narrow{wide_d.view().narrow(1, 0, K), dw.q().scale};
    const buffer xd = clone_to(host_f32(T, K, randn(static_cast<std::size_t>(T * K), 22)), kGpu);
    buffer ya(dtype::f32, {T, N}, kGpu), yu(dtype::f32, {T, N}, kGpu);
    ops::linear(xd, dw.q(), ya);
    ops::linear(xd, narrow, yu);
    CHECK(bytes_of(to_host(ya)) == bytes_of(to_host(yu)));
  }
}

TEST_CASE("linear: NaN weights are counted as ref counts them and refused (sync), flagged (deferred)") {
  test_weight tw = make_weight(dtype::fp8_e4m3, 130, 256, 31);
  tw.w.host_span<fp8_e4m3>()[5].bits = 0x7F;
  tw.w.host_span<fp8_e4m3>()[129 * 256 + 3].bits = 0xFF;
  tw.s.host_span<ue8m0>()[3].bits = 0xFF;  // tile (1, 1): rows 128..129, columns 128..255: 256 weights
  const device_weight dw(tw);
  const buffer xd = clone_to(host_f32(3, 256, randn(768, 32)), kGpu);
  buffer yd(dtype::f32, {3, 130}, kGpu);
  // 1 + 256 (the 0xFF code of row 129 sits in tile (1, 0): not under the NaN scale) + 1 = 258
  check_error([&] { ops::linear(xd, dw.q(), yd); }, {"258 weights decode to NaN"});
  stream_and_status ss;
  const exec ex = ss.deferred();
  ops::linear(xd, dw.q(), yd, ex);
  check_error([&] { check_status(ex); }, {"NaN weight code or NaN scale"});
}

TEST_CASE("mHC: Sinkhorn, hc_pre, hc_head, hc_post on CUDA == ref within fp32 rounding; a token alone == in a batch") {
  auto l = randn(77 * 16, 10, 3.f);
  for (int i = 0; i < 16; ++i) {
    l[i] = (i % 3 == 0) ? 80.f : -80.f;
    l[16 + i] = 0.5f;
    l[32 + i] = (i == 1 || i == 6 || i == 11 || i == 12) ? 80.f : 0.f;
  }
  const buffer logits = f32_of({77, 4, 4}, l);
  buffer a(dtype::f32, {77, 4, 4}), bd(dtype::f32, {77, 4, 4}, kGpu);
  ops::sinkhorn_knopp(logits, a, 20, 1e-6f, on(backend::ref));
  ops::sinkhorn_knopp(clone_to(logits, kGpu), bd, 20, 1e-6f);
  // the same fp32 steps; CUDA's expf is within 2 ulp of libm's, amplified by at most 20 sweeps
  CHECK(max_rel(a, to_host(bd)) <= 2e-6);

  const int T = 37, n = 4, D = 200, m = 24;  // D % 256 != 0: threads own unequal column counts
  const buffer fn = f32_of({m, n * D}, randn(m * n * D, 11, 0.05f)), base = f32_of({m}, randn(m, 12)),
               scale = f32_of({3}, {0.8f, 1.1f, 0.9f}), hfn = f32_of({n, n * D}, randn(n * n * D, 13, 0.05f)),
               hbase = f32_of({n}, randn(n, 14)), hscale = f32_of({1}, {1.2f});
  const buffer fn_d = clone_to(fn, kGpu), base_d = clone_to(base, kGpu), scale_d = clone_to(scale, kGpu),
               hfn_d = clone_to(hfn, kGpu), hbase_d = clone_to(hbase, kGpu), hscale_d = clone_to(hscale, kGpu);
  for (dtype xdt : {dtype::f32, dtype::bf16}) {
    CAPTURE(dtype_name(xdt));
    const auto xv = randn(T * n * D, 15);
    const buffer x = xdt == dtype::f32 ? host_f32(T * n, D, xv) : host_bf16(T * n, D, xv);
    const tensor_view x3(const_cast<void*>(x.data()), xdt, {T, n, D});
    const buffer xd = clone_to(x, kGpu);
    const tensor_view xd3(const_cast<void*>(xd.data()), xdt, {T, n, D}, kGpu);
    buffer y(dtype::f32, {T, D}), p(dtype::f32, {T, n}), c(dtype::f32, {T, n, n}), h(dtype::f32, {T, D});
    buffer yd(dtype::f32, {T, D}, kGpu), pd(dtype::f32, {T, n}, kGpu), cd(dtype::f32, {T, n, n}, kGpu),
        hd(dtype::f32, {T, D}, kGpu);
    ops::hc_pre(x3, fn, scale, base, y, p, c, {}, on(backend::ref));
    ops::hc_head(x3, hfn, hscale, hbase, h, {}, on(backend::ref));
    ops::hc_pre(xd3, fn_d, scale_d, base_d, yd, pd, cd);
    ops::hc_head(xd3, hfn_d, hscale_d, hbase_d, hd);
    // mixes: fp32 sums over n·D = 800 values vs ref's double (relative 1e-6 at most); through sigmoid and 20
    // Sinkhorn sweeps below 1e-5 (the bound the CPU backend meets too, tests/test_mhc.cpp)
    CHECK(max_rel(p, to_host(pd)) <= 1e-5);
    CHECK(max_rel(c, to_host(cd)) <= 1e-5);
    CHECK(max_rel(y, to_host(yd)) <= 1e-5);
    CHECK(max_rel(h, to_host(hd)) <= 1e-5);
    // token 5 alone: the same bits as inside the batch
    buffer y1(dtype::f32, {1, D}, kGpu), p1(dtype::f32, {1, n}, kGpu), c1(dtype::f32, {1, n, n}, kGpu);
    ops::hc_pre(xd3.narrow(0, 5, 1), fn_d, scale_d, base_d, y1, p1, c1);
    const auto all_y = bytes_of(to_host(yd)), one_y = bytes_of(to_host(y1));
    CHECK(std::equal(one_y.begin(), one_y.end(), all_y.begin() + 5 * D * 4));
    const auto all_c = bytes_of(to_host(cd)), one_c = bytes_of(to_host(c1));
    CHECK(std::equal(one_c.begin(), one_c.end(), all_c.begin() + 5 * n * n * 4));
    // hc_post: ref (double) vs an fp32 fma chain of 5 terms: a few ulp; in place == out of place bitwise
    buffer o(dtype::f32, {T, n, D}), od(dtype::f32, {T, n, D}, kGpu);
    ops::hc_post(y, x3, p, c, o, on(backend::ref));
    const buffer y_d = clone_to(y, kGpu), p_d = clone_to(p, kGpu), c_d = clone_to(c, kGpu);
    ops::hc_post(y_d, xd3, p_d, c_d, od);
    CHECK(max_rel(o, to_host(od)) <= 1e-6);
    if (xdt == dtype::f32) {
      buffer inplace = clone_to(x, kGpu);
      const tensor_view in3(inplace.data(), xdt, {T, n, D}, kGpu);
      ops::hc_post(y_d, in3, p_d, c_d, in3);
      CHECK(bytes_of(to_host(inplace)) == bytes_of(to_host(od)));
    }
  }
}

TEST_CASE("moe_route on CUDA: the picks of ref (ties to the lower index), weights within fp32 rounding") {
  const std::int64_t T = 37;
  for (std::int64_t E : {64, 300})
    for (ops::score_func f : {ops::score_func::sqrtsoftplus, ops::score_func::sigmoid, ops::score_func::softmax}) {
      CAPTURE(E);
      CAPTURE(ops::score_func_name(f));
      auto lv = randn(static_cast<std::size_t>(T * E), 40 + E, 2.f);
      for (std::int64_t e = 0; e < E; ++e) lv[static_cast<std::size_t>(e)] = 1.f;  // token 0: all tied
      const buffer logits = host_f32(T, E, lv);
      const buffer bias = host_f32(1, E, randn(static_cast<std::size_t>(E), 41, 0.1f));
      const ops::route_config cfg{f, 6, 1.5f};
      for (bool with_bias : {false, true}) {
        const tensor_view b = with_bias ? bias.view().select(0, 0) : tensor_view();
        buffer w(dtype::f32, {T, 6}), idx(dtype::i32, {T, 6}), wd(dtype::f32, {T, 6}, kGpu),
            idxd(dtype::i32, {T, 6}, kGpu);
        ops::moe_route(logits, cfg, b, w, idx, on(backend::ref));
        const buffer bias_d = on_gpu(bias.view().select(0, 0));
        ops::moe_route(on_gpu(logits.view()), cfg, with_bias ? bias_d.view() : tensor_view(), wd, idxd);
        const buffer wh = to_host(wd), ih = to_host(idxd);
        // random N(0, 4) logits: no two selection values within 1e-5 of the k-th here, so the picks are ref's
        CHECK(bytes_of(ih) == bytes_of(idx));
        if (!with_bias)
          for (int i = 0; i < 6; ++i) CHECK(ih.host_span<std::int32_t>()[i] == i);  // all tied: experts 0..5
        for (std::int64_t i = 0; i < T * 6; ++i)
          CHECK(std::fabs(wh.host_span<float>()[i] - w.host_span<float>()[i]) <= 1e-5 * (1 + std::fabs(w.host_span<float>()[i])));
      }
    }
}

TEST_CASE("moe_hash_route on CUDA: ref's experts; an id out of range is reported (deferred) and its slots skipped") {
  const std::int64_t T = 9, E = 16, V = 50;
  const buffer logits = host_f32(T, E, randn(T * E, 50));
  buffer ids(dtype::i64, {T}), map(dtype::i32, {V, 3});
  for (std::int64_t t = 0; t < T; ++t) ids.host_span<std::int64_t>()[t] = (t * 7) % V;
  for (std::int64_t v = 0; v < V; ++v)
    for (int i = 0; i < 3; ++i) map.host_span<std::int32_t>()[v * 3 + i] = static_cast<std::int32_t>((v + 5 * i) % E);
  const ops::route_config cfg{ops::score_func::sqrtsoftplus, 3, 1.5f};
  buffer w(dtype::f32, {T, 3}), idx(dtype::i32, {T, 3}), wd(dtype::f32, {T, 3}, kGpu), idxd(dtype::i32, {T, 3}, kGpu);
  ops::moe_hash_route(logits, cfg, ids, map, w, idx, on(backend::ref));
  const buffer logits_d = on_gpu(logits.view()), map_d = on_gpu(map.view());
  buffer ids_d = on_gpu(ids.view());
  ops::moe_hash_route(logits_d, cfg, ids_d, map_d, wd, idxd);
  CHECK(bytes_of(to_host(idxd)) == bytes_of(idx));
  const buffer wh = to_host(wd);
  for (std::int64_t i = 0; i < T * 3; ++i)
    CHECK(std::fabs(wh.host_span<float>()[i] - w.host_span<float>()[i]) <= 1e-5 * (1 + std::fabs(w.host_span<float>()[i])));
  // token 4's id out of range
  ids.host_span<std::int64_t>()[4] = V + 3;
  ids_d = on_gpu(ids.view());
  stream_and_status ss;
  const exec ex = ss.deferred();
  ops::moe_hash_route(logits_d, cfg, ids_d, map_d, wd, idxd, ex);
  REQUIRE(cudaStreamSynchronize(ss.stream) == cudaSuccess);
  const buffer ih = to_host(idxd);
  for (int i = 0; i < 3; ++i) CHECK(ih.host_span<std::int32_t>()[4 * 3 + i] == -1);
  check_error([&] { check_status(ex); }, {"index out of range"});
}

TEST_CASE("moe_ffn on CUDA (FP4 routed + FP8 shared): ref within fp32 rounding, a token alone == in the batch, "
          "graph capture == eager") {
  const std::int64_t D = 64, I = 96, E = 8, T = 21;
  const int k = 3;
  const expert_set host(D, I, E, 100, 1);
  const device_experts dev(host);
  const buffer x = host_bf16(T, D, randn(T * D, 7));
  const buffer logits = host_f32(T, E, randn(T * E, 8));
  const ops::route_config cfg{ops::score_func::sqrtsoftplus, k, 1.5f};
  buffer w(dtype::f32, {T, k}), idx(dtype::i32, {T, k});
  ops::moe_route(logits, cfg, tensor_view(), w, idx, on(backend::ref));
  idx.host_span<std::int32_t>()[5 * k + 1] = idx.host_span<std::int32_t>()[5 * k];  // a duplicate expert
  buffer yr(dtype::f32, {T, D});
  ops::moe_ffn(x, w, idx, host.routed, &host.shared, 10.f, yr, on(backend::ref));
  double mean_abs = 0;
  for (float v : yr.host_span<float>()) mean_abs += std::fabs(v) / double(T * D);
  REQUIRE(mean_abs > 0.05);
  const buffer xd = on_gpu(x.view()), wd = on_gpu(w.view()), idxd = on_gpu(idx.view());
  device_scratch scratch(ops::moe_ffn_workspace_bytes(T, k, dev.routed, &dev.shared));
  exec ex;
  ex.scratch = {scratch.p, ops::moe_ffn_workspace_bytes(T, k, dev.routed, &dev.shared)};
  buffer yd(dtype::f32, {T, D}, kGpu);
  ops::moe_ffn(xd, wd, idxd, dev.routed, &dev.shared, 10.f, yd, ex);
  const buffer yh = to_host(yd);
  // fp32 dots (K <= 96) on two chained GEMMs and the combine, vs ref's double dots: the bound the CPU meets
  for (std::int64_t i = 0; i < T * D; ++i)
    REQUIRE(std::fabs(yh.host_span<float>()[i] - yr.host_span<float>()[i]) <= 1e-5 * (1 + mean_abs));
  for (std::int64_t t : {0, 5, 20}) {  // one token alone: the same bits as in the batch
    buffer y1(dtype::f32, {1, D}, kGpu);
    ops::moe_ffn(xd.view().narrow(0, t, 1), wd.view().narrow(0, t, 1), idxd.view().narrow(0, t, 1), dev.routed,
                 &dev.shared, 10.f, y1, ex);
    const auto one = bytes_of(to_host(y1)), all = bytes_of(yh);
    CHECK(std::equal(one.begin(), one.end(), all.begin() + t * D * 4));
  }
  // route + FFN captured once, replayed on new x and logits
  stream_and_status ss;
  exec dx = ss.deferred();
  dx.scratch = ex.scratch;
  buffer xg(dtype::bf16, {T, D}, kGpu), lg(dtype::f32, {T, E}, kGpu), wg(dtype::f32, {T, k}, kGpu),
      ig(dtype::i32, {T, k}, kGpu), yg(dtype::f32, {T, D}, kGpu);
  const captured_graph g(ss.stream, [&] {
    ops::moe_route(lg, cfg, tensor_view(), wg, ig, dx);
    ops::moe_ffn(xg, wg, ig, dev.routed, &dev.shared, 10.f, yg, dx);
  });
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    ops::copy(host_bf16(T, D, randn(T * D, 60 + round)), xg);
    ops::copy(host_f32(T, E, randn(T * E, 70 + round)), lg);
    g.launch();
    buffer w2(dtype::f32, {T, k}, kGpu), i2(dtype::i32, {T, k}, kGpu), y2(dtype::f32, {T, D}, kGpu);
    ops::moe_route(lg, cfg, tensor_view(), w2, i2);
    ops::moe_ffn(xg, w2, i2, dev.routed, &dev.shared, 10.f, y2, ex);
    CHECK(bytes_of(to_host(yg)) == bytes_of(to_host(y2)));
  }
  check_status(dx);
}

TEST_CASE("moe_ffn on CUDA: too little scratch and mixed expert layouts are errors; a bad expert id is reported") {
  const std::int64_t D = 64, I = 96, E = 4, T = 3;
  const expert_set host(D, I, E, 300, 3);
  const device_experts dev(host);
  buffer idx(dtype::i32, {T, 2}), w(dtype::f32, {T, 2});
  for (std::int64_t i = 0; i < T * 2; ++i) {
    idx.host_span<std::int32_t>()[i] = static_cast<std::int32_t>(i % E);
    w.host_span<float>()[i] = 0.5f;
  }
  const buffer xd = on_gpu(host_f32(T, D, randn(T * D, 9)).view()), wd = on_gpu(w.view());
  buffer idxd = on_gpu(idx.view());
  buffer yd(dtype::f32, {T, D}, kGpu);
  check_error([&] { ops::moe_ffn(xd, wd, idxd, dev.routed, &dev.shared, 10.f, yd); },
              {"exec.scratch holds 0 bytes", "moe_ffn_workspace_bytes"});
  const std::size_t need = ops::moe_ffn_workspace_bytes(T, 2, dev.routed, &dev.shared);
  device_scratch scratch(need);
  exec ex;
  ex.scratch = {scratch.p, need};
  std::vector<ops::ffn_weights> mixed = dev.routed;
  mixed[2].w1 = dev.shared.w1;  // FP8 among FP4
  check_error([&] { ops::moe_ffn(xd, wd, idxd, mixed, &dev.shared, 10.f, yd, ex); }, {"expert 2 differs"});
  idx.host_span<std::int32_t>()[3] = 9;
  idxd = on_gpu(idx.view());
  stream_and_status ss;
  exec dx = ss.deferred();
  dx.scratch = ex.scratch;
  ops::moe_ffn(xd, wd, idxd, dev.routed, &dev.shared, 10.f, yd, dx);
  check_error([&] { check_status(dx); }, {"index out of range"});
}

}  // TEST_SUITE
