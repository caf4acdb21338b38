// capi_ref MODEL_DIR OUT_DIR — writes seeded inputs and the C++ API's results for them as .npy files, one pair of
// files per check: the C ABI test (check.c) and the Python tests (tests/python) run the same inputs through their
// bindings and must reproduce every output file bit for bit. The model logits come from the tiny checkpoint in
// MODEL_DIR: a chunked prefill, a batched decode of two sequences and a rollback.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "dsv4/dsv4.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {

fs::path g_out;

const char* descr(dtype t) {
  switch (t) {
    case dtype::f32: return "<f4";
    case dtype::i32: return "<i4";
    case dtype::i64: return "<i8";
    default: return "|u1";  // u8 and the byte-coded formats
  }
}

// NumPy v1.0 .npy of a contiguous view (FP4 views are written as their bytes, [..., K/2]).
void save(const std::string& name, const tensor_view& v) {
  std::string shape;
  std::vector<std::int64_t> dims(v.shape().begin(), v.shape().end());
  if (v.dt() == dtype::fp4_e2m1) dims.back() /= 2;
  for (std::size_t i = 0; i < dims.size(); ++i) shape += std::to_string(dims[i]) + (dims.size() == 1 ? "," : (i + 1 < dims.size() ? ", " : ""));
  std::string dict = std::string("{'descr': '") + descr(v.dt()) + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  const std::size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::ofstream f(g_out / (name + ".npy"), std::ios::binary);
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(reinterpret_cast<const char*>(magic), 8);
  const std::uint16_t len = static_cast<std::uint16_t>(dict.size());
  f.put(static_cast<char>(len & 0xFF));
  f.put(static_cast<char>(len >> 8));
  f << dict;
  f.write(static_cast<const char*>(v.data()), v.nbytes());
  if (!f) throw std::runtime_error("cannot write " + name);
}

std::mt19937_64 rng(20261201);

buffer randn(std::initializer_list<std::int64_t> shape, float sd = 1.f) {
  buffer b(dtype::f32, shape);
  std::normal_distribution<float> nd(0.f, sd);
  for (auto& v : b.host_span<float>()) v = nd(rng);
  return b;
}

template <class T>
buffer ints(dtype dt, std::initializer_list<std::int64_t> shape, std::vector<T> v) {
  buffer b(dt, shape);
  std::memcpy(b.data(), v.data(), v.size() * sizeof(T));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: capi_ref MODEL_DIR OUT_DIR\n");
    return 2;
  }
  try {
    g_out = argv[2];
    fs::create_directories(g_out);
    // ---- number formats
    buffer x = randn({6, 256});
    save("x", x);
    buffer q8(dtype::fp8_e4m3, {6, 256}), s8(dtype::ue8m0, {6, 2});
    ops::block_quantize(x, q8, s8, 128);
    save("quant_fp8_q", q8);
    save("quant_fp8_s", s8);
    buffer q4(dtype::fp4_e2m1, {6, 256}), s4(dtype::ue8m0, {6, 8});
    ops::block_quantize(x, q4, s4, 32);
    save("quant_fp4_q", q4);
    save("quant_fp4_s", s4);
    buffer rt(dtype::f32, {6, 256});
    ops::block_round_trip(x, rt, ops::quant_format::fp4_e2m1, 32);
    save("round_trip_fp4", rt);
    buffer dq(dtype::f32, {6, 256});
    ops::dequantize(q8, s8, dq, 1, 128);
    save("dequant_fp8", dq);
    buffer h(dtype::f32, {6, 256});
    ops::hadamard(x, h);
    save("hadamard", h);
    // linear: FP8 weight [200, 256] with 128x128 tiles (scales [2, 2]).
    buffer w8(dtype::fp8_e4m3, {200, 256}), ws(dtype::ue8m0, {2, 2});
    {
      std::uniform_int_distribution<int> code(0, 0x7E);
      auto* p = static_cast<std::uint8_t*>(w8.data());
      for (std::int64_t i = 0; i < 200 * 256; ++i) p[i] = static_cast<std::uint8_t>(code(rng) | (rng() % 2 ? 0x80 : 0));
      auto* s = static_cast<std::uint8_t*>(ws.data());
      for (int i = 0; i < 4; ++i) s[i] = static_cast<std::uint8_t>(118 + i);
    }
    save("linear_w", w8);
    save("linear_ws", ws);
    buffer ly(dtype::f32, {6, 200});
    ops::linear(x, ops::qweight{w8, ws}, ly);
    save("linear_y", ly);

    // ---- mHC: n = 4 streams, D = 64
    buffer hx = randn({5, 4, 64}), fn = randn({24, 256}, 0.05f), hs = randn({3}, 0.5f), hb = randn({24}, 0.3f);
    save("hc_x", hx);
    save("hc_fn", fn);
    save("hc_scale", hs);
    save("hc_base", hb);
    buffer hy(dtype::f32, {5, 64}), hp(dtype::f32, {5, 4}), hc(dtype::f32, {5, 4, 4});
    ops::hc_pre(hx, fn, hs, hb, hy, hp, hc);
    save("hc_pre_y", hy);
    save("hc_pre_post", hp);
    save("hc_pre_comb", hc);
    buffer hf = randn({5, 64}), ho(dtype::f32, {5, 4, 64});
    save("hc_f", hf);
    ops::hc_post(hf, hx, hp, hc, ho);
    save("hc_post_out", ho);
    buffer hfn = randn({4, 256}, 0.05f), hsc = randn({1}, 0.5f), hba = randn({4}, 0.3f), hh(dtype::f32, {5, 64});
    save("hc_head_fn", hfn);
    save("hc_head_scale", hsc);
    save("hc_head_base", hba);
    ops::hc_head(hx, hfn, hsc, hba, hh);
    save("hc_head_y", hh);
    buffer sl = randn({5, 4, 4}, 2.f), so(dtype::f32, {5, 4, 4});
    save("sinkhorn_in", sl);
    ops::sinkhorn_knopp(sl, so, 20, 1e-6f);
    save("sinkhorn_out", so);

    // ---- MoE routing: T 7, E 16, k 4
    buffer gl = randn({7, 16}), gb = randn({16}, 0.1f), rw(dtype::f32, {7, 4}), ri(dtype::i32, {7, 4});
    save("route_logits", gl);
    save("route_bias", gb);
    ops::moe_route(gl, ops::route_config{ops::score_func::sqrtsoftplus, 4, 1.5f}, gb, rw, ri);
    save("route_w", rw);
    save("route_i", ri);
    buffer tid = ints<std::int64_t>(dtype::i64, {7}, {3, 0, 9, 9, 1, 5, 2});
    buffer table(dtype::i32, {10, 4});
    for (int i = 0; i < 40; ++i) static_cast<std::int32_t*>(table.data())[i] = (i * 7 + 3) % 16;
    save("hash_tokens", tid);
    save("hash_table", table);
    ops::moe_hash_route(gl, ops::route_config{ops::score_func::sqrtsoftplus, 4, 1.5f}, tid, table, rw, ri);
    save("hash_w", rw);
    save("hash_i", ri);

    // ---- attention kernels: indexer scores + top-k, sparse attention
    buffer iq = randn({3, 4, 64}), ik = randn({40, 64}), iw = randn({3, 4});
    buffer vis = ints<std::int32_t>(dtype::i32, {3}, {40, 17, 0}), sc(dtype::f32, {3, 40});
    save("idx_q", iq);
    save("idx_k", ik);
    save("idx_w", iw);
    save("idx_visible", vis);
    ops::indexer_scores(iq, ik, iw, vis, sc);
    save("idx_scores", sc);
    buffer tk(dtype::i32, {3, 8});
    ops::topk_select(sc, vis, tk);
    save("idx_topk", tk);
    buffer aq = randn({3, 2, 96}), akw = randn({10, 96}), akc = randn({6, 96}), sink = randn({2});
    buffer aidx = ints<std::int32_t>(dtype::i32, {3, 5}, {0, 1, 2, 10, 15, -1, 3, 4, 11, -1, 9, -1, -1, 12, 14});
    buffer ao(dtype::f32, {3, 2, 96});
    save("att_q", aq);
    save("att_kvw", akw);
    save("att_kvc", akc);
    save("att_sink", sink);
    save("att_idx", aidx);
    ops::sparse_attention(aq, akw, akc, aidx, sink, 0.1f, ao);
    save("att_out", ao);

    // ---- paged: fp8_ds_mla KV pages (head 96 / rope 32, B = 5), FP4 key pages (dim 64, B = 5)
    const cache::kv_geometry kg{cache::kv_format::fp8_ds_mla, 96, 32, 5};
    buffer pages(dtype::u8, {4, kg.page_bytes()});
    const cache::kv_pages kv{pages, kg};
    buffer vals = randn({7, 96}), slots = ints<std::int32_t>(dtype::i32, {7}, {0, 6, 13, 19, 2, -1, 11});
    save("kv_values", vals);
    save("kv_slots", slots);
    ops::kv_store(vals, slots, kv);
    save("kv_pages", pages);
    buffer back(dtype::f32, {7, 96});
    ops::kv_load(kv, slots, back);
    save("kv_back", back);
    const cache::key_geometry keyg{cache::key_format::fp4, 64, 5};
    buffer kpages(dtype::u8, {6, keyg.page_bytes()});
    const cache::key_pages kp{kpages, keyg};
    buffer kvals = randn({24, 64});
    std::vector<std::int32_t> kslot(24);
    for (int i = 0; i < 24; ++i) kslot[static_cast<std::size_t>(i)] = (i * 7) % 30;
    buffer kslots = ints<std::int32_t>(dtype::i32, {24}, kslot);
    save("key_values", kvals);
    save("key_slots", kslots);
    ops::key_store(kvals, kslots, kp);
    save("key_pages", kpages);
    buffer kback(dtype::f32, {24, 64});
    ops::key_load(kp, kslots, kback);
    save("key_back", kback);
    // The compressor: ratio 4, c 96, rope 32, 8 positions of one request; state rows in pages of 4 (table {1, 0}),
    // entries of positions 3 and 7 into f32 KV pages of 2 entries.
    {
      buffer ckv = randn({8, 192}), csc = randn({8, 192}), cape = randn({4, 192}, 0.5f), cnorm = randn({96}, 0.1f);
      for (auto& v : cnorm.host_span<float>()) v += 1.f;
      buffer cfreq(dtype::f32, {16});
      for (int i = 0; i < 16; ++i) cfreq.host_span<float>()[static_cast<std::size_t>(i)] = std::pow(10000.f, -i / 16.f);
      buffer cpos(dtype::i64, {8}), cslot(dtype::i32, {8}), creq = ints<std::int32_t>(dtype::i32, {8}, {0, 0, 0, 0, 0, 0, 0, 0});
      buffer ctab = ints<std::int32_t>(dtype::i32, {1, 2}, {1, 0}), cout = ints<std::int32_t>(dtype::i32, {8}, {-1, -1, -1, 1, -1, -1, -1, 0});
      for (int i = 0; i < 8; ++i) {
        cpos.host_span<std::int64_t>()[static_cast<std::size_t>(i)] = i;
        cslot.host_span<std::int32_t>()[static_cast<std::size_t>(i)] = (i < 4 ? 4 : 0) + i % 4;
      }
      buffer state(dtype::f32, {8, 384});
      ops::compressor_params p;
      p.ratio = 4;
      p.c = 96;
      p.rope_dim = 32;
      for (const auto& [n, b] : {std::pair{"comp_kv", &ckv}, std::pair{"comp_score", &csc}, std::pair{"comp_ape", &cape},
                                 std::pair{"comp_norm", &cnorm}, std::pair{"comp_freq", &cfreq}, std::pair{"comp_pos", &cpos},
                                 std::pair{"comp_slot", &cslot}, std::pair{"comp_req", &creq}, std::pair{"comp_table", &ctab},
                                 std::pair{"comp_out", &cout}})
        save(n, *b);
      ops::compressor_append(ckv, csc, cape, cpos, cslot, cache::state_rows{state, 4}, p);
      save("comp_state", state);
      const cache::kv_geometry cg{cache::kv_format::f32, 96, 32, 2};
      buffer cpages(dtype::u8, {1, cg.page_bytes()}), centries(dtype::f32, {8, 96});
      const cache::kv_pages ckvp{cpages, cg};
      ops::compressor_emit(cpos, creq, ctab, cache::state_rows{state, 4}, cnorm, cfreq, cout, p, &ckvp, nullptr,
                           centries);
      save("comp_pages", cpages);
      save("comp_entries", centries);
    }
    // Two requests: block tables [2, 3]; rows 0, 1 of request 1, row 2 of request 0.
    buffer bt = ints<std::int32_t>(dtype::i32, {2, 3}, {4, 1, 0, 2, 5, 3});
    buffer rq = ints<std::int32_t>(dtype::i32, {3}, {1, 1, 0});
    buffer nk = ints<std::int32_t>(dtype::i32, {3}, {15, 4, 11});
    buffer pq = randn({3, 4, 64}), pw = randn({3, 4}), pl(dtype::f32, {3, 16});
    save("pi_q", pq);
    save("pi_w", pw);
    save("pi_table", bt);
    save("pi_req", rq);
    save("pi_nkeys", nk);
    ops::indexer_logits(pq, pw, kp, bt, rq, nk, pl);
    save("pi_logits", pl);
    buffer pi(dtype::i32, {3, 6}), pn(dtype::i32, {3}), ps(dtype::i32, {3, 6});
    ops::topk_rows(pl, nk, pi, pn);
    save("pi_topk", pi);
    save("pi_len", pn);
    ops::to_slots(pi, pn, rq, bt, 5, ps);
    save("pi_slots", ps);
    buffer fi(dtype::i32, {3, 6}), fl(dtype::i32, {3}), fs(dtype::i32, {3, 6});
    ops::indexer_topk(pq, pw, kp, bt, rq, nk, fi, fl, fs);
    save("pi_fused_slots", fs);
    // Sparse MQA over the KV pages written above: a window and a compressed segment.
    buffer mq = randn({2, 3, 96}), msink = randn({3});
    buffer wsl = ints<std::int32_t>(dtype::i32, {2, 3}, {0, 6, 13, 19, -1, 2}), wln = ints<std::int32_t>(dtype::i32, {2}, {3, 1});
    buffer csl = ints<std::int32_t>(dtype::i32, {2, 2}, {11, 2, 6, 0}), cln = ints<std::int32_t>(dtype::i32, {2}, {2, 0});
    save("mqa_q", mq);
    save("mqa_sink", msink);
    save("mqa_wslots", wsl);
    save("mqa_wlen", wln);
    save("mqa_cslots", csl);
    save("mqa_clen", cln);
    buffer mo(dtype::f32, {2, 3, 96}), mlse(dtype::f32, {2, 3});
    const ops::sparse_segment win{kv, wsl, wln}, comp{kv, csl, cln};
    ops::sparse_mqa(mq, win, &comp, msink, 0.1f, mo, mlse);
    save("mqa_out", mo);
    save("mqa_lse", mlse);

    // ---- the model: a 30-token prompt in chunks of 8, then a batched decode of 2 sequences, then a rollback.
    const model::model_config cfg = model::load_config(argv[1]);
    const io::checkpoint ck = io::checkpoint::open(argv[1]);
    const model::model_weights w = model::bind_weights(ck, cfg);
    const model::transformer tf(cfg, w);
    const std::int64_t V = cfg.vocab_size;
    std::vector<std::int64_t> prompt(30);
    for (int i = 0; i < 30; ++i) prompt[static_cast<std::size_t>(i)] = (i * 37 + 11) % V;
    save("model_prompt", tensor_view(prompt.data(), dtype::i64, {30}));
    buffer lg(dtype::f32, {30, V});
    model::sequence_state a = tf.new_sequence(64), b = tf.new_sequence(64);
    for (std::int64_t t0 = 0; t0 < 30; t0 += 8) {
      const std::int64_t n = std::min<std::int64_t>(8, 30 - t0);
      tf.forward(std::span<const std::int64_t>(prompt.data() + t0, static_cast<std::size_t>(n)), a,
                 lg.view().narrow(0, t0, n));
    }
    save("model_logits", lg);
    tf.forward(std::span<const std::int64_t>(prompt.data(), 5), b, {});
    const std::int64_t ta[2] = {7, 8}, tb[1] = {9};
    buffer la(dtype::f32, {2, V}), lb(dtype::f32, {1, V});
    const model::transformer::batch_entry e[2] = {{ta, &a, la, {}}, {tb, &b, lb, {}}};
    tf.forward_batch(e);
    save("model_batch_a", la);
    save("model_batch_b", lb);
    a.truncate(31);
    buffer lr(dtype::f32, {1, V});
    const std::int64_t tr[1] = {3};
    tf.forward(tr, a, lr);
    save("model_rollback", lr);
    // The official numerics policy: the same 30-token prompt in one call.
    const model::transformer tfo(cfg, w, {}, {}, numerics::official);
    model::sequence_state o = tfo.new_sequence(64);
    buffer lo(dtype::f32, {30, V});
    tfo.forward(prompt, o, lo);
    save("model_official", lo);
    std::printf("capi_ref: wrote the inputs and C++ results to %s\n", argv[2]);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "capi_ref: %s\n", e.what());
    return 1;
  }
}
