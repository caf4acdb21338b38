// Paged-cache ops (dsv4/ops/paged.hpp) against byte layouts written out independently here (engine-interface study
// §b.2: FlashMLA's fp8_ds_mla page, DeepGEMM's FP4 key page, the V3.2 FP8 key page), and against the contiguous ops
// and hand computations: odd page sizes (2, 53, 64, 256), random non-contiguous block tables, all-(-1) rows,
// zero-length rows, garbage past len, padded heads, position-keyed compressor rows under chunking and rollback.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "dsv4/buffer.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ops/paged.hpp"
#include "dsv4/ref/cache.hpp"
#include "dsv4/ops/quant.hpp"
#include "harness.hpp"

using namespace dsv4;
using dsv4::test::check_error;
using dsv4::test::host_backends;
using dsv4::test::on;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<std::uint8_t> page_memory(std::int64_t pages, std::int64_t page_bytes, std::uint8_t fill) {
  return std::vector<std::uint8_t>(static_cast<std::size_t>(pages * page_bytes), fill);
}

cache::kv_pages kv_view(std::vector<std::uint8_t>& mem, std::int64_t pages, cache::kv_geometry g) {
  return {tensor_view(mem.data(), dtype::u8, {pages, g.page_bytes()}), g};
}
cache::key_pages key_view(std::vector<std::uint8_t>& mem, std::int64_t pages, cache::key_geometry g) {
  return {tensor_view(mem.data(), dtype::u8, {pages, g.page_bytes()}), g};
}

tensor_view i32v(std::vector<std::int32_t>& v, std::initializer_list<std::int64_t> shape) {
  return tensor_view(v.data(), dtype::i32, shape);
}
tensor_view f32v(std::vector<float>& v, std::initializer_list<std::int64_t> shape) {
  return tensor_view(v.data(), dtype::f32, shape);
}

// A random permutation of pages as block tables: request r owns pages table[r][0 .. per).
std::vector<std::int32_t> random_table(std::int64_t requests, std::int64_t per, std::uint64_t seed) {
  std::vector<std::int32_t> pages(static_cast<std::size_t>(requests * per));
  std::iota(pages.begin(), pages.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(pages.begin(), pages.end(), rng);
  return pages;
}

// A KV entry of V4-shaped geometry whose values sit exactly on the stored grids: per 64-block a scale 2^(sb-127) and
// E4M3 codes with the block's first code 0x7E (448, so the quantizer's scale rule gives back exactly sb), and rope
// values that are BF16 numbers. The expected bytes are recorded alongside.
struct golden_entry {
  std::vector<float> v;
  std::vector<std::uint8_t> codes, scales;
  std::vector<std::uint16_t> rope;
};
golden_entry make_entry(std::int64_t nope, std::int64_t rope, std::mt19937_64& rng) {
  golden_entry g;
  g.v.resize(static_cast<std::size_t>(nope + rope));
  for (std::int64_t b = 0; b < nope / 64; ++b) {
    const std::uint8_t sb = static_cast<std::uint8_t>(110 + rng() % 30);
    g.scales.push_back(sb);
    for (int i = 0; i < 64; ++i) {
      std::uint8_t c = i == 0 ? 0x7E : static_cast<std::uint8_t>(rng() % 0x7F);  // never 0x7F (NaN)
      if (rng() % 2) c |= 0x80;
      g.codes.push_back(c);
      g.v[static_cast<std::size_t>(b * 64 + i)] = std::ldexp(fp8_e4m3{c}.to_float(), sb - 127);
    }
  }
  for (std::int64_t i = 0; i < rope; ++i) {
    const std::uint16_t h = static_cast<std::uint16_t>((rng() % 0x7F00) | (rng() % 2 ? 0x8000 : 0));
    g.rope.push_back(h);
    g.v[static_cast<std::size_t>(nope + i)] = bf16{h}.to_float();
  }
  return g;
}

std::vector<float> load_rows(const cache::kv_pages& kv, std::vector<std::int32_t> slots, std::int64_t D) {
  std::vector<float> out(slots.size() * static_cast<std::size_t>(D));
  ops::kv_load(kv, i32v(slots, {static_cast<std::int64_t>(slots.size())}),
               tensor_view(out.data(), dtype::f32, {static_cast<std::int64_t>(slots.size()), D}));
  return out;
}

}  // namespace

// The FP4 indexer score written out from its definition (dsv4/ref/indexer.hpp) on decoded values: q and key already on
// the FP4 grid, the dot in long double (exact here: every product is a multiple of a power of two with at most 4
// significant bits and the block scales lie within a few binades) rounded once, ReLU as (0 > d) ? 0 : d, the heads
// summed in the 16-lane tree.
float fp4_score_by_hand(const float* q, const float* w, const float* key, std::int64_t H, std::int64_t C) {
  float p[16] = {};
  for (std::int64_t h = 0; h < H; ++h) {
    long double d = 0;
    for (std::int64_t c = 0; c < C; ++c) d += static_cast<long double>(q[h * C + c]) * key[c];
    const float df = static_cast<float>(d), r = (0.f > df) ? 0.f : df;
    p[h % 16] = std::fma(w[h], r, p[h % 16]);
  }
  for (int width = 8; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) p[l] = p[l] + p[l + width];
  return p[0];
}

TEST_SUITE("paged") {
  TEST_CASE("fp8_ds_mla KV pages: every byte where FlashMLA's MODEL1 layout puts it (pages of 2, 53, 64, 256)") {
    for (std::int64_t B : {2, 53, 64, 256}) {
      CAPTURE(B);
      // The layout table, written out here: 448 E4M3 codes then 64 BF16 rope values = 576 bytes of data per entry;
      // after B·576 bytes, 8 bytes of scales per entry (7 UE8M0 + one zero pad); page bytes rounded up to 576.
      const std::int64_t page_bytes = (B * 584 + 575) / 576 * 576, npages = 3;
      const cache::kv_geometry geo{cache::kv_format::fp8_ds_mla, 512, 64, B};
      REQUIRE(geo.page_bytes() == page_bytes);
      REQUIRE(geo.entry_bytes() == 584);
      auto mem = page_memory(npages, page_bytes, 0x5A);
      const cache::kv_pages kv = kv_view(mem, npages, geo);
      std::mt19937_64 rng(static_cast<std::uint64_t>(B));
      // Entries into a few slots of page 1 (the first, the last, one in between).
      std::vector<std::int32_t> slots = {static_cast<std::int32_t>(B), static_cast<std::int32_t>(2 * B - 1)};
      if (B > 2) slots.push_back(static_cast<std::int32_t>(B + B / 2));
      std::vector<golden_entry> es;
      std::vector<float> vals;
      for (std::size_t i = 0; i < slots.size(); ++i) {
        es.push_back(make_entry(448, 64, rng));
        vals.insert(vals.end(), es.back().v.begin(), es.back().v.end());
      }
      const std::int64_t n = static_cast<std::int64_t>(slots.size());
      for (backend be : host_backends()) {
        std::fill(mem.begin(), mem.end(), std::uint8_t{0x5A});
        ops::kv_store(f32v(vals, {n, 512}), i32v(slots, {n}), kv, on(be));
        const std::uint8_t* page = mem.data() + page_bytes;  // page 1
        std::vector<bool> written(static_cast<std::size_t>(page_bytes), false);
        for (std::size_t i = 0; i < slots.size(); ++i) {
          const std::int64_t e = slots[i] % B;
          const golden_entry& g = es[i];
          for (std::int64_t d = 0; d < 448; ++d) {
            CHECK(page[e * 576 + d] == g.codes[static_cast<std::size_t>(d)]);
            written[static_cast<std::size_t>(e * 576 + d)] = true;
          }
          for (std::int64_t r = 0; r < 64; ++r) {
            CHECK(page[e * 576 + 448 + 2 * r] == (g.rope[static_cast<std::size_t>(r)] & 0xFF));
            CHECK(page[e * 576 + 448 + 2 * r + 1] == (g.rope[static_cast<std::size_t>(r)] >> 8));
            written[static_cast<std::size_t>(e * 576 + 448 + 2 * r)] = written[static_cast<std::size_t>(e * 576 + 449 + 2 * r)] = true;
          }
          for (std::int64_t j = 0; j < 7; ++j) {
            CHECK(page[B * 576 + e * 8 + j] == g.scales[static_cast<std::size_t>(j)]);
            written[static_cast<std::size_t>(B * 576 + e * 8 + j)] = true;
          }
          CHECK(page[B * 576 + e * 8 + 7] == 0);  // the pad byte of the scale group
          written[static_cast<std::size_t>(B * 576 + e * 8 + 7)] = true;
        }
        // Nothing else of any page was touched: other entries, other pages, the page padding [B·584, page_bytes).
        for (std::int64_t b = 0; b < page_bytes; ++b)
          if (!written[static_cast<std::size_t>(b)]) REQUIRE(page[b] == 0x5A);
        for (std::int64_t b = 0; b < page_bytes; ++b) REQUIRE(mem[static_cast<std::size_t>(b)] == 0x5A);
        for (std::int64_t b = 2 * page_bytes; b < 3 * page_bytes; ++b) REQUIRE(mem[static_cast<std::size_t>(b)] == 0x5A);
        // Loads decode exactly what was stored (the values were on the grids).
        CHECK(load_rows(kv, slots, 512) == vals);
      }
    }
  }

  TEST_CASE("a small geometry (head 96 / rope 32) and the f32 format follow the same rules") {
    const std::int64_t B = 5;
    const cache::kv_geometry geo{cache::kv_format::fp8_ds_mla, 96, 32, B};
    CHECK(geo.data_bytes() == 64 + 64);
    CHECK(geo.entry_bytes() == 136);  // 64 codes + 32 BF16 + 1 scale, padded to 8: the calculator's figure
    CHECK(geo.page_bytes() == (B * 136 + 127) / 128 * 128);
    auto mem = page_memory(2, geo.page_bytes(), 0);
    const cache::kv_pages kv = kv_view(mem, 2, geo);
    std::mt19937_64 rng(9);
    golden_entry g = make_entry(64, 32, rng);
    std::vector<std::int32_t> slot = {7};  // page 1, entry 2
    ops::kv_store(f32v(g.v, {1, 96}), i32v(slot, {1}), kv);
    const std::uint8_t* page = mem.data() + geo.page_bytes();
    for (int d = 0; d < 64; ++d) CHECK(page[2 * 128 + d] == g.codes[static_cast<std::size_t>(d)]);
    CHECK(page[2 * 128 + 64] == (g.rope[0] & 0xFF));
    CHECK(page[5 * 128 + 2 * 8] == g.scales[0]);
    for (int j = 1; j < 8; ++j) CHECK(page[5 * 128 + 2 * 8 + j] == 0);

    const cache::kv_geometry gf{cache::kv_format::f32, 96, 32, B};
    CHECK(gf.page_bytes() == B * 96 * 4);
    auto fm = page_memory(2, gf.page_bytes(), 0);
    const cache::kv_pages kf = kv_view(fm, 2, gf);
    std::vector<float> x = test::randn(96, 3);
    ops::kv_store(f32v(x, {1, 96}), i32v(slot, {1}), kf);
    CHECK(std::memcmp(fm.data() + gf.page_bytes() + 2 * 96 * 4, x.data(), 96 * 4) == 0);
    CHECK(load_rows(kf, slot, 96) == x);  // exact, any values
  }

  TEST_CASE("indexer key pages: FP4 (64 code bytes then 4 UE8M0 per key) and FP8 (128 codes then an f32 scale)") {
    for (std::int64_t B : {2, 53, 64}) {
      CAPTURE(B);
      std::mt19937_64 rng(static_cast<std::uint64_t>(100 + B));
      // FP4: per 32-block a scale byte and E2M1 codes (the first 0x7 = 6.0 pins the scale), value = code · 2^(s-127).
      std::vector<float> v(128);
      std::uint8_t sc[4], nib[128];
      for (int b = 0; b < 4; ++b) {
        sc[b] = static_cast<std::uint8_t>(100 + rng() % 40);
        for (int i = 0; i < 32; ++i) {
          std::uint8_t c = i == 0 ? 0x7 : static_cast<std::uint8_t>(rng() % 8);
          if (rng() % 2) c |= 0x8;
          nib[b * 32 + i] = c;
          v[static_cast<std::size_t>(b * 32 + i)] = std::ldexp(fp4_e2m1{c}.to_float(), sc[b] - 127);
        }
      }
      const cache::key_geometry g4{cache::key_format::fp4, 128, B};
      REQUIRE(g4.key_bytes() == 68);
      auto mem = page_memory(2, B * 68, 0x33);
      const cache::key_pages kp = key_view(mem, 2, g4);
      std::vector<std::int32_t> slot = {static_cast<std::int32_t>(B + B - 1)};  // page 1, last key
      const std::int64_t e = B - 1;
      ops::key_store(f32v(v, {1, 128}), i32v(slot, {1}), kp);
      const std::uint8_t* page = mem.data() + B * 68;
      for (int c = 0; c < 64; ++c) CHECK(page[e * 64 + c] == (nib[2 * c] | (nib[2 * c + 1] << 4)));
      for (int j = 0; j < 4; ++j) CHECK(page[B * 64 + e * 4 + j] == sc[j]);
      for (std::int64_t b = 0; b < B * 68; ++b)
        if (!((b >= e * 64 && b < e * 64 + 64) || (b >= B * 64 + e * 4 && b < B * 64 + e * 4 + 4)))
          REQUIRE(page[b] == 0x33);
      std::vector<float> back(128);
      ops::key_load(kp, i32v(slot, {1}), f32v(back, {1, 128}));
      CHECK(back == v);

      // FP8 keys: one power-of-two f32 scale for the whole key. Values chosen as codes · 2^-3 with a 448 in them.
      std::vector<float> w(128);
      std::uint8_t codes[128];
      for (int i = 0; i < 128; ++i) {
        std::uint8_t c = i == 5 ? 0x7E : static_cast<std::uint8_t>(rng() % 0x7F);
        if (rng() % 2) c |= 0x80;
        codes[i] = c;
        w[static_cast<std::size_t>(i)] = fp8_e4m3{c}.to_float() * 0.125f;
      }
      const cache::key_geometry g8{cache::key_format::fp8, 128, B};
      REQUIRE(g8.key_bytes() == 132);
      auto m8 = page_memory(2, B * 132, 0x33);
      const cache::key_pages k8 = key_view(m8, 2, g8);
      ops::key_store(f32v(w, {1, 128}), i32v(slot, {1}), k8);
      const std::uint8_t* p8 = m8.data() + B * 132;
      for (int i = 0; i < 128; ++i) CHECK(p8[e * 128 + i] == codes[i]);
      float s;
      std::memcpy(&s, p8 + B * 128 + e * 4, 4);
      CHECK(s == 0.125f);
      ops::key_load(k8, i32v(slot, {1}), f32v(back, {1, 128}));
      CHECK(back == w);
      // The official policy's index score is defined on FP4 keys only: FP8 pages are refused by name.
      std::vector<float> q(128, 0.5f), hw(1, 1.f), lg(static_cast<std::size_t>(2 * B));
      std::vector<std::int32_t> tb = {0, 1}, rq = {0}, nk = {1};
      check_error([&] {
        ops::indexer_logits(f32v(q, {1, 1, 128}), f32v(hw, {1, 1}), k8, i32v(tb, {1, 2}), i32v(rq, {1}),
                            i32v(nk, {1}), f32v(lg, {1, 2 * B}), {}, numerics::official);
      }, {"indexer_logits", "numerics official scores FP4 key pages"});
    }
  }

  TEST_CASE("stores and loads refuse bad slots; -1 skips a row") {
    const cache::kv_geometry geo{cache::kv_format::fp8_ds_mla, 512, 64, 4};
    auto mem = page_memory(2, geo.page_bytes(), 0);
    const cache::kv_pages kv = kv_view(mem, 2, geo);
    std::vector<float> x(2 * 512, 1.f);
    std::vector<std::int32_t> out_of = {0, 8}, dup = {3, 3}, skip = {-1, 2};
    check_error([&] { ops::kv_store(f32v(x, {2, 512}), i32v(out_of, {2}), kv); }, {"slots[1] = 8", "[-1, 8)"});
    check_error([&] { ops::kv_store(f32v(x, {2, 512}), i32v(dup, {2}), kv); }, {"slot 3 is written by two rows"});
    ops::kv_store(f32v(x, {2, 512}), i32v(skip, {2}), kv);
    CHECK(load_rows(kv, {-1, 2, 0}, 512)[0] == 0.f);
    CHECK(load_rows(kv, {-1, 2, 0}, 512)[512] == 1.f);
    x[7] = NAN;  // row 0 is skipped (slot -1): its values are never read
    CHECK_NOTHROW(ops::kv_store(f32v(x, {2, 512}), i32v(skip, {2}), kv));
    x[512 + 7] = NAN;
    check_error([&] { ops::kv_store(f32v(x, {2, 512}), i32v(skip, {2}), kv); }, {"row 1 holds inf or NaN"});
    std::vector<std::uint8_t> small(100);
    const cache::kv_pages bad{tensor_view(small.data(), dtype::u8, {1, 100}), geo};
    check_error([&] { ops::kv_store(f32v(x, {2, 512}), i32v(skip, {2}), bad); }, {"each page needs", "contiguous bytes"});
  }

  TEST_CASE("to_slots: random block tables, -1 lanes and garbage past len; unmapped pages are errors") {
    const std::int64_t B = 53, R = 3, per = 4;
    std::vector<std::int32_t> table = random_table(R, per, 5);
    std::vector<std::int32_t> row_req = {2, 0, 1, 2};
    std::vector<std::int32_t> idx = {0, 52, 53, 211, -1, 7, 100, 5,  // row 0, request 2
                                     -1, -1, -1, -1, -1, -1, -1, -1,   // row 1: all -1
                                     3, 1, 2, std::numeric_limits<std::int32_t>::max(), 9, 9, 9, 9,  // row 2: len 3
                                     10, 11, 12, 13, 14, 15, 16, 17};  // row 3: len 0
    std::vector<std::int32_t> len = {8, 8, 3, 0}, slots(32, 77);
    ops::to_slots(i32v(idx, {4, 8}), i32v(len, {4}), i32v(row_req, {4}), i32v(table, {R, per}), B, i32v(slots, {4, 8}));
    auto expect = [&](std::int32_t r, std::int32_t e) {
      return e < 0 ? -1 : table[static_cast<std::size_t>(r * per + e / B)] * B + e % B;
    };
    for (int i = 0; i < 8; ++i) CHECK(slots[static_cast<std::size_t>(i)] == expect(2, idx[static_cast<std::size_t>(i)]));
    for (int i = 8; i < 16; ++i) CHECK(slots[static_cast<std::size_t>(i)] == -1);
    for (int i = 0; i < 3; ++i) CHECK(slots[static_cast<std::size_t>(16 + i)] == expect(1, idx[static_cast<std::size_t>(16 + i)]));
    for (int i = 19; i < 32; ++i) CHECK(slots[static_cast<std::size_t>(i)] == -1);  // past len: ignored
    std::vector<std::int32_t> holes = table;
    holes[2 * per + 1] = -1;  // request 2's second page unmapped
    check_error([&] {
      ops::to_slots(i32v(idx, {4, 8}), i32v(len, {4}), i32v(row_req, {4}), i32v(holes, {R, per}), B, i32v(slots, {4, 8}));
    }, {"idx[0, 2] = 53", "page 1", "request 2 has not mapped"});
  }

  TEST_CASE("sort_rows: the first len lanes of each row ascending, the rest untouched; bad lengths are errors") {
    std::vector<std::int32_t> idx = {9, 3, 7, 1, 5, -1,   // len 5
                                     4, 4, 2, 8, 0, 6,    // len 6 (a duplicate)
                                     3, 2, 1, 0, 99, 98,  // len 0: untouched
                                     7, 6, 5, 4, 3, 2};   // len 3: lanes 3.. keep their garbage
    std::vector<std::int32_t> len = {5, 6, 0, 3};
    ops::sort_rows(i32v(idx, {4, 6}), i32v(len, {4}));
    CHECK(idx == std::vector<std::int32_t>{1, 3, 5, 7, 9, -1, 0, 2, 4, 4, 6, 8, 3, 2, 1, 0, 99, 98, 5, 6, 7, 4, 3, 2});
    len[1] = 7;
    check_error([&] { ops::sort_rows(i32v(idx, {4, 6}), i32v(len, {4})); }, {"sort_rows", "len[1] = 7", "[0, 6]"});
  }

  TEST_CASE("topk_rows: ties to the lower index, -1 only in the tail, len = min(k, n_keys), n_keys 0 = all -1") {
    std::vector<float> lg = {1, 3, 3, 2, 3, NAN, -kInf,  // row 0: n 5 (the NaN past n is garbage)
                             0, 0, 0, 0, 0, 0, 0,        // row 1: n 7, all tied
                             5, 4, 0, 0, 0, 0, 0,        // row 2: n 2 < k
                             9, 9, 9, 9, 9, 9, 9};       // row 3: n 0
    std::vector<std::int32_t> n = {5, 7, 2, 0};
    for (backend be : host_backends()) {
      std::vector<std::int32_t> idx(16, 99), len(4, 99);
      ops::topk_rows(f32v(lg, {4, 7}), i32v(n, {4}), i32v(idx, {4, 4}), i32v(len, {4}), on(be));
      CHECK(std::vector<std::int32_t>(idx.begin(), idx.begin() + 4) == std::vector<std::int32_t>{1, 2, 4, 3});
      CHECK(std::vector<std::int32_t>(idx.begin() + 4, idx.begin() + 8) == std::vector<std::int32_t>{0, 1, 2, 3});
      CHECK(std::vector<std::int32_t>(idx.begin() + 8, idx.begin() + 12) == std::vector<std::int32_t>{0, 1, -1, -1});
      CHECK(std::vector<std::int32_t>(idx.begin() + 12, idx.end()) == std::vector<std::int32_t>{-1, -1, -1, -1});
      CHECK(len == std::vector<std::int32_t>{4, 4, 2, 0});
    }
    lg[2] = NAN;
    std::vector<std::int32_t> idx(16), len(4);
    check_error([&] { ops::topk_rows(f32v(lg, {4, 7}), i32v(n, {4}), i32v(idx, {4, 4}), i32v(len, {4})); },
                {"logits[0, 2] is NaN"});
  }

  TEST_CASE("indexer over paged FP4 keys: the exact FP4 score on every backend, bitwise; the fused form agrees") {
    const std::int64_t H = 4, C = 64, R = 3;
    for (std::int64_t B : {2, 53, 64}) {
      CAPTURE(B);
      const std::int64_t per = (300 + B - 1) / B;
      std::vector<std::int32_t> table = random_table(R, per, static_cast<std::uint64_t>(B));
      const cache::key_geometry g{cache::key_format::fp4, C, B};
      auto mem = page_memory(R * per, g.page_bytes(), 0xEE);
      const cache::key_pages kp = key_view(mem, R * per, g);
      // 300 keys per request: random, Hadamard'd and FP4 round-tripped (what the compressor stores).
      std::vector<float> keys = test::randn(static_cast<std::size_t>(R * 300 * C), 7 + static_cast<std::uint64_t>(B));
      const tensor_view kv(keys.data(), dtype::f32, {R * 300, C});
      ops::hadamard(kv, kv);
      ops::block_round_trip(kv, kv, ops::quant_format::fp4_e2m1, 32);
      std::vector<std::int32_t> slots;
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t s = 0; s < 300; ++s)
          slots.push_back(static_cast<std::int32_t>(table[static_cast<std::size_t>(r * per + s / B)] * B + s % B));
      ops::key_store(kv, i32v(slots, {R * 300}), kp);
      // Rows: requests 1, 0, 2, 1 with 300, 17, 0 and 1 visible keys.
      const std::int64_t T = 4, L = 310;
      std::vector<std::int32_t> row_req = {1, 0, 2, 1}, n_keys = {300, 17, 0, 1};
      std::vector<float> q = test::randn(static_cast<std::size_t>(T * H * C), 11), w = test::randn(static_cast<std::size_t>(T * H), 12);
      // The op rounds q to FP4 itself (idempotent): the expected scores use q rounded by the quantizer op.
      std::vector<float> qr = q;
      ops::block_round_trip(f32v(qr, {T * H, C}), f32v(qr, {T * H, C}), ops::quant_format::fp4_e2m1, 32);
      for (backend be : host_backends()) {
        CAPTURE(backend_name(be));
        std::vector<float> lg(static_cast<std::size_t>(T * L), 123.f);
        ops::indexer_logits(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {R, per}), i32v(row_req, {T}),
                            i32v(n_keys, {T}), f32v(lg, {T, L}), on(be));
        for (std::int64_t t = 0; t < T; ++t) {
          const std::int64_t r = row_req[static_cast<std::size_t>(t)], n = n_keys[static_cast<std::size_t>(t)];
          for (std::int64_t s = 0; s < n; ++s)
            REQUIRE(lg[static_cast<std::size_t>(t * L + s)] ==
                    fp4_score_by_hand(qr.data() + t * H * C, w.data() + t * H, keys.data() + (r * 300 + s) * C, H, C));
          for (std::int64_t s = n; s < L; ++s) CHECK(lg[static_cast<std::size_t>(t * L + s)] == -kInf);
        }
        // Fused: the same picks, lengths and slots as topk_rows + to_slots on the materialized logits.
        const std::int64_t k = 8;
        std::vector<std::int32_t> i1(static_cast<std::size_t>(T * k)), l1(static_cast<std::size_t>(T)), s1(i1.size());
        std::vector<std::int32_t> i2(i1.size(), 5), l2(l1.size(), 5), s2(i1.size(), 5);
        ops::topk_rows(f32v(lg, {T, L}), i32v(n_keys, {T}), i32v(i1, {T, k}), i32v(l1, {T}), on(be));
        ops::to_slots(i32v(i1, {T, k}), i32v(l1, {T}), i32v(row_req, {T}), i32v(table, {R, per}), B, i32v(s1, {T, k}));
        ops::indexer_topk(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {R, per}), i32v(row_req, {T}),
                          i32v(n_keys, {T}), i32v(i2, {T, k}), i32v(l2, {T}), i32v(s2, {T, k}), on(be));
        CHECK(i1 == i2);
        CHECK(l1 == l2);
        CHECK(s1 == s2);
      }
    }
  }

  TEST_CASE("FP4 indexer, V4 shapes: raw key bytes with every exponent spread, NaN scales; cpu == ref bitwise") {
    // Keys written byte by byte: random codes and per-block scale bytes 100 + rand % 7 (spreads 0 .. 6: the VNNI
    // kernel takes spreads <= 3, the rest go to the reference), a few 0xFF scales (NaN scores). 64 heads (4 lane
    // groups) and 20 heads (two groups, the second padded), C = 128.
    const std::int64_t C = 128, B = 64, pages = 6, n = pages * B;
    const cache::key_geometry g{cache::key_format::fp4, C, B};
    auto mem = page_memory(pages, g.page_bytes(), 0);
    const cache::key_pages kp = key_view(mem, pages, g);
    std::mt19937_64 rng(41);
    int nan_keys = 0;
    for (std::int64_t p = 0; p < pages; ++p)
      for (std::int64_t e = 0; e < B; ++e) {
        std::uint8_t* codes = kp.page(p) + g.code_offset(e);
        std::uint8_t* sc = kp.page(p) + g.scale_offset(e);
        for (std::int64_t i = 0; i < C / 2; ++i) codes[i] = static_cast<std::uint8_t>(rng());
        for (std::int64_t b = 0; b < C / 32; ++b) sc[b] = static_cast<std::uint8_t>(100 + rng() % 7);
        if (rng() % 97 == 0) {
          sc[rng() % 4] = 0xFF;
          ++nan_keys;
        }
      }
    REQUIRE(nan_keys > 0);
    std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
    std::iota(table.begin(), table.end(), 0);
    for (std::int64_t H : {64, 20}) {
      CAPTURE(H);
      const std::int64_t T = 5;
      std::vector<float> q = test::randn(static_cast<std::size_t>(T * H * C), 42 + static_cast<std::uint64_t>(H)),
                         w = test::randn(static_cast<std::size_t>(T * H), 43);
      // token 2: one head's blocks scaled far apart (exponent spread 8): the whole token takes the reference path
      for (std::int64_t c = 0; c < 32; ++c) q[static_cast<std::size_t>((2 * H + 1) * C + c)] *= 256.f;
      // token 3: two heads with an all-zero block (zero blocks are left out of the VNNI kernel's envelope, so the token
      // stays on the kernel); token 4: a head entirely zero
      for (std::int64_t c = 32; c < 64; ++c) {
        q[static_cast<std::size_t>((3 * H + 0) * C + c)] = 0.f;
        q[static_cast<std::size_t>((3 * H + 5) * C + c)] = 0.f;
      }
      for (std::int64_t c = 0; c < C; ++c) q[static_cast<std::size_t>((4 * H + 2) * C + c)] = 0.f;
      std::vector<std::int32_t> req(static_cast<std::size_t>(T), 0), nk(static_cast<std::size_t>(T), static_cast<std::int32_t>(n));
      std::vector<float> lr(static_cast<std::size_t>(T * n)), lc(lr.size());
      ops::indexer_logits(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {1, pages}), i32v(req, {T}),
                          i32v(nk, {T}), f32v(lr, {T, n}), on(backend::ref));
      ops::indexer_logits(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {1, pages}), i32v(req, {T}),
                          i32v(nk, {T}), f32v(lc, {T, n}), on(backend::cpu));
      int nans = 0;
      for (std::size_t i = 0; i < lr.size(); ++i) {
        nans += std::isnan(lr[i]);
        REQUIRE(f32_to_bits(lr[i]) == f32_to_bits(lc[i]));
      }
      CHECK(nans == nan_keys * T);
      // numerics official (dsv4/ref/official.hpp): BF16 scores from the same exact dots; ref and cpu bitwise, the
      // portable and VNNI kernels included (the cpu_no_vbmi_vnni ctest runs this without VNNI).
      {
        std::vector<float> orf(lr.size()), oc(lr.size());
        ops::indexer_logits(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {1, pages}), i32v(req, {T}),
                            i32v(nk, {T}), f32v(orf, {T, n}), on(backend::ref), numerics::official);
        ops::indexer_logits(f32v(q, {T, H, C}), f32v(w, {T, H}), kp, i32v(table, {1, pages}), i32v(req, {T}),
                            i32v(nk, {T}), f32v(oc, {T, n}), on(backend::cpu), numerics::official);
        std::int64_t differ = 0;
        for (std::size_t i = 0; i < lr.size(); ++i) {
          REQUIRE(f32_to_bits(orf[i]) == f32_to_bits(oc[i]));
          if (std::isnan(lr[i])) continue;
          REQUIRE(orf[i] == round_bf16(orf[i]));
          differ += orf[i] != lr[i];
        }
        CHECK(differ > static_cast<std::int64_t>(lr.size()) / 2);  // BF16 scores: most differ from the fp32 ones
      }
      // and the by-hand definition on keys without a NaN scale (the decoded values through ref::load_key)
      std::vector<float> qr = q, key(static_cast<std::size_t>(C));
      ops::block_round_trip(f32v(qr, {T * H, C}), f32v(qr, {T * H, C}), ops::quant_format::fp4_e2m1, 32);
      for (std::int64_t s = 0; s < n; s += 7) {
        ref::load_key(kp, s, key.data());
        if (std::isnan(lr[static_cast<std::size_t>(s)])) continue;
        for (std::int64_t t = 0; t < T; ++t)
          REQUIRE(lr[static_cast<std::size_t>(t * n + s)] ==
                  fp4_score_by_hand(qr.data() + t * H * C, w.data() + t * H, key.data(), H, C));
      }
    }
  }

  TEST_CASE("FP4 indexer: the dot is exact, rounded once (1 + 2^-24 + 2^-24 = 1 + 2^-23, where fp32 in order gives 1)") {
    // One head, C = 96: q = 1 at c = 0, 32, 64; key = 1 (block 0: scale 2^0, code 0x2 = 1.0) and 2^-24 in blocks 1
    // and 2 (scale 2^-25, code 0x4 = 2.0). Summing the products in fp32 in order rounds 1 + 2^-24 back to 1 twice;
    // the exact sum 1 + 2^-23 is an fp32 number. Key exponent spread 25: the CPU scores it with the reference path.
    const std::int64_t C = 96, B = 4;
    const cache::key_geometry g{cache::key_format::fp4, C, B};
    auto mem = page_memory(1, g.page_bytes(), 0);
    const cache::key_pages kp = key_view(mem, 1, g);
    std::uint8_t* codes = kp.page(0) + g.code_offset(0);
    std::uint8_t* sc = kp.page(0) + g.scale_offset(0);
    codes[0] = 0x02;
    codes[16] = 0x04;
    codes[32] = 0x04;
    sc[0] = 127;
    sc[1] = sc[2] = 127 - 25;
    std::vector<float> q(static_cast<std::size_t>(C), 0.f), w = {1.f};
    q[0] = q[32] = q[64] = 1.f;
    std::vector<std::int32_t> table = {0}, req = {0}, nk = {1};
    float f32_in_order = 0.f;
    for (float term : {1.f, 0x1p-24f, 0x1p-24f}) f32_in_order += term;
    CHECK(f32_in_order == 1.f);
    for (backend be : host_backends()) {
      std::vector<float> lg(1);
      ops::indexer_logits(f32v(q, {1, 1, C}), f32v(w, {1, 1}), kp, i32v(table, {1, 1}), i32v(req, {1}), i32v(nk, {1}),
                          f32v(lg, {1, 1}), on(be));
      CHECK(lg[0] == 1.f + 0x1p-23f);
    }
  }

  TEST_CASE("sparse_mqa over two page segments equals the contiguous op; empty rows give out 0 / lse +inf") {
    const std::int64_t T = 5, H = 3, D = 96, B = 7, pages = 12;
    for (cache::kv_format fmt : {cache::kv_format::f32, cache::kv_format::fp8_ds_mla}) {
      const cache::kv_geometry g{fmt, D, 32, B};
      auto mem = page_memory(pages, g.page_bytes(), 0);
      const cache::kv_pages kv = kv_view(mem, pages, g);
      // 84 entries with values on the stored grids (FP8 nope, BF16 rope) so both formats hold them exactly.
      std::vector<float> rows = test::randn(static_cast<std::size_t>(pages * B * D), 21);
      const tensor_view rv(rows.data(), dtype::f32, {pages * B, D});
      ops::block_round_trip(rv.narrow(1, 0, 64), rv.narrow(1, 0, 64), ops::quant_format::fp8_e4m3, 64);
      for (std::int64_t i = 0; i < pages * B; ++i)
        for (std::int64_t d = 64; d < D; ++d) {
          float& x = rows[static_cast<std::size_t>(i * D + d)];
          x = bf16::from_float(x).to_float();
        }
      std::vector<std::int32_t> all(static_cast<std::size_t>(pages * B));
      std::iota(all.begin(), all.end(), 0);
      ops::kv_store(rv, i32v(all, {pages * B}), kv);
      // Window lanes (4 wide, len per row) and compressed lanes (3 wide); garbage past len; row 3 all -1; row 4 len 0.
      const std::int32_t G = std::numeric_limits<std::int32_t>::max();
      std::vector<std::int32_t> ws = {0, 1, 2, 3, 10, 11, -1, 13, 40, 41, G, G, -1, -1, -1, -1, G, G, G, G};
      std::vector<std::int32_t> wl = {4, 4, 2, 4, 0};
      std::vector<std::int32_t> cs = {60, 61, 62, 70, -1, 80, 5, G, G, -1, -1, -1, G, G, G};
      std::vector<std::int32_t> cl = {3, 3, 1, 3, 0};
      std::vector<float> q = test::randn(static_cast<std::size_t>(T * H * D), 22), sink = {0.5f, -1.f, -kInf};
      const ops::sparse_segment win{kv, i32v(ws, {T, 4}), i32v(wl, {T})};
      const ops::sparse_segment comp{kv, i32v(cs, {T, 3}), i32v(cl, {T})};
      for (backend be : host_backends()) {
        std::vector<float> out(static_cast<std::size_t>(T * H * D), 9.f), lse(static_cast<std::size_t>(T * H), 9.f);
        ops::sparse_mqa(f32v(q, {T, H, D}), win, &comp, f32v(sink, {H}), 0.125f, f32v(out, {T, H, D}),
                        f32v(lse, {T, H}), on(be));
        // The contiguous op over the same rows: one index list per token over the stored values.
        for (std::int64_t t = 0; t < T; ++t) {
          std::vector<std::int32_t> list;
          for (std::int64_t i = 0; i < wl[static_cast<std::size_t>(t)]; ++i)
            if (ws[static_cast<std::size_t>(t * 4 + i)] >= 0) list.push_back(ws[static_cast<std::size_t>(t * 4 + i)]);
          for (std::int64_t i = 0; i < cl[static_cast<std::size_t>(t)]; ++i)
            if (cs[static_cast<std::size_t>(t * 3 + i)] >= 0) list.push_back(cs[static_cast<std::size_t>(t * 3 + i)]);
          const float* o = out.data() + t * H * D;
          if (list.empty()) {
            for (std::int64_t i = 0; i < H * D; ++i) CHECK(o[i] == 0.f);
            for (std::int64_t h = 0; h < H; ++h) CHECK(lse[static_cast<std::size_t>(t * H + h)] == kInf);
            continue;
          }
          std::vector<float> ref(static_cast<std::size_t>(H * D));
          const std::int64_t n = static_cast<std::int64_t>(list.size());
          ops::sparse_attention(tensor_view(q.data() + t * H * D, dtype::f32, {1, H, D}), rv, tensor_view(),
                                tensor_view(list.data(), dtype::i32, {1, n}), f32v(sink, {H}), 0.125f,
                                tensor_view(ref.data(), dtype::f32, {1, H, D}), on(be));
          for (std::int64_t i = 0; i < H * D; ++i) CHECK(o[i] == ref[static_cast<std::size_t>(i)]);  // same kernel, same order
          // lse by hand in double: ln Σ e^(scale q·k) over the listed rows, the sink excluded.
          for (std::int64_t h = 0; h < H; ++h) {
            double m = -INFINITY, s = 0;
            std::vector<double> l;
            for (std::int32_t r : list) {
              double dot = 0;
              for (std::int64_t d = 0; d < D; ++d) dot += double(q[static_cast<std::size_t>((t * H + h) * D + d)]) * rows[static_cast<std::size_t>(r * D + d)];
              l.push_back(0.125 * dot);
              m = std::max(m, l.back());
            }
            for (double x : l) s += std::exp(x - m);
            // fp32 logits and exp: relative 1e-5 of the magnitude (a few ulp of fp32 on a sum of e^x terms).
            CHECK(std::fabs(lse[static_cast<std::size_t>(t * H + h)] - (m + std::log(s))) <= 1e-5 * std::max(1.0, std::fabs(m)));
          }
        }
      }
    }
  }

  TEST_CASE("compressor rows keyed by position: any chunking, any page layout, and rollback give the same entries") {
    // Main CSA-style compressor (ratio 4, overlapped, c = 96, rope 32) and HCA (ratio 128): N positions of random
    // projections, appended and emitted in different chunkings through different page sizes and block tables.
    for (int ratio : {4, 128}) {
      CAPTURE(ratio);
      ops::compressor_params p;
      p.ratio = ratio;
      p.c = 96;
      p.rope_dim = 32;
      const std::int64_t coff = p.coff(), cw = coff * p.c, N = ratio == 4 ? 41 : 3 * 128 + 5;
      std::vector<float> kvp = test::randn(static_cast<std::size_t>(N * cw), 31), sc = test::randn(static_cast<std::size_t>(N * cw), 32);
      std::vector<float> ape = test::randn(static_cast<std::size_t>(ratio * cw), 33, 0.5f), nw = test::randn(96, 34, 0.1f);
      for (auto& v : nw) v += 1.f;
      std::vector<float> freq(16);
      for (int i = 0; i < 16; ++i) freq[static_cast<std::size_t>(i)] = std::pow(10000.f, -2.f * i / 32.f);
      // Runs one sequence through chunks; returns the emitted entries by entry index (f32 KV pages: exact).
      auto run = [&](const std::vector<std::int64_t>& chunks, std::int64_t S, std::uint64_t seed, backend be) {
        const std::int64_t spages = (N + S - 1) / S, B = 3, kpages = (N / ratio + B) / B + 1;
        std::vector<std::int32_t> st = random_table(1, spages, seed), kt = random_table(1, kpages, seed + 1);
        std::vector<float> state(static_cast<std::size_t>(spages * S * 2 * cw), NAN);  // unwritten rows are never read
        const cache::state_rows rows{tensor_view(state.data(), dtype::f32, {spages * S, 2 * cw}), S};
        const cache::kv_geometry g{cache::kv_format::f32, 96, 32, B};
        auto mem = page_memory(kpages, g.page_bytes(), 0);
        const cache::kv_pages kv = kv_view(mem, kpages, g);
        std::int64_t t0 = 0;
        for (std::int64_t n : chunks) {
          std::vector<std::int64_t> pos(static_cast<std::size_t>(n));
          std::vector<std::int32_t> slot(static_cast<std::size_t>(n)), out(static_cast<std::size_t>(n)), req(static_cast<std::size_t>(n), 0);
          for (std::int64_t i = 0; i < n; ++i) {
            const std::int64_t q = t0 + i;
            pos[static_cast<std::size_t>(i)] = q;
            slot[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(cache::slot_of(st.data(), q, S));
            out[static_cast<std::size_t>(i)] = (q + 1) % ratio ? -1 : static_cast<std::int32_t>(cache::slot_of(kt.data(), q / ratio, B));
          }
          const tensor_view P(pos.data(), dtype::i64, {n});
          ops::compressor_append(tensor_view(kvp.data() + t0 * cw, dtype::f32, {n, cw}),
                                 tensor_view(sc.data() + t0 * cw, dtype::f32, {n, cw}), f32v(ape, {ratio, cw}), P,
                                 i32v(slot, {n}), rows, p, on(be));
          ops::compressor_emit(P, i32v(req, {n}), i32v(st, {1, spages}), rows, f32v(nw, {96}), f32v(freq, {16}),
                               i32v(out, {n}), p, &kv, nullptr, tensor_view(), on(be));
          t0 += n;
        }
        std::vector<std::int32_t> es;
        for (std::int64_t j = 0; j < N / ratio; ++j) es.push_back(static_cast<std::int32_t>(cache::slot_of(kt.data(), j, B)));
        return load_rows(kv, es, 96);
      };
      for (backend be : host_backends()) {
        const auto whole = run({N}, 8, 1, be);
        CHECK(run(std::vector<std::int64_t>(static_cast<std::size_t>(N), 1), 3, 2, be) == whole);
        CHECK(run({1, 4, 3, N - 8}, 16, 3, be) == whole);
        CHECK(run({ratio + 1, N - ratio - 1}, 5, 4, be) == whole);
        // Entry 0 by hand (spec §3.4): per channel, the softmax over the block's rows of score + ape (overlapped:
        // channels [c, 2c) of block 0 only, block -1 is empty), then RMSNorm, RoPE at position 0, FP8 round trip.
        std::vector<float> e0(96);
        for (int ch = 0; ch < 96; ++ch) {
          const int col = coff == 2 ? 96 + ch : ch;
          double m = -INFINITY, den = 0, num = 0;
          for (int k = 0; k < ratio; ++k) m = std::max(m, double(sc[static_cast<std::size_t>(k * cw + col)] + ape[static_cast<std::size_t>(k * cw + col)]));
          for (int k = 0; k < ratio; ++k) {
            const double e = std::exp(double(sc[static_cast<std::size_t>(k * cw + col)] + ape[static_cast<std::size_t>(k * cw + col)]) - m);
            den += e;
            num += e * kvp[static_cast<std::size_t>(k * cw + col)];
          }
          e0[static_cast<std::size_t>(ch)] = static_cast<float>(num / den);
        }
        double ss = 0;
        for (float v : e0) ss += double(v) * v;
        for (int ch = 0; ch < 96; ++ch) e0[static_cast<std::size_t>(ch)] *= static_cast<float>(1 / std::sqrt(ss / 96 + 1e-6)) * nw[static_cast<std::size_t>(ch)];
        // Nope dims: within FP8 rounding of the hand value (relative 2^-4 of the block's scale); rope dims at pos 0
        // are unrotated: within fp32 rounding.
        for (int ch = 0; ch < 64; ++ch) CHECK(std::fabs(whole[static_cast<std::size_t>(ch)] - e0[static_cast<std::size_t>(ch)]) <= 0.07f * std::fabs(e0[static_cast<std::size_t>(ch)]) + 1e-3f);
        for (int ch = 64; ch < 96; ++ch) CHECK(std::fabs(whole[static_cast<std::size_t>(ch)] - e0[static_cast<std::size_t>(ch)]) <= 1e-5f * (1 + std::fabs(e0[static_cast<std::size_t>(ch)])));
      }
      // Rollback: positions written with other values, then rewound and written again with the true ones: rows are
      // keyed by position, so the emitted entries are the same as a run that never saw the rejected ones.
      const auto truth = run({N}, 8, 1, backend::ref);
      const auto saved = kvp;
      for (std::int64_t i = ratio * cw; i < 2 * ratio * cw && i < N * cw; ++i) kvp[static_cast<std::size_t>(i)] += 1.f;
      (void)run({N}, 8, 1, backend::ref);  // a different sequence state, then discarded
      kvp = saved;
      CHECK(run({N}, 8, 1, backend::ref) == truth);
    }
  }

  TEST_CASE("compressor_emit refuses unmapped state rows, wrong outputs and bad parameters") {
    ops::compressor_params p;
    p.ratio = 4;
    p.c = 96;
    p.rope_dim = 32;
    std::vector<float> state(static_cast<std::size_t>(8 * 384)), nw(96, 1.f), freq(16, 0.f);
    const cache::state_rows rows{tensor_view(state.data(), dtype::f32, {8, 384}), 4};
    std::vector<std::int64_t> pos = {7};
    std::vector<std::int32_t> req = {0}, table = {0, -1}, out = {0};
    const cache::kv_geometry g{cache::kv_format::f32, 96, 32, 2};
    auto mem = page_memory(1, g.page_bytes(), 0);
    const cache::kv_pages kv = kv_view(mem, 1, g);
    check_error([&] {
      ops::compressor_emit(tensor_view(pos.data(), dtype::i64, {1}), i32v(req, {1}), i32v(table, {1, 2}), rows,
                           f32v(nw, {96}), f32v(freq, {16}), i32v(out, {1}), p, &kv, nullptr, tensor_view());
    }, {"state row of position 4 is not mapped"});
    check_error([&] {
      ops::compressor_emit(tensor_view(pos.data(), dtype::i64, {1}), i32v(req, {1}), i32v(table, {1, 2}), rows,
                           f32v(nw, {96}), f32v(freq, {16}), i32v(out, {1}), p, nullptr, nullptr, tensor_view());
    }, {"main compressor stores into KV pages"});
    p.ratio = 16;
    check_error([&] {
      ops::compressor_emit(tensor_view(pos.data(), dtype::i64, {1}), i32v(req, {1}), i32v(table, {1, 2}), rows,
                           f32v(nw, {96}), f32v(freq, {16}), i32v(out, {1}), p, &kv, nullptr, tensor_view());
    }, {"ratio 16"});
  }
}
