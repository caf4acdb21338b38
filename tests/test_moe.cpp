// MoE (spec §5): scores against closed forms, the tie rule, bias for selection only, hash routing, the clamp
// asymmetry, ascending-expert accumulation, cpu vs ref, bitwise batch/thread independence, errors.
#include <algorithm>
#include <cmath>

#include "dsv4/cpu/linear.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ops/moe.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

struct routed_out {
  buffer w, idx;
};

routed_out route(const buffer& logits, const ops::route_config& cfg, const tensor_view& bias, backend be) {
  const std::int64_t T = logits.view().shape(0);
  routed_out r{buffer(dtype::f32, {T, cfg.topk}), buffer(dtype::i32, {T, cfg.topk})};
  ops::moe_route(logits, cfg, bias, r.w, r.idx, on(be));
  return r;
}

buffer f32_buf(std::initializer_list<std::int64_t> shape, const std::vector<float>& v) {
  buffer b(dtype::f32, shape);
  std::copy(v.begin(), v.end(), b.host_span<float>().begin());
  return b;
}


}  // namespace

TEST_SUITE("moe") {

TEST_CASE("scores: closed forms, the softplus threshold at 20, weights normalized except for softmax") {
  const std::vector<float> l = {0.f, 25.f, 20.f, -30.f, 1.f, -1.f, 3.f, 0.5f};
  const buffer logits = f32_buf({1, 8}, l);
  for (backend be : host_backends()) {
    CAPTURE(backend_name(be));
    // top-8 of 8 returns every expert, so the weights expose every score
    const auto r = route(logits, {ops::score_func::sqrtsoftplus, 8, 1.f}, tensor_view(), be);
    const auto w = r.w.host_span<float>();
    const auto id = r.idx.host_span<std::int32_t>();
    double s[8], sum = 0;
    for (int e = 0; e < 8; ++e) sum += s[e] = std::sqrt(l[e] > 20 ? l[e] : std::log1p(std::exp(double(l[e]))));
    // order: 25, 20, 3, 1, 0.5, 0, -1, -30 (sqrtsoftplus is increasing)
    const int want[8] = {1, 2, 6, 4, 7, 0, 5, 3};
    for (int i = 0; i < 8; ++i) {
      CHECK(id[i] == want[i]);
      CHECK(w[i] == doctest::Approx(s[want[i]] / sum).epsilon(4e-7));  // a few fp32 ulp (exp/log1p/sqrt/div)
    }
    // passthrough above 20: sqrt(25) = 5 exactly, so w = 5/sum
    CHECK(std::fabs(w[0] - 5.0 / sum) <= 4e-7 * (5.0 / sum));
    const auto sg = route(logits, {ops::score_func::sigmoid, 8, 2.5f}, tensor_view(), be);
    double ssum = 0;
    for (int e = 0; e < 8; ++e) ssum += 1 / (1 + std::exp(-double(l[e])));
    CHECK(sg.idx.host_span<std::int32_t>()[5] == 0);
    CHECK(sg.w.host_span<float>()[5] == doctest::Approx(2.5 * 0.5 / ssum).epsilon(4e-7));
    // softmax: weights are the probabilities themselves (not renormalized over the chosen 2), times route_scale
    const auto sm = route(logits, {ops::score_func::softmax, 2, 1.5f}, tensor_view(), be);
    double z = 0;
    for (int e = 0; e < 8; ++e) z += std::exp(double(l[e]) - 25);
    CHECK(sm.w.host_span<float>()[0] == doctest::Approx(1.5 / z).epsilon(4e-7));
    CHECK(sm.w.host_span<float>()[1] == doctest::Approx(1.5 * std::exp(-5.0) / z).epsilon(4e-7));
  }
}

TEST_CASE("tie rule: equal values -> lower expert index first, on every backend") {
  std::vector<float> l(2 * 64, 0.3f);  // token 0: all equal
  for (int e = 0; e < 64; ++e) l[64 + e] = (e % 8 == 5) ? 2.f : -1.f;  // token 1: 5, 13, 21, ... tie at 2
  const buffer logits = f32_buf({2, 64}, l);
  for (backend be : host_backends()) {
    const auto r = route(logits, {ops::score_func::sqrtsoftplus, 6, 1.f}, tensor_view(), be);
    const auto id = r.idx.host_span<std::int32_t>();
    for (int i = 0; i < 6; ++i) {
      CHECK(id[i] == i);
      CHECK(id[6 + i] == 5 + 8 * i);
      CHECK(r.w.host_span<float>()[i] == doctest::Approx(1.0 / 6).epsilon(1e-6));
    }
  }
}

TEST_CASE("bias changes the selection but never the weights") {
  const auto l = randn(40 * 32, 3);
  const buffer logits = f32_buf({40, 32}, l);
  std::vector<float> bv(32, 0.f);
  bv[7] = 100.f;   // always selected
  bv[9] = -100.f;  // never selected
  const buffer bias = f32_buf({32}, bv);
  for (backend be : host_backends()) {
    const ops::route_config cfg{ops::score_func::sqrtsoftplus, 4, 1.5f};
    const auto r = route(logits, cfg, bias, be);
    for (int t = 0; t < 40; ++t) {
      const auto* id = r.idx.host_span<std::int32_t>().data() + t * 4;
      const auto* w = r.w.host_span<float>().data() + t * 4;
      CHECK(id[0] == 7);
      double sum = 0, s[4];
      for (int i = 0; i < 4; ++i) {
        CHECK(id[i] != 9);
        const double lv = l[t * 32 + id[i]];
        sum += s[i] = std::sqrt(std::log1p(std::exp(lv)));  // the bias-free score
      }
      for (int i = 0; i < 4; ++i) CHECK(w[i] == doctest::Approx(1.5 * s[i] / sum).epsilon(1e-6));
    }
  }
}

TEST_CASE("cpu routing equals ref: same experts, weights within 1e-6 relative") {
  if (!cpu::simd_isa()) return;
  for (auto f : {ops::score_func::sqrtsoftplus, ops::score_func::sigmoid, ops::score_func::softmax}) {
    CAPTURE(ops::score_func_name(f));
    const buffer logits = f32_buf({300, 259}, randn(300 * 259, 4, 3.f));  // E % 16 != 0: the scalar tail too
    const buffer bias = f32_buf({259}, randn(259, 5, 0.1f));
    const ops::route_config cfg{f, 6, 2.5f};
    const auto a = route(logits, cfg, bias, backend::ref), b = route(logits, cfg, bias, backend::cpu);
    CHECK(bytes_of(a.idx) == bytes_of(b.idx));
    for (int i = 0; i < 300 * 6; ++i)
      REQUIRE(b.w.host_span<float>()[i] == doctest::Approx(a.w.host_span<float>()[i]).epsilon(1e-6));
  }
}

TEST_CASE("hash routing picks exactly tid2eid[token] (row order kept), i32 and i64 tables") {
  const std::int64_t V = 50, E = 16, T = 7;
  buffer t32(dtype::i32, {V, 3}), t64(dtype::i64, {V, 3}), ids(dtype::i64, {T});
  for (std::int64_t v = 0; v < V; ++v)
    for (int i = 0; i < 3; ++i) {
      const auto e = static_cast<std::int32_t>((v * 7 + i * 5) % E);
      t32.host_span<std::int32_t>()[v * 3 + i] = e;
      t64.host_span<std::int64_t>()[v * 3 + i] = e;
    }
  const std::int64_t toks[T] = {0, 49, 3, 3, 17, 8, 31};
  for (int t = 0; t < T; ++t) ids.host_span<std::int64_t>()[t] = toks[t];
  const auto l = randn(T * E, 6);
  const buffer logits = f32_buf({T, E}, l);
  for (backend be : host_backends())
    for (const buffer* table : {&t32, &t64}) {
      buffer w(dtype::f32, {T, 3}), idx(dtype::i32, {T, 3});
      ops::moe_hash_route(logits, {ops::score_func::sqrtsoftplus, 3, 1.5f}, ids, *table, w, idx, on(be));
      for (int t = 0; t < T; ++t) {
        double s[3], sum = 0;
        for (int i = 0; i < 3; ++i) {
          const int e = static_cast<int>((toks[t] * 7 + i * 5) % E);
          REQUIRE(idx.host_span<std::int32_t>()[t * 3 + i] == e);
          sum += s[i] = std::sqrt(std::log1p(std::exp(double(l[t * E + e]))));
        }
        for (int i = 0; i < 3; ++i) CHECK(w.host_span<float>()[t * 3 + i] == doctest::Approx(1.5 * s[i] / sum).epsilon(1e-6));
      }
    }
  buffer w(dtype::f32, {T, 3}), idx(dtype::i32, {T, 3});
  ids.host_span<std::int64_t>()[4] = 50;
  check_error([&] { ops::moe_hash_route(logits, {ops::score_func::sqrtsoftplus, 3, 1.f}, ids, t32, w, idx); },
              {"moe_hash_route", "token id 50 at position 4", "[0, 50)"});
  ids.host_span<std::int64_t>()[4] = -1;
  check_error([&] { ops::moe_hash_route(logits, {ops::score_func::sqrtsoftplus, 3, 1.f}, ids, t32, w, idx); },
              {"token id -1"});
  ids.host_span<std::int64_t>()[4] = 17;
  t32.host_span<std::int32_t>()[17 * 3 + 1] = 16;
  check_error([&] { ops::moe_hash_route(logits, {ops::score_func::sqrtsoftplus, 3, 1.f}, ids, t32, w, idx); },
              {"tid2eid[17][1] = 16", "[0, 16)"});
}

TEST_CASE("SwiGLU clamp asymmetry: up clamped to [-L, L], gate only from above") {
  // D = I = 4, x = e_0, so column 0 of w1/w3 sets (gate, up) per inter unit and w2 = identity reads h back.
  std::vector<float> w1(16, 0.f), w3(16, 0.f), eye(16, 0.f);
  const float gate[4] = {50.f, -50.f, 3.f, 50.f}, up[4] = {50.f, 50.f, -50.f, 0.5f};
  for (int i = 0; i < 4; ++i) {
    w1[i * 4] = gate[i];
    w3[i * 4] = up[i];
    eye[i * 5] = 1.f;
  }
  const buffer W1 = f32_buf({4, 4}, w1), W3 = f32_buf({4, 4}, w3), W2 = f32_buf({4, 4}, eye);
  const buffer x = f32_buf({1, 4}, {1.f, 0.f, 0.f, 0.f});
  const buffer w = f32_buf({1, 1}, {0.5f});
  buffer idx(dtype::i32, {1, 1});
  idx.host_span<std::int32_t>()[0] = 0;
  const ops::ffn_weights f{{W1.view(), {}}, {W2.view(), {}}, {W3.view(), {}}};
  auto silu = [](double g) { return g / (1 + std::exp(-g)); };
  for (backend be : host_backends()) {
    buffer y(dtype::f32, {1, 4});
    ops::moe_ffn(x, w, idx, std::span(&f, 1), nullptr, 10.f, y, on(be));
    const auto v = y.host_span<float>();
    CHECK(v[0] == doctest::Approx(0.5 * silu(10) * 10).epsilon(1e-6));
    // gate -50 is NOT clamped up to -10: silu(-50)·10·0.5 ≈ -4.8e-21, where a symmetric clamp would give -2.3e-3
    CHECK(v[1] < 0.f);
    CHECK(std::fabs(v[1]) < 1e-19);
    CHECK(v[2] == doctest::Approx(0.5 * silu(3) * -10).epsilon(1e-6));
    CHECK(v[3] == doctest::Approx(0.5 * silu(10) * 0.5).epsilon(1e-6));
    // L = 0: no clamp at all (V3 behaviour)
    ops::moe_ffn(x, w, idx, std::span(&f, 1), nullptr, 0.f, y, on(be));
    CHECK(v[0] == doctest::Approx(0.5 * silu(50) * 50).epsilon(1e-6));
  }
}

TEST_CASE("routed outputs are summed in ascending expert order, then the shared expert") {
  // Experts 0, 1, 2 output 1e8·h, h, -1e8·h (h = silu(1)). The router's slot order is (0, 2, 1): summing in slot
  // order gives (1e8h - 1e8h) + h = h; ascending expert order gives (1e8h + h) - 1e8h = 0 in fp32 (h < ulp/2).
  const buffer one = f32_buf({1, 1}, {1.f}), a = f32_buf({1, 1}, {1e8f}), c = f32_buf({1, 1}, {-1e8f});
  const ops::ffn_weights e[3] = {{{one.view(), {}}, {a.view(), {}}, {one.view(), {}}},
                                 {{one.view(), {}}, {one.view(), {}}, {one.view(), {}}},
                                 {{one.view(), {}}, {c.view(), {}}, {one.view(), {}}}};
  buffer idx(dtype::i32, {1, 3});
  const std::int32_t slots[3] = {0, 2, 1};
  std::copy(slots, slots + 3, idx.host_span<std::int32_t>().begin());
  const buffer w = f32_buf({1, 3}, {1.f, 1.f, 1.f});
  for (backend be : host_backends()) {
    buffer y(dtype::f32, {1, 1});
    ops::moe_ffn(one, w, idx, std::span(e, 3), nullptr, 10.f, y, on(be));
    CHECK(y.host_span<float>()[0] == 0.f);
    // the shared expert comes after the routed sum: 0 + h
    ops::moe_ffn(one, w, idx, std::span(e, 3), &e[1], 10.f, y, on(be));
    CHECK(y.host_span<float>()[0] == doctest::Approx(1 / (1 + std::exp(-1.0))).epsilon(1e-6));
  }
}

TEST_CASE("FP4 routed + FP8 shared experts: cpu equals ref; cpu rows independent of batch and threads") {
  // 21 tokens: ~8 per expert, one expert per thread; 150 tokens: ~56 per expert, most past 48 (kGemvMaxTokensFp4:
  // run on every thread one after another), the rest one per thread
  for (const std::int64_t T : {21, 150}) {
  CAPTURE(T);
  const std::int64_t D = 64, I = 96, E = 8;
  const int k = 3;
  const expert_set experts(D, I, E, 100, 1);
  const std::vector<ops::ffn_weights>& routed = experts.routed;
  const ops::ffn_weights& shared = experts.shared;
  const buffer x = host_bf16(T, D, randn(T * D, 7));
  const buffer logits = f32_buf({T, E}, randn(T * E, 8));
  const auto r = route(logits, {ops::score_func::sqrtsoftplus, k, 1.5f}, tensor_view(), backend::ref);
  std::vector<int> per_expert(E, 0);
  for (std::int32_t e : r.idx.host_span<std::int32_t>()) ++per_expert[static_cast<std::size_t>(e)];
  if (T == 150) {  // both CPU schedules are exercised
    constexpr std::int64_t solo = cpu::kGemvMaxTokensFp4;  // the CPU MoE's one-expert-per-thread bound
    CHECK(std::ranges::any_of(per_expert, [](int n) { return n > solo; }));
    CHECK(std::ranges::any_of(per_expert, [](int n) { return n > 0 && n <= solo; }));
  }
  buffer yr(dtype::f32, {T, D});
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, yr, on(backend::ref));
  // the outputs are O(1): a regression to all-zero outputs would not pass the ref-vs-cpu check unnoticed
  double mean_abs = 0;
  for (float v : yr.host_span<float>()) mean_abs += std::fabs(v) / double(T * D);
  CHECK(mean_abs > 0.05);
  if (!cpu::simd_isa()) return;
  buffer y1(dtype::f32, {T, D}), y2(dtype::f32, {T, D});
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, y1, on(backend::cpu, 1));
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, y2, on(backend::cpu, 2));
  CHECK(bytes_of(y1) == bytes_of(y2));
  // fp32 policy: each dot re-associated (K <= 96) on two chained GEMMs; 1e-5 relative to the output scale covers
  // it with margin (measured max about 1e-6)
  for (std::int64_t i = 0; i < T * D; ++i)
    REQUIRE(std::fabs(y1.host_span<float>()[i] - yr.host_span<float>()[i]) <= 1e-5 * (1 + mean_abs));
  for (std::int64_t t : {std::int64_t{0}, std::int64_t{9}, T - 1}) {  // one token at a time: the batch's bits
    buffer y(dtype::f32, {1, D});
    ops::moe_ffn(x.view().narrow(0, t, 1), r.w.view().narrow(0, t, 1), r.idx.view().narrow(0, t, 1), routed,
                 &shared, 10.f, y, on(backend::cpu));
    for (std::int64_t d = 0; d < D; ++d)
      REQUIRE(f32_to_bits(y.host_span<float>()[d]) == f32_to_bits(y1.host_span<float>()[t * D + d]));
  }
  }
}

TEST_CASE("numerics official: cpu within BF16 steps of ref; cpu rows independent of batch and threads") {
  const std::int64_t D = 128, I = 96, E = 8, T = 40;  // T > 32 for the shared expert: both official GEMM schemes
  const int k = 3;
  const expert_set experts(D, I, E, 400, 4);
  const std::vector<ops::ffn_weights>& routed = experts.routed;
  const ops::ffn_weights& shared = experts.shared;
  const buffer x = host_bf16(T, D, randn(T * D, 9));
  const buffer logits = f32_buf({T, E}, randn(T * E, 10));
  const auto r = route(logits, {ops::score_func::sqrtsoftplus, k, 1.5f}, tensor_view(), backend::ref);
  buffer yr(dtype::f32, {T, D});
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, yr, on(backend::ref), numerics::official);
  double mean_abs = 0;
  for (float v : yr.host_span<float>()) {
    CHECK(v == round_bf16(v));
    mean_abs += std::fabs(v) / double(T * D);
  }
  CHECK(mean_abs > 0.05);
  if (!cpu::simd_isa()) return;
  buffer y1(dtype::f32, {T, D}), y2(dtype::f32, {T, D});
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, y1, on(backend::cpu, 1), numerics::official);
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, y2, on(backend::cpu, 2), numerics::official);
  CHECK(bytes_of(y1) == bytes_of(y2));
  // cpu vs ref: the same rounding points; the cpu's fp32 block sums (FP8 shared expert, K = 128) can move an expert
  // output by one BF16 step (2^-8 relative), which the sum of 4 experts and the final BF16 keep within a few steps of
  // the output scale. Counted: most outputs are bitwise equal.
  std::int64_t same = 0;
  for (std::int64_t i = 0; i < T * D; ++i) {
    const float a = y1.host_span<float>()[i], b = yr.host_span<float>()[i];
    same += a == b;
    REQUIRE(std::fabs(a - b) <= 4 * std::ldexp(std::fabs(b) + mean_abs, -8));
  }
  MESSAGE("official MoE: ", same, " of ", T * D, " outputs bitwise equal to ref");
  CHECK(same >= T * D * 9 / 10);
  for (std::int64_t t : {0, 17, 39}) {  // one token at a time (token-lane GEMMs): the same bits as in the batch
    buffer y(dtype::f32, {1, D});
    ops::moe_ffn(x.view().narrow(0, t, 1), r.w.view().narrow(0, t, 1), r.idx.view().narrow(0, t, 1), routed,
                 &shared, 10.f, y, on(backend::cpu), numerics::official);
    for (std::int64_t d = 0; d < D; ++d)
      REQUIRE(f32_to_bits(y.host_span<float>()[d]) == f32_to_bits(y1.host_span<float>()[t * D + d]));
  }
}

TEST_CASE("numerics official, more tokens than one chunk (1024): rows across the chunk boundary equal their runs alone") {
  if (!cpu::simd_isa()) return;
  const std::int64_t D = 64, I = 32, E = 4, T = 1100;
  const int k = 2;
  const expert_set experts(D, I, E, 700, 11);
  const std::vector<ops::ffn_weights>& routed = experts.routed;
  const ops::ffn_weights& shared = experts.shared;
  const buffer x = host_bf16(T, D, randn(T * D, 14));
  const buffer logits = f32_buf({T, E}, randn(T * E, 15));
  const auto r = route(logits, {ops::score_func::sqrtsoftplus, k, 1.5f}, tensor_view(), backend::ref);
  buffer y(dtype::f32, {T, D});
  ops::moe_ffn(x, r.w, r.idx, routed, &shared, 10.f, y, on(backend::cpu), numerics::official);
  for (std::int64_t t : {0, 1023, 1024, 1099}) {
    buffer one(dtype::f32, {1, D});
    ops::moe_ffn(x.view().narrow(0, t, 1), r.w.view().narrow(0, t, 1), r.idx.view().narrow(0, t, 1), routed,
                 &shared, 10.f, one, on(backend::cpu), numerics::official);
    for (std::int64_t d = 0; d < D; ++d)
      REQUIRE(f32_to_bits(one.host_span<float>()[d]) == f32_to_bits(y.host_span<float>()[t * D + d]));
  }
}

TEST_CASE("errors: bad expert ids, non-finite logits and weights, topk, scoring names") {
  const buffer logits = f32_buf({2, 4}, {0.f, 1.f, 2.f, 3.f, 0.f, NAN, 1.f, 1.f});
  buffer w(dtype::f32, {2, 2}), idx(dtype::i32, {2, 2});
  check_error([&] { ops::moe_route(logits, {ops::score_func::sigmoid, 2, 1.f}, tensor_view(), w, idx); },
              {"moe_route", "1 non-finite"});
  const buffer ok = f32_buf({2, 4}, {0.f, 1.f, 2.f, 3.f, 0.f, 1.f, 1.f, 1.f});
  buffer w5(dtype::f32, {2, 5}), idx5(dtype::i32, {2, 5});
  check_error([&] { ops::moe_route(ok, {ops::score_func::sigmoid, 5, 1.f}, tensor_view(), w5, idx5); },
              {"topk 5 must be in [1, E = 4]"});
  const buffer bias = f32_buf({3}, {0.f, 0.f, 0.f});
  check_error([&] { ops::moe_route(ok, {ops::score_func::sigmoid, 2, 1.f}, bias, w, idx); },
              {"bias f32[3]", "expected f32[4]"});
  check_error([&] { ops::parse_score_func("relu"); }, {"unknown scoring function \"relu\"", "sqrtsoftplus"});
  CHECK(ops::parse_score_func("sqrtsoftplus") == ops::score_func::sqrtsoftplus);
  const buffer one = f32_buf({1, 1}, {1.f});
  const ops::ffn_weights e{{one.view(), {}}, {one.view(), {}}, {one.view(), {}}};
  buffer i1(dtype::i32, {1, 1});
  i1.host_span<std::int32_t>()[0] = 1;
  buffer y(dtype::f32, {1, 1});
  check_error([&] { ops::moe_ffn(one, one, i1, std::span(&e, 1), nullptr, 10.f, y); },
              {"moe_ffn", "experts[0, 0] = 1", "[0, 1)"});
  i1.host_span<std::int32_t>()[0] = 0;
  const buffer inf = f32_buf({1, 1}, {INFINITY});
  check_error([&] { ops::moe_ffn(one, inf, i1, std::span(&e, 1), nullptr, 10.f, y); }, {"weights[0, 0]"});
  const buffer wide = f32_buf({1, 2}, {1.f, 1.f});
  const ops::ffn_weights bad{{wide.view(), {}}, {one.view(), {}}, {one.view(), {}}};
  check_error([&] { ops::moe_ffn(one, one, i1, std::span(&bad, 1), nullptr, 10.f, y); },
              {"routed w1[0]", "expected [N, 1]"});
  check_error([&] { ops::moe_ffn(one, one, i1, std::span(&e, 1), nullptr, -1.f, y); }, {"swiglu_limit"});
}

}  // TEST_SUITE
