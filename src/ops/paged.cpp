// src/ops/paged.cpp — validated entry points of the paged-cache ops (dsv4/ops/paged.hpp): page stores and loads,
// the position-keyed compressor, the indexer over paged keys, top-k, slot mapping and sparse MQA over two segments.
//
// Every slot, block-table entry and length an op dereferences is range-checked here, before any kernel runs, so a
// hostile or stale table gives a dsv4::error naming the row, never an out-of-bounds read. Backends: the byte packing
// (stores, loads, compressor append, slot mapping) has one implementation, run serially (ref) or over oneTBB rows
// (cpu): both write identical bytes. Scores, top-k and attention use the ref kernels or the CPU SIMD kernels of
// ops/attention (the same kernels as the contiguous ops, fed page rows through pointers or one decoded page at a time).
#include "dsv4/ops/paged.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.hpp"
#include "dsv4/cpu/attention.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/quant.hpp"
#include "dsv4/ref/attention.hpp"
#include "dsv4/ref/indexer.hpp"
#include "dsv4/ref/official.hpp"
#include "dsv4/ref/cache.hpp"
#include "dsv4/ref/rotary.hpp"
#include "parallel.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/paged.hpp"
#endif

namespace dsv4 {

namespace cache {

namespace {
void check_page_tensor(const char* op, const char* what, const tensor_view& t, std::int64_t page_bytes,
                       std::int64_t page_tokens) {
  DSV4_CHECK(t.rank() == 2 && t.dt() == dtype::u8, op, what, " pages are ", t.describe(),
             ", expected u8[num_pages, page_bytes]");
  DSV4_CHECK(t.shape(1) >= page_bytes && (t.shape(1) <= 1 || t.stride(1) == 1) && (t.shape(0) <= 1 ||
                                                                                     t.stride(0) >= page_bytes),
             op, what, " pages ", t.describe(), ": each page needs ", page_bytes, " contiguous bytes");
  DSV4_CHECK(page_tokens >= 1 && page_tokens <= (1 << 20), op, what, " pages hold ", page_tokens,
             " entries each, expected 1 .. 2^20");
  DSV4_CHECK(t.shape(0) * page_tokens <= std::numeric_limits<std::int32_t>::max(), op, what, " pages: ",
             t.shape(0), " pages x ", page_tokens, " entries do not fit i32 slots");
}
}  // namespace

void check_pages(const char* op, const kv_pages& kv) {
  const kv_geometry& g = kv.geo;
  DSV4_CHECK(g.head_dim > g.rope_dim && g.rope_dim >= 2 && g.rope_dim % 2 == 0 && g.head_dim <= (1 << 14), op,
             "KV geometry head_dim ", g.head_dim, " / rope ", g.rope_dim, ": need head_dim > rope_dim >= 2, rope even");
  DSV4_CHECK(g.format == kv_format::f32 || (g.nope() % 64 == 0), op, "fp8_ds_mla needs head_dim - rope_dim (", g.nope(),
             ") a multiple of 64 (FP8 blocks of 64)");
  check_page_tensor(op, "KV", kv.pages, g.page_bytes(), g.page_tokens);
  if (g.format == kv_format::f32)
    DSV4_CHECK(reinterpret_cast<std::uintptr_t>(kv.pages.data()) % 4 == 0 && kv.pages.stride(0) % 4 == 0, op,
               "f32 KV pages must start 4-byte aligned");
}

void check_pages(const char* op, const key_pages& keys) {
  const key_geometry& g = keys.geo;
  DSV4_CHECK(g.dim >= 32 && g.dim % 32 == 0 && g.dim <= (1 << 14), op, "key dim ", g.dim,
             " must be a multiple of 32 (FP4 blocks of 32)");
  check_page_tensor(op, "key", keys.pages, g.page_bytes(), g.page_tokens);
}

void check_state(const char* op, const state_rows& s, std::int64_t width) {
  DSV4_CHECK(s.rows.rank() == 2 && s.rows.dt() == dtype::f32 && s.rows.shape(1) == width &&
                 (width <= 1 || s.rows.stride(1) == 1),
             op, "state rows are ", s.rows.describe(), ", expected f32[slots, ", width, "] with unit inner stride");
  DSV4_CHECK(s.page_tokens >= 1, op, "state pages hold ", s.page_tokens, " rows, expected >= 1");
}

}  // namespace cache

namespace ops {

namespace {

using detail::check_tensor;
using detail::is_absent;

const std::int32_t* i32p(const tensor_view& t) { return static_cast<const std::int32_t*>(t.data()); }
const std::int64_t* i64p(const tensor_view& t) { return static_cast<const std::int64_t*>(t.data()); }
const float* f32p(const tensor_view& t) { return static_cast<const float*>(t.data()); }
float* f32w(const tensor_view& t) { return static_cast<float*>(t.data()); }

void need_contiguous(const char* op, const char* name, const tensor_view& t) {
  DSV4_CHECK(t.is_contiguous(), op, name, " ", t.describe(), " must be contiguous");
  detail::check_host_only(op, "paged-cache", {&t});
}

// Rows 0..n-1, in parallel over oneTBB for the cpu backend, in order for ref.
template <class Fn>
void for_rows(backend be, std::int64_t n, const exec& ex, Fn&& fn) {
  if (be == backend::ref) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  cpu::detail::parallel_rows(n, 16, ex, [&](std::int64_t a, std::int64_t b) {
    for (std::int64_t i = a; i < b; ++i) fn(i);
  });
}

// Slots in [-1, num_slots); with `unique`, no two rows write one slot.
void check_slots(const char* op, const char* name, const tensor_view& slots, std::int64_t n, std::int64_t num_slots,
                 bool unique) {
  check_tensor(op, name, slots, dtype::i32, {n});
  need_contiguous(op, name, slots);
  const std::int32_t* s = i32p(slots);
  for (std::int64_t i = 0; i < n; ++i)
    DSV4_CHECK(s[i] >= -1 && s[i] < num_slots, op, name, "[", i, "] = ", s[i], " is outside [-1, ", num_slots,
               ") (the pages hold ", num_slots, " slots)");
  if (!unique) return;
  std::vector<std::int32_t> sorted(s, s + n);
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 1; i < sorted.size(); ++i)
    DSV4_CHECK(sorted[i] < 0 || sorted[i] != sorted[i - 1], op, name, ": slot ", sorted[i],
               " is written by two rows");
}

// A [T] request column and its block table: row_req[t] in [0, R).
void check_requests(const char* op, const tensor_view& row_req, const tensor_view& table, std::int64_t T) {
  check_tensor(op, "row_req", row_req, dtype::i32, {T});
  need_contiguous(op, "row_req", row_req);
  DSV4_CHECK(table.rank() == 2 && table.dt() == dtype::i32, op, "block_table is ", table.describe(),
             ", expected i32[requests, max_pages]");
  need_contiguous(op, "block_table", table);
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(i32p(row_req)[t] >= 0 && i32p(row_req)[t] < table.shape(0), op, "row_req[", t, "] = ",
               i32p(row_req)[t], " is outside the block table's ", table.shape(0), " requests");
}

// Logical entries [0, n) of request r are mapped to pages inside [0, num_pages).
void check_mapped(const char* op, const char* what, const tensor_view& table, std::int64_t r, std::int64_t n,
                  std::int64_t page_tokens, std::int64_t num_pages, std::int64_t row) {
  const std::int64_t pages = (n + page_tokens - 1) / page_tokens;
  DSV4_CHECK(pages <= table.shape(1), op, "row ", row, ": ", n, " ", what, " need ", pages, " pages, the block table ",
             "has ", table.shape(1), " columns");
  const std::int32_t* bt = i32p(table) + r * table.shape(1);
  for (std::int64_t p = 0; p < pages; ++p)
    DSV4_CHECK(bt[p] >= 0 && bt[p] < num_pages, op, "row ", row, ": block_table[", r, ", ", p, "] = ", bt[p],
               " while ", what, " up to ", n, " are read (pages: ", num_pages, ")");
}

backend host_backend(const char* op, const exec& ex) {
  return detail::choose_backend(op, ex, device::cpu(), nullptr);
}

exec with_backend(const exec& ex, backend be) {
  exec e = ex;
  e.prefer = be;
  return e;
}

// Whether the op runs on CUDA: the first tensor lives on a CUDA device (then every other present tensor must live on
// the same one, and the CUDA path checks shapes only: values are checked on the device, dsv4/cuda/paged.hpp); else
// every tensor must be on the host.
bool on_cuda(const char* op, const exec& ex, std::initializer_list<const tensor_view*> ts) {
  std::vector<const tensor_view*> present;
  for (const tensor_view* t : ts)
    if (!is_absent(*t)) present.push_back(t);
  if (present.empty() || !present.front()->dev().is_cuda()) {
    for (const tensor_view* t : present) detail::check_host_only(op, "paged-cache", {t});
    return false;
  }
  for (const tensor_view* t : present)
    DSV4_CHECK(t->dev() == present.front()->dev(), op, "tensors on different devices: ", present.front()->describe(),
               " and ", t->describe());
  detail::choose_backend(op, ex, present.front()->dev(), nullptr);
#if !DSV4_WITH_CUDA
  DSV4_FAIL(op, "this build of dsv4 has no CUDA backend");
#endif
  return true;
}

#if DSV4_WITH_CUDA
// A contiguous i32 [n] (or absent when `optional`) column's device pointer.
const std::int32_t* i32_column(const char* op, const char* name, const tensor_view& t, std::int64_t n,
                               bool optional = false) {
  if (optional && is_absent(t)) return nullptr;
  check_tensor(op, name, t, dtype::i32, {n});
  DSV4_CHECK(t.is_contiguous(), op, name, " ", t.describe(), " must be contiguous");
  return i32p(t);
}
#endif

}  // namespace

// ---- stores and loads --------------------------------------------------------------------------------------------

namespace {

// The shared body of the four page stores / loads: values f32 [rows, width] (contiguous), slots checked against the
// pages (`store`: −1 allowed and skipped), then one entry per row through the ref's byte-exact store / load.
template <class Store>
void store_rows(const char* op, const tensor_view& values, const tensor_view& slots, std::int64_t width,
                std::int64_t num_slots, const exec& ex, Store store) {
  DSV4_CHECK(values.rank() == 2 && values.dt() == dtype::f32 && values.shape(1) == width, op, "values ",
             values.describe(), ", expected f32[T, ", width, "]");
  need_contiguous(op, "values", values);
  const std::int64_t T = values.shape(0);
  check_slots(op, "slots", slots, T, num_slots, true);
  std::vector<std::int64_t> bad(static_cast<std::size_t>(T), 0);
  for_rows(host_backend(op, ex), T, ex, [&](std::int64_t t) {
    const std::int32_t s = i32p(slots)[t];
    if (s >= 0) bad[static_cast<std::size_t>(t)] = store(s, f32p(values) + t * width);
  });
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(bad[static_cast<std::size_t>(t)] == 0, op, "values row ", t, " holds inf or NaN");
}

// Rows with slot −1 come back as zeros.
template <class Load>
void load_rows(const char* op, const tensor_view& slots, const tensor_view& values, std::int64_t width,
               std::int64_t num_slots, const exec& ex, Load load) {
  DSV4_CHECK(values.rank() == 2 && values.dt() == dtype::f32 && values.shape(1) == width, op, "values ",
             values.describe(), ", expected f32[N, ", width, "]");
  need_contiguous(op, "values", values);
  const std::int64_t N = values.shape(0);
  check_slots(op, "slots", slots, N, num_slots, false);
  for_rows(host_backend(op, ex), N, ex, [&](std::int64_t i) {
    float* v = f32w(values) + i * width;
    const std::int32_t s = i32p(slots)[i];
    if (s < 0) std::fill(v, v + width, 0.f);
    else load(s, v);
  });
}

}  // namespace

#if DSV4_WITH_CUDA
namespace {
// The CUDA forms of the four stores / loads: values f32 [rows, width] contiguous, slots i32 [rows].
void check_rows_cuda(const char* op, const tensor_view& values, const tensor_view& slots, std::int64_t width) {
  DSV4_CHECK(values.rank() == 2 && values.dt() == dtype::f32 && values.shape(1) == width && values.is_contiguous(),
             op, "values ", values.describe(), ", expected contiguous f32[T, ", width, "]");
  i32_column(op, "slots", slots, values.shape(0));
}
void store_failed(const char* op, std::int64_t bad) {
  DSV4_CHECK(bad == 0, op, bad, " block(s) of the values hold inf or NaN");
}
}  // namespace
#endif

void kv_store(const tensor_view& values, const tensor_view& slots, const cache::kv_pages& kv, const exec& ex) {
  cache::check_pages("kv_store", kv);
  if (on_cuda("kv_store", ex, {&kv.pages, &values, &slots})) {
#if DSV4_WITH_CUDA
    check_rows_cuda("kv_store", values, slots, kv.geo.head_dim);
    return store_failed("kv_store", cuda::kv_store(values.as<const float, 2>(), i32p(slots), cuda::device_pages(kv),
                                                   detail::on_device("kv_store", ex, kv.pages.dev())));
  #endif
  }
  store_rows("kv_store", values, slots, kv.geo.head_dim, kv.num_slots(), ex,
             [&](std::int32_t s, const float* v) { return ref::store_kv_entry(kv, s, v); });
}

void kv_load(const cache::kv_pages& kv, const tensor_view& slots, const tensor_view& values, const exec& ex) {
  cache::check_pages("kv_load", kv);
  if (on_cuda("kv_load", ex, {&kv.pages, &values, &slots})) {
#if DSV4_WITH_CUDA
    check_rows_cuda("kv_load", values, slots, kv.geo.head_dim);
    return cuda::kv_load(cuda::device_pages(kv), i32p(slots), values.as<float, 2>(),
                         detail::on_device("kv_load", ex, kv.pages.dev()));
  #endif
  }
  load_rows("kv_load", slots, values, kv.geo.head_dim, kv.num_slots(), ex,
            [&](std::int32_t s, float* v) { ref::load_kv_entry(kv, s, v); });
}

void key_store(const tensor_view& values, const tensor_view& slots, const cache::key_pages& keys, const exec& ex) {
  cache::check_pages("key_store", keys);
  if (on_cuda("key_store", ex, {&keys.pages, &values, &slots})) {
#if DSV4_WITH_CUDA
    check_rows_cuda("key_store", values, slots, keys.geo.dim);
    return store_failed("key_store", cuda::key_store(values.as<const float, 2>(), i32p(slots),
                                                     cuda::device_pages(keys),
                                                     detail::on_device("key_store", ex, keys.pages.dev())));
  #endif
  }
  store_rows("key_store", values, slots, keys.geo.dim, keys.num_slots(), ex,
             [&](std::int32_t s, const float* v) { return ref::store_key(keys, s, v); });
}

void key_load(const cache::key_pages& keys, const tensor_view& slots, const tensor_view& values, const exec& ex) {
  cache::check_pages("key_load", keys);
  if (on_cuda("key_load", ex, {&keys.pages, &values, &slots})) {
#if DSV4_WITH_CUDA
    check_rows_cuda("key_load", values, slots, keys.geo.dim);
    return cuda::key_load(cuda::device_pages(keys), i32p(slots), values.as<float, 2>(),
                          detail::on_device("key_load", ex, keys.pages.dev()));
  #endif
  }
  load_rows("key_load", slots, values, keys.geo.dim, keys.num_slots(), ex,
            [&](std::int32_t s, float* v) { ref::load_key(keys, s, v); });
}

// ---- compressor ------------------------------------------------------------------------------------------------

namespace {
void check_params(const char* op, const compressor_params& p) {
  DSV4_CHECK(p.ratio == 4 || p.ratio == 128, op, "ratio ", p.ratio, " (expected 4 or 128)");
  DSV4_CHECK(p.c >= 2 && p.c <= (1 << 14) && p.rope_dim >= 2 && p.rope_dim % 2 == 0 && p.rope_dim < p.c, op,
             "entry width ", p.c, " / rope ", p.rope_dim, ": need c > rope_dim >= 2, rope even");
  DSV4_CHECK(std::isfinite(p.norm_eps) && p.norm_eps > 0, op, "norm_eps ", p.norm_eps, " must be > 0");
}
}  // namespace

void compressor_append(const tensor_view& kv, const tensor_view& score, const tensor_view& ape,
                       const tensor_view& positions, const tensor_view& state_slot, const cache::state_rows& state,
                       const compressor_params& p, const exec& ex) {
  constexpr const char* op = "compressor_append";
  check_params(op, p);
  const std::int64_t cw = p.coff() * p.c, T = kv.rank() == 2 ? kv.shape(0) : -1;
  check_tensor(op, "kv", kv, dtype::f32, {T, cw});
  check_tensor(op, "score", score, dtype::f32, {T, cw});
  check_tensor(op, "ape", ape, dtype::f32, {p.ratio, cw});
  check_tensor(op, "positions", positions, dtype::i64, {T});
  if (on_cuda(op, ex, {&kv, &score, &ape, &positions, &state_slot, &state.rows})) {
#if DSV4_WITH_CUDA
    for (const auto* t : {&kv, &score, &ape, &positions})
      DSV4_CHECK(t->is_contiguous(), op, "input ", t->describe(), " must be contiguous");
    cache::check_state(op, state, 2 * cw);
    return cuda::compressor_append(kv.as<const float, 2>(), score.as<const float, 2>(), ape.as<const float, 2>(),
                                   i64p(positions), i32_column(op, "state_slot", state_slot, T),
                                   state.rows.as<float, 2>(), p.ratio, detail::on_device(op, ex, kv.dev()));
  #endif
  }
  for (const auto* t : {&kv, &score, &ape, &positions}) need_contiguous(op, "input", *t);
  cache::check_state(op, state, 2 * cw);
  check_slots(op, "state_slot", state_slot, T, state.rows.shape(0), true);
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(i64p(positions)[t] >= 0, op, "positions[", t, "] = ", i64p(positions)[t], " is negative");
  for_rows(host_backend(op, ex), T, ex, [&](std::int64_t t) {
    const std::int32_t s = i32p(state_slot)[t];
    if (s < 0) return;
    float* row = f32w(state.rows) + s * state.rows.stride(0);
    const float* a = f32p(ape) + (i64p(positions)[t] % p.ratio) * cw;  // ape is added before the overlap split
    for (std::int64_t ch = 0; ch < cw; ++ch) {
      row[ch] = f32p(kv)[t * cw + ch];
      row[cw + ch] = f32p(score)[t * cw + ch] + a[ch];
    }
  });
}

void compressor_emit(const tensor_view& positions, const tensor_view& row_req, const tensor_view& state_table,
                     const cache::state_rows& state, const tensor_view& norm_weight, const tensor_view& rope_freq,
                     const tensor_view& out_slot, const compressor_params& p, const cache::kv_pages* main_out,
                     const cache::key_pages* key_out, const tensor_view& entries, const exec& ex) {
  constexpr const char* op = "compressor_emit";
  check_params(op, p);
  const tensor_view none;
  if (on_cuda(op, ex, {&positions, &row_req, &state_table, &state.rows, &norm_weight, &rope_freq, &out_slot,
                       main_out ? &main_out->pages : &none, key_out ? &key_out->pages : &none, &entries})) {
#if DSV4_WITH_CUDA
    DSV4_CHECK(p.nm == numerics::fp32, op, "the CUDA backend implements numerics fp32 only so far");
    const std::int64_t T = positions.rank() == 1 ? positions.shape(0) : -1, c = p.c, cw = p.coff() * c;
    check_tensor(op, "positions", positions, dtype::i64, {T});
    DSV4_CHECK(positions.is_contiguous(), op, "positions ", positions.describe(), " must be contiguous");
    DSV4_CHECK(state_table.rank() == 2 && state_table.dt() == dtype::i32, op, "state_table is ",
               state_table.describe(), ", expected i32[requests, pages]");
    cache::check_state(op, state, 2 * cw);
    check_tensor(op, "norm_weight", norm_weight, dtype::f32, {c});
    check_tensor(op, "rope_freq", rope_freq, dtype::f32, {p.rope_dim / 2});
    DSV4_CHECK(norm_weight.is_contiguous() && rope_freq.is_contiguous(), op, "norm_weight and rope_freq must be contiguous");
    DSV4_CHECK(p.indexer ? (key_out && !main_out) : (main_out && !key_out), op,
               p.indexer ? "the indexer compressor stores into key pages (key_out), not KV pages"
                         : "the main compressor stores into KV pages (main_out), not key pages");
    cuda::kv_dev kvd{};
    cuda::key_dev kd{};
    if (p.indexer) {
      cache::check_pages(op, *key_out);
      DSV4_CHECK(key_out->geo.dim == c && key_out->geo.format == cache::key_format::fp4, op, "key pages of dim ",
                 key_out->geo.dim, " (", cache::key_format_name(key_out->geo.format), ") for FP4 entries of ", c);
      kd = cuda::device_pages(*key_out);
    } else {
      cache::check_pages(op, *main_out);
      DSV4_CHECK(main_out->geo.head_dim == c && main_out->geo.rope_dim == p.rope_dim && (c - p.rope_dim) % 64 == 0,
                 op, "KV pages of head_dim ", main_out->geo.head_dim, " / rope ", main_out->geo.rope_dim,
                 " for entries of ", c, " / ", p.rope_dim);
      kvd = cuda::device_pages(*main_out);
    }
    float* ent = nullptr;
    if (!is_absent(entries)) {
      check_tensor(op, "entries", entries, dtype::f32, {T, c});
      DSV4_CHECK(entries.is_contiguous(), op, "entries ", entries.describe(), " must be contiguous");
      ent = f32w(entries);
    }
    return cuda::compressor_emit(i64p(positions), i32_column(op, "row_req", row_req, T),
                                 state_table.as<const std::int32_t, 2>(), state.rows.as<const float, 2>(),
                                 state.page_tokens, f32p(norm_weight), f32p(rope_freq),
                                 i32_column(op, "out_slot", out_slot, T), p.ratio, c, p.rope_dim, p.norm_eps,
                                 p.indexer, p.indexer ? nullptr : &kvd, p.indexer ? &kd : nullptr, ent, T,
                                 detail::on_device(op, ex, positions.dev()));
#endif
  }
  const std::int64_t r = p.ratio, c = p.c, coff = p.coff(), cw = coff * c;
  const std::int64_t T = positions.rank() == 1 ? positions.shape(0) : -1;
  check_tensor(op, "positions", positions, dtype::i64, {T});
  need_contiguous(op, "positions", positions);
  check_requests(op, row_req, state_table, T);
  cache::check_state(op, state, 2 * cw);
  check_tensor(op, "norm_weight", norm_weight, dtype::f32, {c});
  check_tensor(op, "rope_freq", rope_freq, dtype::f32, {p.rope_dim / 2});
  need_contiguous(op, "norm_weight", norm_weight);
  need_contiguous(op, "rope_freq", rope_freq);
  DSV4_CHECK(p.indexer ? (key_out && !main_out) : (main_out && !key_out), op,
             p.indexer ? "the indexer compressor stores into key pages (key_out), not KV pages"
                       : "the main compressor stores into KV pages (main_out), not key pages");
  std::int64_t out_slots = 0;
  if (p.indexer) {
    cache::check_pages(op, *key_out);
    detail::check_host_only(op, "paged-cache", {&key_out->pages});
    DSV4_CHECK(key_out->geo.dim == c, op, "key pages of dim ", key_out->geo.dim, " for entries of ", c);
    out_slots = key_out->num_slots();
  } else {
    cache::check_pages(op, *main_out);
    detail::check_host_only(op, "paged-cache", {&main_out->pages});
    DSV4_CHECK(main_out->geo.head_dim == c && main_out->geo.rope_dim == p.rope_dim, op, "KV pages of head_dim ",
               main_out->geo.head_dim, " / rope ", main_out->geo.rope_dim, " for entries of ", c, " / ", p.rope_dim);
    DSV4_CHECK((c - p.rope_dim) % 64 == 0, op, "the FP8 round trip needs c - rope_dim a multiple of 64");
    out_slots = main_out->num_slots();
  }
  check_slots(op, "out_slot", out_slot, T, out_slots, true);
  const bool want_entries = !is_absent(entries);
  if (want_entries) {
    check_tensor(op, "entries", entries, dtype::f32, {T, c});
    need_contiguous(op, "entries", entries);
  }
  // The rows that emit, and every state row they read is mapped (positions below 0 read as (0, -inf)).
  const std::int64_t S = state.page_tokens, P = state_table.shape(1), nslots = state.rows.shape(0);
  std::vector<std::int64_t> emit;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t pos = i64p(positions)[t];
    DSV4_CHECK(pos >= 0, op, "positions[", t, "] = ", pos, " is negative");
    if ((pos + 1) % r != 0 || i32p(out_slot)[t] < 0) continue;
    const std::int32_t* bt = i32p(state_table) + i32p(row_req)[t] * P;
    for (std::int64_t q = std::max<std::int64_t>(0, pos + 1 - coff * r); q <= pos; ++q) {
      DSV4_CHECK(q / S < P, op, "row ", t, ": the state row of position ", q, " is past the state table's ", P,
                 " pages");
      const std::int64_t s = cache::slot_of(bt, q, S);
      DSV4_CHECK(s >= 0 && s < nslots, op, "row ", t, ": the state row of position ", q, " is not mapped (slot ", s,
                 ")");
    }
    emit.push_back(t);
  }
  const backend be = host_backend(op, ex);
  const std::int64_t n = static_cast<std::int64_t>(emit.size());
  if (n == 0) return;

  // Pool, RMSNorm and RoPE per emitted entry (scalar and fixed-order: the same bits on every backend), then the
  // format's round trip on all of them at once with the chosen backend's kernels (row-independent).
  std::vector<float> buf(static_cast<std::size_t>(n * c));
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for_rows(be, n, ex, [&](std::int64_t i) {
    const std::int64_t t = emit[static_cast<std::size_t>(i)], pos = i64p(positions)[t], j = pos / r;
    const std::int32_t* bt = i32p(state_table) + i32p(row_req)[t] * P;
    const std::int64_t first = (j + 1) * r - coff * r;  // coff·r candidate rows per channel, oldest first
    float* out = buf.data() + i * c;
    for (std::int64_t ch = 0; ch < c; ++ch) {
      // Candidate k: position first + k; overlapped, the older r rows give channel ch and the newer r rows c + ch.
      auto at = [&](std::int64_t k, float& kv_v, float& sc_v) {
        const std::int64_t q = first + k;
        if (q < 0) {
          kv_v = 0.f;
          sc_v = kNegInf;
          return;
        }
        const float* row = f32p(state.rows) + cache::slot_of(bt, q, S) * state.rows.stride(0);
        const std::int64_t col = coff == 2 && k >= r ? c + ch : ch;
        kv_v = row[col];
        sc_v = row[cw + col];
      };
      float m = kNegInf;
      for (std::int64_t k = 0; k < coff * r; ++k) {
        float kv_v, sc_v;
        at(k, kv_v, sc_v);
        m = std::max(m, sc_v);
      }
      float den = 0.f, num = 0.f;
      for (std::int64_t k = 0; k < coff * r; ++k) {
        float kv_v, sc_v;
        at(k, kv_v, sc_v);
        const float e = std::exp(sc_v - m);  // exp(-inf) = 0: a row before the sequence weighs nothing
        den += e;
        num += e * kv_v;
      }
      out[ch] = num / den;
    }
    // official (official-numerics.md §1 C4, C5): bf16(pooled), then the norm -> bf16 and RoPE -> bf16
    round_activations(p.nm, out, c);
    ref::rms_norm(out, c, f32p(norm_weight), p.norm_eps);
    round_activations(p.nm, out, c);
    ref::rope_rotate(out + (c - p.rope_dim), f32p(rope_freq), p.rope_dim / 2, r * j, false);
    round_activations(p.nm, out + (c - p.rope_dim), p.rope_dim);
  });
  const exec inner = with_backend(ex, be);
  const tensor_view v(buf.data(), dtype::f32, {n, c});
  if (p.indexer) {
    hadamard(v, v, inner);
    round_activations(p.nm, buf.data(), n * c);  // §1 I3 / C6b: bf16(f32(sum · 128^-1/2)) before QRT4
    block_round_trip(v, v, quant_format::fp4_e2m1, 32, inner);
  } else {
    block_round_trip(v.narrow(1, 0, c - p.rope_dim), v.narrow(1, 0, c - p.rope_dim), quant_format::fp8_e4m3, 64,
                     inner);
  }
  for_rows(be, n, ex, [&](std::int64_t i) {
    const std::int64_t t = emit[static_cast<std::size_t>(i)];
    const float* e = buf.data() + i * c;
    if (p.indexer) ref::store_key(*key_out, i32p(out_slot)[t], e);
    else ref::store_kv_entry(*main_out, i32p(out_slot)[t], e);
    if (want_entries) std::copy(e, e + c, f32w(entries) + t * c);
  });
}

// ---- indexer ----------------------------------------------------------------------------------------------------

namespace {

// Shared checks of indexer_logits and indexer_topk; returns (T, H).
std::pair<std::int64_t, std::int64_t> check_indexer(const char* op, const tensor_view& q, const tensor_view& w,
                                                    const cache::key_pages& keys, const tensor_view& table,
                                                    const tensor_view& row_req, const tensor_view& n_keys,
                                                    std::int64_t max_keys) {
  cache::check_pages(op, keys);
  DSV4_CHECK(q.rank() == 3 && q.dt() == dtype::f32 && q.shape(2) == keys.geo.dim, op, "q is ", q.describe(),
             ", expected f32[T, heads, ", keys.geo.dim, "]");
  const std::int64_t T = q.shape(0), H = q.shape(1);
  check_tensor(op, "w", w, dtype::f32, {T, H});
  need_contiguous(op, "q", q);
  need_contiguous(op, "w", w);
  check_requests(op, row_req, table, T);
  check_tensor(op, "n_keys", n_keys, dtype::i32, {T});
  need_contiguous(op, "n_keys", n_keys);
  const std::int64_t pages = keys.pages.shape(0);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = i32p(n_keys)[t];
    DSV4_CHECK(n >= 0 && n <= max_keys, op, "n_keys[", t, "] = ", n, " is outside [0, ", max_keys, "]");
    check_mapped(op, "keys", table, i32p(row_req)[t], n, keys.geo.page_tokens, pages, t);
  }
  return {T, H};
}

#if DSV4_WITH_CUDA
// The CUDA indexer's checks (shapes only; n_keys and the block table are checked on the device). Returns T.
std::int64_t check_indexer_cuda(const char* op, const tensor_view& q, const tensor_view& w,
                                const cache::key_pages& keys, const tensor_view& table, const tensor_view& row_req,
                                const tensor_view& n_keys, numerics nm) {
  DSV4_CHECK(nm == numerics::fp32, op, "the CUDA backend implements numerics fp32 only so far");
  cache::check_pages(op, keys);
  DSV4_CHECK(q.rank() == 3 && q.dt() == dtype::f32 && q.shape(2) == keys.geo.dim && q.is_contiguous(), op, "q is ",
             q.describe(), ", expected contiguous f32[T, heads, ", keys.geo.dim, "]");
  const std::int64_t T = q.shape(0), H = q.shape(1);
  check_tensor(op, "w", w, dtype::f32, {T, H});
  DSV4_CHECK(table.rank() == 2 && table.dt() == dtype::i32 && table.is_contiguous(), op, "block_table is ",
             table.describe(), ", expected contiguous i32[requests, max_pages]");
  i32_column(op, "row_req", row_req, T);
  i32_column(op, "n_keys", n_keys, T);
  return T;
}
#endif

void scores_rows(backend be, const tensor_view& q, const tensor_view& w, const cache::key_pages& keys,
                 const tensor_view& table, const tensor_view& row_req, const tensor_view& n_keys,
                 const tensor_view& logits, const exec& ex, numerics nm) {
  const bool official = nm == numerics::official;
  const std::int64_t T = q.shape(0), H = q.shape(1), C = q.shape(2), L = logits.shape(1);
  if (be == backend::cpu) {
    cpu::indexer_scores_paged(q.as<const float, 3>(), w.as<const float, 2>(), keys, table.as<const std::int32_t, 2>(),
                              row_req.as<const std::int32_t, 1>(), n_keys.as<const std::int32_t, 1>(),
                              logits.as<float, 2>(), ex, official);
    return;
  }
  if (keys.geo.format == cache::key_format::fp4) {  // the exact FP4 score (dsv4/ref/indexer.hpp)
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t n = i32p(n_keys)[t];
      const std::int32_t* bt = i32p(table) + i32p(row_req)[t] * table.shape(1);
      const ref::fp4_query fq = ref::quantize_query(f32p(q) + t * H * C, H, C);
      ref::count_flops(static_cast<std::uint64_t>(n * H * (2 * C + 2)));  // as ref::indexer_scores counts
      for (std::int64_t s = 0; s < n; ++s)
        f32w(logits)[t * L + s] =
            official ? ref::official::fp4_score(fq, f32p(w) + t * H, keys, cache::slot_of(bt, s, keys.geo.page_tokens))
                     : ref::fp4_score(fq, f32p(w) + t * H, keys, cache::slot_of(bt, s, keys.geo.page_tokens));
      for (std::int64_t s = n; s < L; ++s) f32w(logits)[t * L + s] = -std::numeric_limits<float>::infinity();
    }
    return;
  }
  // ref, FP8 keys: each row's keys decoded into a contiguous block, then the reference scores of that one row.
  std::vector<float> k;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = i32p(n_keys)[t];
    const std::int32_t* bt = i32p(table) + i32p(row_req)[t] * table.shape(1);
    k.assign(static_cast<std::size_t>(std::max<std::int64_t>(n, 1) * C), 0.f);
    for (std::int64_t s = 0; s < n; ++s) ref::load_key(keys, cache::slot_of(bt, s, keys.geo.page_tokens), k.data() + s * C);
    const std::int32_t vis = static_cast<std::int32_t>(n);
    const tensor_view kv(k.data(), dtype::f32, {std::max<std::int64_t>(n, 1), C});
    ref::indexer_scores<std::int32_t>(q.narrow(0, t, 1).as<const float, 3>(), kv.narrow(0, 0, n).as<const float, 2>(),
                                      w.narrow(0, t, 1).as<const float, 2>(),
                                      tensor_view(const_cast<std::int32_t*>(&vis), dtype::i32, {1}).as<const std::int32_t, 1>(),
                                      logits.narrow(0, t, 1).narrow(1, 0, n).as<float, 2>());
    for (std::int64_t s = n; s < L; ++s) f32w(logits)[t * L + s] = -std::numeric_limits<float>::infinity();
  }
}

// The official policy's index score is defined on FP4 keys (official-numerics.md §1 I6; V4's indexer caches FP4).
void check_official_keys(const char* op, const cache::key_pages& keys, numerics nm) {
  DSV4_CHECK(nm != numerics::official || keys.geo.format == cache::key_format::fp4, op,
             "numerics official scores FP4 key pages (the V4 indexer); these key pages are FP8");
}

void topk_kernel(backend be, const tensor_view& logits, const tensor_view& n_keys, const tensor_view& idx,
                 const tensor_view& len, const exec& ex) {
  const std::int64_t T = logits.shape(0), L = logits.shape(1), K = idx.shape(1);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = i32p(n_keys)[t];
    for (std::int64_t s = 0; s < n; ++s)
      DSV4_CHECK(!std::isnan(f32p(logits)[t * L + s]), "topk_rows", "logits[", t, ", ", s, "] is NaN");
  }
  if (be == backend::cpu)
    cpu::topk_select<std::int32_t>(logits.as<const float, 2>(), n_keys.as<const std::int32_t, 1>(),
                                   idx.as<std::int32_t, 2>(), ex);
  else
    ref::topk_select<std::int32_t>(logits.as<const float, 2>(), n_keys.as<const std::int32_t, 1>(),
                                   idx.as<std::int32_t, 2>());
  for (std::int64_t t = 0; t < T; ++t)
    static_cast<std::int32_t*>(len.data())[t] = static_cast<std::int32_t>(std::min<std::int64_t>(K, i32p(n_keys)[t]));
}

void slots_kernel(const tensor_view& idx, const tensor_view& len, const tensor_view& row_req,
                  const tensor_view& table, std::int64_t B, const tensor_view& slots) {
  const std::int64_t T = idx.shape(0), K = idx.shape(1), P = table.shape(1);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = is_absent(len) ? K : i32p(len)[t];
    const std::int32_t* bt = i32p(table) + i32p(row_req)[t] * P;
    std::int32_t* out = static_cast<std::int32_t*>(slots.data()) + t * K;
    for (std::int64_t i = 0; i < K; ++i) {
      const std::int32_t e = i32p(idx)[t * K + i];
      out[i] = i < n && e >= 0 ? static_cast<std::int32_t>(cache::slot_of(bt, e, B)) : -1;
    }
  }
}

void check_slot_inputs(const char* op, const tensor_view& idx, const tensor_view& len, const tensor_view& row_req,
                       const tensor_view& table, std::int64_t B, const tensor_view& slots) {
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32, op, "idx is ", idx.describe(), ", expected i32[T, k]");
  const std::int64_t T = idx.shape(0), K = idx.shape(1);
  need_contiguous(op, "idx", idx);
  if (!is_absent(len)) {
    check_tensor(op, "len", len, dtype::i32, {T});
    need_contiguous(op, "len", len);
  }
  check_tensor(op, "slots", slots, dtype::i32, {T, K});
  need_contiguous(op, "slots", slots);
  check_requests(op, row_req, table, T);
  DSV4_CHECK(B >= 1, op, "page_tokens ", B, " must be >= 1");
  const std::int64_t P = table.shape(1);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = is_absent(len) ? K : i32p(len)[t];
    DSV4_CHECK(n >= 0 && n <= K, op, "len[", t, "] = ", n, " is outside [0, ", K, "]");
    const std::int32_t* bt = i32p(table) + i32p(row_req)[t] * P;
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int32_t e = i32p(idx)[t * K + i];
      if (e < 0) continue;
      DSV4_CHECK(e / B < P && bt[e / B] >= 0, op, "idx[", t, ", ", i, "] = ", e, " is on page ", e / B,
                 ", which request ", i32p(row_req)[t], " has not mapped");
    }
  }
}

}  // namespace

void indexer_logits(const tensor_view& q, const tensor_view& w, const cache::key_pages& keys,
                    const tensor_view& block_table, const tensor_view& row_req, const tensor_view& n_keys,
                    const tensor_view& logits, const exec& ex, numerics nm) {
  constexpr const char* op = "indexer_logits";
  check_official_keys(op, keys, nm);
  DSV4_CHECK(logits.rank() == 2 && logits.dt() == dtype::f32, op, "logits is ", logits.describe(),
             ", expected f32[T, L]");
  if (on_cuda(op, ex, {&q, &w, &keys.pages, &block_table, &row_req, &n_keys, &logits})) {
#if DSV4_WITH_CUDA
    const std::int64_t T = check_indexer_cuda(op, q, w, keys, block_table, row_req, n_keys, nm);
    DSV4_CHECK(logits.shape(0) == T && logits.is_contiguous(), op, "logits ", logits.describe(), ": expected ", T,
               " contiguous rows");
    return cuda::indexer_logits(q.as<const float, 3>(), w.as<const float, 2>(), cuda::device_pages(keys),
                                block_table.as<const std::int32_t, 2>(), i32p(row_req), i32p(n_keys),
                                logits.as<float, 2>(), detail::on_device(op, ex, q.dev()));
  #endif
  }
  need_contiguous(op, "logits", logits);
  const auto [T, H] = check_indexer(op, q, w, keys, block_table, row_req, n_keys, logits.shape(1));
  DSV4_CHECK(logits.shape(0) == T, op, "logits has ", logits.shape(0), " rows for ", T, " queries");
  (void)H;
  scores_rows(host_backend(op, ex), q, w, keys, block_table, row_req, n_keys, logits, ex, nm);
}

void topk_rows(const tensor_view& logits, const tensor_view& n_keys, const tensor_view& idx, const tensor_view& len,
               const exec& ex) {
  constexpr const char* op = "topk_rows";
  DSV4_CHECK(logits.rank() == 2 && logits.dt() == dtype::f32, op, "logits is ", logits.describe(),
             ", expected f32[T, L]");
  if (on_cuda(op, ex, {&logits, &n_keys, &idx, &len})) {
#if DSV4_WITH_CUDA
    const std::int64_t T = logits.shape(0);
    DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T && idx.shape(1) >= 1 &&
                   idx.is_contiguous(),
               op, "idx is ", idx.describe(), ", expected contiguous i32[", T, ", k >= 1]");
    return cuda::topk_rows(logits.as<const float, 2>(), i32_column(op, "n_keys", n_keys, T), idx.as<std::int32_t, 2>(),
                           const_cast<std::int32_t*>(i32_column(op, "len", len, T)),
                           detail::on_device(op, ex, logits.dev()));
  #endif
  }
  need_contiguous(op, "logits", logits);
  const std::int64_t T = logits.shape(0), L = logits.shape(1);
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T && idx.shape(1) >= 1, op, "idx is ",
             idx.describe(), ", expected i32[", T, ", k >= 1]");
  need_contiguous(op, "idx", idx);
  check_tensor(op, "n_keys", n_keys, dtype::i32, {T});
  check_tensor(op, "len", len, dtype::i32, {T});
  need_contiguous(op, "len", len);
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(i32p(n_keys)[t] >= 0 && i32p(n_keys)[t] <= L, op, "n_keys[", t, "] = ", i32p(n_keys)[t],
               " is outside [0, ", L, "]");
  topk_kernel(host_backend(op, ex), logits, n_keys, idx, len, ex);
}

void sort_rows(const tensor_view& idx, const tensor_view& len, const exec& ex) {
  constexpr const char* op = "sort_rows";
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.is_contiguous(), op, "idx is ", idx.describe(),
             ", expected contiguous i32[T, k]");
  const std::int64_t T = idx.shape(0), K = idx.shape(1);
  if (on_cuda(op, ex, {&idx, &len})) {
#if DSV4_WITH_CUDA
    return cuda::sort_rows(idx.as<std::int32_t, 2>(), i32_column(op, "len", len, T),
                           detail::on_device(op, ex, idx.dev()));
#endif
  }
  check_tensor(op, "len", len, dtype::i32, {T});
  need_contiguous(op, "len", len);
  (void)host_backend(op, ex);
  auto* v = static_cast<std::int32_t*>(idx.data());
  const auto* n = static_cast<const std::int32_t*>(len.data());
  for (std::int64_t t = 0; t < T; ++t) {
    DSV4_CHECK(n[t] >= 0 && n[t] <= K, op, "len[", t, "] = ", n[t], " is outside [0, ", K, "]");
    std::sort(v + t * K, v + t * K + n[t]);
  }
}

void to_slots(const tensor_view& idx, const tensor_view& len, const tensor_view& row_req,
              const tensor_view& block_table, std::int64_t page_tokens, const tensor_view& slots, const exec& ex) {
  constexpr const char* op = "to_slots";
  if (on_cuda(op, ex, {&idx, &len, &row_req, &block_table, &slots})) {
#if DSV4_WITH_CUDA
    DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32, op, "idx is ", idx.describe(), ", expected i32[T, k]");
    const std::int64_t T = idx.shape(0), K = idx.shape(1);
    check_tensor(op, "slots", slots, dtype::i32, {T, K});
    DSV4_CHECK(block_table.rank() == 2 && block_table.dt() == dtype::i32, op, "block_table is ",
               block_table.describe(), ", expected i32[requests, max_pages]");
    DSV4_CHECK(page_tokens >= 1, op, "page_tokens ", page_tokens, " must be >= 1");
    return cuda::to_slots(idx.as<const std::int32_t, 2>(), i32_column(op, "len", len, T, true),
                          i32_column(op, "row_req", row_req, T), block_table.as<const std::int32_t, 2>(), page_tokens,
                          slots.as<std::int32_t, 2>(), detail::on_device(op, ex, idx.dev()));
  #endif
  }
  check_slot_inputs(op, idx, len, row_req, block_table, page_tokens, slots);
  (void)host_backend(op, ex);
  slots_kernel(idx, len, row_req, block_table, page_tokens, slots);
}

void indexer_topk(const tensor_view& q, const tensor_view& w, const cache::key_pages& keys,
                  const tensor_view& block_table, const tensor_view& row_req, const tensor_view& n_keys,
                  const tensor_view& idx, const tensor_view& len, const tensor_view& slots, const exec& ex,
                  numerics nm) {
  constexpr const char* op = "indexer_topk";
  check_official_keys(op, keys, nm);
  if (on_cuda(op, ex, {&q, &w, &keys.pages, &block_table, &row_req, &n_keys, &idx, &len, &slots})) {
#if DSV4_WITH_CUDA
    const std::int64_t T = check_indexer_cuda(op, q, w, keys, block_table, row_req, n_keys, nm);
    DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T && idx.shape(1) >= 1 &&
                   idx.is_contiguous(),
               op, "idx is ", idx.describe(), ", expected contiguous i32[", T, ", k >= 1]");
    std::int32_t* sl = nullptr;
    if (!is_absent(slots)) {
      check_tensor(op, "slots", slots, dtype::i32, {T, idx.shape(1)});
      DSV4_CHECK(slots.is_contiguous(), op, "slots ", slots.describe(), " must be contiguous");
      sl = static_cast<std::int32_t*>(slots.data());
    }
    return cuda::indexer_topk(q.as<const float, 3>(), w.as<const float, 2>(), cuda::device_pages(keys),
                              block_table.as<const std::int32_t, 2>(), i32p(row_req), i32p(n_keys),
                              idx.as<std::int32_t, 2>(), const_cast<std::int32_t*>(i32_column(op, "len", len, T)), sl,
                              detail::on_device(op, ex, q.dev()));
  #endif
  }
  const std::int64_t max_keys = keys.num_slots();
  const auto [T, H] = check_indexer(op, q, w, keys, block_table, row_req, n_keys, max_keys);
  (void)H;
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T && idx.shape(1) >= 1, op, "idx is ",
             idx.describe(), ", expected i32[", T, ", k >= 1]");
  need_contiguous(op, "idx", idx);
  check_tensor(op, "len", len, dtype::i32, {T});
  need_contiguous(op, "len", len);
  const backend be = host_backend(op, ex);
  // One row of scores at a time: the scratch is [n_keys[t]], never [T, L].
  std::vector<float> scores;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = i32p(n_keys)[t];
    scores.resize(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)));
    const tensor_view lg(scores.data(), dtype::f32, {1, std::max<std::int64_t>(n, 1)});
    const tensor_view one_n = n_keys.narrow(0, t, 1);
    if (n > 0)
      scores_rows(be, q.narrow(0, t, 1), w.narrow(0, t, 1), keys, block_table, row_req.narrow(0, t, 1), one_n,
                  lg.narrow(1, 0, n), ex, nm);
    topk_kernel(be, lg.narrow(1, 0, std::max<std::int64_t>(n, 0)), one_n, idx.narrow(0, t, 1), len.narrow(0, t, 1),
                ex);
  }
  if (!is_absent(slots)) {
    check_slot_inputs(op, idx, len, row_req, block_table, keys.geo.page_tokens, slots);
    slots_kernel(idx, len, row_req, block_table, keys.geo.page_tokens, slots);
  }
}

std::size_t indexer_topk_workspace_bytes(std::int64_t T, const cache::key_pages& keys) {
  DSV4_CHECK(T >= 0, "indexer_topk_workspace_bytes", "T = ", T, " must be >= 0");
  return static_cast<std::size_t>(T * keys.num_slots()) * sizeof(float);
}

// ---- sparse MQA ----------------------------------------------------------------------------------------------------

namespace {
void check_segment(const char* op, const char* name, const sparse_segment& s, std::int64_t T, std::int64_t D) {
  cache::check_pages(op, s.kv);
  DSV4_CHECK(s.kv.geo.head_dim == D, op, name, " KV pages hold entries of ", s.kv.geo.head_dim, " dims, q has ", D);
  DSV4_CHECK(s.slots.rank() == 2 && s.slots.dt() == dtype::i32 && s.slots.shape(0) == T, op, name, " slots are ",
             s.slots.describe(), ", expected i32[", T, ", K]");
  need_contiguous(op, "slots", s.slots);
  const std::int64_t K = s.slots.shape(1), n = s.kv.num_slots();
  if (!is_absent(s.len)) {
    check_tensor(op, "len", s.len, dtype::i32, {T});
    need_contiguous(op, "len", s.len);
  }
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t len = is_absent(s.len) ? K : i32p(s.len)[t];
    DSV4_CHECK(len >= 0 && len <= K, op, name, " len[", t, "] = ", len, " is outside [0, ", K, "]");
    for (std::int64_t i = 0; i < len; ++i) {  // lanes past len are never read, whatever they hold
      const std::int32_t v = i32p(s.slots)[t * K + i];
      DSV4_CHECK(v >= -1 && v < n, op, name, " slots[", t, ", ", i, "] = ", v, " is outside [-1, ", n, ")");
    }
  }
}
}  // namespace

void sparse_mqa(const tensor_view& q, const sparse_segment& window, const sparse_segment* compressed,
                const tensor_view& sink, float scale, const tensor_view& out, const tensor_view& lse,
                const exec& ex, numerics nm) {
  constexpr const char* op = "sparse_mqa";
  DSV4_CHECK(q.rank() == 3 && q.dt() == dtype::f32, op, "q is ", q.describe(), ", expected f32[T, H, D]");
  const tensor_view none;
  if (on_cuda(op, ex, {&q, &sink, &out, &lse, &window.kv.pages, &window.slots, &window.len,
                       compressed ? &compressed->kv.pages : &none, compressed ? &compressed->slots : &none,
                       compressed ? &compressed->len : &none})) {
#if DSV4_WITH_CUDA
    DSV4_CHECK(nm == numerics::fp32, op, "the CUDA backend implements numerics fp32 only so far");
    DSV4_CHECK(q.is_contiguous(), op, "q ", q.describe(), " must be contiguous");
    const std::int64_t T = q.shape(0), H = q.shape(1), D = q.shape(2);
    check_tensor(op, "sink", sink, dtype::f32, {H});
    DSV4_CHECK(sink.is_contiguous(), op, "sink ", sink.describe(), " must be contiguous");
    check_tensor(op, "out", out, dtype::f32, {T, H, D});
    detail::check_aliasing(op, q, out, false);
    if (!is_absent(lse)) {
      check_tensor(op, "lse", lse, dtype::f32, {T, H});
      DSV4_CHECK(lse.is_contiguous(), op, "lse ", lse.describe(), " must be contiguous");
    }
    DSV4_CHECK(std::isfinite(scale), op, "scale ", scale, " is not finite");
    auto seg = [&](const char* name, const sparse_segment& s) {
      cache::check_pages(op, s.kv);
      DSV4_CHECK(s.kv.geo.head_dim == D, op, name, " KV pages hold entries of ", s.kv.geo.head_dim, " dims, q has ",
                 D);
      DSV4_CHECK(s.slots.rank() == 2 && s.slots.dt() == dtype::i32 && s.slots.shape(0) == T, op, name,
                 " slots are ", s.slots.describe(), ", expected i32[", T, ", K]");
      return cuda::segment_dev{cuda::device_pages(s.kv), s.slots.as<const std::int32_t, 2>(),
                               i32_column(op, "len", s.len, T, true)};
    };
    const cuda::segment_dev w = seg("window", window);
    cuda::segment_dev c{};
    if (compressed) c = seg("compressed", *compressed);
    return cuda::sparse_mqa(q.as<const float, 3>(), w, compressed ? &c : nullptr, f32p(sink), scale,
                            out.as<float, 3>(), is_absent(lse) ? nullptr : f32w(lse),
                            detail::on_device(op, ex, q.dev()));
  #endif
  }
  need_contiguous(op, "q", q);
  const std::int64_t T = q.shape(0), H = q.shape(1), D = q.shape(2);
  check_tensor(op, "sink", sink, dtype::f32, {H});
  check_tensor(op, "out", out, dtype::f32, {T, H, D});
  need_contiguous(op, "out", out);
  detail::check_aliasing(op, q, out, false);
  const bool want_lse = !is_absent(lse);
  if (want_lse) {
    check_tensor(op, "lse", lse, dtype::f32, {T, H});
    need_contiguous(op, "lse", lse);
  }
  DSV4_CHECK(std::isfinite(scale), op, "scale ", scale, " is not finite");
  check_segment(op, "window", window, T, D);
  if (compressed) check_segment(op, "compressed", *compressed, T, D);
  const backend be = host_backend(op, ex);

  // Row pointers per token, window lanes then compressed lanes in list order. f32 pages are read in place; an
  // fp8_ds_mla entry is decoded once into scratch however many rows reference it.
  const sparse_segment* segs[2] = {&window, compressed};
  std::int64_t K = 0;
  for (const sparse_segment* s : segs)
    if (s) K += s->slots.shape(1);
  std::vector<std::int64_t> keys;  // (segment << 40 | slot) of every fp8 entry read, then unique
  for (int si = 0; si < 2; ++si) {
    const sparse_segment* s = segs[si];
    if (!s || s->kv.geo.format == cache::kv_format::f32) continue;
    const std::int64_t Ks = s->slots.shape(1);
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t len = is_absent(s->len) ? Ks : i32p(s->len)[t];
      for (std::int64_t i = 0; i < len; ++i)
        if (const std::int32_t v = i32p(s->slots)[t * Ks + i]; v >= 0) keys.push_back((std::int64_t(si) << 40) | v);
    }
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<float> decoded(keys.size() * static_cast<std::size_t>(D));
  for_rows(be, static_cast<std::int64_t>(keys.size()), ex, [&](std::int64_t u) {
    const std::int64_t key = keys[static_cast<std::size_t>(u)];
    ref::load_kv_entry(segs[key >> 40]->kv, key & ((std::int64_t(1) << 40) - 1), decoded.data() + u * D);
  });
  std::vector<const float*> rows(static_cast<std::size_t>(T * std::max<std::int64_t>(K, 1)));
  std::vector<std::int64_t> counts(static_cast<std::size_t>(T), 0), wcounts(static_cast<std::size_t>(T), 0);
  for (std::int64_t t = 0; t < T; ++t) {
    std::int64_t n = 0;
    for (int si = 0; si < 2; ++si) {
      if (si == 1) wcounts[static_cast<std::size_t>(t)] = n;
      const sparse_segment* s = segs[si];
      if (!s) continue;
      const std::int64_t Ks = s->slots.shape(1), len = is_absent(s->len) ? Ks : i32p(s->len)[t];
      const cache::kv_geometry& g = s->kv.geo;
      for (std::int64_t i = 0; i < len; ++i) {
        const std::int32_t v = i32p(s->slots)[t * Ks + i];
        if (v < 0) continue;
        const float* row;
        if (g.format == cache::kv_format::f32) {
          row = reinterpret_cast<const float*>(s->kv.page(v / g.page_tokens) + g.data_offset(v % g.page_tokens));
        } else {
          const auto it = std::lower_bound(keys.begin(), keys.end(), (std::int64_t(si) << 40) | v);
          row = decoded.data() + (it - keys.begin()) * D;
        }
        rows[static_cast<std::size_t>(t * K + n++)] = row;
      }
    }
    counts[static_cast<std::size_t>(t)] = n;
  }
  float* lp = want_lse ? f32w(lse) : nullptr;
  if (nm == numerics::official) {  // dsv4/ref/official.hpp attention_row, per (token, head), on either backend
    for_rows(be, T * H, ex, [&](std::int64_t i) {
      const std::int64_t t = i / H, h = i % H;
      ref::official::attention_row(f32p(q) + i * D, rows.data() + t * K, counts[static_cast<std::size_t>(t)],
                                   wcounts[static_cast<std::size_t>(t)], D, f32p(sink)[h], scale, f32w(out) + i * D,
                                   lp ? lp + i : nullptr);
    });
    return;
  }
  if (be == backend::cpu)
    cpu::sparse_attention_rows(q.as<const float, 3>(), rows.data(), counts.data(), K, sink.as<const float, 1>(), scale,
                               out.as<float, 3>(), lp, ex);
  else
    ref::sparse_attention_rows(q.as<const float, 3>(), rows.data(), counts.data(), K, sink.as<const float, 1>(), scale,
                               out.as<float, 3>(), lp);
}

}  // namespace ops
}  // namespace dsv4
