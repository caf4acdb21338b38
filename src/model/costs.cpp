// The FLOPs / KV calculator: the counting rules of dsv4/model/costs.hpp, one term at a time.
#include "dsv4/model/costs.hpp"

#include <algorithm>
#include <cmath>

#include "dsv4/error.hpp"

namespace dsv4::model {

const char* precision_name(precision p) {
  switch (p) {
    case precision::fp4: return "FP4";
    case precision::fp8: return "FP8";
    case precision::bf16: return "BF16";
    case precision::fp32: return "FP32";
  }
  return "?";
}

double flops_weights::of(precision p) const {
  switch (p) {
    case precision::fp4: return fp4;
    case precision::fp8: return fp8;
    case precision::bf16: return bf16;
    case precision::fp32: return fp32;
  }
  return 0;
}

const char* kv_layout_name(kv_layout l) { return l == kv_layout::deployed ? "deployed FP8/BF16/FP4" : "all BF16"; }

double cost_report::flops_total() const {
  double s = 0;
  for (const auto& t : flops) s += t.flops;
  return s;
}

double cost_report::flops_fp8(const flops_weights& w) const {
  double s = 0;
  for (const auto& t : flops) s += t.flops * w.of(t.prec);
  return s;
}

double cost_report::kv_total() const {
  double s = 0;
  for (const auto& t : kv) s += t.bytes;
  return s;
}

double gqa_kv_bytes(std::int64_t layers, std::int64_t context, int kv_heads, int head_dim, int bytes_per_value) {
  return 2.0 * kv_heads * head_dim * bytes_per_value * double(layers) * double(context);
}

std::int64_t kv_entry_bytes(const model_config& c, kv_layout layout) {
  if (c.family == model_family::v32)  // 512 FP8 + 4 fp32 scales (one per 128) + 64 BF16 rope = 656
    return layout == kv_layout::bf16 ? 2 * (c.kv_lora_rank + c.rope_head_dim)
                                     : c.kv_lora_rank + 4 * (c.kv_lora_rank / 128) + 2 * c.rope_head_dim;
  if (layout == kv_layout::bf16) return 2 * c.head_dim;
  const std::int64_t nope = c.nope_head_dim();
  const std::int64_t raw = nope + 2 * c.rope_head_dim + nope / 64;  // 448 + 128 + 7 = 583
  return (raw + 7) / 8 * 8;                                          // 584: padded to 8 bytes (FlashMLA layout)
}

std::int64_t index_key_bytes(const model_config& c, kv_layout layout) {
  if (layout == kv_layout::bf16) return 2 * c.index_head_dim;
  if (c.family == model_family::v32) return c.index_head_dim + 4;  // FP8 + one fp32 scale = 132
  return c.index_head_dim / 2 + c.index_head_dim / 32;             // FP4 + E8M0 per 32 = 68
}

namespace {

// Accumulates the report's terms in first-seen order, summing repeats of a (name, precision) / name.
struct tally {
  std::vector<flops_term> flops;
  std::vector<kv_term> kv;
  void add(const std::string& name, precision p, double v) {
    for (auto& t : flops)
      if (t.name == name && t.prec == p) {
        t.flops += v;
        return;
      }
    flops.push_back({name, p, v});
  }
  void bytes(const std::string& name, double v) {
    for (auto& t : kv)
      if (t.name == name) {
        t.bytes += v;
        return;
      }
    kv.push_back({name, v});
  }
};

double d(std::int64_t v) { return static_cast<double>(v); }

// V4: one block (main layer or MTP block) at context L.
void v4_block(const model_config& c, std::int64_t layer, std::int64_t L, const cost_assumptions& a, tally& t) {
  const int r = c.compress_ratio(layer);
  const double D = d(c.dim), H = d(c.n_heads), hd = d(c.head_dim), ql = d(c.q_lora_rank), g = d(c.o_groups),
               ol = d(c.o_lora_rank), ih = d(c.index_n_heads), ic = d(c.index_head_dim), E = d(c.n_routed_experts),
               I = d(c.moe_inter_dim), k = d(c.n_activated_experts), hc = d(c.hc_mult), mix = d(c.hc_mix_dim());
  // Projections.
  t.add("projections", precision::fp8, 2 * (D * ql + ql * H * hd + D * hd + g * ol * D));
  t.add("projections", precision::bf16, 2 * H * hd * ol);  // wo_a: g groups of [ol, H·hd/g]
  // Compressors and indexer.
  const std::int64_t window = std::min(L, c.window_size);
  std::int64_t selected = 0;
  if (r != 0) {
    const double coff = r == 4 ? 2 : 1;
    t.add("compressor", precision::bf16, 2 * 2 * D * coff * hd);
    selected = r == 4 ? std::min<std::int64_t>(c.index_topk, L / 4) : L / 128;
  }
  if (r == 4) {
    const double entries = d(L / 4);
    t.add("compressor", precision::bf16, 2 * 2 * D * 2 * ic);  // the indexer's own compressor
    t.add("indexer", precision::fp8, 2 * ql * ih * ic);                // wq_b
    t.add("indexer", precision::bf16, 2 * D * ih);                     // weights_proj
    t.add("indexer scores", precision::fp4, 2 * ih * ic * entries);    // q·K over the visible compressed entries
    t.add("indexer weighting", precision::bf16, 2 * ih * entries);     // Σ_h w_h·ReLU(·), BF16 (spec §3.5 step 6)
    if (a.count_elementwise) t.add("elementwise", precision::fp32, ih * ic * std::log2(ic) + 8 * ic);
  }
  // Core attention over [window ; selected] with one shared K=V head.
  const double N = d(window + selected);
  t.add("core attention", precision::bf16, 4 * H * hd * N);
  // mHC: the mixes of the two hc_pre (fp32 GEMMs, spec §4 step 2).
  t.add("mHC", precision::fp32, 2 * 2 * hc * D * mix);
  // MoE.
  t.add("gate", precision::bf16, 2 * D * E);
  t.add("routed experts", precision::fp8, k * 3 * 2 * D * I);
  if (c.n_shared_experts > 0) t.add("shared expert", precision::fp8, d(c.n_shared_experts) * 3 * 2 * D * I);
  if (a.count_elementwise) {
    // Two hc_pre (mixes, RMS, collapse, Sinkhorn) and two hc_post; RMSNorms; per-head q RMS; RoPE on q, kv and
    // the output; softmax; SwiGLU; compressor pooling amortized over its ratio.
    const double sinkhorn = (2.0 * c.hc_sinkhorn_iters + 1) * 3 * hc * hc;
    const double mhc = 2 * (4 * hc * D + sinkhorn) + 2 * hc * D * (2 + 2 * hc);
    const double norms = 4 * (2 * D + ql + hd) + 3 * H * hd;
    const double rope = 3 * d(c.rope_head_dim) * (2 * H + 1);
    const double softmax = 5 * H * N;
    const double swiglu = 8 * I * (k + d(c.n_shared_experts));
    const double pool = r ? 6 * (r == 4 ? 2 : 1) * hd : 0;
    t.add("elementwise", precision::fp32, mhc + norms + rope + softmax + swiglu + pool);
  }
  // Cache held after L tokens.
  const kv_layout lay = a.layout;
  if (a.count_state) t.bytes("window rings", d(window) * d(kv_entry_bytes(c, lay)));
  if (r != 0) t.bytes("compressed entries", d(L / r) * d(kv_entry_bytes(c, lay)));
  if (r == 4) t.bytes("indexer keys", d(L / 4) * d(index_key_bytes(c, lay)));
  if (a.count_state && r != 0) {
    // fp32 kv_state + score_state, [coff·ratio, coff·c] each (spec §7); the indexer's [8, 2·c_I].
    const double coff = r == 4 ? 2 : 1;
    t.bytes("compressor state", 2 * 4 * (coff * r) * (coff * hd));
    if (r == 4) t.bytes("compressor state", 2 * 4 * 8 * 2 * ic);
  }
}

void v32_layer(const model_config& c, std::int64_t layer, std::int64_t L, const cost_assumptions& a, tally& t) {
  const double D = d(c.dim), H = d(c.n_heads), ql = d(c.q_lora_rank), kvl = d(c.kv_lora_rank),
               rope = d(c.rope_head_dim), nope = d(c.qk_nope_head_dim), v = d(c.v_head_dim),
               ih = d(c.index_n_heads), ic = d(c.index_head_dim), E = d(c.n_routed_experts),
               I = d(c.moe_inter_dim), k = d(c.n_activated_experts);
  t.add("projections", precision::fp8, 2 * (D * ql + ql * H * (nope + rope) + D * (kvl + rope) + H * v * D));
  t.add("projections", precision::bf16, 2 * H * nope * kvl + 2 * H * kvl * v);  // absorbed wkv_b
  t.add("indexer", precision::fp8, 2 * ql * ih * ic + 2 * D * ic);              // wq_b, wk
  t.add("indexer", precision::bf16, 2 * D * ih);                                // weights_proj
  t.add("indexer scores", precision::fp8, 2 * ih * ic * d(L));                 // over every token
  t.add("indexer weighting", precision::bf16, 2 * ih * d(L));
  const double N = d(std::min<std::int64_t>(c.index_topk, L));
  t.add("core attention", precision::bf16, 2 * H * ((kvl + rope) + kvl) * N);
  if (layer < c.n_dense_layers) {
    t.add("dense FFN", precision::fp8, 3 * 2 * D * d(c.dense_inter_dim));
  } else {
    t.add("gate", precision::bf16, 2 * D * E);
    t.add("routed experts", precision::fp8, k * 3 * 2 * D * I);
    t.add("shared expert", precision::fp8, d(c.n_shared_experts) * 3 * 2 * D * I);
  }
  if (a.count_elementwise)
    t.add("elementwise", precision::fp32,
          4 * (2 * D + ql + kvl) + 3 * rope * (H + 1) + 5 * H * N + ih * ic * std::log2(ic) +
              8 * I * (k + 1));
  t.bytes("latent entries", d(L) * d(kv_entry_bytes(c, a.layout)));
  t.bytes("indexer keys", d(L) * d(index_key_bytes(c, a.layout)));
}

}  // namespace

cost_report decode_costs(const model_config& c, std::int64_t L, const cost_assumptions& a) {
  DSV4_CHECK(L >= 1, "decode_costs", "context ", L, " must be >= 1");
  c.validate();
  tally t;
  const std::int64_t blocks = c.n_layers + (a.count_mtp ? c.n_mtp_layers : 0);
  for (std::int64_t i = 0; i < blocks; ++i) {
    if (c.family == model_family::v4) v4_block(c, i, L, a, t);
    else v32_layer(c, i, L, a, t);
  }
  const double D = d(c.dim);
  if (a.count_mtp && c.family == model_family::v4)  // e_proj + h_proj per MTP block
    t.add("projections", precision::fp8, d(c.n_mtp_layers) * 2 * 2 * D * D);
  if (a.count_head) t.add("head", precision::bf16, 2 * D * d(c.vocab_size));
  if (c.family == model_family::v4) {
    t.add("mHC", precision::fp32, 2 * d(c.hc_mult) * D * d(c.hc_mult));  // hc_head mixes
    if (a.count_elementwise) t.add("elementwise", precision::fp32, 8 * d(c.hc_mult) * D);
  }

  cost_report r;
  r.model = c.name;
  r.context = L;
  r.flops = std::move(t.flops);
  r.kv = std::move(t.kv);
  return r;
}

param_counts count_params(const model_config& c) {
  param_counts p;
  const double D = d(c.dim), H = d(c.n_heads), ql = d(c.q_lora_rank), E = d(c.n_routed_experts),
               I = d(c.moe_inter_dim), k = d(c.n_activated_experts), V = d(c.vocab_size);
  const double expert = 3 * D * I;
  auto block = [&](std::int64_t layer, double& total, double& active) {
    double shared = 0;  // what every token uses
    if (c.family == model_family::v4) {
      const int r = c.compress_ratio(layer);
      const double hd = d(c.head_dim), g = d(c.o_groups), ol = d(c.o_lora_rank), ic = d(c.index_head_dim),
                   ih = d(c.index_n_heads), hc = d(c.hc_mult), mix = d(c.hc_mix_dim());
      shared += D * ql + ql + ql * H * hd + D * hd + hd + g * ol * (H * hd / g) + D * g * ol + H;
      if (r != 0) {
        const double coff = r == 4 ? 2 : 1;
        shared += 2 * coff * hd * D + d(r) * coff * hd + hd;
      }
      if (r == 4) shared += ih * ic * ql + ih * D + 2 * 2 * ic * D + 4 * 2 * ic + ic;
      shared += 2 * (mix * hc * D + mix + 3) + 2 * D;  // mHC + attn/ffn norms
      shared += E * D + (c.hash_routed(layer) ? 0 : E);  // gate (+ bias; tid2eid is a table, not weights)
      shared += d(c.n_shared_experts) * expert;
      total += shared + E * expert;
      active += shared + k * expert;
      return;
    }
    const double kvl = d(c.kv_lora_rank), rope = d(c.rope_head_dim), nope = d(c.qk_nope_head_dim),
                 v = d(c.v_head_dim), ic = d(c.index_head_dim), ih = d(c.index_n_heads);
    shared += D * ql + ql + ql * H * (nope + rope) + D * (kvl + rope) + kvl + kvl * H * (nope + v) + H * v * D;
    shared += ql * ih * ic + D * ic + 2 * ic + D * ih + 2 * D;  // indexer + norms
    if (layer < c.n_dense_layers) {
      shared += 3 * D * d(c.dense_inter_dim);
      total += shared;
      active += shared;
      return;
    }
    shared += E * D + E + d(c.n_shared_experts) * expert;
    total += shared + E * expert;
    active += shared + k * expert;
  };
  for (std::int64_t i = 0; i < c.n_layers; ++i) block(i, p.total, p.active);
  const double hc = c.family == model_family::v4 ? d(c.hc_mult) : 0;
  const double top = V * D /* head */ + D /* norm */ + (hc > 0 ? hc * hc * D + hc + 1 : 0);
  p.embedding = V * D;
  p.total += p.embedding + top;
  p.active += top;
  for (std::int64_t j = 0; j < c.n_mtp_layers; ++j) {
    double t = 0, a = 0;
    block(c.n_layers + j, t, a);
    p.mtp += t + (c.family == model_family::v4 ? 2 * D * D + 3 * D + hc * hc * D + hc + 1 : 0);
  }
  return p;
}

}  // namespace dsv4::model
