// dsv4/ref/cache.hpp — the meaning of one cache slot, byte by byte (dsv4/cache.hpp): scalar store and load of a KV
// entry and of an indexer key in every page format. Every backend's page writes must equal these bytes.
//
// Store quantizes with the spec's rules (spec §6.2, §6.3): the nope dims of a KV entry in FP8 E4M3 blocks of 64 with
// a UE8M0 scale each, its rope dims as BF16 (round to nearest even); an FP4 key in E2M1 blocks of 32 with UE8M0
// scales; an FP8 key in E4M3 with one power-of-two f32 scale (the UE8M0 rule over the whole key). Values already on
// those grids (what the fp32 policy's round trips produce) are stored exactly, so load(store(v)) == v for them, except
// the rope dims of fp8_ds_mla, which are rounded to BF16. Loads decode exactly to fp32.
#pragma once

#include <cstdint>
#include <cstring>

#include "dsv4/cache.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/ref/quant.hpp"

namespace dsv4::ref {

// Returns the number of 64-blocks that held inf or NaN (the entry is written anyway; the op raises the error).
inline std::int64_t store_kv_entry(const cache::kv_pages& kv, std::int64_t slot, const float* v) noexcept {
  const cache::kv_geometry& g = kv.geo;
  std::uint8_t* page = kv.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  if (g.format == cache::kv_format::f32) {
    std::memcpy(page + g.data_offset(e), v, static_cast<std::size_t>(4 * g.head_dim));
    return 0;
  }
  std::uint8_t* data = page + g.data_offset(e);
  std::uint8_t* sc = page + g.scale_offset(e);
  const std::int64_t nope = g.nope();
  std::int64_t bad = 0;
  for (std::int64_t b = 0; b < nope / 64; ++b) {
    bool ok = true;
    sc[b] = detail::quantize_block<fp8_e4m3>(
        64, [&](int i) { return v[b * 64 + i]; },
        [&](int i, fp8_e4m3 c, float) { data[b * 64 + i] = c.bits; }, ok);
    bad += !ok;
  }
  for (std::int64_t i = nope / 64; i < g.scale_stride(); ++i) sc[i] = 0;  // pad
  for (std::int64_t i = 0; i < g.rope_dim; ++i) {
    const std::uint16_t h = bf16::from_float(v[nope + i]).bits;
    data[nope + 2 * i] = static_cast<std::uint8_t>(h & 0xFF);
    data[nope + 2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
  }
  return bad;
}

inline void load_kv_entry(const cache::kv_pages& kv, std::int64_t slot, float* v) noexcept {
  const cache::kv_geometry& g = kv.geo;
  const std::uint8_t* page = kv.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  if (g.format == cache::kv_format::f32) {
    std::memcpy(v, page + g.data_offset(e), static_cast<std::size_t>(4 * g.head_dim));
    return;
  }
  const std::uint8_t* data = page + g.data_offset(e);
  const std::uint8_t* sc = page + g.scale_offset(e);
  const std::int64_t nope = g.nope();
  for (std::int64_t d = 0; d < nope; ++d) v[d] = fp8_e4m3{data[d]}.to_float() * ue8m0{sc[d / 64]}.to_float();
  for (std::int64_t i = 0; i < g.rope_dim; ++i)
    v[nope + i] =
        bf16{static_cast<std::uint16_t>(data[nope + 2 * i] | (data[nope + 2 * i + 1] << 8))}.to_float();
}

// Returns 1 when the key held inf or NaN.
inline std::int64_t store_key(const cache::key_pages& kp, std::int64_t slot, const float* v) noexcept {
  const cache::key_geometry& g = kp.geo;
  std::uint8_t* page = kp.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  std::uint8_t* codes = page + g.code_offset(e);
  std::uint8_t* sc = page + g.scale_offset(e);
  bool ok = true;
  if (g.format == cache::key_format::fp4) {
    for (std::int64_t b = 0; b < g.dim / 32; ++b) {
      fp4_e2m1 even{};
      sc[b] = detail::quantize_block<fp4_e2m1>(
          32, [&](int i) { return v[b * 32 + i]; },
          [&](int i, fp4_e2m1 c, float) {
            if (i % 2 == 0) even = c;
            else codes[(b * 32 + i) / 2] = fp4x2::pack(even, c).bits;
          },
          ok);
    }
  } else {
    const std::uint8_t s = detail::quantize_block<fp8_e4m3>(
        static_cast<int>(g.dim), [&](int i) { return v[i]; }, [&](int i, fp8_e4m3 c, float) { codes[i] = c.bits; },
        ok);
    const float f = ue8m0{s}.to_float();
    std::memcpy(sc, &f, 4);
  }
  return ok ? 0 : 1;
}

inline void load_key(const cache::key_pages& kp, std::int64_t slot, float* v) noexcept {
  const cache::key_geometry& g = kp.geo;
  const std::uint8_t* page = kp.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  const std::uint8_t* codes = page + g.code_offset(e);
  const std::uint8_t* sc = page + g.scale_offset(e);
  if (g.format == cache::key_format::fp4) {
    for (std::int64_t i = 0; i < g.dim; i += 2) {
      const fp4x2 pair{codes[i / 2]};
      const float s = ue8m0{sc[i / 32]}.to_float();
      v[i] = pair.lo().to_float() * s;
      v[i + 1] = pair.hi().to_float() * s;
    }
  } else {
    float s;
    std::memcpy(&s, sc, 4);
    for (std::int64_t i = 0; i < g.dim; ++i) v[i] = fp8_e4m3{codes[i]}.to_float() * s;
  }
}

}  // namespace dsv4::ref
