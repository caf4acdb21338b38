// src/cpu/moe_official.cpp — CPU backend of the `official` MoE FFN (semantics: src/ops/moe.cpp moe_official and
// official-numerics.md §1 X1-X5): the same per-token arithmetic as the reference driver, scheduled for two cores.
//
// Experts run in parallel, each on one worker with single-threaded official linears (a prefill expert sees ~12
// tokens: splitting its GEMMs across cores costs more in synchronisation than it gains, and the token-lane kernel of
// linear_official needs no cross-thread work). Each routed (token, slot) output row lands in its own slot of a
// [T·k, D] buffer; then every token adds its rows in ascending expert id (slot order among equal ids), then the shared
// expert's row (run with all threads: it sees every token), and rounds to BF16. A token's result therefore does not
// depend on the batch, on the schedule or on the thread count, and equals the reference driver's whenever the linears
// do.
#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "dsv4/cpu/linear.hpp"
#include "dsv4/cpu/moe.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ref/official.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {

namespace {

// One expert (ref::official::expert) through the CPU's promoted linear.
std::int64_t run_expert(const ref::ffn_ref& f, const float* xs, std::int64_t n, std::int64_t D, const float* weight,
                        float limit, float* out, std::vector<float>& g, std::vector<float>& u, const exec& ex) {
  return ref::official::expert(
      [&](const float* x, std::int64_t rows, std::int64_t ldx, const ref::weight_ref& w, float* y, std::int64_t ldy) {
        return linear_official_f32(x, rows, ldx, w, y, ldy, ex);
      },
      f, xs, n, D, weight, limit, out, g, u);
}

// One chunk of tokens (all of moe_ffn_official's work; see there).
std::int64_t moe_chunk(const float* x, std::int64_t T, std::int64_t D, view<const float, 2> w,
                       view<const std::int32_t, 2> idx, const std::vector<ref::ffn_ref>& routed,
                       const ref::ffn_ref* shared, float limit, float* y, const exec& ex) {
  const std::int64_t k = idx.size(1), E = static_cast<std::int64_t>(routed.size());
  // Slots per expert (token order, then slot order), by counting sort.
  std::vector<std::int64_t> start(static_cast<std::size_t>(E + 1), 0), slots(static_cast<std::size_t>(T * k));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t i = 0; i < k; ++i) ++start[static_cast<std::size_t>(idx(t, i) + 1)];
  std::partial_sum(start.begin(), start.end(), start.begin());
  {
    std::vector<std::int64_t> at(start.begin(), start.end() - 1);
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t i = 0; i < k; ++i) slots[static_cast<std::size_t>(at[static_cast<std::size_t>(idx(t, i))]++)] = t * k + i;
  }
  std::vector<std::int64_t> used;
  for (std::int64_t e = 0; e < E; ++e)
    if (start[static_cast<std::size_t>(e + 1)] > start[static_cast<std::size_t>(e)]) used.push_back(e);
  // Largest experts first, so the two workers finish together.
  std::stable_sort(used.begin(), used.end(), [&](std::int64_t a, std::int64_t b) {
    return start[static_cast<std::size_t>(a + 1)] - start[static_cast<std::size_t>(a)] >
           start[static_cast<std::size_t>(b + 1)] - start[static_cast<std::size_t>(b)];
  });
  // Routed output of slot t·k + i, kept as BF16 (exact: official expert outputs are BF16 values; half the memory).
  std::vector<bf16> rows(static_cast<std::size_t>(T * k * D));
  std::atomic<std::int64_t> bad{0};
  exec one = ex;
  one.threads = 1;
  detail::parallel_rows(static_cast<std::int64_t>(used.size()), 1, ex, [&](std::int64_t u0, std::int64_t u1) {
    thread_local std::vector<float> xs, wt, out, g, u;
    for (std::int64_t ui = u0; ui < u1; ++ui) {
      const std::int64_t e = used[static_cast<std::size_t>(ui)];
      const std::int64_t s0 = start[static_cast<std::size_t>(e)], n = start[static_cast<std::size_t>(e + 1)] - s0;
      xs.resize(static_cast<std::size_t>(n * D));
      wt.resize(static_cast<std::size_t>(n));
      out.resize(static_cast<std::size_t>(n * D));
      for (std::int64_t r = 0; r < n; ++r) {
        const std::int64_t slot = slots[static_cast<std::size_t>(s0 + r)], t = slot / k;
        std::copy(x + t * D, x + (t + 1) * D, xs.begin() + r * D);
        wt[static_cast<std::size_t>(r)] = w(t, slot % k);
      }
      if (const std::int64_t b = run_expert(routed[static_cast<std::size_t>(e)], xs.data(), n, D, wt.data(), limit,
                                            out.data(), g, u, one))
        bad += b;
      for (std::int64_t r = 0; r < n; ++r) {
        bf16* dst = rows.data() + slots[static_cast<std::size_t>(s0 + r)] * D;
        for (std::int64_t d = 0; d < D; ++d) dst[d] = bf16::from_float(out[static_cast<std::size_t>(r * D + d)]);
      }
    }
  });
  std::vector<float> sh;
  if (shared) {
    sh.resize(static_cast<std::size_t>(T * D));
    std::vector<float> ones(static_cast<std::size_t>(T), 1.f), g, u;
    bad += run_expert(*shared, x, T, D, ones.data(), limit, sh.data(), g, u, ex);
  }
  // Combine per token: ascending expert id (slot order among equals), then the shared expert; BF16.
  detail::parallel_rows(T, 8, ex, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<int> order(static_cast<std::size_t>(k));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(k));
    for (std::int64_t t = t0; t < t1; ++t) {
      for (std::int64_t i = 0; i < k; ++i) ids[static_cast<std::size_t>(i)] = idx(t, i);
      ref::slot_order(ids.data(), static_cast<int>(k), order.data());  // ref::moe_ffn's order
      float* yt = y + t * D;
      std::fill(yt, yt + D, 0.f);
      for (int i : order) {
        const bf16* r = rows.data() + (t * k + i) * D;
        for (std::int64_t d = 0; d < D; ++d) yt[d] += r[d].to_float();
      }
      if (shared)
        for (std::int64_t d = 0; d < D; ++d) yt[d] += sh[static_cast<std::size_t>(t * D + d)];
      round_bf16(yt, D);
    }
  });
  return bad.load();
}

}  // namespace

// Tokens in chunks of kMoeChunk: every token's arithmetic is its own, so chunking changes no bit; it bounds the
// per-slot buffer (1024 tokens x 6 slots x 7168 dims of BF16: 88 MB for V4-Pro) whatever T an engine passes.
std::int64_t moe_ffn_official(const float* x, std::int64_t T, std::int64_t D, view<const float, 2> w,
                              view<const std::int32_t, 2> idx, const std::vector<ref::ffn_ref>& routed,
                              const ref::ffn_ref* shared, float limit, float* y, const exec& ex) {
  constexpr std::int64_t kMoeChunk = 1024;
  std::int64_t bad = 0;
  for (std::int64_t t0 = 0; t0 < T; t0 += kMoeChunk) {
    const std::int64_t n = std::min(kMoeChunk, T - t0);
    const view<const float, 2> wc{w.data + t0 * w.stride[0], {n, w.size(1)}, {w.stride[0], w.stride[1]}};
    const view<const std::int32_t, 2> ic{idx.data + t0 * idx.stride[0], {n, idx.size(1)}, {idx.stride[0], idx.stride[1]}};
    bad += moe_chunk(x + t0 * D, n, D, wc, ic, routed, shared, limit, y + t0 * D, ex);
  }
  return bad;
}

}  // namespace dsv4::cpu
