// bind_weights: the spec §1.2 inventory, checked tensor by tensor against the config; all problems in one error.
#include "dsv4/model/weights.hpp"

#include "dsv4/ops/memory.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "dsv4/error.hpp"

namespace dsv4::model {

namespace {

using io::st_dtype;
using shape_t = std::vector<std::int64_t>;

std::string shape_str(const shape_t& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string dtypes_str(std::initializer_list<st_dtype> ts) {
  std::string out;
  for (auto t : ts) out += (out.empty() ? "" : " or ") + std::string(io::st_dtype_name(t));
  return out;
}

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// The kinds of linear weight the checkpoints hold.
enum class lin { fp8, dense, expert };

class binder {
 public:
  binder(const io::checkpoint& c, const model_config& cfg, const bind_options& opt)
      : ckpt_(c), cfg_(cfg), opt_(opt), experts_(cfg.experts) {}

  // A plain tensor of one of `dts` with exactly `shape`; an empty view (and a recorded problem) otherwise.
  tensor_view get(const std::string& name, std::initializer_list<st_dtype> dts, const shape_t& shape) {
    const io::tensor_record* t = ckpt_.find(name);
    if (!t) {
      problem("missing tensor ", name, " (", dtypes_str(dts), " ", shape_str(shape), ")");
      return {};
    }
    used_.insert(name);
    if (std::find(dts.begin(), dts.end(), t->dt) == dts.end()) {
      problem(name, ": dtype ", io::st_dtype_name(t->dt), ", expected ", dtypes_str(dts));
      return {};
    }
    if (t->shape != shape) {
      problem(name, ": shape ", shape_str(t->shape), ", expected ", shape_str(shape), " for this config");
      return {};
    }
    tensor_view v;
    try {
      v = ckpt_.view(name);
    } catch (const error& e) {
      problem(name, ": ", e.what());
      return {};
    }
    if (opt_.verify_dense && (v.dt() == dtype::f32 || v.dt() == dtype::bf16)) check_finite(name, v);
    if (opt_.verify_quantized && (v.dt() == dtype::fp8_e4m3 || v.dt() == dtype::ue8m0)) check_codes(name, v);
    return v;
  }

  // NaN / Inf in a float tensor: named with the count and the first position.
  void check_finite(const std::string& name, const tensor_view& v) {
    const std::int64_t n = v.numel();
    std::int64_t bad = 0, first = -1;
    auto scan = [&](auto get) {
      for (std::int64_t i = 0; i < n; ++i)
        if (!std::isfinite(get(i))) {
          if (bad++ == 0) first = i;
        }
    };
    if (v.dt() == dtype::f32) scan([p = static_cast<const float*>(v.data())](std::int64_t i) { return p[i]; });
    else scan([p = static_cast<const bf16*>(v.data())](std::int64_t i) { return p[i].to_float(); });
    if (bad) problem(name, ": ", bad, " non-finite value", bad > 1 ? "s" : "", " (NaN or Inf), the first at flat index ",
                     first, " of ", shape_str(std::vector<std::int64_t>(v.shape().begin(), v.shape().end())));
  }

  // NaN FP8 codes (0x7F / 0xFF) and NaN E8M0 scales (0xFF).
  void check_codes(const std::string& name, const tensor_view& v) {
    const auto* p = static_cast<const std::uint8_t*>(v.data());
    const std::int64_t n = v.numel();
    const bool fp8 = v.dt() == dtype::fp8_e4m3;
    std::int64_t bad = 0, first = -1;
    for (std::int64_t i = 0; i < n; ++i)
      if (fp8 ? (p[i] & 0x7F) == 0x7F : p[i] == 0xFF) {
        if (bad++ == 0) first = i;
      }
    if (bad) problem(name, ": ", bad, fp8 ? " NaN FP8 code" : " NaN (0xFF) E8M0 scale", bad > 1 ? "s" : "",
                     ", the first at flat index ", first);
  }

  // prefix.weight (+ prefix.scale) of a linear layer [N, K].
  ops::qweight linear(const std::string& prefix, std::int64_t N, std::int64_t K, lin kind) {
    const std::string wn = prefix + ".weight", sn = prefix + ".scale";
    const io::tensor_record* w = ckpt_.find(wn);
    ops::qweight q;
    q.name = prefix;
    if (kind == lin::dense) {
      q.weight = get(wn, {st_dtype::BF16, st_dtype::F32}, {N, K});
      return q;
    }
    // Which format is stored: FP8 tiles, FP4 1x32 (experts), or already-dequantized BF16/F32 (no scale).
    bool fp4 = false;
    if (kind == lin::expert) {
      if (experts_ == expert_format::detect && w)
        experts_ = w->dt == st_dtype::I8 ? expert_format::fp4 : expert_format::fp8;
      fp4 = experts_ == expert_format::fp4;
    }
    if (w && (w->dt == st_dtype::BF16 || w->dt == st_dtype::F32) && !ckpt_.contains(sn)) {
      q.weight = get(wn, {st_dtype::BF16, st_dtype::F32}, {N, K});
      return q;
    }
    if (fp4) {
      if (K % 2 != 0) {
        problem(wn, ": FP4 weights need an even K, config gives ", K);
        return q;
      }
      const tensor_view bytes = get(wn, {st_dtype::I8, st_dtype::U8}, {N, K / 2});
      q.scale = get(sn, {st_dtype::F8_E8M0}, {N, K / 32});
      if (bytes.rank() == 2) q.weight = tensor_view(bytes.data(), dtype::fp4_e2m1, {N, K});
      return q;
    }
    q.weight = get(wn, {st_dtype::F8_E4M3}, {N, K});
    q.scale = get(sn, {st_dtype::F8_E8M0}, {ceil_div(N, 128), ceil_div(K, 128)});
    return q;
  }

  tensor_view norm(const std::string& name, std::int64_t n) {
    return get(name, {st_dtype::BF16, st_dtype::F32}, {n});
  }

  hc_weights hc(const std::string& prefix, std::int64_t mix, std::int64_t nscale) {
    const std::int64_t hcd = cfg_.hc_mult * cfg_.dim;
    return {get(prefix + "_fn", {st_dtype::F32}, {mix, hcd}), get(prefix + "_base", {st_dtype::F32}, {mix}),
            get(prefix + "_scale", {st_dtype::F32}, {nscale})};
  }

  compressor_weights compressor(const std::string& p, int ratio, std::int64_t c) {
    const std::int64_t coff = ratio == 4 ? 2 : 1;  // ratio 4 overlaps: two c-wide streams (spec §3.4)
    compressor_weights w;
    w.wkv = linear(p + ".wkv", coff * c, cfg_.dim, lin::dense);
    w.wgate = linear(p + ".wgate", coff * c, cfg_.dim, lin::dense);
    w.ape = get(p + ".ape", {st_dtype::F32}, {ratio, coff * c});
    w.norm = norm(p + ".norm.weight", c);
    return w;
  }

  block_weights block(const std::string& p, std::int64_t layer) {
    const model_config& c = cfg_;
    block_weights b;
    b.layer = layer;
    b.ratio = c.compress_ratio(layer);
    b.hc_attn = hc(p + "hc_attn", c.hc_mix_dim(), 3);
    b.hc_ffn = hc(p + "hc_ffn", c.hc_mix_dim(), 3);
    b.attn_norm = norm(p + "attn_norm.weight", c.dim);
    b.ffn_norm = norm(p + "ffn_norm.weight", c.dim);

    attention_weights& a = b.attn;
    const std::string at = p + "attn.";
    const std::int64_t hd = c.head_dim, H = c.n_heads, g = c.o_groups;
    a.wq_a = linear(at + "wq_a", c.q_lora_rank, c.dim, lin::fp8);
    a.q_norm = norm(at + "q_norm.weight", c.q_lora_rank);
    a.wq_b = linear(at + "wq_b", H * hd, c.q_lora_rank, lin::fp8);
    a.wkv = linear(at + "wkv", hd, c.dim, lin::fp8);
    a.kv_norm = norm(at + "kv_norm.weight", hd);
    a.wo_a = linear(at + "wo_a", g * c.o_lora_rank, H * hd / g, lin::fp8);
    a.wo_b = linear(at + "wo_b", c.dim, g * c.o_lora_rank, lin::fp8);
    a.attn_sink = get(at + "attn_sink", {st_dtype::F32}, {H});
    if (b.ratio != 0) a.compressor = compressor(at + "compressor", b.ratio, hd);
    if (b.ratio == 4) {
      indexer_weights ix;
      ix.wq_b = linear(at + "indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, lin::fp8);
      ix.weights_proj = linear(at + "indexer.weights_proj", c.index_n_heads, c.dim, lin::dense);
      ix.compressor = compressor(at + "indexer.compressor", 4, c.index_head_dim);
      a.indexer = std::move(ix);
    }

    moe_weights& m = b.ffn;
    const std::string ff = p + "ffn.";
    const std::int64_t E = c.n_routed_experts, I = c.moe_inter_dim, D = c.dim;
    m.gate = get(ff + "gate.weight", {st_dtype::BF16, st_dtype::F32}, {E, D});
    if (c.hash_routed(layer)) {
      m.tid2eid = get(ff + "gate.tid2eid", {st_dtype::I32, st_dtype::I64}, {c.vocab_size, c.n_activated_experts});
      check_tid2eid(ff + "gate.tid2eid", m.tid2eid);
    } else {
      m.bias = get(ff + "gate.bias", {st_dtype::F32}, {E});
    }
    m.experts.resize(static_cast<std::size_t>(E));  // E <= the checkpoint's tensor count (checked in bind)
    for (std::int64_t e = 0; e < E; ++e) {
      const std::string ex = ff + "experts." + std::to_string(e) + ".";
      auto& fw = m.experts[static_cast<std::size_t>(e)];
      fw.w1 = linear(ex + "w1", I, D, lin::expert);
      fw.w3 = linear(ex + "w3", I, D, lin::expert);
      fw.w2 = linear(ex + "w2", D, I, lin::expert);
    }
    if (c.n_shared_experts == 1) {
      const std::string sh = ff + "shared_experts.";
      m.shared = ops::ffn_weights{linear(sh + "w1", I, D, lin::fp8), linear(sh + "w2", D, I, lin::fp8),
                                  linear(sh + "w3", I, D, lin::fp8)};
    }
    return b;
  }

  // Every value must name an expert: [0, E).
  void check_tid2eid(const std::string& name, const tensor_view& t) {
    if (t.rank() != 2) return;  // absent or misshapen: already reported
    const std::int64_t E = cfg_.n_routed_experts, n = t.numel();
    std::int64_t bad = 0, first = -1, first_val = 0;
    auto scan = [&](auto* p) {
      for (std::int64_t i = 0; i < n; ++i)
        if (p[i] < 0 || p[i] >= E) {
          if (bad++ == 0) {
            first = i;
            first_val = static_cast<std::int64_t>(p[i]);
          }
        }
    };
    if (t.dt() == dtype::i32) scan(static_cast<const std::int32_t*>(t.data()));
    else scan(static_cast<const std::int64_t*>(t.data()));
    if (bad) {
      const std::int64_t k = t.shape(1);
      problem(name, ": ", bad, " entries outside [0, n_routed_experts = ", E, "), first at [", first / k, ", ",
              first % k, "] = ", first_val);
    }
  }

  model_weights bind() {
    const bind_options& opt = opt_;
    const model_config& c = cfg_;
    // Every routed expert has at least three weight tensors in every layer: a config asking for more expert tensors
    // than the checkpoint holds cannot describe it, and is refused before anything is sized by it.
    const std::int64_t have = static_cast<std::int64_t>(ckpt_.names().size());
    const std::int64_t need = c.n_layers * c.n_routed_experts * 3;  // < 2^31 under the config limits
    DSV4_CHECK(need <= have, "bind_weights", dsv4::detail::printable(ckpt_.root().string(), 400),
               " does not match config ", dsv4::detail::printable(cfg_.name, 400), ": ", c.n_layers, " layers x ",
               c.n_routed_experts, " routed experts need at least ", need, " expert tensors, the checkpoint holds ",
               have, " tensors in all");
    model_weights w;
    w.embed = get("embed.weight", {st_dtype::BF16, st_dtype::F32}, {c.vocab_size, c.dim});
    w.head = get("head.weight", {st_dtype::BF16, st_dtype::F32}, {c.vocab_size, c.dim});
    w.norm = norm("norm.weight", c.dim);
    w.hc_head = hc("hc_head", c.hc_mult, 1);
    for (std::int64_t i = 0; i < c.n_layers; ++i) w.layers.push_back(block("layers." + std::to_string(i) + ".", i));
    if (opt.mtp) {
      for (std::int64_t j = 0; j < c.n_mtp_layers; ++j) {
        const std::string p = "mtp." + std::to_string(j) + ".";
        mtp_weights m;
        m.block = block(p, c.n_layers + j);
        m.e_proj = linear(p + "e_proj", c.dim, c.dim, lin::fp8);
        m.h_proj = linear(p + "h_proj", c.dim, c.dim, lin::fp8);
        m.enorm = norm(p + "enorm.weight", c.dim);
        m.hnorm = norm(p + "hnorm.weight", c.dim);
        m.norm = norm(p + "norm.weight", c.dim);
        m.hc_head = hc(p + "hc_head", c.hc_mult, 1);
        w.mtp.push_back(std::move(m));
      }
    }
    // Whatever the checkpoint holds beyond the inventory means the config does not describe it.
    std::int64_t unexpected = 0;
    for (const auto& name : ckpt_.names()) {
      if (used_.count(name)) continue;
      if (!opt.mtp && name.rfind("mtp.", 0) == 0) continue;
      if (unexpected++ < 8) problem("unexpected tensor ", name, " (not part of this config's inventory)");
    }
    if (unexpected > 8) problem("... and ", unexpected - 8, " more unexpected tensors");
    w.experts = experts_;
    raise();
    return w;
  }

 private:
  static constexpr std::size_t kShow = 40;

  // Problems are collected until kShow of them: then binding stops and reports (a config that does not describe the
  // checkpoint would otherwise walk, and list, its whole inventory). Names from the checkpoint are escaped.
  template <class... P>
  void problem(const P&... parts) {
    problems_.push_back(dsv4::detail::printable(detail::concat(parts...), 300));
    if (problems_.size() >= kShow) raise(true);
  }

  void raise(bool stopped = false) const {
    if (problems_.empty()) return;
    std::ostringstream os;
    os << dsv4::detail::printable(ckpt_.root().string(), 400) << " does not match config "
       << dsv4::detail::printable(cfg_.name, 400) << ": " << problems_.size() << (stopped ? " or more" : "")
       << " problem" << (problems_.size() > 1 ? "s" : "");
    for (const auto& p : problems_) os << "\n  - " << p;
    if (stopped) os << "\n  ... stopped after the first " << kShow;
    DSV4_FAIL("bind_weights", os.str());
  }

  const io::checkpoint& ckpt_;
  const model_config& cfg_;
  const bind_options& opt_;
  expert_format experts_;
  std::vector<std::string> problems_;
  std::set<std::string, std::less<>> used_;
};

}  // namespace

model_weights bind_weights(const io::checkpoint& ckpt, const model_config& cfg, const bind_options& opt) {
  DSV4_CHECK(cfg.family == model_family::v4, "bind_weights", "config ", cfg.name,
             " is not a V4 model (the V3.2 preset exists for the calculator only)");
  cfg.validate();
  binder b(ckpt, cfg, opt);
  return b.bind();
}

// ---- upload ----------------------------------------------------------------------------------------------------

namespace {

// Calls f(tensor_view&) on every tensor the forward pass reads (everything but MTP).
template <class F>
void each_tensor(model_weights& w, F&& f) {
  auto q = [&](ops::qweight& x) {
    f(x.weight);
    f(x.scale);
  };
  auto ffn = [&](ops::ffn_weights& x) {
    q(x.w1);
    q(x.w2);
    q(x.w3);
  };
  auto hc = [&](hc_weights& x) {
    f(x.fn);
    f(x.base);
    f(x.scale);
  };
  auto comp = [&](compressor_weights& x) {
    q(x.wkv);
    q(x.wgate);
    f(x.ape);
    f(x.norm);
  };
  f(w.embed);
  f(w.head);
  f(w.norm);
  hc(w.hc_head);
  for (block_weights& b : w.layers) {
    hc(b.hc_attn);
    hc(b.hc_ffn);
    f(b.attn_norm);
    f(b.ffn_norm);
    attention_weights& a = b.attn;
    for (ops::qweight* x : {&a.wq_a, &a.wq_b, &a.wkv, &a.wo_a, &a.wo_b}) q(*x);
    for (tensor_view* x : {&a.q_norm, &a.kv_norm, &a.attn_sink}) f(*x);
    if (a.compressor) comp(*a.compressor);
    if (a.indexer) {
      q(a.indexer->wq_b);
      q(a.indexer->weights_proj);
      comp(a.indexer->compressor);
    }
    f(b.ffn.gate);
    f(b.ffn.bias);
    f(b.ffn.tid2eid);
    for (ops::ffn_weights& e : b.ffn.experts) ffn(e);
    if (b.ffn.shared) ffn(*b.ffn.shared);
  }
}

}  // namespace

device_weights upload_weights(const model_weights& w, device dev,
                              const std::function<void(std::int64_t, std::int64_t)>& progress) {
  constexpr const char* op = "upload_weights";
  device_weights out;
  out.weights = w;
  out.weights.mtp.clear();
  std::int64_t total = 0;
  each_tensor(out.weights, [&](tensor_view& t) {
    if (t.rank() == 0 && t.data() == nullptr) return;
    DSV4_CHECK(t.dev().is_cpu(), op, t.describe(), " is already on ", t.dev());
    DSV4_CHECK(t.is_contiguous(), op, t.describe(), " is not contiguous");
    total += t.nbytes();
  });
  each_tensor(out.weights, [&](tensor_view& t) {
    if (t.rank() == 0 && t.data() == nullptr) return;
    buffer b(t.dt(), t.shape(), dev);
    ops::copy(t, b.view());
    t = b.view();
    out.bytes += b.nbytes();
    out.memory.push_back(std::move(b));
    if (progress) progress(out.bytes, total);
  });
  return out;
}

}  // namespace dsv4::model
