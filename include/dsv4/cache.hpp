// dsv4/cache.hpp — typed views over engine-owned paged cache memory, in the byte layouts of FlashMLA (KV entries)
// and DeepGEMM (indexer keys), plus the fp32 compressor state rows (engine-interface study §b.2).
//
// Engines keep caches in pools of fixed-size pages and address them through block tables: entry j of request r
// lives in physical slot  slot_of(block_table[r], j, B) = block_table[r][j / B] · B + j % B  (−1 = invalid).
// These views describe such memory; the ops in dsv4/ops/paged.hpp read and write it. Nothing here owns memory.
//
// KV page, format fp8_ds_mla (FlashMLA "MODEL1", used by vLLM and SGLang), B entries per page, head_dim D = nope +
// rope (V4: 448 + 64):
//   bytes [e·data, e·data + nope)                  entry e: FP8 E4M3 codes of dims 0 .. nope−1 (dim d at byte d)
//   bytes [e·data + nope + 2i, +2)                 entry e: BF16 of rope dim nope + i, little-endian (rotated)
//   bytes [B·data + e·sstride + j]                 entry e: UE8M0 scale of dims [64j, 64j + 64), j < nope/64
//   bytes [B·data + e·sstride + nope/64, +pad)     zero
//   bytes [B·(data + sstride), page_bytes)         zero (page padding)
// with data = nope + 2·rope (576), sstride = roundup(data + nope/64, 8) − data (8: 7 scales + 1 pad), and
// page_bytes = roundup(B·(data + sstride), data). 584 bytes per entry for V4, as dsv4's calculator counts.
// Format f32: D fp32 values per entry, entry e at bytes [e·4D, (e+1)·4D); exact under the fp32 numerics policy.
//
// Indexer key page, B keys of c dims (V4: c = 128):
//   fp4: bytes [e·c/2, +c/2) E2M1 pairs (dim 2i in the low nibble), then [B·c/2 + e·c/32 + j] UE8M0 scale of dims
//        [32j, 32j + 32): 68 B per key (DeepGEMM's SM100 paged FP4 layout; the 4 scale bytes read as one
//        little-endian int32 are its packed SF);
//   fp8: bytes [e·c, +c) E4M3 codes, then [B·c + 4e, +4) one f32 scale per key (a power of two): 132 B per key (the
//        V3.2 layout that Hopper engines use).
//
// Compressor state rows (f32 [slots, 2·cw], cw = coff·c, coff = 2 for ratio 4 and 1 otherwise): row of position p =
// [kv projections (cw) | gate scores + ape[p mod ratio] (cw)], addressed like an entry with its own block table
// (logical index = position). Rows are keyed by position and never copied: rolling a sequence back only rewinds its
// length (spec §3.4's "copy rows 4..7 into 0..3" state machine is what broke rollback in other ports).
#pragma once

#include <cstdint>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cache {

enum class kv_format : std::uint8_t { fp8_ds_mla, f32 };
enum class key_format : std::uint8_t { fp4, fp8 };

inline const char* kv_format_name(kv_format f) { return f == kv_format::f32 ? "f32" : "fp8_ds_mla"; }
inline const char* key_format_name(key_format f) { return f == key_format::fp8 ? "fp8" : "fp4"; }

// Physical slot of logical entry j through one request's block table (−1 when the page is unmapped).
DSV4_HD inline std::int64_t slot_of(const std::int32_t* block_table_row, std::int64_t j, std::int64_t page_tokens) {
  const std::int32_t page = block_table_row[j / page_tokens];
  return page < 0 ? -1 : static_cast<std::int64_t>(page) * page_tokens + j % page_tokens;
}

// Byte geometry of a KV page (see the header comment).
struct kv_geometry {
  kv_format format = kv_format::fp8_ds_mla;
  std::int64_t head_dim = 0, rope_dim = 0, page_tokens = 0;

  DSV4_HD std::int64_t nope() const { return head_dim - rope_dim; }
  DSV4_HD std::int64_t data_bytes() const {  // per entry, before the scale section
    return format == kv_format::f32 ? 4 * head_dim : nope() + 2 * rope_dim;
  }
  DSV4_HD std::int64_t scale_stride() const {
    if (format == kv_format::f32) return 0;
    const std::int64_t d = data_bytes();
    return (d + nope() / 64 + 7) / 8 * 8 - d;
  }
  DSV4_HD std::int64_t entry_bytes() const { return data_bytes() + scale_stride(); }  // 584 for V4 fp8_ds_mla
  DSV4_HD std::int64_t page_bytes() const {
    const std::int64_t used = page_tokens * entry_bytes(), d = data_bytes();
    return format == kv_format::f32 ? used : (used + d - 1) / d * d;
  }
  // Byte offsets inside a page of entry e's data and scales.
  DSV4_HD std::int64_t data_offset(std::int64_t e) const { return e * data_bytes(); }
  DSV4_HD std::int64_t scale_offset(std::int64_t e) const { return page_tokens * data_bytes() + e * scale_stride(); }
};

struct key_geometry {
  key_format format = key_format::fp4;
  std::int64_t dim = 0, page_tokens = 0;

  DSV4_HD std::int64_t code_bytes() const { return format == key_format::fp4 ? dim / 2 : dim; }
  DSV4_HD std::int64_t scale_bytes() const { return format == key_format::fp4 ? dim / 32 : 4; }
  DSV4_HD std::int64_t key_bytes() const { return code_bytes() + scale_bytes(); }  // 68 (fp4) / 132 (fp8)
  DSV4_HD std::int64_t page_bytes() const { return page_tokens * key_bytes(); }
  DSV4_HD std::int64_t code_offset(std::int64_t e) const { return e * code_bytes(); }
  DSV4_HD std::int64_t scale_offset(std::int64_t e) const { return page_tokens * code_bytes() + e * scale_bytes(); }
};

// KV entries: pages u8 [num_pages, page_bytes] (rows may be strided: page stride >= page_bytes).
struct kv_pages {
  tensor_view pages;
  kv_geometry geo;
  std::uint8_t* page(std::int64_t p) const {
    return static_cast<std::uint8_t*>(pages.data()) + p * pages.stride(0);
  }
  std::int64_t num_slots() const { return pages.shape(0) * geo.page_tokens; }
};

// Indexer keys: pages u8 [num_pages, page_bytes].
struct key_pages {
  tensor_view pages;
  key_geometry geo;
  std::uint8_t* page(std::int64_t p) const {
    return static_cast<std::uint8_t*>(pages.data()) + p * pages.stride(0);
  }
  std::int64_t num_slots() const { return pages.shape(0) * geo.page_tokens; }
};

// Compressor state: rows f32 [num_slots, 2·cw], one per position, addressed through a block table of
// `page_tokens`-row pages (slot = block_table[pos / page_tokens] · page_tokens + pos % page_tokens).
struct state_rows {
  tensor_view rows;
  std::int64_t page_tokens = 0;
};

// Throws dsv4::error naming `op` unless the view is host or device u8 [N, >= page_bytes] with unit inner stride
// and the geometry is one dsv4 can read (nope a positive multiple of 64, rope even, B >= 1; key dims multiples of 32).
void check_pages(const char* op, const kv_pages& kv);
void check_pages(const char* op, const key_pages& keys);
void check_state(const char* op, const state_rows& s, std::int64_t width);

}  // namespace dsv4::cache
