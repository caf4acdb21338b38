// transformer: embed -> expand -> blocks (mHC, attention, MoE) -> hc_head -> norm -> head, for one sequence.
#include "dsv4/model/forward.hpp"

#include <chrono>
#include <cmath>
#include <cstring>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "common.hpp"

namespace dsv4::model {

namespace {

constexpr const char* kOp = "forward";

// Rows of x [T, D] through RMSNorm with weight w.
void rms_norm_rows(float* x, std::int64_t T, std::int64_t D, const std::vector<float>& w, double eps) {
  for (std::int64_t t = 0; t < T; ++t) detail::rms_norm(x + t * D, D, w.data(), eps);
}

float* f(const buffer& b) { return static_cast<float*>(b.data()); }

// Index of the first non-finite value of p[0, n), or -1. The forward pass never returns NaN or Inf silently: every
// block's output and the logits are checked (a pass over T·n·D floats per block, noise next to the block's work).
std::int64_t first_non_finite(const float* p, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

// Seconds since the last call (a stopwatch for the trace).
struct lap {
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  double operator()() {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - t).count();
    t = now;
    return s;
  }
};

}  // namespace

std::int64_t sequence_state::cache_bytes() const {
  std::int64_t n = 0;
  for (const auto& c : caches) n += c.bytes();
  return n;
}

transformer::transformer(const model_config& cfg, const model_weights& w, const exec& ex, kv_storage storage)
    : cfg_(cfg), w_(w), ex_(ex), storage_(storage) {
  DSV4_CHECK(static_cast<std::int64_t>(w.layers.size()) == cfg.n_layers, kOp, "weights for ", w.layers.size(),
             " layers, the config has ", cfg.n_layers);
  attn_.reserve(w.layers.size());
  for (const auto& b : w.layers) {
    attn_.emplace_back(cfg, b, ex);
    gate_.push_back(ops::qweight{b.ffn.gate, {}, "layers." + std::to_string(b.layer) + ".ffn.gate"});
    attn_norm_.push_back(detail::to_f32(b.attn_norm));
    ffn_norm_.push_back(detail::to_f32(b.ffn_norm));
  }
  norm_ = detail::to_f32(w.norm);
}

sequence_state transformer::new_sequence(std::int64_t capacity) const {
  sequence_state s;
  for (std::size_t i = 0; i < attn_.size(); ++i) s.caches.push_back(attn_[i].new_cache(capacity, storage_));
  return s;
}

void transformer::forward_rows(std::span<const std::int64_t> tokens, sequence_state& seq,
                               std::span<const std::int64_t> rows, const tensor_view& logits, forward_trace* trace,
                               const std::function<void(std::int64_t)>& progress) const {
  const model_config& c = cfg_;
  const std::int64_t T = static_cast<std::int64_t>(tokens.size()), D = c.dim, n = c.hc_mult, V = c.vocab_size;
  DSV4_CHECK(T >= 1, kOp, "no tokens to process");
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(tokens[static_cast<std::size_t>(t)] >= 0 && tokens[static_cast<std::size_t>(t)] < V, kOp, "token id ",
               tokens[static_cast<std::size_t>(t)], " at index ", t, " is outside the vocabulary [0, ", V, ")");
  DSV4_CHECK(seq.caches.size() == attn_.size(), kOp, "the sequence state has ", seq.caches.size(),
             " layer caches, the model ", attn_.size(), " layers (make it with new_sequence)");
  const std::int64_t cap = seq.caches.empty() ? 0 : seq.caches[0].capacity;
  const std::int64_t p0 = seq.pos();
  DSV4_CHECK(p0 + T <= cap, kOp, "positions [", p0, ", ", p0 + T, ") run past the context capacity of ",
             cap, " tokens");
  const bool want_logits = logits.rank() != 0 || logits.data() != nullptr;
  const std::int64_t R = rows.empty() ? T : static_cast<std::int64_t>(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i)
    DSV4_CHECK(rows[i] >= 0 && rows[i] < T, kOp, "logits row ", rows[i], " is outside the ", T, " tokens of this call");
  if (want_logits)
    DSV4_CHECK(logits.rank() == 2 && logits.dt() == dtype::f32 && logits.shape(0) == R && logits.shape(1) == V &&
                   logits.is_contiguous(),
               kOp, "logits is ", logits.describe(), ", expected contiguous f32[", R, ", ", V, "]");
  if (trace) *trace = forward_trace{std::vector<layer_trace>(attn_.size()), 0, 0};
  lap clock;
  double sink = 0;  // laps nobody asked for

  // Embedding (a row gather, exact) and the initial expansion into n identical streams.
  buffer h(dtype::f32, {T, D}), x(dtype::f32, {T, n, D});
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t id = tokens[static_cast<std::size_t>(t)];
    if (w_.embed.dt() == dtype::bf16) {
      const auto* row = static_cast<const bf16*>(w_.embed.data()) + id * D;
      for (std::int64_t i = 0; i < D; ++i) f(h)[t * D + i] = row[i].to_float();
    } else {
      std::memcpy(f(h) + t * D, static_cast<const float*>(w_.embed.data()) + id * D, sizeof(float) * D);
    }
    const std::int64_t bad = first_non_finite(f(h) + t * D, D);
    DSV4_CHECK(bad < 0, kOp, "embed.weight row ", id, " (token ", id, ") holds a non-finite value at column ", bad);
  }
  ops::hc_expand(h, x, ex_);
  (trace ? trace->embed_s : sink) += clock();

  const ops::mhc_config mc{c.hc_sinkhorn_iters, static_cast<float>(c.hc_eps), static_cast<float>(c.norm_eps)};
  const ops::route_config rc{c.score, static_cast<int>(c.n_activated_experts), static_cast<float>(c.route_scale)};
  const std::int64_t k = c.n_activated_experts, E = c.n_routed_experts;
  buffer y(dtype::f32, {T, D}), fo(dtype::f32, {T, D}), post(dtype::f32, {T, n}), comb(dtype::f32, {T, n, n});
  buffer gl(dtype::f32, {T, E}), rw(dtype::f32, {T, k}), ri(dtype::i32, {T, k}), ids(dtype::i64, {T});
  std::memcpy(ids.data(), tokens.data(), sizeof(std::int64_t) * static_cast<std::size_t>(T));

  for (std::size_t l = 0; l < attn_.size(); ++l) {
    const block_weights& b = w_.layers[l];
    layer_trace* lt = trace ? &trace->layers[l] : nullptr;
    layer_trace scratch;
    layer_trace& tt = lt ? *lt : scratch;
    // Attention sub-block.
    ops::hc_pre(x, b.hc_attn.fn, b.hc_attn.scale, b.hc_attn.base, y, post, comb, mc, ex_);
    rms_norm_rows(f(y), T, D, attn_norm_[l], c.norm_eps);
    tt.mhc_s += clock();
    try {
      attn_[l].forward(y, seq.caches[l], fo, lt ? &lt->attn : nullptr);
    } catch (const error& e) {  // say where: an op deep inside a layer only knows its own tensors
      DSV4_FAIL(kOp, "layer ", l, " attention: ", e.what());
    }
    tt.attn_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    // MoE sub-block.
    ops::hc_pre(x, b.hc_ffn.fn, b.hc_ffn.scale, b.hc_ffn.base, y, post, comb, mc, ex_);
    rms_norm_rows(f(y), T, D, ffn_norm_[l], c.norm_eps);
    tt.mhc_s += clock();
    const bool hashed = c.hash_routed(b.layer);
    try {
      ops::linear(y, gate_[l], gl, ex_);
      if (hashed) ops::moe_hash_route(gl, rc, ids, b.ffn.tid2eid, rw, ri, ex_);
      else ops::moe_route(gl, rc, b.ffn.bias, rw, ri, ex_);
      ops::moe_ffn(y, rw, ri, b.ffn.experts, b.ffn.shared ? &*b.ffn.shared : nullptr,
                   static_cast<float>(c.swiglu_limit), fo, ex_);
    } catch (const error& e) {
      DSV4_FAIL(kOp, "layer ", l, " MoE: ", e.what());
    }
    tt.moe_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    tt.mhc_s += clock();
    if (lt) {
      lt->hash_routed = hashed;
      const auto* e = static_cast<const std::int32_t*>(ri.data()) + (T - 1) * k;
      const auto* wt = f(rw) + (T - 1) * k;
      lt->last_experts.assign(e, e + k);
      lt->last_weights.assign(wt, wt + k);
    }
    if (const std::int64_t bad = first_non_finite(f(x), T * n * D); bad >= 0)
      DSV4_FAIL(kOp, "layer ", l, " produced a non-finite activation (position ", p0 + bad / (n * D),
                "): the weights of layers.", l, " overflow fp32 for this input");
    if (progress) progress(static_cast<std::int64_t>(l));
  }
  if (!want_logits) return;

  // Head: collapse the streams, final norm, fp32 logits (only the rows asked for).
  buffer xs = rows.empty() ? buffer() : buffer(dtype::f32, {R, n, D});
  if (!rows.empty())
    for (std::int64_t i = 0; i < R; ++i)
      std::memcpy(f(xs) + i * n * D, f(x) + rows[static_cast<std::size_t>(i)] * n * D, sizeof(float) * n * D);
  const buffer& xh = rows.empty() ? x : xs;
  buffer yh(dtype::f32, {R, D});
  ops::hc_head(xh, w_.hc_head.fn, w_.hc_head.scale, w_.hc_head.base, yh, mc, ex_);
  rms_norm_rows(f(yh), R, D, norm_, c.norm_eps);
  const std::int64_t bad_h = first_non_finite(f(yh), R * D);
  DSV4_CHECK(bad_h < 0, kOp, "the final norm produced a non-finite value (row ", bad_h / std::max<std::int64_t>(D, 1),
             "): hc_head_fn / hc_head_base / hc_head_scale or norm.weight overflow fp32 for this input");
  ops::linear(yh, ops::qweight{w_.head, {}, "head"}, logits, ex_);
  const auto* lg = static_cast<const float*>(logits.data());
  if (const std::int64_t bad = first_non_finite(lg, R * V); bad >= 0)
    DSV4_FAIL(kOp, "logit ", bad % V, " of row ", bad / V, " is not finite: head.weight row ", bad % V,
              " holds a value that overflows fp32 for this input");
  (trace ? trace->head_s : sink) += clock();
}

void transformer::forward_batch(std::span<const batch_entry> batch) const {
  for (std::size_t i = 0; i < batch.size(); ++i)
    DSV4_CHECK(batch[i].seq != nullptr, kOp, "batch entry ", i, " has no sequence state");
  for (std::size_t i = 0; i < batch.size(); ++i)
    for (std::size_t j = i + 1; j < batch.size(); ++j)
      DSV4_CHECK(batch[i].seq != batch[j].seq, kOp, "batch entries ", i, " and ", j,
                 " share a sequence state (one entry per sequence)");
  // One sequence after the other: each call already spreads its work over the cores, and the caches of different
  // sequences are independent, so the order does not change any result.
  for (const batch_entry& e : batch) forward(e.tokens, *e.seq, e.logits);
}

}  // namespace dsv4::model
