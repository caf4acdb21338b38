// Attention: RoPE/YaRN, the kernels (sink, ReLU-weighted scores, tie rule), the compressor conventions against a
// direct computation, visibility, and chunk invariance of whole SWA / CSA / HCA layers.
#include <algorithm>
#include <random>

#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/attention.hpp"
#include "dsv4/model/costs.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/paged.hpp"
#include "dsv4/ops/quant.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::test::check_error;
using dsv4::test::temp_dir;

namespace {

// The tiny model (ratios [0, 4, 128, 4], window 16, top-k 4, head_dim 96 / rope 32), synthesized once.
struct tiny_model {
  temp_dir dir{"attention"};
  model_config cfg = preset("tiny");
  io::checkpoint ckpt;
  model_weights w;
  tiny_model() : ckpt(make()), w(bind_weights(ckpt, cfg)) {}
  io::checkpoint make() {
    synthesize(cfg, dir.path, {});
    return io::checkpoint::open(dir.path);
  }
};

tiny_model& tiny() {
  static tiny_model m;
  return m;
}

pool_options opts(cache::kv_format fmt = cache::kv_format::f32, std::int64_t page_tokens = 16) {
  pool_options o;
  o.kv = fmt;
  o.page_tokens = page_tokens;
  return o;
}

// One sequence through layer L in the given chunks, in a fresh pool.
std::vector<float> run(const attention_layer& L, const std::vector<float>& x, std::int64_t T,
                       const std::vector<std::int64_t>& chunks, attention_trace* trace = nullptr,
                       const pool_options& po = opts()) {
  const std::int64_t D = tiny().cfg.dim;
  page_pool pool(tiny().cfg, po);
  const std::int64_t id = pool.add_sequence();
  std::vector<float> y(static_cast<std::size_t>(T * D));
  std::int64_t t0 = 0;
  for (std::int64_t n : chunks) {
    const tensor_view xv(const_cast<float*>(x.data()) + t0 * D, dtype::f32, {n, D});
    const tensor_view yv(y.data() + t0 * D, dtype::f32, {n, D});
    L.forward(xv, row_batch::one(pool, id, t0, n), yv, trace);
    t0 += n;
  }
  REQUIRE(t0 == T);
  return y;
}

// Entries [0, n) of a region of sequence `id` in layer `layer`, decoded.
std::vector<float> read_entries(const page_pool& pool, std::int64_t id, std::int64_t layer, page_pool::region r,
                                std::int64_t n, std::int64_t width) {
  const auto& t = pool.table(id, layer, r);
  std::vector<std::int32_t> slots;
  for (std::int64_t j = 0; j < n; ++j)
    slots.push_back(static_cast<std::int32_t>(cache::slot_of(t.data(), j, pool.options().page_tokens)));
  std::vector<float> out(static_cast<std::size_t>(n * width));
  const tensor_view sv(slots.data(), dtype::i32, {n}), ov(out.data(), dtype::f32, {n, width});
  if (r == page_pool::region::keys) ops::key_load(pool.key_view(layer), sv, ov);
  else ops::kv_load(pool.kv_view(layer), sv, ov);
  return out;
}

// Independent pieces for the recomputation tests (ref backend ops, plain loops).
std::vector<float> lin(const ops::qweight& w, const float* x, std::int64_t K) {
  const std::int64_t N = w.weight.shape(0);
  std::vector<float> y(static_cast<std::size_t>(N));
  ops::linear(tensor_view(const_cast<float*>(x), dtype::f32, {1, K}), w, tensor_view(y.data(), dtype::f32, {1, N}),
              test::on(backend::ref));
  return y;
}
void rms(float* v, std::int64_t n, const tensor_view& w, double eps) {
  double ss = 0;
  for (std::int64_t i = 0; i < n; ++i) ss += double(v[i]) * v[i];
  const double r = 1 / std::sqrt(ss / double(n) + eps);
  for (std::int64_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(v[i] * r) * (w.rank() ? static_cast<const bf16*>(w.data())[i].to_float() : 1.f);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_SUITE("attention") {
  TEST_CASE("RoPE: V4's YaRN ramp (low 15, high 25), plain theta on window-only layers, inverse") {
    const model_config f = preset("v4-flash");
    const rope_table csa = rope_table::for_layer(f, 2), swa = rope_table::for_layer(f, 0);
    CHECK(csa.yarn);
    CHECK(csa.yarn_low == 15);  // spec §3.1: raw 15.45 and 24.71
    CHECK(csa.yarn_high == 25);
    CHECK_FALSE(swa.yarn);
    for (int i = 0; i < 32; ++i) {
      const float b160 = 1.f / std::pow(160000.f, float(2 * i) / 64.f), b10 = 1.f / std::pow(10000.f, float(2 * i) / 64.f);
      CHECK(swa.freq[static_cast<std::size_t>(i)] == b10);
      if (i <= 15) CHECK(csa.freq[static_cast<std::size_t>(i)] == b160);            // unchanged
      if (i >= 25) CHECK(csa.freq[static_cast<std::size_t>(i)] == doctest::Approx(b160 / 16));  // divided by 16
      if (i > 15 && i < 25) {
        CHECK(csa.freq[static_cast<std::size_t>(i)] < b160);
        CHECK(csa.freq[static_cast<std::size_t>(i)] > b160 / 16);
      }
    }
    // Interleaved pairs on the last rope dims only; the inverse undoes the rotation.
    std::vector<float> v(96, 0.f), orig;
    for (int i = 0; i < 96; ++i) v[static_cast<std::size_t>(i)] = float(i % 7) - 3.f;
    orig = v;
    const rope_table r = rope_table::for_layer(tiny().cfg, 1);
    r.apply(v.data(), 64, 1234);
    for (int i = 0; i < 64; ++i) CHECK(v[static_cast<std::size_t>(i)] == orig[static_cast<std::size_t>(i)]);
    const float ang = 1234.f * r.freq[0];
    CHECK(v[64] == doctest::Approx(orig[64] * std::cos(ang) - orig[65] * std::sin(ang)));
    CHECK(v[65] == doctest::Approx(orig[64] * std::sin(ang) + orig[65] * std::cos(ang)));
    r.apply(v.data(), 64, 1234, true);
    for (int i = 0; i < 96; ++i) CHECK(v[static_cast<std::size_t>(i)] == doctest::Approx(orig[static_cast<std::size_t>(i)]).epsilon(1e-5));
  }

  TEST_CASE("sparse attention: the sink is in the denominator only and unscaled; -1 slots are skipped") {
    // Two heads, D = 2, rows e0 = (1, 0) and e1 = (0, 1); scale 0.5; sinks 0 and ln 2.
    std::vector<float> q = {2, 0, 0, 0}, kv = {1, 0, 0, 1}, sink = {0.f, std::log(2.f)};
    std::vector<std::int32_t> idx = {0, -1, 1};
    for (backend be : test::host_backends()) {
      CAPTURE(be);
      std::vector<float> out(4);
      ops::sparse_attention(tensor_view(q.data(), dtype::f32, {1, 2, 2}), tensor_view(kv.data(), dtype::f32, {1, 2}),
                            tensor_view(kv.data() + 2, dtype::f32, {1, 2}), tensor_view(idx.data(), dtype::i32, {1, 3}),
                            tensor_view(sink.data(), dtype::f32, {2}), 0.5f, tensor_view(out.data(), dtype::f32, {1, 2, 2}),
                            test::on(be));
      // Head 0: logits (1, 0), M = 1: (e^0·e0 + e^-1·e1) / (1 + e^-1 + e^(0-1)).
      const double den0 = 1 + 2 * std::exp(-1.0);
      CHECK(out[0] == doctest::Approx(1 / den0).epsilon(1e-6));
      CHECK(out[1] == doctest::Approx(std::exp(-1.0) / den0).epsilon(1e-6));
      // Head 1: logits (0, 0): (e0 + e1) / (2 + e^(ln 2)) = 1/4 each; the sink enters unscaled (not 0.5·ln 2).
      CHECK(out[2] == doctest::Approx(0.25).epsilon(1e-6));
      CHECK(out[3] == doctest::Approx(0.25).epsilon(1e-6));
    }
    std::vector<std::int32_t> none = {-1, -1, -1};
    std::vector<float> out(4);
    check_error([&] {
      ops::sparse_attention(tensor_view(q.data(), dtype::f32, {1, 2, 2}), tensor_view(kv.data(), dtype::f32, {2, 2}), {},
                            tensor_view(none.data(), dtype::i32, {1, 3}), tensor_view(sink.data(), dtype::f32, {2}), 1.f,
                            tensor_view(out.data(), dtype::f32, {1, 2, 2}));
    }, {"row 0 of idx has no valid entry"});
    std::vector<std::int32_t> far = {0, 2, -1};
    check_error([&] {
      ops::sparse_attention(tensor_view(q.data(), dtype::f32, {1, 2, 2}), tensor_view(kv.data(), dtype::f32, {2, 2}), {},
                            tensor_view(far.data(), dtype::i32, {1, 3}), tensor_view(sink.data(), dtype::f32, {2}), 1.f,
                            tensor_view(out.data(), dtype::f32, {1, 2, 2}));
    }, {"idx[0, 1] = 2 outside [-1, 2)"});
  }

  TEST_CASE("indexer scores: ReLU before the weighted head sum; entries past `visible` are -inf") {
    // q: head 0 = (1, 0), head 1 = (0, 1); keys k0 = (-1, 2), k1 = (3, -1); w = (1, -0.5).
    std::vector<float> q = {1, 0, 0, 1}, k = {-1, 2, 3, -1}, w = {1.f, -0.5f}, s(2);
    std::vector<std::int32_t> vis1 = {1}, vis2 = {2};
    for (backend be : test::host_backends()) {
      ops::indexer_scores(tensor_view(q.data(), dtype::f32, {1, 2, 2}), tensor_view(k.data(), dtype::f32, {2, 2}),
                          tensor_view(w.data(), dtype::f32, {1, 2}), tensor_view(vis2.data(), dtype::i32, {1}),
                          tensor_view(s.data(), dtype::f32, {1, 2}), test::on(be));
      CHECK(s[0] == doctest::Approx(1 * 0 + (-0.5) * 2));  // ReLU(-1) = 0: not 1·(-1) + ...
      CHECK(s[1] == doctest::Approx(1 * 3 + (-0.5) * 0));
      ops::indexer_scores(tensor_view(q.data(), dtype::f32, {1, 2, 2}), tensor_view(k.data(), dtype::f32, {2, 2}),
                          tensor_view(w.data(), dtype::f32, {1, 2}), tensor_view(vis1.data(), dtype::i32, {1}),
                          tensor_view(s.data(), dtype::f32, {1, 2}), test::on(be));
      CHECK(std::isinf(s[1]));
    }
  }

  TEST_CASE("top-k: highest first, equal scores -> lower index, short rows padded with -1; cpu == ref") {
    std::vector<float> s = {3, 1, 3, 2, 3, 9, 9};
    std::vector<std::int64_t> cnt = {5};
    std::vector<std::int32_t> idx(3);
    for (backend be : test::host_backends()) {
      ops::topk_select(tensor_view(s.data(), dtype::f32, {1, 7}), tensor_view(cnt.data(), dtype::i64, {1}),
                       tensor_view(idx.data(), dtype::i32, {1, 3}), test::on(be));
      CHECK(idx == std::vector<std::int32_t>{0, 2, 4});  // the 9s lie past count
      cnt[0] = 2;
      ops::topk_select(tensor_view(s.data(), dtype::f32, {1, 7}), tensor_view(cnt.data(), dtype::i64, {1}),
                       tensor_view(idx.data(), dtype::i32, {1, 3}), test::on(be));
      CHECK(idx == std::vector<std::int32_t>{0, 1, -1});
      cnt[0] = 5;
    }
    // Many ties (values from a small set) on a long row: identical selections.
    const std::int64_t T = 8, E = 5000, K = 64;
    std::vector<float> big(static_cast<std::size_t>(T * E));
    std::mt19937 rng(11);
    for (auto& v : big) v = float(rng() % 50);
    std::vector<std::int32_t> cnts(T), a(static_cast<std::size_t>(T * K)), b(a.size());
    for (std::int64_t t = 0; t < T; ++t) cnts[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(E - 300 * t);
    ops::topk_select(tensor_view(big.data(), dtype::f32, {T, E}), tensor_view(cnts.data(), dtype::i32, {T}),
                     tensor_view(a.data(), dtype::i32, {T, K}), test::on(backend::ref));
    ops::topk_select(tensor_view(big.data(), dtype::f32, {T, E}), tensor_view(cnts.data(), dtype::i32, {T}),
                     tensor_view(b.data(), dtype::i32, {T, K}));
    CHECK(a == b);
  }

  TEST_CASE("compressor entries equal a direct computation: overlap halves, ape before the rearrangement, RoPE at "
            "ratio*j, FP8 on the nope dims") {
    const tiny_model& m = tiny();
    const model_config& c = m.cfg;
    const std::int64_t T = 300, D = c.dim, hd = c.head_dim, nope = c.nope_head_dim();
    const auto x = test::randn(static_cast<std::size_t>(T * D), 5);
    for (int layer : {1, 2}) {  // CSA (ratio 4, overlapped), HCA (ratio 128)
      CAPTURE(layer);
      const auto& bw = m.w.layers[static_cast<std::size_t>(layer)];
      const attention_layer L(c, bw, test::on(backend::ref));
      page_pool pool(c, opts());
      const std::int64_t id = pool.add_sequence();
      std::vector<float> y(static_cast<std::size_t>(T * D));
      L.forward(tensor_view(const_cast<float*>(x.data()), dtype::f32, {T, D}), row_batch::one(pool, id, 0, T),
                tensor_view(y.data(), dtype::f32, {T, D}));
      const int r = L.ratio();
      const std::int64_t coff = r == 4 ? 2 : 1, cw = coff * hd;
      const auto comp = read_entries(pool, id, layer, page_pool::region::compressed, T / r, hd);
      // Direct: projections for every token, then each entry's softmax pool written out from spec §3.4.
      buffer xb = test::host_f32(T, D, x), kvp(dtype::f32, {T, cw}), sc(dtype::f32, {T, cw});
      ops::linear(xb, bw.attn.compressor->wkv, kvp, test::on(backend::ref));
      ops::linear(xb, bw.attn.compressor->wgate, sc, test::on(backend::ref));
      const auto* ape = static_cast<const float*>(bw.attn.compressor->ape.data());
      const auto* kv = static_cast<const float*>(kvp.data());
      const auto* g = static_cast<const float*>(sc.data());
      std::vector<float> norm(static_cast<std::size_t>(hd));
      for (std::int64_t i = 0; i < hd; ++i)
        norm[static_cast<std::size_t>(i)] = static_cast<const bf16*>(bw.attn.compressor->norm.data())[i].to_float();
      for (std::int64_t j : {std::int64_t{0}, std::int64_t{1}, T / r - 1}) {
        CAPTURE(j);
        std::vector<float> e(static_cast<std::size_t>(hd));
        for (std::int64_t ch = 0; ch < hd; ++ch) {
          std::vector<std::pair<double, double>> cand;  // (score, value)
          for (std::int64_t k = 0; k < r; ++k) {
            const std::int64_t t = r * j + k;  // this block: the high half [c, 2c) when overlapping
            const std::int64_t col = (r == 4 ? hd : 0) + ch;
            cand.push_back({double(g[t * cw + col]) + ape[k * cw + col], kv[t * cw + col]});
            if (r == 4 && j > 0) {
              const std::int64_t tp = 4 * (j - 1) + k;  // previous block: the low half [0, c)
              cand.push_back({double(g[tp * cw + ch]) + ape[k * cw + ch], kv[tp * cw + ch]});
            }
          }
          double mx = -1e300, den = 0, num = 0;
          for (auto& [s, v] : cand) mx = std::max(mx, s);
          for (auto& [s, v] : cand) {
            den += std::exp(s - mx);
            num += std::exp(s - mx) * v;
          }
          e[static_cast<std::size_t>(ch)] = static_cast<float>(num / den);
        }
        double ss = 0;
        for (float v : e) ss += double(v) * v;
        const double rn = 1 / std::sqrt(ss / double(hd) + c.norm_eps);
        for (std::int64_t i = 0; i < hd; ++i)
          e[static_cast<std::size_t>(i)] = static_cast<float>(e[static_cast<std::size_t>(i)] * rn) * norm[static_cast<std::size_t>(i)];
        L.rope().apply(e.data(), nope, r * j);  // compressed RoPE at the block's first position
        const tensor_view ev(e.data(), dtype::f32, {1, hd});
        ops::block_round_trip(ev.narrow(1, 0, nope), ev.narrow(1, 0, nope), ops::quant_format::fp8_e4m3, 64);
        const float* got = comp.data() + j * hd;
        int far = 0;
        for (std::int64_t i = 0; i < hd; ++i) {
          // FP8 codes: equal unless a value sat on a rounding boundary (one grid step, 2^-3 relative, allowed on a
          // few dims); rope dims fp32 within 1e-4.
          const float a = got[i], b = e[static_cast<std::size_t>(i)];
          if (i < nope) far += std::fabs(a - b) > 1e-5f * (1 + std::fabs(b)) && std::fabs(a - b) <= 0.13f * std::fabs(b) ? 1 : 0;
          if (i < nope) CHECK(std::fabs(a - b) <= 0.13f * std::fabs(b) + 1e-6f);
          else CHECK(a == doctest::Approx(b).epsilon(1e-4));
        }
        CHECK(far <= 2);
      }
    }
  }

  TEST_CASE("visibility: entry j is visible to position i iff (j+1)*ratio <= i+1; the window holds the token") {
    const tiny_model& m = tiny();
    const std::int64_t D = m.cfg.dim;
    const attention_layer csa(m.cfg, m.w.layers[1]), hca(m.cfg, m.w.layers[2]), swa(m.cfg, m.w.layers[0]);
    const auto x = test::randn(static_cast<std::size_t>(300 * D), 6);
    for (std::int64_t p : {0, 2, 3, 7, 15, 16, 126, 127, 255, 256, 299}) {
      CAPTURE(p);
      attention_trace tc, th, ts;
      run(csa, x, p + 1, {p + 1}, &tc);
      run(hca, x, p + 1, {p + 1}, &th);
      run(swa, x, p + 1, {p + 1}, &ts);
      CHECK(tc.last_window == std::min<std::int64_t>(p + 1, 16));
      CHECK(ts.last_window == std::min<std::int64_t>(p + 1, 16));
      CHECK(ts.last_compressed == 0);
      CHECK(th.last_compressed == (p + 1) / 128);
      CHECK(tc.last_compressed == std::min<std::int64_t>(4, (p + 1) / 4));
      for (std::int32_t e : tc.last_picks) CHECK((e + 1) * 4 <= p + 1);
    }
  }

  TEST_CASE("chunk invariance: prefill == any split == token-by-token decode, bitwise, for SWA, CSA and HCA") {
    const tiny_model& m = tiny();
    const std::int64_t T = 300, D = m.cfg.dim;  // > 2·128 tokens: 2 HCA entries; 75 CSA entries vs top-k 4
    const auto x = test::randn(static_cast<std::size_t>(T * D), 7);
    for (int layer : {0, 1, 2}) {
      CAPTURE(layer);
      const attention_layer L(m.cfg, m.w.layers[static_cast<std::size_t>(layer)]);
      attention_trace tr;
      const auto full = run(L, x, T, {T}, &tr);
      if (layer == 1) CHECK(tr.last_picks.size() == 4);  // selective: 4 of 75 visible entries
      if (layer == 2) CHECK(tr.last_compressed == 2);
      // Every split offset 1 .. 2·ratio + 1 (window-based for SWA).
      const std::int64_t span = layer == 0 ? 2 * 16 + 1 : 2 * L.ratio() + 1;
      int bad = 0;
      for (std::int64_t s = 1; s <= span; ++s) bad += !same_bits(run(L, x, T, {s, T - s}), full);
      CHECK(bad == 0);
      // Token by token.
      CHECK(same_bits(run(L, x, T, std::vector<std::int64_t>(static_cast<std::size_t>(T), 1)), full));
      // Random chunkings.
      std::mt19937 rng(static_cast<unsigned>(layer) + 100);
      for (int trial = 0; trial < 5; ++trial) {
        std::vector<std::int64_t> ch;
        for (std::int64_t left = T; left > 0;) {
          const std::int64_t n = std::min<std::int64_t>(left, 1 + static_cast<std::int64_t>(rng() % 40));
          ch.push_back(n);
          left -= n;
        }
        CHECK(same_bits(run(L, x, T, ch), full));
      }
    }
  }

  TEST_CASE("cpu equals ref within fp32 tolerance; cpu is bitwise identical on 1 and 2 threads; the ref backend is "
            "chunk-invariant too") {
    const tiny_model& m = tiny();
    const std::int64_t T = 300, D = m.cfg.dim;
    const auto x = test::randn(static_cast<std::size_t>(T * D), 8);
    for (int layer : {0, 1, 2}) {
      CAPTURE(layer);
      const auto& bw = m.w.layers[static_cast<std::size_t>(layer)];
      const auto r = run(attention_layer(m.cfg, bw, test::on(backend::ref)), x, T, {T});
      const auto c1 = run(attention_layer(m.cfg, bw, test::on(backend::cpu, 1)), x, T, {T});
      const auto c2 = run(attention_layer(m.cfg, bw, test::on(backend::cpu, 2)), x, T, {T});
      CHECK(same_bits(c1, c2));
      CHECK(same_bits(run(attention_layer(m.cfg, bw, test::on(backend::ref)), x, T, {100, 1, 199}), r));
      // fp32 accumulation (cpu) vs double (ref) differs by ~1e-7 relative per value, but the architecture's own
      // quantizers amplify it where a value sits on a rounding boundary: an FP8 code of a KV or compressed entry
      // flips by one step (2^-3 relative) and moves the outputs by ~1e-5. Bound: relative L2 error 2e-4 (measured
      // 3e-6 SWA, 7e-6 CSA, 3.4e-5 HCA). A near-tie in the indexer could flip a pick; this seed has none.
      double num = 0, den = 0;
      for (std::size_t i = 0; i < r.size(); ++i) {
        num += (double(c1[i]) - r[i]) * (double(c1[i]) - r[i]);
        den += double(r[i]) * r[i];
      }
      CHECK(std::sqrt(num / den) < 2e-4);
    }
  }

  TEST_CASE("pool: capacity, a new sequence, rows out of order, a pool of another model") {
    const tiny_model& m = tiny();
    const std::int64_t D = m.cfg.dim;
    const attention_layer L(m.cfg, m.w.layers[1]);
    page_pool pool(m.cfg, opts());
    const std::int64_t id = pool.add_sequence(10);
    const auto x = test::randn(static_cast<std::size_t>(12 * D), 9);
    std::vector<float> y(static_cast<std::size_t>(12 * D));
    auto X = [&](std::int64_t n, std::int64_t d = -1) {
      return tensor_view(const_cast<float*>(x.data()), dtype::f32, {n, d < 0 ? D : d});
    };
    auto Y = [&](std::int64_t n, std::int64_t d = -1) { return tensor_view(y.data(), dtype::f32, {n, d < 0 ? D : d}); };
    L.forward(X(8), row_batch::one(pool, id, 0, 8), Y(8));
    check_error([&] { L.forward(X(3), row_batch::one(pool, id, 8, 3), Y(3)); },
                {"positions [8, 11) run past the sequence's capacity of 10 positions"});
    check_error([&] { L.forward(X(2, D - 1), row_batch::one(pool, id, 8, 2), Y(2, D - 1)); },
                {"expected contiguous f32[T, 64]"});
    check_error([&] { L.forward(X(1), row_batch::one(pool, id, 9, 1), Y(1)); },
                {"row 0 is position 9 of sequence", "next position in layer 1 is 8"});
    // A new sequence in the same pool (the old one handed back) gives the same output as the first one did.
    const std::vector<float> first(y.begin(), y.begin() + 8 * D);
    pool.remove_sequence(id);
    const std::int64_t id2 = pool.add_sequence(10);
    L.forward(X(8), row_batch::one(pool, id2, 0, 8), Y(8));
    CHECK(std::memcmp(first.data(), y.data(), first.size() * sizeof(float)) == 0);
    page_pool other(preset("small"));
    const std::int64_t o = other.add_sequence();
    check_error([&] { L.forward(X(1), row_batch::one(other, o, 0, 1), Y(1)); }, {"another model shape"});
  }

  TEST_CASE("fp8_ds_mla pages: chunk-invariant, close to f32 pages (BF16 rope dims), bytes held == calculator") {
    // The tiny model with the engines' layout: still bitwise chunk-invariant, close to f32 pages (BF16 rope dims), and
    // the bytes held after T tokens equal the calculator's KV count for the same context, term for term.
    const tiny_model& m = tiny();
    const std::int64_t T = 300, D = m.cfg.dim;
    const auto x = test::randn(static_cast<std::size_t>(T * D), 12);
    const pool_options fp8 = opts(cache::kv_format::fp8_ds_mla, 7);
    std::int64_t held = 0;
    for (int layer : {0, 1, 2, 3}) {
      CAPTURE(layer);
      const attention_layer L(m.cfg, m.w.layers[static_cast<std::size_t>(layer)]);
      const auto full = run(L, x, T, {T}, nullptr, fp8);
      CHECK(same_bits(run(L, x, T, std::vector<std::int64_t>(static_cast<std::size_t>(T), 1), nullptr, fp8), full));
      CHECK(same_bits(run(L, x, T, {7, 130, 163}, nullptr, opts(cache::kv_format::fp8_ds_mla, 64)), full));
      const auto f32 = run(L, x, T, {T});
      double num = 0, den = 0;
      for (std::size_t i = 0; i < f32.size(); ++i) {
        num += (double(full[i]) - f32[i]) * (double(full[i]) - f32[i]);
        den += double(f32[i]) * f32[i];
      }
      // BF16 rope dims (8 mantissa bits, relative 2^-9) in the cached rows: outputs move by ~1e-3 relative.
      CHECK(std::sqrt(num / den) < 1e-2);
      page_pool pool(m.cfg, fp8);
      const std::int64_t id = pool.add_sequence();
      std::vector<float> y(static_cast<std::size_t>(T * D));
      L.forward(tensor_view(const_cast<float*>(x.data()), dtype::f32, {T, D}), row_batch::one(pool, id, 0, T),
                tensor_view(y.data(), dtype::f32, {T, D}));
      held += pool.held_bytes(id, layer);
    }
    CHECK(double(held) == decode_costs(m.cfg, T).kv_total());
  }

  TEST_CASE("a 1M-token V4-Flash sequence in fp8_ds_mla pages holds exactly the calculator's KV bytes") {
    const model_config f = preset("v4-flash");
    constexpr std::int64_t kCtx = 1 << 20;
    pool_options o;
    o.kv = cache::kv_format::fp8_ds_mla;
    page_pool pool(f, o);
    CHECK(pool.kv_view(2).geo.entry_bytes() == 584);
    CHECK(pool.key_view(2).geo.key_bytes() == 68);
    const std::int64_t id = pool.add_sequence(kCtx);
    // The arithmetic only: positions advanced without mapping pages (nothing is allocated).
    for (std::int64_t layer = 0; layer < f.n_layers; ++layer) pool.commit(id, layer, kCtx);
    const double calc = decode_costs(f, kCtx).kv_total();
    CHECK(double(pool.held_bytes(id)) == calc);
    MESSAGE("V4-Flash, 1M tokens, fp8_ds_mla: ", calc / 1e9, " GB per sequence (", calc / kCtx, " B/token)");
  }

  TEST_CASE("independent sequences: interleaved decoding, and all of them in one batched call, equal each alone") {
    const tiny_model& m = tiny();
    const std::int64_t D = m.cfg.dim;
    const attention_layer L(m.cfg, m.w.layers[1]);
    const std::int64_t len[3] = {40, 75, 9};
    std::vector<std::vector<float>> xs, alone, inter(3), batched(3);
    for (int s = 0; s < 3; ++s) {
      xs.push_back(test::randn(static_cast<std::size_t>(len[s] * D), 20 + static_cast<std::uint64_t>(s)));
      alone.push_back(run(L, xs.back(), len[s], {len[s]}));
      inter[static_cast<std::size_t>(s)].resize(static_cast<std::size_t>(len[s] * D));
      batched[static_cast<std::size_t>(s)].resize(static_cast<std::size_t>(len[s] * D));
    }
    page_pool pool(m.cfg, opts(cache::kv_format::f32, 5));
    const std::int64_t ids[3] = {pool.add_sequence(), pool.add_sequence(), pool.add_sequence()};
    for (std::int64_t step = 0; step < 75; ++step)
      for (int s = 0; s < 3; ++s) {
        if (step >= len[s]) continue;
        L.forward(tensor_view(xs[static_cast<std::size_t>(s)].data() + step * D, dtype::f32, {1, D}),
                  row_batch::one(pool, ids[s], step, 1),
                  tensor_view(inter[static_cast<std::size_t>(s)].data() + step * D, dtype::f32, {1, D}));
      }
    for (int s = 0; s < 3; ++s) CHECK(same_bits(inter[static_cast<std::size_t>(s)], alone[static_cast<std::size_t>(s)]));
    // One call per step holding a chunk of every sequence, their rows interleaved.
    page_pool pool2(m.cfg, opts(cache::kv_format::f32, 64));
    const std::int64_t ids2[3] = {pool2.add_sequence(), pool2.add_sequence(), pool2.add_sequence()};
    std::int64_t done[3] = {0, 0, 0};
    const std::int64_t chunk[3] = {7, 13, 2};
    while (done[0] < len[0] || done[1] < len[1] || done[2] < len[2]) {
      row_batch rb;
      rb.pool = &pool2;
      std::vector<float> xb, yb;
      std::vector<std::pair<int, std::int64_t>> who;  // (sequence, position) of each row
      for (std::int64_t i = 0; i < 13; ++i)
        for (int s = 0; s < 3; ++s)
          if (i < chunk[s] && done[s] + i < len[s]) {
            rb.seq.push_back(ids2[s]);
            rb.pos.push_back(done[s] + i);
            who.push_back({s, done[s] + i});
            const float* src = xs[static_cast<std::size_t>(s)].data() + (done[s] + i) * D;
            xb.insert(xb.end(), src, src + D);
          }
      const std::int64_t T = rb.size();
      yb.resize(static_cast<std::size_t>(T * D));
      L.forward(tensor_view(xb.data(), dtype::f32, {T, D}), rb, tensor_view(yb.data(), dtype::f32, {T, D}));
      for (std::int64_t t = 0; t < T; ++t)
        std::copy(yb.begin() + t * D, yb.begin() + (t + 1) * D,
                  batched[static_cast<std::size_t>(who[static_cast<std::size_t>(t)].first)].begin() +
                      who[static_cast<std::size_t>(t)].second * D);
      for (int s = 0; s < 3; ++s) done[s] = std::min(len[s], done[s] + chunk[s]);
    }
    for (int s = 0; s < 3; ++s) CHECK(same_bits(batched[static_cast<std::size_t>(s)], alone[static_cast<std::size_t>(s)]));
  }

  TEST_CASE("a sliding-window token recomputed from the spec: q rescale, KV FP8, sink, inverse RoPE, wo_a groups") {
    const tiny_model& m = tiny();
    const model_config& c = m.cfg;
    const auto& aw = m.w.layers[0].attn;  // SWA layer: window only
    const std::int64_t D = c.dim, H = c.n_heads, hd = c.head_dim, nope = c.nope_head_dim(), W = c.window_size;
    const std::int64_t T = 21, p = T - 1;
    const auto x = test::randn(static_cast<std::size_t>(T * D), 13);
    const attention_layer L(c, m.w.layers[0], test::on(backend::ref));
    const auto y = run(L, x, T, {T});
    const rope_table& rope = L.rope();
    // Query of the last token.
    auto qr = lin(aw.wq_a, x.data() + p * D, D);
    rms(qr.data(), c.q_lora_rank, aw.q_norm, c.norm_eps);
    auto q = lin(aw.wq_b, qr.data(), c.q_lora_rank);
    for (std::int64_t h = 0; h < H; ++h) {
      rms(q.data() + h * hd, hd, {}, c.norm_eps);
      rope.apply(q.data() + h * hd, nope, p);
    }
    // KV rows of the window (positions p − W + 1 .. p).
    std::vector<std::vector<float>> kv;
    for (std::int64_t s = p - W + 1; s <= p; ++s) {
      auto r = lin(aw.wkv, x.data() + s * D, D);
      rms(r.data(), hd, aw.kv_norm, c.norm_eps);
      rope.apply(r.data(), nope, s);
      const tensor_view rv(r.data(), dtype::f32, {1, hd});
      ops::block_round_trip(rv.narrow(1, 0, nope), rv.narrow(1, 0, nope), ops::quant_format::fp8_e4m3, 64);
      kv.push_back(r);
    }
    // Attention with sink, per head, then the inverse rotation.
    std::vector<float> o(static_cast<std::size_t>(H * hd));
    for (std::int64_t h = 0; h < H; ++h) {
      std::vector<double> l;
      double mx = -1e300;
      for (const auto& r : kv) {
        double dot = 0;
        for (std::int64_t i = 0; i < hd; ++i) dot += double(q[static_cast<std::size_t>(h * hd + i)]) * r[static_cast<std::size_t>(i)];
        l.push_back(dot / std::sqrt(double(hd)));
        mx = std::max(mx, l.back());
      }
      double den = std::exp(double(static_cast<const float*>(aw.attn_sink.data())[h]) - mx);
      std::vector<double> acc(static_cast<std::size_t>(hd));
      for (std::size_t i = 0; i < kv.size(); ++i) {
        const double e = std::exp(l[i] - mx);
        den += e;
        for (std::int64_t d = 0; d < hd; ++d) acc[static_cast<std::size_t>(d)] += e * kv[i][static_cast<std::size_t>(d)];
      }
      for (std::int64_t d = 0; d < hd; ++d) o[static_cast<std::size_t>(h * hd + d)] = static_cast<float>(acc[static_cast<std::size_t>(d)] / den);
      rope.apply(o.data() + h * hd, nope, p, /*inverse=*/true);
    }
    // wo_a per group (rows g·o_lora .. of the decoded weight, inputs heads g·H/g ..), then wo_b.
    const std::int64_t g = c.o_groups, ol = c.o_lora_rank, gin = H * hd / g;
    std::vector<float> woa(static_cast<std::size_t>(g * ol * gin));
    ops::dequantize(aw.wo_a.weight, aw.wo_a.scale, tensor_view(woa.data(), dtype::f32, {g * ol, gin}), 128, 128);
    std::vector<float> o2(static_cast<std::size_t>(g * ol));
    for (std::int64_t k = 0; k < g; ++k)
      for (std::int64_t r = 0; r < ol; ++r) {
        double a = 0;
        for (std::int64_t i = 0; i < gin; ++i) a += double(woa[static_cast<std::size_t>((k * ol + r) * gin + i)]) * o[static_cast<std::size_t>(k * gin + i)];
        o2[static_cast<std::size_t>(k * ol + r)] = static_cast<float>(a);
      }
    const auto want = lin(aw.wo_b, o2.data(), g * ol);
    for (std::int64_t i = 0; i < D; ++i)
      CHECK(y[static_cast<std::size_t>(p * D + i)] == doctest::Approx(want[static_cast<std::size_t>(i)]).epsilon(1e-4).scale(1e-3));
  }

  TEST_CASE("indexer picks recomputed from the spec: Hadamard and FP4 on both q and k, scaled head weights") {
    const tiny_model& m = tiny();
    const model_config& c = m.cfg;
    const auto& aw = m.w.layers[1].attn;  // CSA
    const auto& ix = *aw.indexer;
    const std::int64_t D = c.dim, ih = c.index_n_heads, ic = c.index_head_dim, T = 300, p = T - 1;
    const auto x = test::randn(static_cast<std::size_t>(T * D), 14);
    const attention_layer L(c, m.w.layers[1], test::on(backend::ref));
    page_pool pool(c, opts());
    const std::int64_t id = pool.add_sequence();
    attention_trace tr;
    std::vector<float> y(static_cast<std::size_t>(T * D));
    L.forward(tensor_view(const_cast<float*>(x.data()), dtype::f32, {T, D}), row_batch::one(pool, id, 0, T),
              tensor_view(y.data(), dtype::f32, {T, D}), &tr);
    // Query: q latent -> wq_b -> RoPE on each head's last rope dims -> Hadamard -> FP4 round trip.
    auto qr = lin(aw.wq_a, x.data() + p * D, D);
    rms(qr.data(), c.q_lora_rank, aw.q_norm, c.norm_eps);
    auto qi = lin(ix.wq_b, qr.data(), c.q_lora_rank);
    for (std::int64_t h = 0; h < ih; ++h) L.rope().apply(qi.data() + h * ic, ic - c.rope_head_dim, p);
    const tensor_view qv(qi.data(), dtype::f32, {ih, ic});
    ops::hadamard(qv, qv, test::on(backend::ref));
    ops::block_round_trip(qv, qv, ops::quant_format::fp4_e2m1, 32, test::on(backend::ref));
    auto wts = lin(ix.weights_proj, x.data() + p * D, D);
    const std::int64_t E = (p + 1) / 4;
    const std::vector<float> keys = read_entries(pool, id, 1, page_pool::region::keys, E, ic);
    std::vector<std::pair<double, std::int32_t>> sc;
    for (std::int64_t e = 0; e < E; ++e) {
      double s = 0;
      for (std::int64_t h = 0; h < ih; ++h) {
        double dot = 0;
        for (std::int64_t i = 0; i < ic; ++i) dot += double(qi[static_cast<std::size_t>(h * ic + i)]) * keys[static_cast<std::size_t>(e * ic + i)];
        s += double(wts[static_cast<std::size_t>(h)]) / std::sqrt(double(ic)) / std::sqrt(double(ih)) * std::max(dot, 0.0);
      }
      sc.push_back({-s, static_cast<std::int32_t>(e)});  // ascending = best first, ties -> lower index
    }
    std::sort(sc.begin(), sc.end());
    std::vector<std::int32_t> want;
    for (std::int64_t i = 0; i < std::min<std::int64_t>(c.index_topk, E); ++i) want.push_back(sc[static_cast<std::size_t>(i)].second);
    std::sort(want.begin(), want.end());
    CHECK(tr.last_picks == want);
    // The keys really are Hadamard-rotated: every stored key is on the FP4 grid of its block scale, and rotating it
    // back does not give values on that grid (a key stored without the rotation would).
    int on_grid_back = 0;
    for (std::int64_t e = 0; e < std::min<std::int64_t>(E, 8); ++e) {
      std::vector<float> kb(keys.begin() + e * ic, keys.begin() + (e + 1) * ic);
      ops::hadamard(tensor_view(kb.data(), dtype::f32, {1, ic}), tensor_view(kb.data(), dtype::f32, {1, ic}));
      std::vector<float> rt = kb;
      ops::block_round_trip(tensor_view(rt.data(), dtype::f32, {1, ic}), tensor_view(rt.data(), dtype::f32, {1, ic}),
                            ops::quant_format::fp4_e2m1, 32);
      on_grid_back += rt == kb;
    }
    CHECK(on_grid_back == 0);
  }
}
