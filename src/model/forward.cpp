// transformer: embed -> expand -> blocks (mHC, attention, MoE) -> hc_head -> norm -> head, for one sequence.
#include "dsv4/model/forward.hpp"

#include <algorithm>
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

// ---- sequence_state ------------------------------------------------------------------------------------------

sequence_state::sequence_state(std::shared_ptr<page_pool> pool, std::int64_t capacity)
    : pool_(std::move(pool)), id_(pool_->add_sequence(capacity)) {}

sequence_state::~sequence_state() {
  if (pool_) pool_->remove_sequence(id_);
}

sequence_state::sequence_state(sequence_state&& o) noexcept : pool_(std::move(o.pool_)), id_(o.id_) { o.id_ = -1; }

sequence_state& sequence_state::operator=(sequence_state&& o) noexcept {
  if (this != &o) {
    if (pool_) pool_->remove_sequence(id_);
    pool_ = std::move(o.pool_);
    id_ = o.id_;
    o.id_ = -1;
  }
  return *this;
}

std::int64_t sequence_state::pos() const {
  DSV4_CHECK(pool_, kOp, "an empty sequence_state (make it with transformer::new_sequence)");
  return pool_->pos(id_, 0);
}

std::int64_t sequence_state::capacity() const {
  DSV4_CHECK(pool_, kOp, "an empty sequence_state (make it with transformer::new_sequence)");
  return pool_->capacity(id_);
}

std::int64_t sequence_state::cache_bytes() const { return pool_ ? pool_->held_bytes(id_) : 0; }

void sequence_state::truncate(std::int64_t n) {
  DSV4_CHECK(pool_, kOp, "an empty sequence_state (make it with transformer::new_sequence)");
  pool_->truncate(id_, n);
}

// ---- transformer -----------------------------------------------------------------------------------------------

transformer::transformer(const model_config& cfg, const model_weights& w, const exec& ex, const pool_options& pool,
                         numerics nm)
    : cfg_(cfg), w_(w), ex_(ex), nm_(nm), pool_(std::make_shared<page_pool>(cfg, pool)) {
  DSV4_CHECK(static_cast<std::int64_t>(w.layers.size()) == cfg.n_layers, kOp, "weights for ", w.layers.size(),
             " layers, the config has ", cfg.n_layers);
  attn_.reserve(w.layers.size());
  for (const auto& b : w.layers) {
    attn_.emplace_back(cfg, b, ex, nm);
    gate_.push_back(ops::qweight{b.ffn.gate, {}, "layers." + std::to_string(b.layer) + ".ffn.gate"});
    attn_norm_.push_back(detail::to_f32(b.attn_norm));
    ffn_norm_.push_back(detail::to_f32(b.ffn_norm));
  }
  norm_ = detail::to_f32(w.norm);
}

std::shared_ptr<page_pool> transformer::make_pool(const pool_options& opt) const {
  return std::make_shared<page_pool>(cfg_, opt);
}

sequence_state transformer::new_sequence(std::int64_t capacity) const { return sequence_state(pool_, capacity); }

sequence_state transformer::new_sequence(const std::shared_ptr<page_pool>& pool, std::int64_t capacity) const {
  DSV4_CHECK(pool != nullptr, kOp, "no page pool");
  const model_config& pc = pool->config();
  DSV4_CHECK(pc.n_layers == cfg_.n_layers && pc.head_dim == cfg_.head_dim && pc.compress_ratios == cfg_.compress_ratios,
             kOp, "the page pool was made for another model (", pc.name, ")");
  return sequence_state(pool, capacity);
}

void transformer::forward_rows(std::span<const std::int64_t> tokens, sequence_state& seq,
                               std::span<const std::int64_t> rows, const tensor_view& logits, forward_trace* trace,
                               const std::function<void(std::int64_t)>& progress) const {
  const batch_entry e{tokens, &seq, logits, rows};
  forward_batch(std::span<const batch_entry>(&e, 1), trace, progress);
}

void transformer::forward_batch(std::span<const batch_entry> batch, forward_trace* trace,
                                const std::function<void(std::int64_t)>& progress) const {
  const model_config& c = cfg_;
  const std::int64_t D = c.dim, n = c.hc_mult, V = c.vocab_size;
  if (batch.empty()) return;
  // Validation: every entry names a live sequence of one pool, once; tokens in the vocabulary; room in the sequence.
  page_pool* pool = nullptr;
  std::unique_lock<std::recursive_mutex> hold;  // the whole step: no other thread may move the pool's pages meanwhile
  std::int64_t T = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const batch_entry& e = batch[i];
    DSV4_CHECK(e.seq != nullptr && e.seq->valid(), kOp, "batch entry ", i, " has no sequence state");
    DSV4_CHECK(pool == nullptr || &e.seq->pool() == pool, kOp, "batch entry ", i, " is in another page pool than ",
               "entry 0 (the sequences of one batch share a pool: transformer::new_sequence(pool, capacity))");
    if (pool == nullptr) hold = e.seq->pool().hold();
    pool = &e.seq->pool();
    for (std::size_t j = i + 1; j < batch.size(); ++j)
      DSV4_CHECK(batch[j].seq != e.seq && (batch[j].seq == nullptr || batch[j].seq->id() != e.seq->id() ||
                                           &batch[j].seq->pool() != pool),
                 kOp, "batch entries ", i, " and ", j, " share a sequence state (one entry per sequence)");
    const std::int64_t Ti = static_cast<std::int64_t>(e.tokens.size());
    DSV4_CHECK(Ti >= 1, kOp, batch.size() > 1 ? "batch entry " + std::to_string(i) + ": " : std::string(),
               "no tokens to process");
    for (std::int64_t t = 0; t < Ti; ++t)
      DSV4_CHECK(e.tokens[static_cast<std::size_t>(t)] >= 0 && e.tokens[static_cast<std::size_t>(t)] < V, kOp,
                 "token id ", e.tokens[static_cast<std::size_t>(t)], " at index ", t, " is outside the vocabulary [0, ",
                 V, ")");
    const std::int64_t p0 = e.seq->pos(), cap = e.seq->capacity();
    DSV4_CHECK(p0 + Ti <= cap, kOp, "positions [", p0, ", ", p0 + Ti, ") run past the context capacity of ", cap,
               " tokens");
    const bool want = e.logits.rank() != 0 || e.logits.data() != nullptr;
    const std::int64_t R = e.rows.empty() ? Ti : static_cast<std::int64_t>(e.rows.size());
    for (std::size_t k = 0; k < e.rows.size(); ++k)
      DSV4_CHECK(e.rows[k] >= 0 && e.rows[k] < Ti, kOp, "logits row ", e.rows[k], " is outside the ", Ti,
                 " tokens of this call");
    if (want)
      DSV4_CHECK(e.logits.rank() == 2 && e.logits.dt() == dtype::f32 && e.logits.shape(0) == R &&
                     e.logits.shape(1) == V && e.logits.is_contiguous(),
                 kOp, "logits is ", e.logits.describe(), ", expected contiguous f32[", R, ", ", V, "]");
    T += Ti;
  }
  DSV4_CHECK(&pool->config() == &pool->config() && pool->config().n_layers == c.n_layers, kOp,
             "the page pool was made for another model");

  // The flattened rows: entry after entry, each sequence's tokens at its next positions.
  row_batch rb;
  rb.pool = pool;
  buffer ids(dtype::i64, {T});
  std::vector<std::int64_t> head_rows;  // flattened rows whose logits are wanted, entry by entry
  {
    std::int64_t at = 0;
    for (const batch_entry& e : batch) {
      const std::int64_t Ti = static_cast<std::int64_t>(e.tokens.size()), p0 = e.seq->pos();
      for (std::int64_t t = 0; t < Ti; ++t) {
        static_cast<std::int64_t*>(ids.data())[at + t] = e.tokens[static_cast<std::size_t>(t)];
        rb.seq.push_back(e.seq->id());
        rb.pos.push_back(p0 + t);
      }
      if (e.logits.rank() != 0 || e.logits.data() != nullptr) {
        if (e.rows.empty())
          for (std::int64_t t = 0; t < Ti; ++t) head_rows.push_back(at + t);
        else
          for (std::int64_t r : e.rows) head_rows.push_back(at + r);
      }
      at += Ti;
    }
  }
  const auto* tok = static_cast<const std::int64_t*>(ids.data());
  if (trace) *trace = forward_trace{std::vector<layer_trace>(attn_.size()), 0, 0};
  lap clock;
  double sink = 0;  // laps nobody asked for

  // Embedding (a row gather, exact) and the initial expansion into n identical streams.
  buffer h(dtype::f32, {T, D}), x(dtype::f32, {T, n, D});
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t id = tok[t];
    if (w_.embed.dt() == dtype::bf16) {
      const auto* row = static_cast<const bf16*>(w_.embed.data()) + id * D;
      for (std::int64_t i = 0; i < D; ++i) f(h)[t * D + i] = row[i].to_float();
    } else {
      std::memcpy(f(h) + t * D, static_cast<const float*>(w_.embed.data()) + id * D, sizeof(float) * D);
    }
    const std::int64_t bad = first_non_finite(f(h) + t * D, D);
    DSV4_CHECK(bad < 0, kOp, "embed.weight row ", id, " (token ", id, ") holds a non-finite value at column ", bad);
  }
  // round_activations: BF16 here under official (§1), nothing under fp32
  round_activations(nm_, f(h), T * D);  // E1: the BF16 table (a no-op for BF16 checkpoints)
  ops::hc_expand(h, x, ex_);
  (trace ? trace->embed_s : sink) += clock();

  const ops::mhc_config mc{c.hc_sinkhorn_iters, static_cast<float>(c.hc_eps), static_cast<float>(c.norm_eps)};
  const ops::route_config rc{c.score, static_cast<int>(c.n_activated_experts), static_cast<float>(c.route_scale)};
  const std::int64_t k = c.n_activated_experts, E = c.n_routed_experts;
  buffer y(dtype::f32, {T, D}), fo(dtype::f32, {T, D}), post(dtype::f32, {T, n}), comb(dtype::f32, {T, n, n});
  buffer gl(dtype::f32, {T, E}), rw(dtype::f32, {T, k}), ri(dtype::i32, {T, k});

  for (std::size_t l = 0; l < attn_.size(); ++l) {
    const block_weights& b = w_.layers[l];
    layer_trace* lt = trace ? &trace->layers[l] : nullptr;
    layer_trace scratch;
    layer_trace& tt = lt ? *lt : scratch;
    // Attention sub-block.
    ops::hc_pre(x, b.hc_attn.fn, b.hc_attn.scale, b.hc_attn.base, y, post, comb, mc, ex_);
    round_activations(nm_, f(y), T * D);  // A4
    rms_norm_rows(f(y), T, D, attn_norm_[l], c.norm_eps);
    round_activations(nm_, f(y), T * D);  // A5
    tt.mhc_s += clock();
    try {
      attn_[l].forward(y, rb, fo, lt ? &lt->attn : nullptr);
    } catch (const error& e) {  // say where: an op deep inside a layer only knows its own tensors
      DSV4_FAIL(kOp, "layer ", l, " attention: ", e.what());
    }
    tt.attn_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    round_activations(nm_, f(x), T * n * D);  // A16
    // MoE sub-block.
    ops::hc_pre(x, b.hc_ffn.fn, b.hc_ffn.scale, b.hc_ffn.base, y, post, comb, mc, ex_);
    round_activations(nm_, f(y), T * D);  // F1-F4
    rms_norm_rows(f(y), T, D, ffn_norm_[l], c.norm_eps);
    round_activations(nm_, f(y), T * D);
    tt.mhc_s += clock();
    const bool hashed = c.hash_routed(b.layer);
    try {
      ops::linear(y, gate_[l], gl, ex_);
      if (hashed) ops::moe_hash_route(gl, rc, ids, b.ffn.tid2eid, rw, ri, ex_);
      else ops::moe_route(gl, rc, b.ffn.bias, rw, ri, ex_);
      ops::moe_ffn(y, rw, ri, b.ffn.experts, b.ffn.shared ? &*b.ffn.shared : nullptr,
                   static_cast<float>(c.swiglu_limit), fo, ex_, nm_);
    } catch (const error& e) {
      DSV4_FAIL(kOp, "layer ", l, " MoE: ", e.what());
    }
    tt.moe_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    round_activations(nm_, f(x), T * n * D);  // F5
    tt.mhc_s += clock();
    if (lt) {
      std::vector<char> used(static_cast<std::size_t>(E), 0);
      for (std::int64_t i = 0; i < T * k; ++i) used[static_cast<std::size_t>(static_cast<const std::int32_t*>(ri.data())[i])] = 1;
      lt->distinct_experts = std::count(used.begin(), used.end(), 1);
      lt->hash_routed = hashed;
      const auto* e = static_cast<const std::int32_t*>(ri.data()) + (T - 1) * k;
      const auto* wt = f(rw) + (T - 1) * k;
      lt->last_experts.assign(e, e + k);
      lt->last_weights.assign(wt, wt + k);
    }
    if (const std::int64_t bad = first_non_finite(f(x), T * n * D); bad >= 0)
      DSV4_FAIL(kOp, "layer ", l, " produced a non-finite activation (position ",
                rb.pos[static_cast<std::size_t>(bad / (n * D))], "): the weights of layers.", l,
                " overflow fp32 for this input");
    if (progress) progress(static_cast<std::int64_t>(l));
  }
  if (head_rows.empty()) return;

  // Head: collapse the streams, final norm, fp32 logits, for the rows asked for (all entries at once).
  const std::int64_t Rh = static_cast<std::int64_t>(head_rows.size());
  buffer xs(dtype::f32, {Rh, n, D});
  for (std::int64_t i = 0; i < Rh; ++i)
    std::memcpy(f(xs) + i * n * D, f(x) + head_rows[static_cast<std::size_t>(i)] * n * D, sizeof(float) * n * D);
  buffer yh(dtype::f32, {Rh, D});
  ops::hc_head(xs, w_.hc_head.fn, w_.hc_head.scale, w_.hc_head.base, yh, mc, ex_);
  round_activations(nm_, f(yh), Rh * D);  // H1
  rms_norm_rows(f(yh), Rh, D, norm_, c.norm_eps);
  round_activations(nm_, f(yh), Rh * D);  // H2; the head GEMM and the logits stay fp32 (H3)
  const std::int64_t bad_h = first_non_finite(f(yh), Rh * D);
  DSV4_CHECK(bad_h < 0, kOp, "the final norm produced a non-finite value (row ", bad_h / std::max<std::int64_t>(D, 1),
             "): hc_head_fn / hc_head_base / hc_head_scale or norm.weight overflow fp32 for this input");
  // One head GEMM for every entry when they want logits together; a single entry writes straight into its view.
  const bool direct = batch.size() == 1;
  buffer all = direct ? buffer() : buffer(dtype::f32, {Rh, V});
  const tensor_view& out = direct ? batch[0].logits : all.view();
  ops::linear(yh, ops::qweight{w_.head, {}, "head"}, out, ex_);
  const auto* lg = static_cast<const float*>(out.data());
  if (const std::int64_t bad = first_non_finite(lg, Rh * V); bad >= 0)
    DSV4_FAIL(kOp, "logit ", bad % V, " of row ", bad / V, " is not finite: head.weight row ", bad % V,
              " holds a value that overflows fp32 for this input");
  if (!direct) {
    std::int64_t at = 0;
    for (const batch_entry& e : batch) {
      if (e.logits.rank() == 0 && e.logits.data() == nullptr) continue;
      const std::int64_t R = e.logits.shape(0);
      std::memcpy(e.logits.data(), lg + at * V, sizeof(float) * static_cast<std::size_t>(R * V));
      at += R;
    }
  }
  (trace ? trace->head_s : sink) += clock();
}

}  // namespace dsv4::model
