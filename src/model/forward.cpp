// transformer: embed -> expand -> blocks (mHC, attention, MoE) -> hc_head -> norm -> head, for one sequence.
#include "dsv4/model/forward.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>

#include "dsv4/buffer.hpp"
#include "dsv4/cuda/mhc.hpp"
#include "dsv4/cuda/moe.hpp"
#include "dsv4/cuda/paged.hpp"
#include "dsv4/error.hpp"
#include "dsv4/graph.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ops/rowwise.hpp"
#include "common.hpp"
#include "step_memory.hpp"

namespace dsv4::model {

namespace {

constexpr const char* kOp = "forward";

// Index of the first non-finite value of t (f32, contiguous, host or device), or -1. The forward pass never returns
// NaN or Inf silently: every block's output and the logits are checked (a pass over T·n·D floats per block, noise
// next to the block's work; on a device a count kernel, and the values are read back only to name the first one).
std::int64_t first_non_finite(const tensor_view& t, const exec& ex) {
  if (ops::count_non_finite(t, ex) == 0) return -1;
  const std::vector<float> h = detail::to_host<float>(t);
  for (std::size_t i = 0; i < h.size(); ++i)
    if (!std::isfinite(h[i])) return static_cast<std::int64_t>(i);
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

struct transformer::gpu_step {
  explicit gpu_step(device dev) : mem(dev) {}
  std::mutex mu;
  detail::step_memory mem;
};

namespace {
pool_options on(const pool_options& opt, device dev) {
  pool_options o = opt;
  o.dev = dev;
  return o;
}
}  // namespace

transformer::transformer(const model_config& cfg, const model_weights& w, const exec& ex, const pool_options& pool,
                         numerics nm)
    : cfg_(cfg), w_(w), ex_(ex), nm_(nm), dev_(w.embed.dev()) {
  DSV4_CHECK(static_cast<std::int64_t>(w.layers.size()) == cfg.n_layers, kOp, "weights for ", w.layers.size(),
             " layers, the config has ", cfg.n_layers);
  DSV4_CHECK(dev_.is_cpu() || nm_ == numerics::fp32, kOp, "numerics official has no CUDA path (the weights live on ",
             dev_, ")");
  DSV4_CHECK(dev_.is_cpu() || ex_.checks != check_policy::none, kOp,
             "the forward pass on a GPU runs under check_policy::sync or deferred (its checks are part of the step)");
  if (dev_.is_cuda()) {  // the shapes the CUDA kernels take, checked before any step (dsv4/cuda/*.hpp)
    const bool csa = std::count(cfg.compress_ratios.begin(), cfg.compress_ratios.end(), 4) > 0;
    DSV4_CHECK(cuda::mqa_head_dim_ok(cfg.head_dim), kOp, "the CUDA sparse attention takes head_dim 128, 256 or 512; ",
               cfg.name, " has ", cfg.head_dim, " (run it on the CPU)");
    DSV4_CHECK(cfg.head_dim <= cuda::kMaxEmitC && cfg.hc_mult <= cuda::kMaxHcMult &&
                   cfg.n_routed_experts <= cuda::kMaxRoutedExperts && cfg.n_activated_experts <= cuda::kMaxTopk,
               kOp, cfg.name, ": head_dim ", cfg.head_dim, ", hc_mult ", cfg.hc_mult, ", ", cfg.n_routed_experts,
               " routed experts (top-", cfg.n_activated_experts, ") exceed the CUDA kernels' limits (", cuda::kMaxEmitC,
               ", ", cuda::kMaxHcMult, ", ", cuda::kMaxRoutedExperts, ", ", cuda::kMaxTopk, ")");
    DSV4_CHECK(!csa || (cuda::fp4_key_dim_ok(cfg.index_head_dim) && cfg.index_n_heads <= cuda::kMaxIndexerHeads &&
                        cfg.index_topk <= cuda::kMaxTopkK),
               kOp, cfg.name, ": the CUDA indexer takes key dims 32, 64 or 128, at most ", cuda::kMaxIndexerHeads,
               " heads and top-k <= ", cuda::kMaxTopkK, "; got ", cfg.index_head_dim, ", ", cfg.index_n_heads, ", ",
               cfg.index_topk);
  }
  pool_ = std::make_shared<page_pool>(cfg, on(pool, dev_));
  if (dev_.is_cuda()) gpu_ = std::make_shared<gpu_step>(dev_);
  attn_.reserve(w.layers.size());
  for (const auto& b : w.layers) {
    attn_.emplace_back(cfg, b, ex, nm);
    gate_.push_back(ops::qweight{b.ffn.gate, {}, "layers." + std::to_string(b.layer) + ".ffn.gate"});
    attn_norm_.push_back(detail::f32_on(dev_, detail::to_f32(b.attn_norm)));
    ffn_norm_.push_back(detail::f32_on(dev_, detail::to_f32(b.ffn_norm)));
  }
  norm_ = detail::f32_on(dev_, detail::to_f32(w.norm));
}

std::shared_ptr<page_pool> transformer::make_pool(const pool_options& opt) const {
  return std::make_shared<page_pool>(cfg_, on(opt, dev_));
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
  // The step's memory: on the GPU the transformer's arena (one GPU step at a time), on the host this call's own.
  const bool gpu = dev_.is_cuda(), capturing = gpu && stream_capturing(ex_.cuda_stream);
  DSV4_CHECK(!gpu || !trace || ex_.checks == check_policy::sync, kOp,
             "a trace of a GPU step reads results back mid-step: it needs check_policy::sync");
  for (const batch_entry& e : batch)
    DSV4_CHECK(!capturing || e.logits.data() == nullptr || e.logits.dev() == dev_, kOp,
               "a step recorded into a CUDA graph writes logits to device views only (got ", e.logits.describe(), ")");
  detail::step_memory local_mem;
  std::unique_lock<std::mutex> gpu_lock;
  if (gpu) gpu_lock = std::unique_lock<std::mutex>(gpu_->mu);
  detail::step_memory& mem = gpu ? gpu_->mem : local_mem;
  mem.reset(!capturing);
  const detail::stager stage{mem, ex_};
  const tensor_view ids_d = stage(ids.view());
  auto buf = [&](dtype dt, std::initializer_list<std::int64_t> shape) { return mem.take(dt, shape); };
  const tensor_view h = buf(dtype::f32, {T, D}), x = buf(dtype::f32, {T, n, D});
  ops::embed(ids_d, w_.embed, h, ex_);
  if (const std::int64_t bad = first_non_finite(h, ex_); bad >= 0)
    DSV4_FAIL(kOp, "embed.weight row ", tok[bad / D], " (token ", tok[bad / D], ") holds a non-finite value at column ",
              bad % D);
  // round_activations: BF16 here under official (§1), nothing under fp32
  detail::round_cols(nm_, h, T, D, 0, D);  // E1: the BF16 table (a no-op for BF16 checkpoints)
  ops::hc_expand(h, x, ex_);
  (trace ? trace->embed_s : sink) += clock();

  const ops::mhc_config mc{c.hc_sinkhorn_iters, static_cast<float>(c.hc_eps), static_cast<float>(c.norm_eps)};
  const ops::route_config rc{c.score, static_cast<int>(c.n_activated_experts), static_cast<float>(c.route_scale)};
  const std::int64_t k = c.n_activated_experts, E = c.n_routed_experts;
  const tensor_view y = buf(dtype::f32, {T, D}), fo = buf(dtype::f32, {T, D}), post = buf(dtype::f32, {T, n}),
                    comb = buf(dtype::f32, {T, n, n});
  const tensor_view gl = buf(dtype::f32, {T, E}), rw = buf(dtype::f32, {T, k}), ri = buf(dtype::i32, {T, k});
  // The CUDA MoE's device scratch (plan, gathered rows, expert outputs), the same for every layer of the step.
  exec moe_ex = ex_;
  if (gpu) {
    const auto& b0 = w_.layers.front().ffn;
    const tensor_view moe_scratch = buf(dtype::u8, {static_cast<std::int64_t>(ops::moe_ffn_workspace_bytes(
                                                        T, k, b0.experts, b0.shared ? &*b0.shared : nullptr))});
    moe_ex.scratch = {moe_scratch.data(), static_cast<std::size_t>(moe_scratch.nbytes())};
  }

  for (std::size_t l = 0; l < attn_.size(); ++l) {
    const block_weights& b = w_.layers[l];
    layer_trace* lt = trace ? &trace->layers[l] : nullptr;
    layer_trace scratch;
    layer_trace& tt = lt ? *lt : scratch;
    // Attention sub-block.
    ops::hc_pre(x, b.hc_attn.fn, b.hc_attn.scale, b.hc_attn.base, y, post, comb, mc, ex_);
    detail::round_cols(nm_, y, T, D, 0, D);  // A4
    ops::rms_norm(y, attn_norm_[l], c.norm_eps, y, ex_);
    detail::round_cols(nm_, y, T, D, 0, D);  // A5
    tt.mhc_s += clock();
    try {
      attn_[l].run(y, rb, fo, lt ? &lt->attn : nullptr, &mem);
    } catch (const error& e) {  // say where: an op deep inside a layer only knows its own tensors
      DSV4_FAIL(kOp, "layer ", l, " attention: ", e.what());
    }
    tt.attn_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    detail::round_cols(nm_, x, T * n, D, 0, D);  // A16
    // MoE sub-block.
    ops::hc_pre(x, b.hc_ffn.fn, b.hc_ffn.scale, b.hc_ffn.base, y, post, comb, mc, ex_);
    detail::round_cols(nm_, y, T, D, 0, D);  // F1-F4
    ops::rms_norm(y, ffn_norm_[l], c.norm_eps, y, ex_);
    detail::round_cols(nm_, y, T, D, 0, D);
    tt.mhc_s += clock();
    const bool hashed = c.hash_routed(b.layer);
    try {
      ops::linear(y, gate_[l], gl, ex_);
      if (hashed) ops::moe_hash_route(gl, rc, ids_d, b.ffn.tid2eid, rw, ri, ex_);
      else ops::moe_route(gl, rc, b.ffn.bias, rw, ri, ex_);
      ops::moe_ffn(y, rw, ri, b.ffn.experts, b.ffn.shared ? &*b.ffn.shared : nullptr,
                   static_cast<float>(c.swiglu_limit), fo, moe_ex, nm_);
    } catch (const error& e) {
      DSV4_FAIL(kOp, "layer ", l, " MoE: ", e.what());
    }
    tt.moe_s += clock();
    ops::hc_post(fo, x, post, comb, x, ex_);
    detail::round_cols(nm_, x, T * n, D, 0, D);  // F5
    tt.mhc_s += clock();
    if (lt) {
      const std::vector<std::int32_t> ids_h = detail::to_host<std::int32_t>(ri);
      const std::vector<float> w_h = detail::to_host<float>(rw);
      std::vector<char> used(static_cast<std::size_t>(E), 0);
      for (std::int64_t i = 0; i < T * k; ++i) used[static_cast<std::size_t>(ids_h[static_cast<std::size_t>(i)])] = 1;
      lt->distinct_experts = std::count(used.begin(), used.end(), 1);
      lt->hash_routed = hashed;
      lt->last_experts.assign(ids_h.end() - k, ids_h.end());
      lt->last_weights.assign(w_h.end() - k, w_h.end());
    }
    if (const std::int64_t bad = first_non_finite(x, ex_); bad >= 0)
      DSV4_FAIL(kOp, "layer ", l, " produced a non-finite activation (position ",
                rb.pos[static_cast<std::size_t>(bad / (n * D))], "): the weights of layers.", l,
                " overflow fp32 for this input");
    if (progress) progress(static_cast<std::int64_t>(l));
  }
  // The end of a GPU step under deferred checks: its one wait (unless it is being recorded), the status word read.
  auto finish_gpu_step = [&] {
    if (gpu && !capturing && ex_.checks != check_policy::sync) check_status(ex_);
  };
  if (head_rows.empty()) return finish_gpu_step();

  // Head: collapse the streams, final norm, fp32 logits, for the rows asked for (all entries at once).
  const std::int64_t Rh = static_cast<std::int64_t>(head_rows.size());
  const tensor_view xs = buf(dtype::f32, {Rh, n, D});
  for (std::int64_t i = 0; i < Rh; ++i) {
    const std::int64_t r = head_rows[static_cast<std::size_t>(i)];
    ops::copy(x.select(0, r), xs.select(0, i), ex_);
  }
  const tensor_view yh = buf(dtype::f32, {Rh, D});
  ops::hc_head(xs, w_.hc_head.fn, w_.hc_head.scale, w_.hc_head.base, yh, mc, ex_);
  detail::round_cols(nm_, yh, Rh, D, 0, D);  // H1
  ops::rms_norm(yh, norm_, c.norm_eps, yh, ex_);
  detail::round_cols(nm_, yh, Rh, D, 0, D);  // H2; the head GEMM and the logits stay fp32 (H3)
  const std::int64_t bad_h = first_non_finite(yh, ex_);
  DSV4_CHECK(bad_h < 0, kOp, "the final norm produced a non-finite value (row ", bad_h / std::max<std::int64_t>(D, 1),
             "): hc_head_fn / hc_head_base / hc_head_scale or norm.weight overflow fp32 for this input");
  // One head GEMM for every entry when they want logits together; a single entry on the weights' device writes
  // straight into its view.
  const bool direct = batch.size() == 1 && batch[0].logits.dev() == dev_;
  const tensor_view all = direct ? tensor_view() : buf(dtype::f32, {Rh, V});
  const tensor_view& out = direct ? batch[0].logits : all;
  ops::linear(yh, ops::qweight{w_.head, {}, "head"}, out, ex_);
  if (const std::int64_t bad = first_non_finite(out, ex_); bad >= 0)
    DSV4_FAIL(kOp, "logit ", bad % V, " of row ", bad / V, " is not finite: head.weight row ", bad % V,
              " holds a value that overflows fp32 for this input");
  // Each entry's rows into its view: device views on the step's stream first, then (after the step's wait) host
  // views, read from the finished step.
  for (const bool to_host_views : {false, true}) {
    if (to_host_views) finish_gpu_step();
    if (direct) continue;
    std::int64_t at = 0;
    for (const batch_entry& e : batch) {
      if (e.logits.rank() == 0 && e.logits.data() == nullptr) continue;
      const std::int64_t R = e.logits.shape(0);
      if (e.logits.dev().is_cpu() == to_host_views)
        ops::copy(all.narrow(0, at, R), e.logits, to_host_views ? exec{} : ex_);
      at += R;
    }
  }
  (trace ? trace->head_s : sink) += clock();
}

// ---- graph_runner --------------------------------------------------------------------------------------------

struct graph_runner::impl {
  explicit impl(void* stream) : graph(stream) {}
  stream_graph graph;
};

graph_runner::graph_runner(const transformer& tf) : tf_(tf) {
  constexpr const char* op = "graph_runner";
  const exec& ex = tf.execution();
  DSV4_CHECK(tf.dev().is_cuda(), op, "the transformer's weights live on ", tf.dev(), ": graphs are for GPU steps");
  DSV4_CHECK(ex.checks == check_policy::deferred && ex.cuda_stream != nullptr && ex.status != nullptr, op,
             "the transformer's exec must be check_policy::deferred with a stream and a status word (nothing in a "
             "recorded step may wait)");
  d_ = std::make_unique<impl>(ex.cuda_stream);
}

graph_runner::~graph_runner() = default;

std::int64_t graph_runner::instantiations() const { return d_->graph.instantiations(); }
std::int64_t graph_runner::updates() const { return d_->graph.updates(); }

void graph_runner::step(std::span<const transformer::batch_entry> batch) {
  constexpr const char* op = "graph_runner";
  if (batch.empty()) return;
  DSV4_CHECK(batch[0].seq != nullptr && batch[0].seq->valid(), op, "batch entry 0 has no sequence state");
  page_pool& pool = batch[0].seq->pool();
  {
    // Map every page the step needs before recording: the pool's arrays may grow (and move) here, never inside the
    // recording. prepare() is idempotent, so the step's own prepare finds them mapped; it also refuses positions past
    // a sequence's capacity.
    const auto hold = pool.hold();
    for (const transformer::batch_entry& e : batch) {
      DSV4_CHECK(e.seq != nullptr && e.seq->valid() && &e.seq->pool() == &pool, op,
                 "every entry needs a sequence of one pool");
      const std::int64_t end = e.seq->pos() + static_cast<std::int64_t>(e.tokens.size());
      for (std::int64_t l = 0; l < tf_.config().n_layers; ++l) pool.prepare(e.seq->id(), l, end);
    }
  }
  d_->graph.record([&] { tf_.forward_batch(batch); });
  d_->graph.launch();
  check_status(tf_.execution());  // the step's one wait, and its findings
}

}  // namespace dsv4::model
