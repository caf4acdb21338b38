// attention_layer: the spec §3 pipeline for one layer over paged caches, for rows of any number of sequences
// (see the header).
#include "dsv4/model/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/paged.hpp"
#include "dsv4/ops/rowwise.hpp"
#include "dsv4/ref/linear.hpp"
#include "dsv4/ref/official.hpp"
#include "dsv4/ops/quant.hpp"
#include "common.hpp"
#include "step_memory.hpp"

namespace dsv4::model {

namespace {

constexpr const char* kOp = "attention";

using detail::as_shape;
using detail::f32_on;
using detail::round_cols;
using detail::to_f32;
using detail::to_host;
using region = page_pool::region;

float* data(const tensor_view& b) { return static_cast<float*>(b.data()); }

// The block tables of one region for the requests of a call, padded with -1: i32 [R, max pages].
struct tables {
  std::vector<std::int32_t> v;
  std::int64_t cols = 1;
  tables(const page_pool& pool, const std::vector<std::int64_t>& seqs, std::int64_t layer, region r) {
    for (std::int64_t s : seqs) cols = std::max<std::int64_t>(cols, static_cast<std::int64_t>(pool.table(s, layer, r).size()));
    v.assign(seqs.size() * static_cast<std::size_t>(cols), -1);
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const auto& t = pool.table(seqs[i], layer, r);
      std::copy(t.begin(), t.end(), v.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(cols)));
    }
  }
  const std::int32_t* row(std::int64_t r) const { return v.data() + r * cols; }
  tensor_view view() const {
    return tensor_view(const_cast<std::int32_t*>(v.data()), dtype::i32, {static_cast<std::int64_t>(v.size()) / cols, cols});
  }
};

}  // namespace

row_batch row_batch::one(page_pool& pool, std::int64_t seq, std::int64_t p0, std::int64_t T) {
  row_batch b;
  b.pool = &pool;
  for (std::int64_t t = 0; t < T; ++t) {
    b.seq.push_back(seq);
    b.pos.push_back(p0 + t);
  }
  return b;
}

attention_layer::attention_layer(const model_config& cfg, const block_weights& w, const exec& ex, numerics nm)
    : cfg_(cfg), layer_(w.layer), ratio_(w.ratio), kind_(cfg.kind(w.layer)), ex_(ex), nm_(nm),
      dev_(w.attn.wq_a.weight.dev()), rope_(rope_table::for_layer(cfg, w.layer)), w_(w.attn) {
  DSV4_CHECK(ratio_ == cfg.compress_ratio(layer_), kOp, "layer ", layer_, " weights are for ratio ", ratio_,
             ", the config says ", cfg.compress_ratio(layer_));
  DSV4_CHECK(dev_.is_cpu() || nm_ == numerics::fp32, kOp, "numerics official has no CUDA path (layer ", layer_,
             "'s weights live on ", dev_, ")");
  freq_ = f32_on(dev_, rope_.freq);
  q_norm_ = f32_on(dev_, to_f32(w_.q_norm));
  kv_norm_ = f32_on(dev_, to_f32(w_.kv_norm));
  sink_ = f32_on(dev_, to_f32(w_.attn_sink));
  if (w_.compressor) {
    comp_norm_ = f32_on(dev_, to_f32(w_.compressor->norm));
    comp_ape_ = f32_on(dev_, to_f32(w_.compressor->ape));
  }
  if (w_.indexer) {
    index_norm_ = f32_on(dev_, to_f32(w_.indexer->compressor.norm));
    index_ape_ = f32_on(dev_, to_f32(w_.indexer->compressor.ape));
  }
  // wo_a: group k is the row range [k·o_lora, (k+1)·o_lora). When those ranges align with the 128-row FP8 tiles
  // (V4-Flash / V4-Pro: o_lora = 1024) each group is an FP8 linear on its own rows and scale rows, read as stored
  // like every other linear (34 MB per V4-Flash layer instead of 134 MB as fp32). Otherwise (the small test shapes,
  // a dequantized checkpoint) it is decoded to fp32 once.
  const tensor_view& wa = w_.wo_a.weight;
  const std::int64_t N = wa.shape(0), K = wa.shape(1);
  wo_a_stored_ = wa.dt() == dtype::fp8_e4m3 && cfg.o_lora_rank % ref::kFp8WeightTile == 0;
  if (wo_a_stored_) return;
  wo_a_ = buffer(dtype::f32, {N, K}, dev_);
  if (wa.dt() == dtype::fp8_e4m3)
    ops::dequantize(wa, w_.wo_a.scale, wo_a_.view(), 128, 128, ex_);
  else
    ops::copy(as_shape(f32_on(device::cpu(), to_f32(wa)), {N, K}), wo_a_.view());  // BF16 / F32: widen
}

void attention_layer::forward(const tensor_view& x, const row_batch& rows, const tensor_view& y,
                              attention_trace* trace) const {
  detail::step_memory mem(dev_);
  run(x, rows, y, trace, &mem);
}

void attention_layer::run(const tensor_view& x, const row_batch& rows, const tensor_view& y, attention_trace* trace,
                          detail::step_memory* memp) const {
  const model_config& cf = cfg_;
  const std::int64_t D = cf.dim, H = cf.n_heads, hd = cf.head_dim, nope = cf.nope_head_dim(), W = cf.window_size;
  DSV4_CHECK(x.rank() == 2 && x.dt() == dtype::f32 && x.shape(1) == D && x.is_contiguous(), kOp, "x is ",
             x.describe(), ", expected contiguous f32[T, ", D, "]");
  const std::int64_t T = x.shape(0);
  DSV4_CHECK(T >= 1, kOp, "no tokens (x is ", x.describe(), ")");
  DSV4_CHECK(y.rank() == 2 && y.dt() == dtype::f32 && y.shape(0) == T && y.shape(1) == D && y.is_contiguous(), kOp,
             "y is ", y.describe(), ", expected contiguous f32[", T, ", ", D, "]");
  DSV4_CHECK(x.dev() == dev_ && y.dev() == dev_, kOp, "x on ", x.dev(), " and y on ", y.dev(),
             ": the layer's weights live on ", dev_);
  DSV4_CHECK(rows.pool != nullptr && rows.size() == T && static_cast<std::int64_t>(rows.pos.size()) == T, kOp,
             "the row batch describes ", rows.size(), " rows (and a pool) for ", T, " tokens");
  page_pool& pool = *rows.pool;
  const model_config& pc = pool.config();
  DSV4_CHECK(pc.head_dim == hd && pc.rope_head_dim == cf.rope_head_dim && pc.window_size == W &&
                 pc.n_layers > layer_ && pc.compress_ratio(layer_) == ratio_ && pc.index_head_dim == cf.index_head_dim,
             kOp, "the page pool was made for another model shape (", pc.name, ")");
  DSV4_CHECK(pool.options().dev == dev_, kOp, "the page pool's pages live on ", pool.options().dev,
             ", the layer's weights on ", dev_, " (pool_options::dev)");

  // Requests: the distinct sequences in first-seen order; each one's rows must be its next positions, in order.
  std::vector<std::int64_t> seqs, req(static_cast<std::size_t>(T));
  std::map<std::int64_t, std::int64_t> index_of, next;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t s = rows.seq[static_cast<std::size_t>(t)];
    auto [it, fresh] = index_of.try_emplace(s, static_cast<std::int64_t>(seqs.size()));
    if (fresh) {
      seqs.push_back(s);
      next[s] = pool.pos(s, layer_);
    }
    req[static_cast<std::size_t>(t)] = it->second;
    DSV4_CHECK(rows.pos[static_cast<std::size_t>(t)] == next[s], kOp, "row ", t, " is position ",
               rows.pos[static_cast<std::size_t>(t)], " of sequence ", s, ", whose next position in layer ", layer_,
               " is ", next[s]);
    ++next[s];
  }
  for (std::int64_t s : seqs) pool.prepare(s, layer_, next[s]);
  const std::int64_t B = pool.options().page_tokens;
  detail::step_memory& mem = *memp;
  const detail::stager stage{mem, ex_};
  auto buf = [&](std::int64_t r, std::int64_t c) { return mem.take(dtype::f32, {r, c}); };
  std::vector<std::int64_t> pos64(rows.pos);
  const tensor_view positions = stage(pos64.data(), dtype::i64, {T});
  std::vector<std::int32_t> row_req(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) row_req[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(req[static_cast<std::size_t>(t)]);
  const tensor_view row_req_v = stage(row_req.data(), dtype::i32, {T});
  auto pos_of = [&](std::int64_t t) { return rows.pos[static_cast<std::size_t>(t)]; };
  const cache::kv_pages kv = pool.kv_view(layer_);
  attention_trace local;
  attention_trace& tr = trace ? *trace : local;
  tr = {};

  const bool off = nm_ == numerics::official;  // round_cols below: BF16 under official, nothing under fp32
  const std::int64_t rd = cf.rope_head_dim, ql = cf.q_lora_rank;
  const double eps = cf.norm_eps;

  // Query path: qr = q_norm(wq_a x); q = wq_b qr, per-head RMS rescale, RoPE on the last rd dims of each head.
  const tensor_view qr = buf(T, ql), q = buf(T, H * hd);
  const tensor_view q3 = as_shape(q, {T, H, hd});
  ops::linear(x, w_.wq_a, qr, ex_, nm_);
  ops::rms_norm(qr, q_norm_, eps, qr, ex_);
  round_cols(nm_, qr, T, ql, 0, ql);
  ops::linear(qr, w_.wq_b, q, ex_, nm_);
  if (off)  // §1 A9: the q head norm in BF16 arithmetic (host: official runs there)
    for (std::int64_t i = 0; i < T * H; ++i) ref::official::q_head_norm(data(q) + i * hd, hd, static_cast<float>(eps));
  else
    ops::rms_norm(q3, tensor_view(), eps, q3, ex_);  // per-head RMS rescale, no weight
  ops::rope(q3, positions, freq_, nope, false, ex_);
  round_cols(nm_, q, T * H, hd, nope, rd);

  // Window KV path: each row's entry stored at its position in its sequence's window pages.
  const tables win_t(pool, seqs, layer_, region::window);
  {
    const tensor_view kvn = buf(T, hd);
    ops::linear(x, w_.wkv, kvn, ex_, nm_);
    ops::rms_norm(kvn, kv_norm_, eps, kvn, ex_);
    round_cols(nm_, kvn, T, hd, 0, hd);
    ops::rope(kvn, positions, freq_, nope, false, ex_);
    round_cols(nm_, kvn, T, hd, nope, rd);
    ops::block_round_trip(kvn.narrow(1, 0, nope), kvn.narrow(1, 0, nope), ops::quant_format::fp8_e4m3,
                          64, ex_);
    std::vector<std::int32_t> slots(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t)
      slots[static_cast<std::size_t>(t)] =
          static_cast<std::int32_t>(cache::slot_of(win_t.row(req[static_cast<std::size_t>(t)]), pos_of(t), B));
    ops::kv_store(kvn, stage(slots.data(), dtype::i32, {T}), kv, ex_);
  }

  // A compressor over position-keyed state rows: append every row, then emit the entries of the rows that close a
  // block into `slot_region` (compressed KV entries, or indexer keys).
  auto compress = [&](const ops::qweight& wkv, const ops::qweight& wgate, const buffer& ape, const buffer& norm,
                      int ratio, std::int64_t c, bool indexer) {
    const std::int64_t cw = (ratio == 4 ? 2 : 1) * c;
    const tensor_view kvp = buf(T, cw), sc = buf(T, cw);
    ops::linear(x, wkv, kvp, ex_);
    ops::linear(x, wgate, sc, ex_);
    ops::compressor_params p;
    p.ratio = ratio;
    p.c = c;
    p.rope_dim = cf.rope_head_dim;
    p.norm_eps = cf.norm_eps;
    p.indexer = indexer;
    p.nm = nm_;
    const tables st(pool, seqs, layer_, indexer ? region::state_index : region::state_main);
    const tables out_t(pool, seqs, layer_, indexer ? region::keys : region::compressed);
    const cache::state_rows state = pool.state_view(layer_, indexer);
    std::vector<std::int32_t> state_slot(static_cast<std::size_t>(T)), out_slot(static_cast<std::size_t>(T), -1);
    std::int64_t emitted = 0;
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t r = req[static_cast<std::size_t>(t)], p0 = pos_of(t);
      state_slot[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(cache::slot_of(st.row(r), p0, B));
      if ((p0 + 1) % ratio == 0) {
        out_slot[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(cache::slot_of(out_t.row(r), p0 / ratio, B));
        ++emitted;
      }
    }
    ops::compressor_append(kvp, sc, as_shape(ape, {ratio, cw}), positions,
                           stage(state_slot.data(), dtype::i32, {T}), state, p, ex_);
    const cache::key_pages keys = indexer ? pool.key_view(layer_) : cache::key_pages{};
    ops::compressor_emit(positions, row_req_v, stage(st.view()), state, norm, freq_,
                         stage(out_slot.data(), dtype::i32, {T}), p, indexer ? nullptr : &kv,
                         indexer ? &keys : nullptr, tensor_view(), ex_);
    return emitted;
  };
  if (ratio_ != 0)
    tr.emitted = compress(w_.compressor->wkv, w_.compressor->wgate, comp_ape_, comp_norm_, ratio_, hd, false);

  const tables comp_t(pool, seqs, layer_, region::compressed);  // CSA: the picks' slots; HCA: every entry's

  // Lightning indexer (CSA): queries, its own compressor into the key pages, then scores + top-k per row, the picks
  // sorted ascending and mapped to slots (all ops: the picks never leave the device).
  tensor_view idx_b, len_b, cslots_b;
  auto buf_i32 = [&](std::int64_t r, std::int64_t c) { return mem.take(dtype::i32, {r, c}); };
  if (ratio_ == 4) {
    const indexer_weights& ix = *w_.indexer;
    const std::int64_t ih = cf.index_n_heads, ic = cf.index_head_dim;
    const tensor_view qi = buf(T * ih, ic), wts = buf(T, ih);
    const tensor_view qi3 = as_shape(qi, {T, ih, ic});
    ops::linear(qr, ix.wq_b, as_shape(qi, {T, ih * ic}), ex_, nm_);
    ops::rope(qi3, positions, freq_, ic - rd, false, ex_);
    round_cols(nm_, qi, T * ih, ic, ic - rd, rd);
    ops::hadamard(qi, qi, ex_);
    round_cols(nm_, qi, T * ih, ic, 0, ic);  // §1 I3: bf16(f32(sum · c^-1/2))
    ops::block_round_trip(qi, qi, ops::quant_format::fp4_e2m1, 32, ex_);
    ops::linear(x, ix.weights_proj, wts, ex_, nm_);  // official: the BF16 GEMM (§1 I5)
    // the head weights scaled by index_head_dim^-1/2 · index_n_heads^-1/2 (spec §3.5)
    ops::scale(wts, static_cast<float>(1.0 / std::sqrt(double(ic)) / std::sqrt(double(ih))), ex_);
    round_cols(nm_, wts, T, ih, 0, ih);
    tr.emitted_index = compress(ix.compressor.wkv, ix.compressor.wgate, index_ape_, index_norm_, 4, ic, true);

    // k = min(index_topk, the most keys any row sees): each row then keeps min(index_topk, its keys), as always.
    std::vector<std::int32_t> n_keys(static_cast<std::size_t>(T));
    std::int64_t most = 1;
    for (std::int64_t t = 0; t < T; ++t) {
      n_keys[static_cast<std::size_t>(t)] = static_cast<std::int32_t>((pos_of(t) + 1) / 4);
      most = std::max<std::int64_t>(most, n_keys[static_cast<std::size_t>(t)]);
    }
    const std::int64_t k = std::min(cf.index_topk, most);
    const tables key_t(pool, seqs, layer_, region::keys);
    const cache::key_pages keys = pool.key_view(layer_);
    idx_b = buf_i32(T, k);
    len_b = mem.take(dtype::i32, {T});
    cslots_b = buf_i32(T, k);
    exec ix_ex = ex_;
    if (dev_.is_cuda()) {  // the score matrix of the CUDA backend
      const tensor_view scratch =
          mem.take(dtype::u8, {static_cast<std::int64_t>(ops::indexer_topk_workspace_bytes(T, keys))});
      ix_ex.scratch = {scratch.data(), static_cast<std::size_t>(scratch.nbytes())};
    }
    ops::indexer_topk(qi3, wts, keys, stage(key_t.view()), row_req_v, stage(n_keys.data(), dtype::i32, {T}), idx_b,
                      len_b, tensor_view(), ix_ex, nm_);
    // attend in entry order: the sum order is the same for any chunking and any ranking of the scores
    ops::sort_rows(idx_b, len_b, ex_);
    ops::to_slots(idx_b, len_b, row_req_v, stage(comp_t.view()), B, cslots_b, ex_);
  }

  // Two segments per row: the window positions ascending, then the compressed entries ascending (CSA: the sorted
  // picks' slots above; HCA: every visible entry), as slots.
  std::int64_t Kw = 1, Kc = 1;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t p0 = pos_of(t);
    Kw = std::max(Kw, std::min(W, p0 + 1));
    if (ratio_ == 128) Kc = std::max(Kc, (p0 + 1) / 128);
  }
  std::vector<std::int32_t> wslots(static_cast<std::size_t>(T * Kw), -1), wlen(static_cast<std::size_t>(T));
  std::vector<std::int32_t> cslots(static_cast<std::size_t>(ratio_ == 128 ? T * Kc : 0), -1),
      clen(static_cast<std::size_t>(T), 0);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t p0 = pos_of(t), r = req[static_cast<std::size_t>(t)];
    std::int64_t n = 0;
    for (std::int64_t s = std::max<std::int64_t>(0, p0 - W + 1); s <= p0; ++s)
      wslots[static_cast<std::size_t>(t * Kw + n++)] = static_cast<std::int32_t>(cache::slot_of(win_t.row(r), s, B));
    wlen[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(n);
    std::int64_t m = 0;
    if (ratio_ == 128)
      for (std::int64_t e = 0; e < (p0 + 1) / 128; ++e)
        cslots[static_cast<std::size_t>(t * Kc + m++)] = static_cast<std::int32_t>(cache::slot_of(comp_t.row(r), e, B));
    clen[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(m);
    if (t == T - 1) {
      tr.last_window = n;
      tr.last_compressed = m;
    }
  }
  if (ratio_ == 4 && trace) {  // the last row's picks (read back only when a trace is asked for)
    const std::vector<std::int32_t> idx = to_host<std::int32_t>(idx_b), len = to_host<std::int32_t>(len_b);
    const std::int64_t k = idx_b.shape(1), n = len[static_cast<std::size_t>(T - 1)];
    tr.last_picks.assign(idx.begin() + (T - 1) * k, idx.begin() + (T - 1) * k + n);
    tr.last_compressed = n;
  }

  // Sparse attention with sink over the two segments, then inverse RoPE.
  const tensor_view o = mem.take(dtype::f32, {T, H, hd});
  const ops::sparse_segment win{kv, stage(wslots.data(), dtype::i32, {T, Kw}), stage(wlen.data(), dtype::i32, {T})};
  const ops::sparse_segment comp =
      ratio_ == 4 ? ops::sparse_segment{kv, cslots_b, len_b}
                  : ops::sparse_segment{kv, stage(cslots.data(), dtype::i32, {T, Kc}), stage(clen.data(), dtype::i32, {T})};
  ops::sparse_mqa(q3, win, ratio_ != 0 ? &comp : nullptr, sink_, static_cast<float>(1.0 / std::sqrt(double(hd))), o,
                  tensor_view(), ex_, nm_);
  ops::rope(o, positions, freq_, nope, /*inverse=*/true, ex_);
  round_cols(nm_, o, T * H, hd, nope, rd);

  // Output: wo_a per group (heads k·H/g .. (k+1)·H/g − 1, flattened head-major), then wo_b.
  const std::int64_t g = cf.o_groups, ol = cf.o_lora_rank, gin = H * hd / g;
  const tensor_view o2 = buf(T, g * ol);
  const tensor_view ov = as_shape(o, {T, H * hd});
  for (std::int64_t k = 0; k < g; ++k) {
    const ops::qweight group =
        wo_a_stored_ ? ops::qweight{w_.wo_a.weight.narrow(0, k * ol, ol),
                                    w_.wo_a.scale.narrow(0, k * ol / ref::kFp8WeightTile, ol / ref::kFp8WeightTile),
                                    w_.wo_a.name}
                     : ops::qweight{wo_a_.view().narrow(0, k * ol, ol), {}, w_.wo_a.name};
    ops::linear(ov.narrow(1, k * gin, gin), group, o2.narrow(1, k * ol, ol), ex_);
  }
  // official: wo_a is a BF16 einsum (§1 S3, §4 item 8): fp32 accumulation, BF16 output
  round_cols(nm_, o2, T, g * ol, 0, g * ol);
  ops::linear(o2, w_.wo_b, y, ex_, nm_);
  for (std::int64_t s : seqs) pool.commit(s, layer_, next[s]);
}

}  // namespace dsv4::model
