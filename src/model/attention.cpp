// attention_layer: the spec §3 pipeline for one layer, token-exact under any chunking (see the header).
#include "dsv4/model/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/quant.hpp"
#include "common.hpp"
#include "dsv4/model/costs.hpp"

namespace dsv4::model {

namespace {

constexpr const char* kOp = "attention";
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using detail::rms_norm;
using detail::to_f32;

buffer f32(std::int64_t rows, std::int64_t cols) { return buffer(dtype::f32, {rows, cols}); }

float* data(const buffer& b) { return static_cast<float*>(b.data()); }

// One token of the compressor state machine (spec §3.4). Returns true when entry p / ratio is complete and written
// to out [c].
bool compressor_step(compressor_state& s, std::int64_t p, const float* kvp, const float* sc, const float* ape,
                     float* out) {
  const std::int64_t r = s.ratio, c = s.width, coff = s.overlap ? 2 : 1, cw = coff * c;
  const std::int64_t row = (s.overlap ? r : 0) + p % r;
  const float* a = ape + (p % r) * cw;  // ape is added before the overlap rearrangement
  for (std::int64_t ch = 0; ch < cw; ++ch) {
    s.kv[static_cast<std::size_t>(row * cw + ch)] = kvp[ch];
    s.score[static_cast<std::size_t>(row * cw + ch)] = sc[ch] + a[ch];
  }
  if ((p + 1) % r != 0) return false;
  // Candidates per channel: overlap -> rows 0..r-1 at channel ch (previous block, low half) and rows r..2r-1 at
  // channel c + ch (this block, high half); otherwise rows 0..r-1 at ch.
  const std::int64_t rows = s.overlap ? 2 * r : r;
  for (std::int64_t ch = 0; ch < c; ++ch) {
    auto at = [&](std::int64_t k) { return static_cast<std::size_t>(k * cw + (s.overlap && k >= r ? c + ch : ch)); };
    float m = kNegInf;
    for (std::int64_t k = 0; k < rows; ++k) m = std::max(m, s.score[at(k)]);
    float den = 0.f, num = 0.f;
    for (std::int64_t k = 0; k < rows; ++k) {
      const float e = std::exp(s.score[at(k)] - m);  // exp(-inf) = 0: an empty previous block weighs nothing
      den += e;
      num += e * s.kv[at(k)];
    }
    out[ch] = num / den;
  }
  if (s.overlap) {  // this block becomes the previous block of the next entry
    std::copy(s.kv.begin() + r * cw, s.kv.begin() + 2 * r * cw, s.kv.begin());
    std::copy(s.score.begin() + r * cw, s.score.begin() + 2 * r * cw, s.score.begin());
  }
  return true;
}

}  // namespace

void compressor_state::reset() {
  const std::int64_t coff = overlap ? 2 : 1;
  const std::size_t n = static_cast<std::size_t>(coff * ratio * coff * width);
  kv.assign(n, 0.f);
  score.assign(n, kNegInf);
}

std::int64_t attention_cache::state_bytes() const {
  return static_cast<std::int64_t>(sizeof(float) *
                                   (main.kv.size() + main.score.size() + index.kv.size() + index.score.size()));
}

std::int64_t attention_cache::bytes() const {
  return (std::min(pos, window) + n_comp_) * entry_bytes + n_keys_ * key_bytes + state_bytes();
}

std::int64_t attention_cache::capacity_bytes() const {
  return (std::min(capacity, window) + (ratio ? capacity / ratio : 0)) * entry_bytes +
         (ratio == 4 ? capacity / 4 : 0) * key_bytes + state_bytes();
}

void attention_cache::reserve() {
  const std::size_t entries = static_cast<std::size_t>(ratio ? capacity / ratio : 0);
  const std::size_t nkeys = static_cast<std::size_t>(ratio == 4 ? capacity / 4 : 0);
  if (storage == kv_storage::fp32) {
    comp.reserve(entries * static_cast<std::size_t>(head_dim));
    keys.reserve(nkeys * static_cast<std::size_t>(index_dim));
  } else {
    comp_packed.reserve(entries * static_cast<std::size_t>(entry_bytes));
    keys_packed.reserve(nkeys * static_cast<std::size_t>(key_bytes));
  }
}

void attention_cache::reset() {
  pos = 0;
  n_comp_ = n_keys_ = 0;
  std::fill(ring.begin(), ring.end(), 0.f);
  std::fill(ring_packed.begin(), ring_packed.end(), std::uint8_t{0});
  comp.clear();
  keys.clear();
  comp_packed.clear();
  keys_packed.clear();
  if (main.ratio) main.reset();
  if (index.ratio) index.reset();
}

namespace {

// Deployed entry: [nope FP8 codes][rope dims BF16, little-endian][nope/64 E8M0][zero pad].
void pack_entry(const float* v, std::int64_t hd, std::int64_t nope, std::uint8_t* out) {
  const std::int64_t rd = hd - nope;
  const tensor_view x(const_cast<float*>(v), dtype::f32, {1, nope});
  ops::block_quantize(x, tensor_view(out, dtype::fp8_e4m3, {1, nope}),
                      tensor_view(out + nope + 2 * rd, dtype::ue8m0, {1, nope / 64}), 64);
  for (std::int64_t i = 0; i < rd; ++i) {
    const std::uint16_t b = bf16::from_float(v[nope + i]).bits;
    out[nope + 2 * i] = static_cast<std::uint8_t>(b);
    out[nope + 2 * i + 1] = static_cast<std::uint8_t>(b >> 8);
  }
}

void unpack_entry(const std::uint8_t* in, std::int64_t hd, std::int64_t nope, float* v) {
  const std::int64_t rd = hd - nope;
  const std::uint8_t* sc = in + nope + 2 * rd;
  for (std::int64_t i = 0; i < nope; ++i) v[i] = fp8_e4m3{in[i]}.to_float() * ue8m0{sc[i / 64]}.to_float();
  for (std::int64_t i = 0; i < rd; ++i)
    v[nope + i] = bf16{static_cast<std::uint16_t>(in[nope + 2 * i] | (in[nope + 2 * i + 1] << 8))}.to_float();
}

// Deployed key: [c/2 FP4 bytes, element 2i in the low nibble][c/32 E8M0].
void pack_key(const float* v, std::int64_t c, std::uint8_t* out) {
  ops::block_quantize(tensor_view(const_cast<float*>(v), dtype::f32, {1, c}), tensor_view(out, dtype::fp4_e2m1, {1, c}),
                      tensor_view(out + c / 2, dtype::ue8m0, {1, c / 32}), 32);
}

void unpack_key(const std::uint8_t* in, std::int64_t c, float* v) {
  for (std::int64_t i = 0; i < c; i += 2) {
    const fp4x2 pair{in[i / 2]};
    const float s = ue8m0{in[c / 2 + i / 32]}.to_float();
    v[i] = pair.lo().to_float() * s;
    v[i + 1] = pair.hi().to_float() * s;
  }
}

}  // namespace

void attention_cache::read_ring(float* rows) const {
  if (storage == kv_storage::fp32) {
    std::copy(ring.begin(), ring.end(), rows);
    return;
  }
  for (std::int64_t s = 0; s < ring_rows; ++s)
    unpack_entry(ring_packed.data() + s * entry_bytes, head_dim, nope, rows + s * head_dim);
}

void attention_cache::write_ring(std::int64_t slot, const float* v) {
  if (storage == kv_storage::fp32) std::copy(v, v + head_dim, ring.begin() + slot * head_dim);
  else pack_entry(v, head_dim, nope, ring_packed.data() + slot * entry_bytes);
}

void attention_cache::append_entry(const float* v) {
  if (storage == kv_storage::fp32) {
    comp.insert(comp.end(), v, v + head_dim);
  } else {
    comp_packed.resize(comp_packed.size() + static_cast<std::size_t>(entry_bytes), 0);
    pack_entry(v, head_dim, nope, comp_packed.data() + n_comp_ * entry_bytes);
  }
  ++n_comp_;
}

void attention_cache::read_entry(std::int64_t j, float* v) const {
  if (storage == kv_storage::fp32) std::copy(comp.begin() + j * head_dim, comp.begin() + (j + 1) * head_dim, v);
  else unpack_entry(comp_packed.data() + j * entry_bytes, head_dim, nope, v);
}

void attention_cache::append_key(const float* v) {
  if (storage == kv_storage::fp32) {
    keys.insert(keys.end(), v, v + index_dim);
  } else {
    keys_packed.resize(keys_packed.size() + static_cast<std::size_t>(key_bytes), 0);
    pack_key(v, index_dim, keys_packed.data() + n_keys_ * key_bytes);
  }
  ++n_keys_;
}

void attention_cache::read_keys(std::int64_t n, float* out) const {
  if (storage == kv_storage::fp32) {
    std::copy(keys.begin(), keys.begin() + n * index_dim, out);
    return;
  }
  for (std::int64_t j = 0; j < n; ++j) unpack_key(keys_packed.data() + j * key_bytes, index_dim, out + j * index_dim);
}

attention_cache make_attention_cache(const model_config& cfg, std::int64_t layer, std::int64_t capacity,
                                     kv_storage storage) {
  const int r = cfg.compress_ratio(layer);
  attention_cache c;
  c.capacity = capacity > 0 ? capacity : cfg.max_position_embeddings;
  DSV4_CHECK(c.capacity <= limits::positions, kOp, "capacity ", c.capacity, " exceeds the supported ",
             limits::positions, " positions");
  c.head_dim = cfg.head_dim;
  c.nope = cfg.nope_head_dim();
  c.window = cfg.window_size;
  c.ring_rows = std::min(c.window, c.capacity);  // a window longer than the sequence can ever be is never filled
  c.ratio = r;
  c.index_dim = r == 4 ? cfg.index_head_dim : 0;
  c.storage = storage;
  if (storage == kv_storage::fp32) {
    c.entry_bytes = 4 * cfg.head_dim;
    c.key_bytes = 4 * c.index_dim;
    c.ring.assign(static_cast<std::size_t>(c.ring_rows * cfg.head_dim), 0.f);
  } else {
    c.entry_bytes = kv_entry_bytes(cfg, kv_layout::deployed);
    c.key_bytes = r == 4 ? index_key_bytes(cfg, kv_layout::deployed) : 0;
    c.ring_packed.assign(static_cast<std::size_t>(c.ring_rows * c.entry_bytes), 0);
  }
  if (r) c.main = {r, r == 4, cfg.head_dim, {}, {}};
  if (r == 4) c.index = {4, true, cfg.index_head_dim, {}, {}};
  c.reset();
  return c;
}

attention_layer::attention_layer(const model_config& cfg, const block_weights& w, const exec& ex)
    : cfg_(cfg), layer_(w.layer), ratio_(w.ratio), kind_(cfg.kind(w.layer)), ex_(ex),
      rope_(rope_table::for_layer(cfg, w.layer)), w_(w.attn) {
  DSV4_CHECK(ratio_ == cfg.compress_ratio(layer_), kOp, "layer ", layer_, " weights are for ratio ", ratio_,
             ", the config says ", cfg.compress_ratio(layer_));
  q_norm_ = to_f32(w_.q_norm);
  kv_norm_ = to_f32(w_.kv_norm);
  sink_ = to_f32(w_.attn_sink);
  if (w_.compressor) {
    comp_norm_ = to_f32(w_.compressor->norm);
    comp_ape_ = to_f32(w_.compressor->ape);
  }
  if (w_.indexer) {
    index_norm_ = to_f32(w_.indexer->compressor.norm);
    index_ape_ = to_f32(w_.indexer->compressor.ape);
  }
  // wo_a decoded once: its groups are row ranges that need not align with the 128-row FP8 tiles.
  const tensor_view& wa = w_.wo_a.weight;
  const std::int64_t N = wa.shape(0), K = wa.shape(1);
  wo_a_.resize(static_cast<std::size_t>(N * K));
  if (wa.dt() == dtype::fp8_e4m3)
    ops::dequantize(wa, w_.wo_a.scale, tensor_view(wo_a_.data(), dtype::f32, {N, K}), 128, 128, ex_);
  else
    wo_a_ = to_f32(wa);  // a dequantized (BF16 / F32) checkpoint: widen
}

attention_cache attention_layer::new_cache(std::int64_t capacity, kv_storage storage) const {
  return make_attention_cache(cfg_, layer_, capacity, storage);
}

void attention_layer::emit_main(attention_cache& c, std::int64_t j, std::vector<float>& e) const {
  const std::int64_t hd = cfg_.head_dim, nope = cfg_.nope_head_dim();
  rms_norm(e.data(), hd, comp_norm_.data(), cfg_.norm_eps);
  rope_.apply(e.data(), nope, ratio_ * j);  // the first position of block j
  const tensor_view v(e.data(), dtype::f32, {1, hd});
  ops::block_round_trip(v.narrow(1, 0, nope), v.narrow(1, 0, nope), ops::quant_format::fp8_e4m3, 64, ex_);
  c.append_entry(e.data());
}

void attention_layer::emit_index(attention_cache& c, std::int64_t j, std::vector<float>& e) const {
  const std::int64_t ic = cfg_.index_head_dim;
  rms_norm(e.data(), ic, index_norm_.data(), cfg_.norm_eps);
  rope_.apply(e.data(), ic - cfg_.rope_head_dim, 4 * j);
  const tensor_view v(e.data(), dtype::f32, {1, ic});
  ops::hadamard(v, v, ex_);
  ops::block_round_trip(v, v, ops::quant_format::fp4_e2m1, 32, ex_);
  c.append_key(e.data());
}

void attention_layer::forward(const tensor_view& x, attention_cache& c, const tensor_view& y,
                              attention_trace* trace) const {
  const model_config& cf = cfg_;
  const std::int64_t D = cf.dim, H = cf.n_heads, hd = cf.head_dim, nope = cf.nope_head_dim(), W = cf.window_size;
  DSV4_CHECK(x.rank() == 2 && x.dt() == dtype::f32 && x.shape(1) == D && x.is_contiguous(), kOp, "x is ",
             x.describe(), ", expected contiguous f32[T, ", D, "]");
  const std::int64_t T = x.shape(0);
  DSV4_CHECK(T >= 1, kOp, "no tokens (x is ", x.describe(), ")");
  DSV4_CHECK(y.rank() == 2 && y.dt() == dtype::f32 && y.shape(0) == T && y.shape(1) == D && y.is_contiguous(), kOp,
             "y is ", y.describe(), ", expected contiguous f32[", T, ", ", D, "]");
  DSV4_CHECK(c.head_dim == hd && c.window == W && c.ratio == ratio_, kOp,
             "the cache was made for another layer shape (head_dim ", c.head_dim, ", window ", c.window,
             ", ratio ", c.ratio, "; this layer: ", hd, ", ", W, ", ", ratio_, ")");
  DSV4_CHECK(c.pos + T <= c.capacity, kOp, "positions [", c.pos, ", ", c.pos + T, ") run past the cache capacity of ",
             c.capacity, " tokens");
  const std::int64_t p0 = c.pos;
  attention_trace local;
  attention_trace& tr = trace ? *trace : local;
  tr = {};

  // Query path.
  buffer qr = f32(T, cf.q_lora_rank), q = f32(T, H * hd);
  ops::linear(x, w_.wq_a, qr, ex_);
  for (std::int64_t t = 0; t < T; ++t) rms_norm(data(qr) + t * cf.q_lora_rank, cf.q_lora_rank, q_norm_.data(), cf.norm_eps);
  ops::linear(qr, w_.wq_b, q, ex_);
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) {
      float* v = data(q) + (t * H + h) * hd;
      rms_norm(v, hd, nullptr, cf.norm_eps);  // per-head RMS rescale, no weight
      rope_.apply(v, nope, p0 + t);
    }

  // Window KV path: new rows after the Wr = min(W, capacity) rows of the ring (in slot order).
  const std::int64_t Wr = c.ring_rows;
  buffer win = f32(Wr + T, hd);
  c.read_ring(data(win));
  const tensor_view kv_new = win.view().narrow(0, Wr, T);
  ops::linear(x, w_.wkv, kv_new, ex_);
  for (std::int64_t t = 0; t < T; ++t) {
    float* v = data(win) + (Wr + t) * hd;
    rms_norm(v, hd, kv_norm_.data(), cf.norm_eps);
    rope_.apply(v, nope, p0 + t);
  }
  ops::block_round_trip(kv_new.narrow(1, 0, nope), kv_new.narrow(1, 0, nope), ops::quant_format::fp8_e4m3, 64, ex_);
  if (c.storage == kv_storage::deployed)  // attend to exactly what the cache will hold: BF16 rope dims
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t i = nope; i < hd; ++i) {
        float& v = data(win)[(Wr + t) * hd + i];
        v = bf16::from_float(v).to_float();
      }

  // Main compressor (CSA and HCA).
  std::vector<float> entry;
  if (ratio_ != 0) {
    const std::int64_t cw = (ratio_ == 4 ? 2 : 1) * hd;
    buffer kvp = f32(T, cw), sc = f32(T, cw);
    ops::linear(x, w_.compressor->wkv, kvp, ex_);
    ops::linear(x, w_.compressor->wgate, sc, ex_);
    entry.resize(static_cast<std::size_t>(hd));
    for (std::int64_t t = 0; t < T; ++t)
      if (compressor_step(c.main, p0 + t, data(kvp) + t * cw, data(sc) + t * cw, comp_ape_.data(), entry.data())) {
        emit_main(c, (p0 + t) / ratio_, entry);
        ++tr.emitted;
      }
  }

  // Lightning indexer (CSA): queries, its own compressor, scores and top-k per token.
  std::vector<std::vector<std::int32_t>> picks(static_cast<std::size_t>(ratio_ == 4 ? T : 0));
  if (ratio_ == 4) {
    const indexer_weights& ix = *w_.indexer;
    const std::int64_t ih = cf.index_n_heads, ic = cf.index_head_dim;
    buffer qi = f32(T * ih, ic), wts = f32(T, ih);
    ops::linear(qr, ix.wq_b, tensor_view(qi.data(), dtype::f32, {T, ih * ic}), ex_);
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t h = 0; h < ih; ++h) rope_.apply(data(qi) + (t * ih + h) * ic, ic - cf.rope_head_dim, p0 + t);
    ops::hadamard(qi, qi, ex_);
    ops::block_round_trip(qi, qi, ops::quant_format::fp4_e2m1, 32, ex_);
    ops::linear(x, ix.weights_proj, wts, ex_);
    const float wscale = static_cast<float>(1.0 / std::sqrt(double(ic)) / std::sqrt(double(ih)));
    for (std::int64_t i = 0; i < T * ih; ++i) data(wts)[i] *= wscale;

    buffer ikv = f32(T, 2 * ic), isc = f32(T, 2 * ic);
    ops::linear(x, ix.compressor.wkv, ikv, ex_);
    ops::linear(x, ix.compressor.wgate, isc, ex_);
    entry.resize(static_cast<std::size_t>(ic));
    for (std::int64_t t = 0; t < T; ++t)
      if (compressor_step(c.index, p0 + t, data(ikv) + t * 2 * ic, data(isc) + t * 2 * ic, index_ape_.data(),
                          entry.data())) {
        emit_index(c, (p0 + t) / 4, entry);
        ++tr.emitted_index;
      }

    // Score in blocks of tokens so a long prefill never holds a [T, n_keys] matrix.
    // k = min(index_topk, entries that exist): the result is the same set, and nothing is sized by the config alone.
    const std::int64_t E = c.n_keys(), k = std::max<std::int64_t>(1, std::min(cf.index_topk, E));
    constexpr std::int64_t kTokBlock = 64;
    std::vector<float> decoded;  // deployed storage: the FP4 keys decoded for the fp32 kernels
    const float* kp = c.keys.data();
    if (c.storage != kv_storage::fp32) {
      decoded.resize(static_cast<std::size_t>(E * ic));
      c.read_keys(E, decoded.data());
      kp = decoded.data();
    }
    const tensor_view keys(const_cast<float*>(kp), dtype::f32, {E, ic});
    for (std::int64_t t0 = 0; t0 < T; t0 += kTokBlock) {
      const std::int64_t tb = std::min(kTokBlock, T - t0);
      buffer scores = f32(tb, std::max<std::int64_t>(E, 1)), idx(dtype::i32, {tb, k});
      buffer vis(dtype::i64, {tb});
      for (std::int64_t t = 0; t < tb; ++t) static_cast<std::int64_t*>(vis.data())[t] = (p0 + t0 + t + 1) / 4;
      if (E > 0) {
        const tensor_view qb(data(qi) + t0 * ih * ic, dtype::f32, {tb, ih, ic});
        ops::indexer_scores(qb, keys, wts.view().narrow(0, t0, tb), vis, scores.view().narrow(1, 0, E), ex_);
        ops::topk_select(scores.view().narrow(1, 0, E), vis, idx, ex_);
      }
      for (std::int64_t t = 0; t < tb; ++t) {
        auto& pk = picks[static_cast<std::size_t>(t0 + t)];
        for (std::int64_t i = 0; i < k && E > 0; ++i) {
          const std::int32_t e = static_cast<const std::int32_t*>(idx.data())[t * k + i];
          if (e >= 0) pk.push_back(e);
        }
        std::sort(pk.begin(), pk.end());  // attend in entry order: the sum order is the same for any chunking
      }
    }
  }

  // Index lists: [window positions ascending ; compressed entries ascending], −1 padded.
  std::vector<std::vector<std::int32_t>> lists(static_cast<std::size_t>(T));
  std::int64_t K = 1;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t p = p0 + t;
    auto& l = lists[static_cast<std::size_t>(t)];
    for (std::int64_t s = std::max<std::int64_t>(0, p - W + 1); s <= p; ++s)
      l.push_back(static_cast<std::int32_t>(s >= p0 ? Wr + (s - p0) : s % W));
    const std::int64_t nw = static_cast<std::int64_t>(l.size());
    if (ratio_ == 4) {
      for (std::int32_t e : picks[static_cast<std::size_t>(t)]) l.push_back(static_cast<std::int32_t>(Wr + T + e));
    } else if (ratio_ == 128) {
      for (std::int64_t e = 0; e < (p + 1) / 128; ++e) l.push_back(static_cast<std::int32_t>(Wr + T + e));
    }
    K = std::max<std::int64_t>(K, static_cast<std::int64_t>(l.size()));
    if (t == T - 1) {
      tr.last_window = nw;
      tr.last_compressed = static_cast<std::int64_t>(l.size()) - nw;
      if (ratio_ == 4) tr.last_picks = picks[static_cast<std::size_t>(t)];
    }
  }
  buffer idx(dtype::i32, {T, K});
  auto* ip = static_cast<std::int32_t*>(idx.data());
  std::fill(ip, ip + T * K, -1);
  for (std::int64_t t = 0; t < T; ++t)
    std::copy(lists[static_cast<std::size_t>(t)].begin(), lists[static_cast<std::size_t>(t)].end(), ip + t * K);

  // Sparse attention with sink over [window ; compressed], then inverse RoPE.
  buffer o(dtype::f32, {T, H, hd});
  const std::int64_t nc = c.n_comp();
  tensor_view comp = nc > 0 ? tensor_view(c.comp.data(), dtype::f32, {nc, hd}) : tensor_view();
  std::vector<float> used_rows;  // deployed storage: only the referenced entries, decoded, in entry order
  if (c.storage != kv_storage::fp32 && nc > 0) {
    std::vector<std::int32_t> used;
    for (std::int64_t i = 0; i < T * K; ++i)
      if (ip[i] >= Wr + T) used.push_back(ip[i] - static_cast<std::int32_t>(Wr + T));
    std::sort(used.begin(), used.end());
    used.erase(std::unique(used.begin(), used.end()), used.end());
    used_rows.resize(std::max<std::size_t>(used.size(), 1) * static_cast<std::size_t>(hd));
    for (std::size_t u = 0; u < used.size(); ++u) c.read_entry(used[u], used_rows.data() + u * static_cast<std::size_t>(hd));
    for (std::int64_t i = 0; i < T * K; ++i)
      if (ip[i] >= Wr + T)
        ip[i] = static_cast<std::int32_t>(
            Wr + T +
            (std::lower_bound(used.begin(), used.end(), ip[i] - static_cast<std::int32_t>(Wr + T)) - used.begin()));
    comp = used.empty() ? tensor_view()
                        : tensor_view(used_rows.data(), dtype::f32, {static_cast<std::int64_t>(used.size()), hd});
  }
  ops::sparse_attention(tensor_view(q.data(), dtype::f32, {T, H, hd}), win, comp, idx,
                        tensor_view(const_cast<float*>(sink_.data()), dtype::f32, {H}),
                        static_cast<float>(1.0 / std::sqrt(double(hd))), o, ex_);
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) rope_.apply(data(o) + (t * H + h) * hd, nope, p0 + t, /*inverse=*/true);

  // Output: wo_a per group (heads k·H/g .. (k+1)·H/g − 1, flattened head-major), then wo_b.
  const std::int64_t g = cf.o_groups, ol = cf.o_lora_rank, gin = H * hd / g;
  buffer o2 = f32(T, g * ol);
  const tensor_view ov(o.data(), dtype::f32, {T, H * hd});
  const tensor_view wa(const_cast<float*>(wo_a_.data()), dtype::f32, {g * ol, gin});
  for (std::int64_t k = 0; k < g; ++k)
    ops::linear(ov.narrow(1, k * gin, gin), ops::qweight{wa.narrow(0, k * ol, ol), {}},
                o2.view().narrow(1, k * ol, ol), ex_);
  ops::linear(o2, w_.wo_b, y, ex_);

  // The ring keeps the last W positions.
  for (std::int64_t t = std::max<std::int64_t>(0, T - W); t < T; ++t)
    c.write_ring((p0 + t) % W, data(win) + (Wr + t) * hd);
  c.pos += T;
}

}  // namespace dsv4::model
