// The paged-cache ops on CUDA against the host backends on the same pages (dsv4/cuda/paged.hpp): page writes byte for
// byte (every byte of the pages, the untouched ones included), loads, compressor rows, slots and top-k bitwise, FP4
// index scores bitwise (the exact score), FP8 index scores and attention within fp32 rounding; the device-side checks
// (slots, block tables, lengths out of range: skipped and reported), empty rows, garbage past len, a padded head, and
// a decode step (append, fused indexer top-k, sparse MQA) captured as a CUDA graph and replayed with new lengths and
// block tables against eager runs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "cuda_harness.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One buffer on the host and its device twin with the same bytes.
struct twin {
  buffer h, d;
  twin(dtype dt, std::initializer_list<std::int64_t> shape) : h(dt, shape), d(dt, shape, kGpu) {}
  void push() { ops::copy(h, d); }
  std::vector<std::uint8_t> device_bytes() const { return bytes_of(to_host(d)); }
};

twin i32_twin(std::initializer_list<std::int64_t> shape, const std::vector<std::int32_t>& v) {
  twin t(dtype::i32, shape);
  std::copy(v.begin(), v.end(), t.h.host_span<std::int32_t>().begin());
  t.push();
  return t;
}
twin f32_twin(std::initializer_list<std::int64_t> shape, const std::vector<float>& v) {
  twin t(dtype::f32, shape);
  std::copy(v.begin(), v.end(), t.h.host_span<float>().begin());
  t.push();
  return t;
}

// Pages filled with `fill` on both sides.
twin page_twin(std::int64_t pages, std::int64_t page_bytes, std::uint8_t fill) {
  twin t(dtype::u8, {pages, page_bytes});
  std::fill(t.h.host_span<std::uint8_t>().begin(), t.h.host_span<std::uint8_t>().end(), fill);
  t.push();
  return t;
}

std::vector<std::int32_t> shuffled(std::int64_t n, std::uint64_t seed) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

// max |a − b| / (1 + |a|) (infinities must match exactly)
double max_diff(const buffer& a, const buffer& b) {
  double m = 0;
  const auto x = a.host_span<float>(), y = b.host_span<float>();
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isinf(x[i]) || std::isinf(y[i])) {
      if (x[i] != y[i]) return kInf;
      continue;
    }
    m = std::max(m, std::fabs(double(x[i]) - y[i]) / (1 + std::fabs(double(x[i]))));
  }
  return m;
}

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("paged stores and loads on CUDA: ref's page bytes (every byte), ref's loads") {
  const std::int64_t T = 40;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<std::int32_t> sl = shuffled(106, 4);
  sl.resize(static_cast<std::size_t>(T));
  sl[3] = -1;
  sl[17] = -1;
  const twin slots = i32_twin({T}, sl);
  for (cache::kv_format f : {cache::kv_format::fp8_ds_mla, cache::kv_format::f32}) {
    CAPTURE(cache::kv_format_name(f));
    const cache::kv_geometry g{f, 512, 64, 53};
    std::vector<float> v(static_cast<std::size_t>(T * 512));
    for (auto& x : v) x = nd(rng);
    const twin vals = f32_twin({T, 512}, v);
    twin pages = page_twin(2, g.page_bytes(), 0x5A);
    ops::kv_store(vals.h, slots.h, {pages.h.view(), g}, on(backend::ref));
    ops::kv_store(vals.d, slots.d, {pages.d.view(), g});
    CHECK(pages.device_bytes() == bytes_of(pages.h));
    twin back(dtype::f32, {T, 512});
    ops::kv_load({pages.h.view(), g}, slots.h, back.h, on(backend::ref));
    ops::kv_load({pages.d.view(), g}, slots.d, back.d);
    CHECK(back.device_bytes() == bytes_of(back.h));
  }
  for (cache::key_format f : {cache::key_format::fp4, cache::key_format::fp8}) {
    CAPTURE(cache::key_format_name(f));
    const cache::key_geometry g{f, 128, 61};
    std::vector<float> v(static_cast<std::size_t>(T * 128));
    for (auto& x : v) x = nd(rng);
    const twin vals = f32_twin({T, 128}, v);
    twin pages = page_twin(2, g.page_bytes(), 0xC3);
    ops::key_store(vals.h, slots.h, {pages.h.view(), g}, on(backend::ref));
    ops::key_store(vals.d, slots.d, {pages.d.view(), g});
    CHECK(pages.device_bytes() == bytes_of(pages.h));
    twin back(dtype::f32, {T, 128});
    ops::key_load({pages.h.view(), g}, slots.h, back.h, on(backend::ref));
    ops::key_load({pages.d.view(), g}, slots.d, back.d);
    CHECK(back.device_bytes() == bytes_of(back.h));
  }
}

TEST_CASE("paged stores on CUDA: a slot out of range is skipped and reported; non-finite values are reported") {
  const cache::kv_geometry g{cache::kv_format::fp8_ds_mla, 512, 64, 4};
  twin pages = page_twin(2, g.page_bytes(), 0x11);
  std::vector<float> v(2 * 512, 1.f);
  const twin vals = f32_twin({2, 512}, v);
  const twin slots = i32_twin({2}, {1, 8});  // 8 slots exist: slot 8 is out of range
  stream_and_status ss;
  ops::kv_store(vals.d, slots.d, {pages.d.view(), g}, ss.deferred());
  CHECK(ss.word() == status_index_oob);
  check_status(ss.deferred());
  ops::kv_store(vals.h, i32_twin({2}, {1, -1}).h, {pages.h.view(), g}, on(backend::ref));  // what slot 1 alone gives
  CHECK(pages.device_bytes() == bytes_of(pages.h));
  v[700] = std::nanf("");
  const twin bad = f32_twin({2, 512}, v);
  check_error([&] { ops::kv_store(bad.d, i32_twin({2}, {0, 2}).d, {pages.d.view(), g}); }, {"kv_store", "inf or NaN"});
}

TEST_CASE("compressor_append and to_slots on CUDA: ref's rows and slots; bad table entries reported") {
  const std::int64_t T = 9, cw = 256;
  std::vector<float> kv(static_cast<std::size_t>(T * cw)), sc(kv.size()), ape(static_cast<std::size_t>(4 * cw));
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd;
  for (auto* vec : {&kv, &sc, &ape})
    for (auto& x : *vec) x = nd(rng);
  std::vector<std::int64_t> pos(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) pos[static_cast<std::size_t>(t)] = 100 + 3 * t;
  twin positions(dtype::i64, {T});
  std::copy(pos.begin(), pos.end(), positions.h.host_span<std::int64_t>().begin());
  positions.push();
  std::vector<std::int32_t> ss_v = shuffled(20, 6);
  ss_v.resize(static_cast<std::size_t>(T));
  ss_v[4] = -1;
  const twin state_slot = i32_twin({T}, ss_v), kvt = f32_twin({T, cw}, kv), sct = f32_twin({T, cw}, sc),
             apet = f32_twin({4, cw}, ape);
  twin rows(dtype::f32, {20, 2 * cw});
  std::fill(rows.h.host_span<float>().begin(), rows.h.host_span<float>().end(), 7.f);
  rows.push();
  ops::compressor_params p;
  p.ratio = 4;
  p.c = 128;
  p.rope_dim = 64;
  ops::compressor_append(kvt.h, sct.h, apet.h, positions.h, state_slot.h, {rows.h.view(), 4}, p, on(backend::ref));
  ops::compressor_append(kvt.d, sct.d, apet.d, positions.d, state_slot.d, {rows.d.view(), 4}, p);
  CHECK(rows.device_bytes() == bytes_of(rows.h));

  // to_slots: a random table, −1 lanes, garbage past len
  const std::int64_t R = 3, P = 6, B = 7, K = 12;
  const twin table = i32_twin({R, P}, shuffled(R * P, 8));
  std::vector<std::int32_t> idx(static_cast<std::size_t>(4 * K));
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<std::int32_t>((i * 13) % (P * B));
  idx[5] = -1;
  for (std::int64_t i = 6; i < K; ++i) idx[static_cast<std::size_t>(2 * K + i)] = 1 << 30;  // past len: never read
  const twin it = i32_twin({4, K}, idx), len = i32_twin({4}, {K, 3, 6, 0}), req = i32_twin({4}, {0, 2, 1, 2});
  twin slots(dtype::i32, {4, K});
  ops::to_slots(it.h, len.h, req.h, table.h, B, slots.h, on(backend::ref));
  ops::to_slots(it.d, len.d, req.d, table.d, B, slots.d);
  CHECK(slots.device_bytes() == bytes_of(slots.h));
  stream_and_status st;
  const twin bad_req = i32_twin({4}, {0, 5, 1, 2});  // request 5 does not exist
  ops::to_slots(it.d, len.d, bad_req.d, table.d, B, slots.d, st.deferred());
  CHECK(st.word() == status_index_oob);
  check_status(st.deferred());
}

TEST_CASE("topk_rows on CUDA: ref's picks (ties to the lower index), zero and short rows, 70,000 rows; sort_rows") {
  const std::int64_t T = 6, L = 3000, K = 512;
  std::vector<float> lg(static_cast<std::size_t>(T * L));
  std::mt19937_64 rng(9);
  std::normal_distribution<float> nd;
  for (auto& x : lg) x = std::round(nd(rng) * 4.f) / 4.f;  // many exact ties
  for (std::int64_t s = 0; s < L; ++s) lg[static_cast<std::size_t>(L + s)] = 1.f;  // row 1: all tied
  lg[static_cast<std::size_t>(2 * L + 10)] = -kInf;
  const twin logits = f32_twin({T, L}, lg), n_keys = i32_twin({T}, {3000, 3000, 2999, 0, 7, 512});
  twin idx(dtype::i32, {T, K}), len(dtype::i32, {T});
  ops::topk_rows(logits.h, n_keys.h, idx.h, len.h, on(backend::ref));
  ops::topk_rows(logits.d, n_keys.d, idx.d, len.d);
  CHECK(idx.device_bytes() == bytes_of(idx.h));
  CHECK(len.device_bytes() == bytes_of(len.h));

  const std::int64_t T2 = 70000, L2 = 8;
  std::vector<float> l2(static_cast<std::size_t>(T2 * L2));
  for (auto& x : l2) x = std::round(nd(rng) * 2.f);
  const twin lg2 = f32_twin({T2, L2}, l2);
  twin nk2(dtype::i32, {T2});
  for (std::int64_t t = 0; t < T2; ++t) nk2.h.host_span<std::int32_t>()[t] = static_cast<std::int32_t>(t % 9);
  nk2.push();
  twin i2(dtype::i32, {T2, 4}), n2(dtype::i32, {T2});
  ops::topk_rows(lg2.h, nk2.h, i2.h, n2.h, on(backend::ref));
  ops::topk_rows(lg2.d, nk2.d, i2.d, n2.d);
  CHECK(i2.device_bytes() == bytes_of(i2.h));

  // sort_rows: the picks ascending, as the host sorts them (k = 512 over 6 rows, and k = 4096 in one row)
  ops::sort_rows(idx.h, len.h);
  ops::sort_rows(idx.d, len.d);
  CHECK(idx.device_bytes() == bytes_of(idx.h));
  std::vector<std::int32_t> big(4096);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::int32_t>((i * 2654435761u) % 100003);
  twin bi = i32_twin({1, 4096}, big), bl = i32_twin({1}, {4095});
  ops::sort_rows(bi.h, bl.h);
  ops::sort_rows(bi.d, bl.d);
  CHECK(bi.device_bytes() == bytes_of(bi.h));
}

TEST_CASE("indexer over paged keys on CUDA: FP4 scores bitwise ref's, FP8 within fp32 rounding; fused top-k") {
  const std::int64_t T = 5, H = 24, C = 128, B = 61, R = 2, P = 40;  // H % 16 != 0: the partial head group
  std::mt19937_64 rng(11);
  std::normal_distribution<float> nd;
  for (cache::key_format f : {cache::key_format::fp4, cache::key_format::fp8}) {
    CAPTURE(cache::key_format_name(f));
    const cache::key_geometry g{f, C, B};
    const std::int64_t npages = R * P, nkeys = npages * B;
    twin pages = page_twin(npages, g.page_bytes(), 0);
    {  // every slot holds a random key
      std::vector<float> kv(static_cast<std::size_t>(nkeys * C));
      for (std::size_t i = 0; i < kv.size(); ++i) kv[i] = std::ldexp(nd(rng), static_cast<int>(i / C % 5) - 2);
      std::vector<std::int32_t> all(static_cast<std::size_t>(nkeys));
      std::iota(all.begin(), all.end(), 0);
      ops::key_store(f32_twin({nkeys, C}, kv).h, i32_twin({nkeys}, all).h, {pages.h.view(), g}, on(backend::ref));
      pages.push();
    }
    std::vector<float> q(static_cast<std::size_t>(T * H * C)), w(static_cast<std::size_t>(T * H));
    for (auto& x : q) x = nd(rng);
    for (auto& x : w) x = nd(rng) * 0.1f;
    const twin qt = f32_twin({T, H, C}, q), wt = f32_twin({T, H}, w), table = i32_twin({R, P}, shuffled(R * P, 12)),
               req = i32_twin({T}, {0, 1, 1, 0, 1}), nk = i32_twin({T}, {0, 1, 300, 2400, 61});
    const std::int64_t L = 2440;
    twin logits(dtype::f32, {T, L});
    ops::indexer_logits(qt.h, wt.h, {pages.h.view(), g}, table.h, req.h, nk.h, logits.h, on(backend::ref));
    ops::indexer_logits(qt.d, wt.d, {pages.d.view(), g}, table.d, req.d, nk.d, logits.d);
    if (f == cache::key_format::fp4)
      CHECK(logits.device_bytes() == bytes_of(logits.h));
    else  // fp32 dots over 128 dims and an fma head sum of 24 vs ref's double: scores are O(1), 1e-5 covers it
      CHECK(max_diff(logits.h, to_host(logits.d)) <= 1e-5);
    if (f != cache::key_format::fp4) continue;
    const std::int64_t K = 512;
    twin idx(dtype::i32, {T, K}), len(dtype::i32, {T}), slots(dtype::i32, {T, K});
    ops::indexer_topk(qt.h, wt.h, {pages.h.view(), g}, table.h, req.h, nk.h, idx.h, len.h, slots.h,
                      on(backend::ref));
    const std::size_t need = ops::indexer_topk_workspace_bytes(T, {pages.d.view(), g});
    void* scratch = nullptr;
    REQUIRE(cudaMalloc(&scratch, need) == cudaSuccess);
    exec ex;
    ex.scratch = {scratch, need};
    ops::indexer_topk(qt.d, wt.d, {pages.d.view(), g}, table.d, req.d, nk.d, idx.d, len.d, slots.d, ex);
    CHECK(idx.device_bytes() == bytes_of(idx.h));
    CHECK(len.device_bytes() == bytes_of(len.h));
    CHECK(slots.device_bytes() == bytes_of(slots.h));
    cudaFree(scratch);
  }
}

TEST_CASE("indexer_logits on CUDA past 65,535 rows (split launches): ref's bits") {
  const std::int64_t T = 65600, H = 16, C = 32, B = 4;
  const cache::key_geometry g{cache::key_format::fp4, C, B};
  twin pages = page_twin(2, g.page_bytes(), 0);
  std::mt19937_64 rng(31);
  std::normal_distribution<float> nd;
  {
    std::vector<float> kv(static_cast<std::size_t>(2 * B * C));
    for (auto& x : kv) x = nd(rng);
    std::vector<std::int32_t> all(static_cast<std::size_t>(2 * B));
    std::iota(all.begin(), all.end(), 0);
    ops::key_store(f32_twin({2 * B, C}, kv).h, i32_twin({2 * B}, all).h, {pages.h.view(), g}, on(backend::ref));
    pages.push();
  }
  std::vector<float> q(static_cast<std::size_t>(T * H * C)), w(static_cast<std::size_t>(T * H));
  for (auto& x : q) x = nd(rng);
  for (auto& x : w) x = nd(rng);
  std::vector<std::int32_t> nk(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) nk[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t % 9);
  const twin qt = f32_twin({T, H, C}, q), wt = f32_twin({T, H}, w), table = i32_twin({1, 2}, {1, 0}),
             req = i32_twin({T}, std::vector<std::int32_t>(static_cast<std::size_t>(T), 0)), nkt = i32_twin({T}, nk);
  twin logits(dtype::f32, {T, 8});
  ops::indexer_logits(qt.h, wt.h, {pages.h.view(), g}, table.h, req.h, nkt.h, logits.h, on(backend::ref));
  ops::indexer_logits(qt.d, wt.d, {pages.d.view(), g}, table.d, req.d, nkt.d, logits.d);
  CHECK(logits.device_bytes() == bytes_of(logits.h));
}

TEST_CASE("sparse MQA on CUDA over fp8_ds_mla + f32 segments: ref within fp32 rounding; empty rows, padded head") {
  const std::int64_t T = 4, H = 10, D = 512, Kw = 16, Kc = 40, B = 53;
  std::mt19937_64 rng(13);
  std::normal_distribution<float> nd;
  const cache::kv_geometry gw{cache::kv_format::fp8_ds_mla, D, 64, B}, gc{cache::kv_format::f32, D, 64, B};
  twin pw = page_twin(3, gw.page_bytes(), 0), pc = page_twin(3, gc.page_bytes(), 0);
  {
    std::vector<float> v(static_cast<std::size_t>(3 * B * D));
    for (auto& x : v) x = nd(rng);
    std::vector<std::int32_t> all(static_cast<std::size_t>(3 * B));
    std::iota(all.begin(), all.end(), 0);
    const twin vals = f32_twin({3 * B, D}, v), sl = i32_twin({3 * B}, all);
    ops::kv_store(vals.h, sl.h, {pw.h.view(), gw}, on(backend::ref));
    ops::kv_store(vals.h, sl.h, {pc.h.view(), gc}, on(backend::ref));
    pw.push();
    pc.push();
  }
  std::vector<std::int32_t> ws(static_cast<std::size_t>(T * Kw)), cs(static_cast<std::size_t>(T * Kc));
  for (auto& s : ws) s = static_cast<std::int32_t>(rng() % (3 * B));
  for (auto& s : cs) s = static_cast<std::int32_t>(rng() % (3 * B));
  ws[2] = -1;
  for (std::int64_t i = 20; i < Kc; ++i) cs[static_cast<std::size_t>(Kc + i)] = 1 << 29;  // past len: never read
  const twin wsl = i32_twin({T, Kw}, ws), csl = i32_twin({T, Kc}, cs), wl = i32_twin({T}, {Kw, 5, 0, Kw}),
             cl = i32_twin({T}, {Kc, 20, 0, 1});  // row 2: no valid lane at all
  std::vector<float> q(static_cast<std::size_t>(T * H * D)), sink(static_cast<std::size_t>(H));
  for (auto& x : q) x = nd(rng) * 0.05f;
  for (auto& x : sink) x = nd(rng);
  sink[9] = -kInf;  // a padded head
  const twin qt = f32_twin({T, H, D}, q), st = f32_twin({H}, sink);
  twin out(dtype::f32, {T, H, D}), lse(dtype::f32, {T, H});
  const ops::sparse_segment win_h{{pw.h.view(), gw}, wsl.h.view(), wl.h.view()},
      cmp_h{{pc.h.view(), gc}, csl.h.view(), cl.h.view()};
  const ops::sparse_segment win_d{{pw.d.view(), gw}, wsl.d.view(), wl.d.view()},
      cmp_d{{pc.d.view(), gc}, csl.d.view(), cl.d.view()};
  ops::sparse_mqa(qt.h, win_h, &cmp_h, st.h, 0.0625f, out.h, lse.h, on(backend::ref));
  ops::sparse_mqa(qt.d, win_d, &cmp_d, st.d, 0.0625f, out.d, lse.d);
  // online softmax in fp32 (CUDA expf within 2 ulp) vs ref's order: FlashMLA's own bar is abs 1e-3, rel 2/128 on
  // out and 1e-6 / 8/65536 on lse; fp32 on both sides stays far inside it: 1e-5 · (1 + |x|)
  const buffer oh = to_host(out.d), lh = to_host(lse.d);
  CHECK(max_diff(out.h, oh) <= 1e-5);
  CHECK(max_diff(lse.h, lh) <= 1e-5);
  for (std::int64_t h = 0; h < H; ++h) {
    CHECK(lh.host_span<float>()[2 * H + h] == kInf);
    for (std::int64_t d = 0; d < D; ++d) CHECK(oh.host_span<float>()[(2 * H + h) * D + d] == 0.f);
  }
}

TEST_CASE("a decode step captured as a CUDA graph (append, fused indexer top-k, sparse MQA), replayed with new "
          "lengths and block tables == eager") {
  const std::int64_t T = 2, H = 16, C = 128, D = 512, B = 16, R = 2, P = 8, K = 32, cw = 256;
  std::mt19937_64 rng(17);
  std::normal_distribution<float> nd;
  const cache::key_geometry gk{cache::key_format::fp4, C, B};
  const cache::kv_geometry gv{cache::kv_format::fp8_ds_mla, D, 64, B};
  twin kp = page_twin(R * P, gk.page_bytes(), 0), vp = page_twin(R * P, gv.page_bytes(), 0);
  {
    const std::int64_t n = R * P * B;
    std::vector<float> kv(static_cast<std::size_t>(n * C)), vv(static_cast<std::size_t>(n * D));
    for (auto& x : kv) x = nd(rng);
    for (auto& x : vv) x = nd(rng);
    std::vector<std::int32_t> all(static_cast<std::size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    ops::key_store(f32_twin({n, C}, kv).h, i32_twin({n}, all).h, {kp.h.view(), gk}, on(backend::ref));
    ops::kv_store(f32_twin({n, D}, vv).h, i32_twin({n}, all).h, {vp.h.view(), gv}, on(backend::ref));
    kp.push();
    vp.push();
  }
  std::vector<float> q(static_cast<std::size_t>(T * H * C)), w(static_cast<std::size_t>(T * H)),
      qa(static_cast<std::size_t>(T * H * D)), sink(static_cast<std::size_t>(H)),
      kvv(static_cast<std::size_t>(T * cw)), ape(static_cast<std::size_t>(4 * cw));
  for (auto* v : {&q, &w, &qa, &sink, &kvv, &ape})
    for (auto& x : *v) x = nd(rng) * 0.1f;
  const twin qt = f32_twin({T, H, C}, q), wt = f32_twin({T, H}, w), qat = f32_twin({T, H, D}, qa),
             sk = f32_twin({H}, sink), kvt = f32_twin({T, cw}, kvv), apet = f32_twin({4, cw}, ape);
  twin table = i32_twin({R, P}, shuffled(R * P, 18)), req = i32_twin({T}, {1, 0}), nk = i32_twin({T}, {100, 37});
  twin pos(dtype::i64, {T});
  pos.h.host_span<std::int64_t>()[0] = 99;
  pos.h.host_span<std::int64_t>()[1] = 36;
  pos.push();
  const twin sslot = i32_twin({T}, {3, 4});
  twin rows(dtype::f32, {8, 2 * cw}), idx(dtype::i32, {T, K}), len(dtype::i32, {T}), slots(dtype::i32, {T, K}),
      out(dtype::f32, {T, H, D}), lse(dtype::f32, {T, H});
  const std::size_t need = ops::indexer_topk_workspace_bytes(T, {kp.d.view(), gk});
  void* scratch = nullptr;
  REQUIRE(cudaMalloc(&scratch, need) == cudaSuccess);
  ops::compressor_params p;
  p.ratio = 4;
  p.c = 128;
  p.rope_dim = 64;
  auto step = [&](const exec& ex) {
    ops::compressor_append(kvt.d, kvt.d, apet.d, pos.d, sslot.d, {rows.d.view(), 4}, p, ex);
    ops::indexer_topk(qt.d, wt.d, {kp.d.view(), gk}, table.d, req.d, nk.d, idx.d, len.d, slots.d, ex);
    const ops::sparse_segment seg{{vp.d.view(), gv}, slots.d.view(), len.d.view()};
    ops::sparse_mqa(qat.d, seg, nullptr, sk.d, 0.0625f, out.d, lse.d, ex);
  };
  stream_and_status ss;
  exec dx = ss.deferred();
  dx.scratch = {scratch, need};
  const captured_graph g(ss.stream, [&] { step(dx); });
  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    std::copy_n(shuffled(R * P, 19 + round).begin(), R * P, table.h.host_span<std::int32_t>().begin());
    table.push();
    nk.h.host_span<std::int32_t>()[0] = static_cast<std::int32_t>(50 + 30 * round);
    nk.h.host_span<std::int32_t>()[1] = static_cast<std::int32_t>(round * 5);  // round 0: no keys at all
    nk.push();
    g.launch();
    const auto g_out = bytes_of(to_host(out.d)), g_lse = bytes_of(to_host(lse.d)), g_idx = bytes_of(to_host(idx.d));
    exec eager;
    eager.scratch = {scratch, need};
    step(eager);
    CHECK(bytes_of(to_host(out.d)) == g_out);
    CHECK(bytes_of(to_host(lse.d)) == g_lse);
    CHECK(bytes_of(to_host(idx.d)) == g_idx);
  }
  check_status(dx);
  cudaFree(scratch);
}

TEST_CASE("compressor_emit on CUDA (ratio 4 main + indexer, ratio 128): ref's entries within fp32 rounding, the pages "
          "the store of those entries") {
  struct cfg { int ratio; std::int64_t c; bool indexer; };
  for (cfg k : {cfg{4, 512, false}, cfg{4, 128, true}, cfg{128, 512, false}}) {
    CAPTURE(k.ratio);
    CAPTURE(k.indexer);
    const std::int64_t N = k.ratio == 4 ? 40 : 300, S = 16, coff = k.ratio == 4 ? 2 : 1, cw = coff * k.c, rope = 64;
    const std::int64_t state_pages = (N + S - 1) / S;
    std::mt19937_64 rng(21 + k.ratio);
    std::normal_distribution<float> nd;
    // state rows of positions 0..N-1 through a shuffled table (rows = state_pages·S)
    const twin table = i32_twin({1, state_pages}, shuffled(state_pages, 22));
    twin rows(dtype::f32, {state_pages * S, 2 * cw});
    for (auto& x : rows.h.host_span<float>()) x = nd(rng);
    rows.push();
    std::vector<std::int64_t> pos(static_cast<std::size_t>(N));
    std::iota(pos.begin(), pos.end(), 0);
    twin positions(dtype::i64, {N});
    std::copy(pos.begin(), pos.end(), positions.h.host_span<std::int64_t>().begin());
    positions.push();
    std::vector<std::int32_t> os(static_cast<std::size_t>(N), -1);
    for (std::int64_t t = 0; t < N; ++t)
      if ((t + 1) % k.ratio == 0) os[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t / k.ratio);
    const twin out_slot = i32_twin({N}, os), req = i32_twin({N}, std::vector<std::int32_t>(static_cast<std::size_t>(N), 0));
    std::vector<float> nw(static_cast<std::size_t>(k.c)), fr(static_cast<std::size_t>(rope / 2));
    for (auto& x : nw) x = 1.f + 0.1f * nd(rng);
    for (std::size_t i = 0; i < fr.size(); ++i) fr[i] = std::pow(10000.f, -2.f * float(i) / float(rope));
    const twin nwt = f32_twin({k.c}, nw), frt = f32_twin({rope / 2}, fr);
    ops::compressor_params p;
    p.ratio = k.ratio;
    p.c = k.c;
    p.rope_dim = rope;
    p.indexer = k.indexer;
    twin ent(dtype::f32, {N, k.c});
    std::fill(ent.h.host_span<float>().begin(), ent.h.host_span<float>().end(), 0.f);
    ent.push();
    const std::int64_t entries_n = N / k.ratio + 1;
    if (k.indexer) {
      const cache::key_geometry g{cache::key_format::fp4, k.c, S};
      twin pages = page_twin((entries_n + S - 1) / S, g.page_bytes(), 0);
      const cache::key_pages kh{pages.h.view(), g}, kd{pages.d.view(), g};
      ops::compressor_emit(positions.h, req.h, table.h, {rows.h.view(), S}, nwt.h, frt.h, out_slot.h, p, nullptr, &kh,
                           ent.h, on(backend::ref));
      ops::compressor_emit(positions.d, req.d, table.d, {rows.d.view(), S}, nwt.d, frt.d, out_slot.d, p, nullptr, &kd,
                           ent.d);
      // the device pages are the store of the device's entries
      const buffer got = to_host(ent.d);
      twin again = page_twin(pages.h.view().shape(0), g.page_bytes(), 0);
      ops::key_store(got, out_slot.h, {again.h.view(), g}, on(backend::ref));
      CHECK(pages.device_bytes() == bytes_of(again.h));
    } else {
      const cache::kv_geometry g{cache::kv_format::fp8_ds_mla, k.c, rope, S};
      twin pages = page_twin((entries_n + S - 1) / S, g.page_bytes(), 0);
      const cache::kv_pages kh{pages.h.view(), g}, kd{pages.d.view(), g};
      ops::compressor_emit(positions.h, req.h, table.h, {rows.h.view(), S}, nwt.h, frt.h, out_slot.h, p, &kh, nullptr,
                           ent.h, on(backend::ref));
      ops::compressor_emit(positions.d, req.d, table.d, {rows.d.view(), S}, nwt.d, frt.d, out_slot.d, p, &kd, nullptr,
                           ent.d);
      const buffer got = to_host(ent.d);
      twin again = page_twin(pages.h.view().shape(0), g.page_bytes(), 0);
      ops::kv_store(got, out_slot.h, {again.h.view(), g}, on(backend::ref));
      CHECK(pages.device_bytes() == bytes_of(again.h));
    }
    // entries: the pool, norm and RoPE agree within fp32 rounding (expf and the trig within a few ulp of libm); a
    // value on a rounding boundary of the round trip can land one code away, so count those and bound them
    const buffer got = to_host(ent.d);
    const auto a = ent.h.host_span<float>(), b = got.host_span<float>();
    std::int64_t differ = 0;
    double rel = 0, mass = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      differ += f32_to_bits(a[i]) != f32_to_bits(b[i]);
      rel += std::fabs(double(a[i]) - b[i]);
      mass += std::fabs(double(a[i]));
    }
    REQUIRE(mass > 0);
    CHECK(differ <= static_cast<std::int64_t>(a.size() / 100));
    CHECK(rel / mass <= 1e-3);
  }
}

}  // TEST_SUITE
