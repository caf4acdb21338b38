// The whole forward pass on the GPU (weights uploaded once, pages in device memory, every op on its CUDA backend)
// against the CPU forward on the same checkpoint, and the CUDA forward's own invariants bitwise: prefill == chunked
// prefill == token-by-token decode, a sequence alone == inside a batch, rollback == never having seen the rejected
// tokens, 20 runs identical; the step under deferred checks, and recorded as a CUDA graph and replayed with new lengths
// and tables, bitwise the eager step. Also the row-wise ops it is built from (RMSNorm, RoPE, embed, scale, the non-finite
// count, hc_expand) against their host backends.
#include <cmath>
#include <cstring>
#include <random>

#include "cuda_harness.hpp"
#include "model_harness.hpp"
#include "dsv4/graph.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/rowwise.hpp"

using namespace dsv4;
using namespace dsv4::test;
using namespace dsv4::model;

namespace {

// An f32 buffer's values on the host (read back from the device, or copied).
std::vector<float> floats(const buffer& b) {
  const buffer h = to_host(b);
  const auto s = h.host_span<float>();
  return {s.begin(), s.end()};
}

buffer buffer_of_i64(const std::vector<std::int64_t>& v) {
  buffer b(dtype::i64, {static_cast<std::int64_t>(v.size())});
  std::memcpy(b.data(), v.data(), v.size() * sizeof(std::int64_t));
  return b;
}

// max over i of |a - b| / (1 + |b|)
double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]) / (1 + std::fabs(double(b[i]))));
  return m;
}

// A synthetic checkpoint bound on the host (m.w) and uploaded to the GPU (dev).
struct gpu_model : loaded {
  device_weights dev;
  gpu_model(const std::string& tag, const model_config& c) : loaded(tag, c), dev(upload_weights(w, kGpu)) {}
};

// Logits of every position, the prompt fed in calls of `chunk` tokens (host logits views).
std::vector<float> run(const transformer& tf, const std::vector<std::int64_t>& ids, std::int64_t chunk) {
  const std::int64_t V = tf.config().vocab_size, n = static_cast<std::int64_t>(ids.size());
  sequence_state s = tf.new_sequence();
  std::vector<float> out(static_cast<std::size_t>(n * V));
  for (std::int64_t t0 = 0; t0 < n; t0 += chunk) {
    const std::int64_t c = std::min(chunk, n - t0);
    tf.forward(std::span<const std::int64_t>(ids.data() + t0, static_cast<std::size_t>(c)), s,
               tensor_view(out.data() + t0 * V, dtype::f32, {c, V}));
  }
  return out;
}

}  // namespace

TEST_SUITE("cuda") {
  TEST_CASE("row-wise ops on the GPU: RMSNorm and RoPE within fp32 rounding of the host, the rest bitwise") {
    const std::int64_t T = 37, H = 5, hd = 128, n = 1536;
    const std::vector<float> xv = randn(static_cast<std::size_t>(T * n), 41, 4.f), wv = randn(n, 42);
    const buffer x = host_f32(T, n, xv), w = host_f32(1, n, wv);
    const buffer xd = clone_to(x, kGpu), wd = clone_to(w, kGpu);
    const tensor_view w1(w.data(), dtype::f32, {n}), w1d(wd.data(), dtype::f32, {n}, kGpu);
    // RMSNorm: the sum of squares in double on both sides; r = fp32(1/sqrt(...)) may differ in its last bit next to
    // a rounding boundary, then two fp32 products: within 3 ulp (4e-7 relative) of the host.
    buffer yh(dtype::f32, {T, n}), yd(dtype::f32, {T, n}, kGpu);
    ops::rms_norm(x, w1, 1e-6, yh);
    ops::rms_norm(xd, w1d, 1e-6, yd);
    const double e_norm = max_rel(floats(yd), floats(yh));
    MESSAGE("rms_norm GPU vs host: max relative difference ", e_norm);
    CHECK(e_norm < 4e-7);
    // per head, no weight, in place ([T, H, hd] view)
    buffer qh = host_f32(T, H * hd, randn(static_cast<std::size_t>(T * H * hd), 43, 2.f));
    buffer qd = clone_to(qh, kGpu);
    const tensor_view qh3(qh.data(), dtype::f32, {T, H, hd}), qd3(qd.data(), dtype::f32, {T, H, hd}, kGpu);
    ops::rms_norm(qh3, tensor_view(), 1e-6, qh3);
    ops::rms_norm(qd3, tensor_view(), 1e-6, qd3);
    CHECK(max_rel(floats(qd), floats(qh)) < 4e-7);
    // RoPE on the last 64 dims of each head at positions up to 2^20 (V4's YaRN frequencies would do as well): the
    // device's sin / cos (double reduction and series) and the C library's are each within an ulp of the truth.
    std::vector<float> fv(32);
    for (int i = 0; i < 32; ++i) fv[i] = 1.f / std::pow(160000.f, 2.f * i / 64.f);
    std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) pos[t] = t * 28411 % (1 << 20);
    const buffer ph(dtype::i64, {T}), fh = host_f32(1, 32, fv);
    std::memcpy(ph.data(), pos.data(), pos.size() * sizeof(std::int64_t));
    const buffer pd = clone_to(ph, kGpu), fd = clone_to(fh, kGpu);
    const tensor_view f1(fh.data(), dtype::f32, {32}), f1d(fd.data(), dtype::f32, {32}, kGpu);
    for (const bool inverse : {false, true}) {
      ops::rope(qh3, ph, f1, hd - 64, inverse);
      ops::rope(qd3, pd, f1d, hd - 64, inverse);
      const double e_rope = max_rel(floats(qd), floats(qh));
      MESSAGE("rope (inverse ", inverse, ") GPU vs host after the norm: max relative difference ", e_rope);
      CHECK(e_rope < 1e-6);
    }
    // embed (f32 and bf16 tables), scale, count, hc_expand: bitwise
    const std::int64_t V = 50, D = 96;
    const std::vector<float> tv = randn(static_cast<std::size_t>(V * D), 44);
    const buffer tables[2] = {host_f32(V, D, tv), host_bf16(V, D, tv)};
    for (const buffer& table : tables) {
      std::vector<std::int64_t> ids = {49, 0, 7, 7, 13};
      const tensor_view iv(ids.data(), dtype::i64, {5});
      const buffer idd = clone_to(buffer_of_i64(ids), kGpu), td = clone_to(table, kGpu);
      buffer eh(dtype::f32, {5, D}), ed(dtype::f32, {5, D}, kGpu);
      ops::embed(iv, table, eh);
      ops::embed(idd, td, ed);
      CHECK(same_bits(floats(ed), floats(eh)));
      buffer xh(dtype::f32, {5, 4, D}), xd2(dtype::f32, {5, 4, D}, kGpu);
      ops::hc_expand(eh, xh);
      ops::hc_expand(ed, xd2);
      CHECK(same_bits(floats(xd2), floats(xh)));
      ops::scale(eh, 0.3f);
      ops::scale(ed, 0.3f);
      CHECK(same_bits(floats(ed), floats(eh)));
      // a bad id: the sync policy throws, deferred sets the index bit and writes a zero row
      ids[2] = 50;
      const buffer bad = clone_to(buffer_of_i64(ids), kGpu);
      check_error([&] { ops::embed(bad, td, ed); }, {"embed", "outside the vocabulary"});
      stream_and_status ss;
      ops::embed(bad, td, ed, ss.deferred());
      CHECK((ss.word() & status_index_oob) != 0);
    }
    buffer nf = host_f32(3, 3, {1, NAN, 3, INFINITY, 0, -INFINITY, 2, 2, 2});
    const buffer nfd = clone_to(nf, kGpu);
    CHECK(ops::count_non_finite(nfd) == 3);
    stream_and_status ss;
    CHECK(ops::count_non_finite(nfd, ss.deferred()) == 0);
    CHECK((ss.word() & status_nonfinite_input) != 0);
    CHECK(ops::count_non_finite(xd) == 0);
  }

  TEST_CASE("the whole forward pass on the GPU: the CPU's logits within fp32 rounding; chunking, batching, rollback "
            "and repeated runs bitwise") {
    // small (the demo shape, head_dim 128): window 32, top-k 16, ratios [0, 4, 128, 4, 128, 4]; 300 tokens -> 75
    // CSA entries (top-k selective) and 2 HCA entries per compressed layer
    const gpu_model m("cuda_fwd", preset("small"));
    const transformer cpu(m.cfg, m.w), gpu(m.cfg, m.dev.weights);
    CHECK(gpu.pool()->options().dev == kGpu);
    const std::int64_t V = m.cfg.vocab_size;
    const std::vector<std::int64_t> ids = tokens(300, V, 7);
    const std::vector<float> ref = run(cpu, ids, 300), full = run(gpu, ids, 300);
    // The GPU sums in other orders than the CPU (fp32 warp trees vs SIMD lanes, double vs fp32 partials), so the
    // logits agree to fp32 rounding carried through 4 layers, the bound the CPU holds against the scalar ref.
    const double e = rel_l2(full, ref);
    MESSAGE("whole-model logits, GPU vs CPU: relative L2 ", e, ", max relative ", max_rel(full, ref));
    CHECK(e < 1e-4);
    // chunk invariance: prompt in one call, in chunks of 7, token by token
    CHECK(same_bits(run(gpu, ids, 7), full));
    CHECK(same_bits(run(gpu, ids, 1), full));
    // a prompt of exactly 4 tokens (the first ratio-4 boundary), then decode
    {
      const std::vector<std::int64_t> four(ids.begin(), ids.begin() + 6);
      CHECK(same_bits(run(gpu, four, 4), std::vector<float>(full.begin(), full.begin() + 6 * V)));
    }
    // batch: two sequences at different positions in one call == each alone
    {
      const std::vector<std::int64_t> other = tokens(40, V, 8);
      const std::vector<float> alone = run(gpu, other, 40);
      auto pool = gpu.make_pool();
      sequence_state a = gpu.new_sequence(pool), b = gpu.new_sequence(pool);
      std::vector<float> la(static_cast<std::size_t>(300 * V)), lb(static_cast<std::size_t>(40 * V));
      gpu.forward(std::span<const std::int64_t>(ids.data(), 260), a, tensor_view(la.data(), dtype::f32, {260, V}));
      const transformer::batch_entry e2[2] = {
          {std::span<const std::int64_t>(ids.data() + 260, 40), &a, tensor_view(la.data() + 260 * V, dtype::f32, {40, V}), {}},
          {std::span<const std::int64_t>(other.data(), 40), &b, tensor_view(lb.data(), dtype::f32, {40, V}), {}}};
      gpu.forward_batch(e2);
      CHECK(same_bits(la, full));
      CHECK(same_bits(lb, alone));
    }
    // rollback: 10 rejected tokens across the 128 boundary, truncated, then the true continuation
    {
      sequence_state s = gpu.new_sequence();
      std::vector<float> l(static_cast<std::size_t>(300 * V)), junk(static_cast<std::size_t>(10 * V));
      gpu.forward(std::span<const std::int64_t>(ids.data(), 124), s, tensor_view(l.data(), dtype::f32, {124, V}));
      const std::vector<std::int64_t> wrong = tokens(10, V, 9);
      gpu.forward(wrong, s, tensor_view(junk.data(), dtype::f32, {10, V}));
      s.truncate(124);
      gpu.forward(std::span<const std::int64_t>(ids.data() + 124, 176), s,
                  tensor_view(l.data() + 124 * V, dtype::f32, {176, V}));
      CHECK(same_bits(l, full));
    }
    // 20 runs of a 40-token prompt: identical
    {
      const std::vector<std::int64_t> p(ids.begin(), ids.begin() + 40);
      const std::vector<float> first = run(gpu, p, 40);
      int differ = 0;
      for (int i = 0; i < 19; ++i) differ += !same_bits(run(gpu, p, 40), first);
      CHECK(differ == 0);
    }
    // logits into a device view: the same bits
    {
      sequence_state s = gpu.new_sequence();
      buffer ld(dtype::f32, {300, V}, kGpu);
      gpu.forward(ids, s, ld);
      CHECK(same_bits(floats(ld), full));
    }
  }

  TEST_CASE("a whole decode step recorded as a CUDA graph and replayed step after step (new lengths, block tables and "
            "slot lists each time): bitwise the eager logits; the deferred eager step too") {
    const gpu_model m("cuda_graph", preset("small"));
    const std::int64_t V = m.cfg.vocab_size;
    const transformer eager(m.cfg, m.dev.weights);
    const std::vector<std::int64_t> ids = tokens(200, V, 11), other = tokens(200, V, 12);
    const std::vector<float> ref = run(eager, ids, 200), ref_other = run(eager, other, 200);
    stream_and_status ss;
    const transformer deferred(m.cfg, m.dev.weights, ss.deferred());
    // eager under check_policy::deferred (no wait inside the step, one at its end): the same bits
    CHECK(same_bits(run(deferred, ids, 200), ref));
    CHECK(same_bits(run(deferred, ids, 9), ref));
    // a prompt of 150 tokens (eager), then 50 decode steps of two sequences through the graph runner, one of them
    // rolled back once on the way
    auto pool = deferred.make_pool();
    sequence_state a = deferred.new_sequence(pool), b = deferred.new_sequence(pool);
    deferred.forward(std::span<const std::int64_t>(ids.data(), 150), a, tensor_view());
    deferred.forward(std::span<const std::int64_t>(other.data(), 150), b, tensor_view());
    graph_runner g(deferred);
    buffer la(dtype::f32, {1, V}, kGpu), lb(dtype::f32, {1, V}, kGpu);
    std::int64_t rows_differ = 0;
    const std::vector<std::int64_t> junk = tokens(3, V, 13);
    for (std::int64_t t = 150; t < 200; ++t) {
      if (t == 170) {  // three rejected draft tokens for a, then the rollback
        for (std::int64_t j : junk) {
          const transformer::batch_entry e[1] = {{std::span<const std::int64_t>(&j, 1), &a, la.view(), {}}};
          g.step(e);
        }
        a.truncate(170);
      }
      const transformer::batch_entry e[2] = {
          {std::span<const std::int64_t>(ids.data() + t, 1), &a, la.view(), {}},
          {std::span<const std::int64_t>(other.data() + t, 1), &b, lb.view(), {}}};
      g.step(e);
      const std::vector<float> ga = floats(la), gb = floats(lb);
      rows_differ += !same_bits(ga, std::vector<float>(ref.begin() + t * V, ref.begin() + (t + 1) * V));
      rows_differ += !same_bits(gb, std::vector<float>(ref_other.begin() + t * V, ref_other.begin() + (t + 1) * V));
    }
    CHECK(rows_differ == 0);
    MESSAGE("graph runner: ", g.instantiations(), " instantiations, ", g.updates(), " in-place updates over 53 steps");
    CHECK(g.updates() > 0);
    CHECK(ss.word() == 0);
    // a step that cannot be recorded: host logits
    std::vector<float> host(static_cast<std::size_t>(V));
    const std::int64_t one = 1;
    const transformer::batch_entry bad[1] = {{std::span<const std::int64_t>(&one, 1), &a,
                                              tensor_view(host.data(), dtype::f32, {1, V}), {}}};
    check_error([&] { g.step(bad); }, {"device views only"});
  }

  TEST_CASE("the GPU forward pass refuses what it does not run: official numerics, no checks, mixed devices") {
    const gpu_model m("cuda_fwd_err", preset("small"));
    {  // tiny's head_dim 96 is not a shape of the CUDA sparse attention: refused when the transformer is made
      const gpu_model t("cuda_fwd_tiny", preset("tiny"));
      check_error([&] { transformer tf(t.cfg, t.dev.weights); }, {"head_dim 128, 256 or 512", "tiny has 96"});
    }
    check_error([&] { transformer t(m.cfg, m.dev.weights, {}, {}, numerics::official); }, {"official", "CUDA"});
    exec d;
    d.checks = check_policy::none;
    check_error([&] { transformer t(m.cfg, m.dev.weights, d); }, {"check_policy::sync or deferred"});
    const transformer sync(m.cfg, m.dev.weights);
    check_error([&] { graph_runner g(sync); }, {"check_policy::deferred"});
    // dsv4::device_stream: an owned stream and status word; its deferred step gives the sync step's bits
    device_stream ds(0);
    const transformer on_ds(m.cfg, m.dev.weights, ds.deferred());
    sequence_state s2 = on_ds.new_sequence();
    const std::vector<std::int64_t> few = {3, 1, 4, 1, 5};
    std::vector<float> l(static_cast<std::size_t>(5 * m.cfg.vocab_size));
    on_ds.forward(few, s2, tensor_view(l.data(), dtype::f32, {5, m.cfg.vocab_size}));
    sequence_state s3 = sync.new_sequence();
    std::vector<float> l2(l.size());
    sync.forward(few, s3, tensor_view(l2.data(), dtype::f32, {5, m.cfg.vocab_size}));
    CHECK(same_bits(l, l2));
    const transformer gpu(m.cfg, m.dev.weights), cpu(m.cfg, m.w);
    sequence_state s = cpu.new_sequence();  // a host pool
    const std::vector<std::int64_t> ids = {1, 2, 3};
    check_error([&] { gpu.forward(ids, s, tensor_view()); }, {"page pool", "live on cpu"});
  }
}
