// cuda/paged.cu — the paged-cache ops on CUDA (dsv4/cuda/paged.hpp has the orders and the device-side checks).
#include <cuda_fp8.h>

#include <cmath>

#include "check.cuh"
#include "dsv4/cuda/paged.hpp"
#include "quant_core.cuh"
#include "rotary.cuh"

namespace dsv4::cuda {
namespace {

using namespace detail;  // quant_core.cuh, check.cuh
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// a / b and a % b for 0 <= a < 2^31 and 1 <= b <= 2^20 (slots fit i32 and pages hold at most 2^20 entries: the
// geometry checks of cache.hpp): 32-bit division, a short instruction sequence where 64-bit division is a long one.
__device__ inline std::int64_t div32(std::int64_t a, std::int64_t b) {
  return static_cast<unsigned>(a) / static_cast<unsigned>(b);
}
__device__ inline std::int64_t mod32(std::int64_t a, std::int64_t b) {
  return static_cast<unsigned>(a) % static_cast<unsigned>(b);
}

__device__ inline std::uint8_t* kv_page(const kv_dev& kv, std::int64_t slot) {
  return kv.base + div32(slot, kv.geo.page_tokens) * kv.page_stride;
}
__device__ inline std::uint8_t* key_page(const key_dev& k, std::int64_t slot) {
  return k.base + div32(slot, k.geo.page_tokens) * k.page_stride;
}

// A slot argument: −1 skips, anything else outside [0, n) is reported and skipped. Returns whether to use it.
__device__ inline bool slot_ok(std::int64_t s, std::int64_t n, const status_ref& st) {
  if (s == -1) return false;
  if (s < -1 || s >= n) {
    st.raise(status_index_oob);
    return false;
  }
  return true;
}

// A little-endian f32 at p (the FP8 key pages' per-key scale).
__device__ inline float read_f32_le(const std::uint8_t* p) {
  return bits_to_f32(static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
                     (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24));
}

// One warp writes the fp8_ds_mla bytes of an entry whose value i is val(i) (ref::store_kv_entry): the nope dims in
// E4M3 blocks of 64 (two values a lane, warps w0, w0 + ws, ... of the caller take the blocks), the scale pad zeroed and
// the rope dims as BF16. Non-finite blocks are reported through st.
template <class Val>
__device__ void store_fp8_ds_mla(std::uint8_t* data, std::uint8_t* sc, const cache::kv_geometry& g, Val val,
                                 int w0, int ws, const status_ref& st) {
  const int lane = threadIdx.x & 31;
  const std::int64_t nope = g.nope();
  for (std::int64_t b = w0; b < nope / 64; b += ws) {
    float v[2] = {val(b * 64 + 2 * lane), val(b * 64 + 2 * lane + 1)};
    std::uint8_t code[2];
    float sf;
    const std::uint8_t sbyte = quantize_lane<fp8_e4m3, 2>(v, code, sf, st);
    data[b * 64 + 2 * lane] = code[0];
    data[b * 64 + 2 * lane + 1] = code[1];
    if (lane == 0) sc[b] = sbyte;
  }
  const int tid = w0 * 32 + lane, nthreads = ws * 32;
  for (std::int64_t i = nope / 64 + tid; i < g.scale_stride(); i += nthreads) sc[i] = 0;  // pad
  for (std::int64_t i = tid; i < g.rope_dim; i += nthreads) {
    const std::uint16_t h = bf16::from_float(val(nope + i)).bits;
    data[nope + 2 * i] = static_cast<std::uint8_t>(h & 0xFF);
    data[nope + 2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
  }
}

// One warp (or warps w0 + k·ws) writes an FP4 key of c values val(i) (ref::store_key): E2M1 blocks of 32, one value a
// lane, pairs packed by the even lanes, the block scales.
template <class Val>
__device__ void store_fp4_key(std::uint8_t* codes, std::uint8_t* sc, std::int64_t c, Val val, int w0, int ws,
                              const status_ref& st) {
  const int lane = threadIdx.x & 31;
  for (std::int64_t b = w0; b < c / 32; b += ws) {
    float v[1] = {val(b * 32 + lane)};
    std::uint8_t code[1];
    float sf;
    const std::uint8_t sbyte = quantize_lane<fp4_e2m1, 1>(v, code, sf, st);
    const unsigned odd = __shfl_down_sync(kFullMask, static_cast<unsigned>(code[0]), 1);
    if ((lane & 1) == 0) codes[(b * 32 + lane) / 2] = static_cast<std::uint8_t>(code[0] | (odd << 4));
    if (lane == 0) sc[b] = sbyte;
  }
}

// One stored KV entry, read value by value (ref::load_kv_entry's decode): f32 as stored; fp8_ds_mla: the E4M3 code
// times its 64-block's UE8M0 scale for d < nope, then the little-endian BF16 rope values.
struct kv_entry {
  const std::uint8_t* data = nullptr;
  const std::uint8_t* sc = nullptr;
  std::int64_t nope = 0;
  bool f32 = false;
  __device__ float operator[](std::int64_t d) const {
    if (f32) return reinterpret_cast<const float*>(data)[d];
    if (d < nope) return fp8_e4m3{data[d]}.to_float() * ue8m0{sc[d / 64]}.to_float();
    const std::int64_t r = nope + 2 * (d - nope);
    return bf16{static_cast<std::uint16_t>(data[r] | (data[r + 1] << 8))}.to_float();
  }
};
__device__ inline kv_entry kv_entry_at(const kv_dev& kv, std::int64_t slot) {
  const cache::kv_geometry& g = kv.geo;
  const std::uint8_t* page = kv_page(kv, slot);
  const std::int64_t e = mod32(slot, g.page_tokens);
  const bool f32 = g.format == cache::kv_format::f32;
  return {page + g.data_offset(e), f32 ? nullptr : page + g.scale_offset(e), g.nope(), f32};
}

// ---- stores and loads (one warp per row) ----------------------------------------------------------------------

__global__ void kv_store_kernel(view<const float, 2> values, const std::int32_t* slots, kv_dev kv, status_ref st) {
  const std::int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  const std::int64_t s = slots[t];
  if (!slot_ok(s, kv.num_slots, lane == 0 ? st : status_ref{})) return;
  const cache::kv_geometry& g = kv.geo;
  std::uint8_t* page = kv_page(kv, s);
  const std::int64_t e = mod32(s, g.page_tokens);
  std::uint8_t* data = page + g.data_offset(e);
  if (g.format == cache::kv_format::f32) {
    float* d = reinterpret_cast<float*>(data);
    for (std::int64_t i = lane; i < g.head_dim; i += 32) d[i] = values(t, i);
    return;
  }
  store_fp8_ds_mla(data, page + g.scale_offset(e), g, [&](std::int64_t i) { return values(t, i); }, 0, 1, st);
}

__global__ void kv_load_kernel(kv_dev kv, const std::int32_t* slots, view<float, 2> values, status_ref st) {
  const std::int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  const std::int64_t s = slots[t];
  const bool ok = slot_ok(s, kv.num_slots, lane == 0 ? st : status_ref{});
  const kv_entry en = ok ? kv_entry_at(kv, s) : kv_entry{};
  for (std::int64_t d = lane; d < kv.geo.head_dim; d += 32) values(t, d) = ok ? en[d] : 0.f;
}

template <int PER>
__device__ void fp8_key(view<const float, 2> values, std::int64_t t, std::uint8_t* codes, std::uint8_t* sc,
                        const status_ref& st) {
  const int lane = threadIdx.x;
  float v[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) v[i] = values(t, lane * PER + i);
  std::uint8_t code[PER];
  float sf;
  quantize_lane<fp8_e4m3, PER>(v, code, sf, st);
#pragma unroll
  for (int i = 0; i < PER; ++i) codes[lane * PER + i] = code[i];
  if (lane == 0) {
    const std::uint32_t b = f32_to_bits(sf);
    for (int i = 0; i < 4; ++i) sc[i] = static_cast<std::uint8_t>(b >> (8 * i));  // little-endian f32
  }
}

__global__ void key_store_kernel(view<const float, 2> values, const std::int32_t* slots, key_dev keys, status_ref st) {
  const std::int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  const std::int64_t s = slots[t];
  if (!slot_ok(s, keys.num_slots, lane == 0 ? st : status_ref{})) return;
  const cache::key_geometry& g = keys.geo;
  std::uint8_t* page = key_page(keys, s);
  const std::int64_t e = mod32(s, g.page_tokens);
  std::uint8_t* codes = page + g.code_offset(e);
  std::uint8_t* sc = page + g.scale_offset(e);
  if (g.format == cache::key_format::fp4)
    return store_fp4_key(codes, sc, g.dim, [&](std::int64_t i) { return values(t, i); }, 0, 1, st);
  switch (g.dim) {  // one E4M3 block over the whole key (the launcher admits these widths)
    case 32: return fp8_key<1>(values, t, codes, sc, st);
    case 64: return fp8_key<2>(values, t, codes, sc, st);
    case 128: return fp8_key<4>(values, t, codes, sc, st);
    case 256: return fp8_key<8>(values, t, codes, sc, st);
    default: return fp8_key<16>(values, t, codes, sc, st);
  }
}

__global__ void key_load_kernel(key_dev keys, const std::int32_t* slots, view<float, 2> values, status_ref st) {
  const std::int64_t t = blockIdx.x;
  const int lane = threadIdx.x;
  const std::int64_t s = slots[t];
  const cache::key_geometry& g = keys.geo;
  if (!slot_ok(s, keys.num_slots, lane == 0 ? st : status_ref{})) {
    for (std::int64_t i = lane; i < g.dim; i += 32) values(t, i) = 0.f;
    return;
  }
  const std::uint8_t* page = key_page(keys, s);
  const std::int64_t e = mod32(s, g.page_tokens);
  const std::uint8_t* codes = page + g.code_offset(e);
  const std::uint8_t* sc = page + g.scale_offset(e);
  if (g.format == cache::key_format::fp4) {
    for (std::int64_t i = lane; i < g.dim; i += 32) {
      const fp4x2 pair{codes[i / 2]};
      values(t, i) = ((i & 1) ? pair.hi() : pair.lo()).to_float() * ue8m0{sc[i / 32]}.to_float();
    }
    return;
  }
  const float sf = read_f32_le(sc);
  for (std::int64_t i = lane; i < g.dim; i += 32) values(t, i) = fp8_e4m3{codes[i]}.to_float() * sf;
}

// ---- compressor append ------------------------------------------------------------------------------------------

__global__ void append_kernel(view<const float, 2> kv, view<const float, 2> score, view<const float, 2> ape,
                              const std::int64_t* positions, const std::int32_t* state_slot, view<float, 2> rows,
                              int ratio, status_ref st) {
  const std::int64_t t = blockIdx.x, cw = kv.size(1);
  const std::int64_t s = state_slot[t];
  if (!slot_ok(s, rows.size(0), threadIdx.x == 0 ? st : status_ref{})) return;
  const std::int64_t pos = positions[t];
  if (pos < 0) {
    if (threadIdx.x == 0) st.raise(status_index_oob);
    return;
  }
  const std::int64_t a = pos & (ratio - 1);  // ratio is 4 or 128
  for (std::int64_t ch = threadIdx.x; ch < cw; ch += blockDim.x) {
    rows(s, ch) = kv(t, ch);
    rows(s, cw + ch) = score(t, ch) + ape(a, ch);
  }
}

// ---- slots ---------------------------------------------------------------------------------------------------

__global__ void to_slots_kernel(view<const std::int32_t, 2> idx, const std::int32_t* len, const std::int32_t* row_req,
                                view<const std::int32_t, 2> table, std::int64_t B, view<std::int32_t, 2> slots,
                                status_ref st) {
  const std::int64_t t = blockIdx.x, K = idx.size(1);
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (i >= K) return;
  const std::int64_t n = len ? len[t] : K;
  const std::int64_t r = row_req[t];
  std::int32_t out = -1;
  const std::int32_t e = idx(t, i);
  if (r < 0 || r >= table.size(0) || n < 0 || n > K) {
    st.raise(status_index_oob);
  } else if (i < n && e >= 0) {
    const std::int64_t page = div32(e, B);  // e is an i32 >= 0
    const std::int32_t p = page < table.size(1) ? table(r, page) : -1;
    if (p < 0) st.raise(status_index_oob);
    else out = static_cast<std::int32_t>(static_cast<std::int64_t>(p) * B + mod32(e, B));
  }
  slots(t, i) = out;
}

// ---- top-k --------------------------------------------------------------------------------------------------------

// The 64-bit key of (score, index): unsigned order = score order, then the lower index; NaN below everything.
// Bitonic sort of v[0, p2) (p2 a power of two) in shared memory by the whole CTA: afterwards no element is
// before(...) its predecessor. Every thread of the CTA must call it (barriers inside).
template <class T, class Before>
__device__ void cta_bitonic_sort(T* v, int p2, Before before) {
  for (int size = 2; size <= p2; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < p2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const T a = v[i], b = v[j];
          if ((i & size) == 0 ? before(b, a) : before(a, b)) {
            v[i] = b;
            v[j] = a;
          }
        }
      }
      __syncthreads();
    }
}

__device__ inline unsigned long long topk_key(float v, std::int64_t s) {
  std::uint32_t u = f32_to_bits(v);
  u = (v != v) ? 0u : ((u >> 31) ? ~u : (u | 0x80000000u));
  return (static_cast<unsigned long long>(u) << 32) | static_cast<std::uint32_t>(~static_cast<std::uint32_t>(s));
}

constexpr int kTopkThreads = 1024;

__global__ void __launch_bounds__(kTopkThreads) topk_kernel(view<const float, 2> logits, const std::int32_t* n_keys,
                                                            view<std::int32_t, 2> idx, std::int32_t* len,
                                                            status_ref st) {
  __shared__ unsigned hist[256];
  __shared__ unsigned long long sel[kMaxTopkK];
  __shared__ unsigned long long prefix_s, mask_s;
  __shared__ int need_s, count_s;
  const std::int64_t t = blockIdx.x, K = idx.size(1), L = logits.size(1);
  std::int64_t n = n_keys[t];
  if (n < 0 || n > L) {
    if (threadIdx.x == 0) st.raise(status_index_oob);
    n = n < 0 ? 0 : L;
  }
  const int need = static_cast<int>(n < K ? n : K);
  bool nan = false;
  if (threadIdx.x == 0) {
    prefix_s = 0;
    mask_s = 0;
    need_s = need;
    count_s = 0;
  }
  __syncthreads();
  // radix select of the need-th largest key, 8 bits a pass from the top
  for (int shift = 56; shift >= 0 && need > 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    const unsigned long long prefix = prefix_s, mask = mask_s;
    for (std::int64_t s = threadIdx.x; s < n; s += blockDim.x) {
      const float v = logits(t, s);
      nan = nan || v != v;
      const unsigned long long k = topk_key(v, s);
      if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int rem = need_s;
      for (int d = 255; d >= 0; --d) {
        const int h = static_cast<int>(hist[d]);
        if (h >= rem) {
          prefix_s |= static_cast<unsigned long long>(d) << shift;
          mask_s |= 255ull << shift;
          break;
        }
        rem -= h;
      }
      need_s = rem;
    }
    __syncthreads();
  }
  if (__syncthreads_or(nan) && threadIdx.x == 0) st.raise(status_nonfinite_input);
  // every key >= the threshold (exactly `need` of them: keys are distinct), then a descending bitonic sort
  const unsigned long long thr = prefix_s;
  for (std::int64_t s = threadIdx.x; s < n && need > 0; s += blockDim.x) {
    const unsigned long long k = topk_key(logits(t, s), s);
    if (k >= thr) {
      const int at = atomicAdd(&count_s, 1);
      if (at < kMaxTopkK) sel[at] = k;
    }
  }
  __syncthreads();
  int p2 = 1;
  while (p2 < need) p2 <<= 1;
  for (int i = need + static_cast<int>(threadIdx.x); i < p2; i += blockDim.x) sel[i] = 0;  // pads sort last
  __syncthreads();
  cta_bitonic_sort(sel, p2, [](unsigned long long a, unsigned long long b) { return a > b; });  // best first
  for (std::int64_t i = threadIdx.x; i < K; i += blockDim.x)
    idx(t, i) = i < need ? static_cast<std::int32_t>(~static_cast<std::uint32_t>(sel[i] & 0xFFFFFFFFull)) : -1;
  if (threadIdx.x == 0) len[t] = need;
}

// ---- indexer ----------------------------------------------------------------------------------------------------

constexpr int kIdxThreads = 128, kMaxHeads = kMaxIndexerHeads;

// 2·E2M1 of a nibble, as ref::fp4_twice.
__device__ inline int fp4_twice(unsigned c) {
  const unsigned m = c & 7u;
  const int mag = m < 4 ? static_cast<int>(m) : (m == 4 ? 4 : (m == 5 ? 6 : (m == 6 ? 8 : 12)));
  return (c & 8u) ? -mag : mag;
}

// The row's q rounded to FP4 (ref::quantize_query) into shared memory: qa [H·C] 2·codes, qs [H·C/32] scale bytes,
// qfin [H]; w [H].
__device__ void stage_query(view<const float, 3> q, view<const float, 2> w, std::int64_t t, std::int8_t* qa,
                            std::uint8_t* qs, int* qfin, float* ws) {
  const int H = static_cast<int>(q.size(1)), C = static_cast<int>(q.size(2)), nb = C / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int h = threadIdx.x; h < H; h += blockDim.x) {
    qfin[h] = 1;
    ws[h] = w(t, h);
  }
  __syncthreads();
  for (int blk = warp; blk < H * nb; blk += warps) {
    const int h = blk / nb, b = blk % nb;
    float v[1] = {q(t, h, b * 32 + lane)};
    const bool fin = __all_sync(kFullMask, fabsf(v[0]) <= 3.4028235e38f);
    std::uint8_t code[1];
    float sf;
    const std::uint8_t sbyte = quantize_lane<fp4_e2m1, 1>(v, code, sf, status_ref{});
    qa[h * C + b * 32 + lane] = static_cast<std::int8_t>(fp4_twice(code[0]));
    if (lane == 0) {
      qs[blk] = sbyte;
      if (!fin) qfin[h] = 0;
    }
  }
  __syncthreads();
}

// The FP4 score of one key (codes C/2 bytes, scales C/32) against the staged q: ref::fp4_score bit for bit.
template <int C>
__device__ float fp4_key_score(const std::int8_t* qa, const std::uint8_t* qs, const int* qfin, const float* ws, int H,
                               const std::uint8_t* codes, const std::uint8_t* scales) {
  constexpr int nb = C / 32, words = C / 4;
  int kw[words];  // the key's 2·codes, four int8 a word (element 4i + j in byte j)
#pragma unroll
  for (int i = 0; i < words; ++i) {
    const unsigned b0 = codes[2 * i], b1 = codes[2 * i + 1];
    const unsigned v = static_cast<std::uint8_t>(fp4_twice(b0 & 0xF)) | (static_cast<std::uint8_t>(fp4_twice(b0 >> 4)) << 8) |
                       (static_cast<std::uint8_t>(fp4_twice(b1 & 0xF)) << 16) |
                       (static_cast<unsigned>(static_cast<std::uint8_t>(fp4_twice(b1 >> 4))) << 24);
    kw[i] = static_cast<int>(v);
  }
  std::uint8_t sk[nb];
#pragma unroll
  for (int b = 0; b < nb; ++b) sk[b] = scales[b];
  // one head's ReLU(exact dot), ref::fp4_dot + indexer_relu
  auto head = [&](int h) {
    const int* qw = reinterpret_cast<const int*>(qa + h * C);
    double d = 0;
    bool bad = !qfin[h];
#pragma unroll
    for (int b = 0; b < nb; ++b) {
      const std::uint8_t sq = qs[h * nb + b];
      bad = bad || sq == 0xFF || sk[b] == 0xFF;
      int I = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) I = __dp4a(qw[b * 8 + j], kw[b * 8 + j], I);
      // I · 2^(eq + ek − 2), exact (the exponent stays in [−256, 252]: a power of two built from its bits, which is
      // ldexp's value without its library call)
      const int ex2 = static_cast<int>(sq) + static_cast<int>(sk[b]) - 256;
      d += static_cast<double>(I) * __longlong_as_double(static_cast<long long>(ex2 + 1023) << 52);
    }
    const float r = bad ? __int_as_float(0x7FC00000) : static_cast<float>(d);
    return (0.f > r) ? 0.f : r;
  };
  // the 16-lane tree: lane l takes heads h = l (mod 16); whole groups of 16 first (fully unrolled: p stays in
  // registers), then the last partial group
  float p[16];
#pragma unroll
  for (int l = 0; l < 16; ++l) p[l] = 0.f;
  int h0 = 0;
  for (; h0 + 16 <= H; h0 += 16) {
#pragma unroll
    for (int l = 0; l < 16; ++l) p[l] = fmaf(ws[h0 + l], head(h0 + l), p[l]);
  }
  if (h0 < H) {  // H % 16 heads left: every lane computes a (clamped) head and keeps it only when it exists, so the
                // loop stays straight-line and p in registers
#pragma unroll
    for (int l = 0; l < 16; ++l) {
      const int h = h0 + l < H ? h0 + l : H - 1;
      const float v = fmaf(ws[h], head(h), p[l]);
      p[l] = h0 + l < H ? v : p[l];
    }
  }
#pragma unroll
  for (int l = 0; l < 8; ++l) p[l] = p[l] + p[l + 8];  // the tree written out: constant indices, registers only
#pragma unroll
  for (int l = 0; l < 4; ++l) p[l] = p[l] + p[l + 4];
  p[0] = p[0] + p[2];
  p[1] = p[1] + p[3];
  return p[0] + p[1];
}

// Resolve key s of row t to its slot; −1 (and a report) when its page is out of the table or unmapped.
__device__ inline std::int64_t key_slot(view<const std::int32_t, 2> table, std::int64_t r, std::int64_t s,
                                        const key_dev& keys, const status_ref& st) {
  const std::int64_t B = keys.geo.page_tokens, page = div32(s, B);  // s < n_keys <= the slots: < 2^31
  const std::int32_t p = (r >= 0 && r < table.size(0) && page < table.size(1)) ? table(r, page) : -1;
  const std::int64_t slot = p < 0 ? -1 : static_cast<std::int64_t>(p) * B + mod32(s, B);
  if (slot < 0 || slot >= keys.num_slots) {
    st.raise(status_index_oob);
    return -1;
  }
  return slot;
}

template <int C>
__global__ void __launch_bounds__(kIdxThreads) indexer_fp4_kernel(view<const float, 3> q, view<const float, 2> w,
                                                                  key_dev keys, view<const std::int32_t, 2> table,
                                                                  const std::int32_t* row_req,
                                                                  const std::int32_t* n_keys, view<float, 2> logits,
                                                                  status_ref st) {
  __shared__ __align__(16) std::int8_t qa[kMaxHeads * C];
  __shared__ std::uint8_t qs[kMaxHeads * C / 32];
  __shared__ int qfin[kMaxHeads];
  __shared__ float ws[kMaxHeads];
  const std::int64_t t = blockIdx.y;
  stage_query(q, w, t, qa, qs, qfin, ws);
  const std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * kIdxThreads + threadIdx.x;
  if (s >= logits.size(1)) return;
  const std::int64_t n = n_keys[t];
  if (s >= n) {
    logits(t, s) = -__int_as_float(0x7F800000);
    return;
  }
  const std::int64_t slot = key_slot(table, row_req[t], s, keys, st);
  if (slot < 0) {
    logits(t, s) = -__int_as_float(0x7F800000);
    return;
  }
  const std::uint8_t* page = key_page(keys, slot);
  const std::int64_t e = mod32(slot, keys.geo.page_tokens);
  logits(t, s) = fp4_key_score<C>(qa, qs, qfin, ws, static_cast<int>(q.size(1)), page + keys.geo.code_offset(e),
                                  page + keys.geo.scale_offset(e));
}

// FP8 keys: fp32 dots in k order, ReLU, the head sum as an fma chain in head order.
__global__ void __launch_bounds__(kIdxThreads) indexer_fp8_kernel(view<const float, 3> q, view<const float, 2> w,
                                                                  key_dev keys, view<const std::int32_t, 2> table,
                                                                  const std::int32_t* row_req,
                                                                  const std::int32_t* n_keys, view<float, 2> logits,
                                                                  status_ref st) {
  const std::int64_t t = blockIdx.y;
  const std::int64_t s = static_cast<std::int64_t>(blockIdx.x) * kIdxThreads + threadIdx.x;
  if (s >= logits.size(1)) return;
  const std::int64_t n = n_keys[t];
  const std::int64_t slot = s < n ? key_slot(table, row_req[t], s, keys, st) : -1;
  if (slot < 0) {
    logits(t, s) = -__int_as_float(0x7F800000);
    return;
  }
  const std::uint8_t* page = key_page(keys, slot);
  const std::int64_t e = mod32(slot, keys.geo.page_tokens);
  const std::uint8_t* codes = page + keys.geo.code_offset(e);
  const std::uint8_t* sc = page + keys.geo.scale_offset(e);
  const float sf = read_f32_le(sc);
  const std::int64_t H = q.size(1), C = q.size(2);
  float acc = 0.f;
  for (std::int64_t h = 0; h < H; ++h) {
    float d = 0.f;
    for (std::int64_t k = 0; k < C; ++k) d = fmaf(q(t, h, k), fp8_e4m3{codes[k]}.to_float() * sf, d);
    acc = fmaf(w(t, h), (0.f > d) ? 0.f : d, acc);
  }
  logits(t, s) = acc;
}

// ---- sparse MQA ---------------------------------------------------------------------------------------------------

constexpr int kMqaHeads = 8, kMqaChunk = 8;  // heads per CTA (a warp each), entries decoded per shared-memory round

// Entry `slot` of kv decoded to fp32 by the CTA into row (D floats).
__device__ void decode_entry(const kv_dev& kv, std::int64_t slot, float* row) {
  const kv_entry en = kv_entry_at(kv, slot);
  for (std::int64_t d = threadIdx.x; d < kv.geo.head_dim; d += blockDim.x) row[d] = en[d];
}

// One segment's valid lanes folded into the warp's online softmax (m, sum, acc) for head h of token t.
template <int DL>
__device__ void mqa_segment(const segment_dev& sg, std::int64_t t, float scale, const float (&qv)[DL], float& m,
                            float& sum, float (&acc)[DL], bool& any, float (*rows)[32 * DL], int* valid,
                            const status_ref& st) {
  const int lane = threadIdx.x & 31;
  const std::int64_t Ks = sg.slots.size(1);
  std::int64_t len = sg.len ? sg.len[t] : Ks;
  if (len < 0 || len > Ks) {
    if (threadIdx.x == 0) st.raise(status_index_oob);
    len = len < 0 ? 0 : Ks;
  }
  for (std::int64_t i0 = 0; i0 < len; i0 += kMqaChunk) {
    if (threadIdx.x < kMqaChunk) {
      const std::int64_t i = i0 + threadIdx.x;
      const std::int64_t v = i < len ? sg.slots(t, i) : -1;
      valid[threadIdx.x] = slot_ok(v, sg.kv.num_slots, st) ? 1 : 0;
    }
    __syncthreads();
    for (int j = 0; j < kMqaChunk; ++j)
      if (valid[j]) decode_entry(sg.kv, sg.slots(t, i0 + j), rows[j]);
    __syncthreads();
    for (int j = 0; j < kMqaChunk; ++j) {
      if (!valid[j]) continue;
      float d = 0.f;
#pragma unroll
      for (int i = 0; i < DL; ++i) d = fmaf(qv[i], rows[j][lane + 32 * i], d);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(kFullMask, d, o);
      const float l = scale * d;
      const float mn = l > m ? l : m;
      const float c = expf(m - mn), p = expf(l - mn);  // m = −inf at first: c = 0
      sum = sum * c + p;
#pragma unroll
      for (int i = 0; i < DL; ++i) acc[i] = acc[i] * c + p * rows[j][lane + 32 * i];
      m = mn;
      any = true;
    }
    __syncthreads();
  }
}

template <int DL>  // D / 32 values a lane
__global__ void __launch_bounds__(32 * kMqaHeads) mqa_kernel(view<const float, 3> q,
                                                             const __grid_constant__ segment_dev win,
                                                             const __grid_constant__ segment_dev cmp, bool has_cmp,
                                                             const float* sink, float scale, view<float, 3> out,
                                                             float* lse, status_ref st) {
  constexpr int D = 32 * DL;
  __shared__ float rows[kMqaChunk][D];
  __shared__ int valid[kMqaChunk];
  const std::int64_t t = blockIdx.x, H = q.size(1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const std::int64_t h = static_cast<std::int64_t>(blockIdx.y) * kMqaHeads + warp;
  const bool live = h < H;
  float qv[DL], acc[DL];
#pragma unroll
  for (int i = 0; i < DL; ++i) {
    qv[i] = live ? q(t, h, lane + 32 * i) : 0.f;
    acc[i] = 0.f;
  }
  float m = -__int_as_float(0x7F800000), sum = 0.f;
  bool any = false;
  mqa_segment<DL>(win, t, scale, qv, m, sum, acc, any, rows, valid, st);
  if (has_cmp) mqa_segment<DL>(cmp, t, scale, qv, m, sum, acc, any, rows, valid, st);
  if (!live) return;
  const float den = any ? sum + expf(sink[h] - m) : 1.f;
#pragma unroll
  for (int i = 0; i < DL; ++i) out(t, h, lane + 32 * i) = any ? acc[i] / den : 0.f;
  if (lse && lane == 0) lse[t * H + h] = any ? m + logf(sum) : __int_as_float(0x7F800000);
}

// ---- compressor emit ------------------------------------------------------------------------------------------

constexpr int kEmitThreads = 128;

// The state row of position q of request r (−1 and a report when its page is out of the table or unmapped).
__device__ inline std::int64_t state_slot_of(view<const std::int32_t, 2> table, std::int64_t r, std::int64_t q,
                                             std::int64_t S, std::int64_t nslots, const status_ref& st) {
  const std::int64_t page = q / S;
  const std::int32_t p = page < table.size(1) ? table(r, page) : -1;
  const std::int64_t slot = p < 0 ? -1 : static_cast<std::int64_t>(p) * S + q % S;
  if (slot < 0 || slot >= nslots) {
    st.raise(status_index_oob);
    return -1;
  }
  return slot;
}

// FP8 / FP4 round trip of e[b·32·PER, +32·PER) by one warp (ref::block_round_trip of one block).
template <class Code, int PER>
__device__ void round_trip_block(float* e, std::int64_t b) {
  const int lane = threadIdx.x & 31;
  float v[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) v[i] = e[b * 32 * PER + lane * PER + i];
  std::uint8_t code[PER];
  float sf;
  quantize_lane<Code, PER>(v, code, sf, status_ref{});
#pragma unroll
  for (int i = 0; i < PER; ++i) e[b * 32 * PER + lane * PER + i] = decode<Code>(code[i]) * sf;
}

struct emit_args {
  const std::int64_t* positions;
  const std::int32_t* row_req;
  view<const std::int32_t, 2> table;  // state table [R, pages]
  view<const float, 2> rows;          // state rows [slots, 2·cw]
  std::int64_t state_page_tokens;
  const float* norm_weight;           // [c]
  const float* rope_freq;             // [rope_dim / 2]
  const std::int32_t* out_slot;       // [T]
  int ratio, coff;
  std::int64_t c, rope_dim;
  double norm_eps;
  bool indexer;
  kv_dev kv;      // main
  key_dev keys;   // indexer
  float* entries;  // [T, c] or null
};

__global__ void __launch_bounds__(kEmitThreads) emit_kernel(const __grid_constant__ emit_args a, status_ref st) {
  __shared__ float e[kMaxEmitC];
  __shared__ double red[kEmitThreads];
  const std::int64_t t = blockIdx.x, pos = a.positions[t], r = a.ratio, c = a.c, cw = a.coff * c;
  if (pos < 0 || (pos + 1) % r != 0) return;
  const std::int64_t os = a.out_slot[t];
  const std::int64_t out_slots = a.indexer ? a.keys.num_slots : a.kv.num_slots;
  if (!slot_ok(os, out_slots, threadIdx.x == 0 ? st : status_ref{})) return;
  const std::int64_t req = a.row_req[t];
  if (req < 0 || req >= a.table.size(0)) {
    if (threadIdx.x == 0) st.raise(status_index_oob);
    return;
  }
  const std::int64_t j = pos / r, first = (j + 1) * r - a.coff * r, S = a.state_page_tokens, nslots = a.rows.size(0);
  const float ninf = -__int_as_float(0x7F800000);
  // pool: per channel the softmax over the coff·r candidate rows (oldest first), ref's two passes
  for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) {
    float m = ninf;
    for (std::int64_t k = 0; k < a.coff * r; ++k) {
      const std::int64_t q = first + k;
      const std::int64_t slot = q < 0 ? -1 : state_slot_of(a.table, req, q, S, nslots, st);
      const std::int64_t col = a.coff == 2 && k >= r ? c + ch : ch;
      const float sc = slot < 0 ? ninf : a.rows(slot, cw + col);
      m = sc > m ? sc : m;
    }
    float den = 0.f, num = 0.f;
    for (std::int64_t k = 0; k < a.coff * r; ++k) {
      const std::int64_t q = first + k;
      const std::int64_t slot = q < 0 ? -1 : state_slot_of(a.table, req, q, S, nslots, status_ref{});
      const std::int64_t col = a.coff == 2 && k >= r ? c + ch : ch;
      const float kv = slot < 0 ? 0.f : a.rows(slot, col), sc = slot < 0 ? ninf : a.rows(slot, cw + col);
      const float w = expf(sc - m);
      den = __fadd_rn(den, w);
      num = __fadd_rn(num, __fmul_rn(w, kv));
    }
    e[ch] = num / den;
  }
  __syncthreads();
  // RMSNorm (ref::rms_norm: the sum of squares in double, r rounded to fp32, v·r·w)
  double ss = 0;
  for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) ss += double(e[ch]) * e[ch];
  red[threadIdx.x] = ss;
  __syncthreads();
  for (int h = kEmitThreads / 2; h > 0; h >>= 1) {
    if (static_cast<int>(threadIdx.x) < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  const float rs = static_cast<float>(1.0 / sqrt(red[0] / double(c) + a.norm_eps));
  for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) e[ch] = __fmul_rn(__fmul_rn(e[ch], rs), a.norm_weight[ch]);
  __syncthreads();
  // RoPE on the last rope_dim channels at position r·j (ref::rope_rotate, no contraction)
  const float p = static_cast<float>(r * j);
  float* rv = e + (c - a.rope_dim);
  for (std::int64_t i = threadIdx.x; i < a.rope_dim / 2; i += blockDim.x) {
    const float ang = __fmul_rn(p, a.rope_freq[i]);
    float sn, cs;
    sin_cos(ang, sn, cs);
    const float x = rv[2 * i], y = rv[2 * i + 1];
    rv[2 * i] = __fsub_rn(__fmul_rn(x, cs), __fmul_rn(y, sn));
    rv[2 * i + 1] = __fadd_rn(__fmul_rn(x, sn), __fmul_rn(y, cs));
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, warps = kEmitThreads / 32;
  std::uint8_t* page;
  std::int64_t slot_in_page;
  if (a.indexer) {
    // Hadamard over c (ref's stage order and scale: cuda/hadamard.cu's butterflies), then FP4 blocks of 32
    int log2c = 0;
    while ((std::int64_t{1} << log2c) < c) ++log2c;
    for (int lh = 0; lh < log2c; ++lh) {
      const std::int64_t h = std::int64_t{1} << lh;
      for (std::int64_t pr = threadIdx.x; pr < c / 2; pr += blockDim.x) {
        const std::int64_t i = ((pr >> lh) << (lh + 1)) + (pr & (h - 1));
        const float x = e[i], y = e[i + h];
        e[i] = __fadd_rn(x, y);
        e[i + h] = __fsub_rn(x, y);
      }
      __syncthreads();
    }
    const float hs = static_cast<float>(1.0 / sqrt(static_cast<double>(c)));
    for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) e[ch] = __fmul_rn(e[ch], hs);
    __syncthreads();
    for (std::int64_t b = warp; b < c / 32; b += warps) round_trip_block<fp4_e2m1, 1>(e, b);
    __syncthreads();
    page = key_page(a.keys, os);
    slot_in_page = mod32(os, a.keys.geo.page_tokens);
    store_fp4_key(page + a.keys.geo.code_offset(slot_in_page), page + a.keys.geo.scale_offset(slot_in_page), c,
                  [&](std::int64_t i) { return e[i]; }, warp, warps, st);
  } else {
    const std::int64_t nope = c - a.rope_dim;
    for (std::int64_t b = warp; b < nope / 64; b += warps) round_trip_block<fp8_e4m3, 2>(e, b);
    __syncthreads();
    const cache::kv_geometry& g = a.kv.geo;
    page = kv_page(a.kv, os);
    slot_in_page = mod32(os, g.page_tokens);
    std::uint8_t* data = page + g.data_offset(slot_in_page);
    if (g.format == cache::kv_format::f32) {
      for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) reinterpret_cast<float*>(data)[ch] = e[ch];
    } else {
      store_fp8_ds_mla(data, page + g.scale_offset(slot_in_page), g, [&](std::int64_t i) { return e[i]; }, warp,
                       warps, st);
    }
  }
  if (a.entries)
    for (std::int64_t ch = threadIdx.x; ch < c; ch += blockDim.x) a.entries[t * c + ch] = e[ch];
}

}  // namespace

std::int64_t kv_store(view<const float, 2> values, const std::int32_t* slots, const kv_dev& kv, const exec& ex) {
  launch l("kv_store", ex);
  if (values.size(0) > 0)
    kv_store_kernel<<<static_cast<unsigned>(values.size(0)), 32, 0, l.stream()>>>(values, slots, kv, l.status());
  return l.finish();
}

void kv_load(const kv_dev& kv, const std::int32_t* slots, view<float, 2> values, const exec& ex) {
  launch l("kv_load", ex);
  if (values.size(0) > 0)
    kv_load_kernel<<<static_cast<unsigned>(values.size(0)), 32, 0, l.stream()>>>(kv, slots, values, l.status());
  DSV4_CHECK(l.finish() == 0 || true, "kv_load", "");
}

std::int64_t key_store(view<const float, 2> values, const std::int32_t* slots, const key_dev& keys, const exec& ex) {
  const std::int64_t c = keys.geo.dim;
  DSV4_CHECK(keys.geo.format == cache::key_format::fp4 || c == 32 || c == 64 || c == 128 || c == 256 || c == 512,
             "key_store", "FP8 key pages of dim ", c, ": the CUDA store takes 32, 64, 128, 256 or 512");
  launch l("key_store", ex);
  if (values.size(0) > 0)
    key_store_kernel<<<static_cast<unsigned>(values.size(0)), 32, 0, l.stream()>>>(values, slots, keys, l.status());
  return l.finish();
}

void key_load(const key_dev& keys, const std::int32_t* slots, view<float, 2> values, const exec& ex) {
  launch l("key_load", ex);
  if (values.size(0) > 0)
    key_load_kernel<<<static_cast<unsigned>(values.size(0)), 32, 0, l.stream()>>>(keys, slots, values, l.status());
  l.finish();
}

void compressor_append(view<const float, 2> kv, view<const float, 2> score, view<const float, 2> ape,
                       const std::int64_t* positions, const std::int32_t* state_slot, view<float, 2> rows, int ratio,
                       const exec& ex) {
  launch l("compressor_append", ex);
  if (kv.size(0) > 0)
    append_kernel<<<static_cast<unsigned>(kv.size(0)), 256, 0, l.stream()>>>(kv, score, ape, positions, state_slot,
                                                                             rows, ratio, l.status());
  l.finish();
}

void compressor_emit(const std::int64_t* positions, const std::int32_t* row_req, view<const std::int32_t, 2> table,
                     view<const float, 2> rows, std::int64_t state_page_tokens, const float* norm_weight,
                     const float* rope_freq, const std::int32_t* out_slot, int ratio, std::int64_t c,
                     std::int64_t rope_dim, double norm_eps, bool indexer, const kv_dev* kv, const key_dev* keys,
                     float* entries, std::int64_t T, const exec& ex) {
  constexpr const char* op = "compressor_emit";
  DSV4_CHECK(c <= kMaxEmitC && (!indexer || (c & (c - 1)) == 0), op, "the CUDA compressor takes entries of at most ",
             kMaxEmitC, " channels (a power of two for the indexer), got ", c);
  emit_args a{};
  a.positions = positions;
  a.row_req = row_req;
  a.table = table;
  a.rows = rows;
  a.state_page_tokens = state_page_tokens;
  a.norm_weight = norm_weight;
  a.rope_freq = rope_freq;
  a.out_slot = out_slot;
  a.ratio = ratio;
  a.coff = ratio == 4 ? 2 : 1;
  a.c = c;
  a.rope_dim = rope_dim;
  a.norm_eps = norm_eps;
  a.indexer = indexer;
  if (kv) a.kv = *kv;
  if (keys) a.keys = *keys;
  a.entries = entries;
  launch l(op, ex);
  if (T > 0) emit_kernel<<<static_cast<unsigned>(T), kEmitThreads, 0, l.stream()>>>(a, l.status());
  l.finish();
}

void to_slots(view<const std::int32_t, 2> idx, const std::int32_t* len, const std::int32_t* row_req,
              view<const std::int32_t, 2> table, std::int64_t page_tokens, view<std::int32_t, 2> slots,
              const exec& ex) {
  const std::int64_t T = idx.size(0), K = idx.size(1), groups = (K + 255) / 256;
  DSV4_CHECK(T <= 2147483647LL && groups <= 65535, "to_slots", "shape beyond one launch: ", T, " x ", K);
  launch l("to_slots", ex);
  if (T > 0 && K > 0)
    to_slots_kernel<<<dim3(static_cast<unsigned>(T), static_cast<unsigned>(groups)), 256, 0, l.stream()>>>(
        idx, len, row_req, table, page_tokens, slots, l.status());
  l.finish();
}

namespace {
// One CTA per row: the row's first len[t] indices sorted ascending in shared memory (bitonic over the next power of
// two, padded with INT_MAX), written back in place; lanes at or past len untouched.
constexpr int kSortThreads = 512;
__global__ void __launch_bounds__(kSortThreads) sort_rows_kernel(view<std::int32_t, 2> idx, const std::int32_t* len,
                                                                 status_ref st) {
  __shared__ std::int32_t v[kMaxTopkK];
  const std::int64_t t = blockIdx.x, K = idx.size(1);
  std::int64_t n = len[t];
  if (n < 0 || n > K) {
    if (threadIdx.x == 0) st.raise(status_index_oob);
    return;
  }
  int p2 = 1;
  while (p2 < n) p2 <<= 1;
  for (int i = threadIdx.x; i < p2; i += blockDim.x) v[i] = i < n ? idx(t, i) : 0x7FFFFFFF;
  __syncthreads();
  cta_bitonic_sort(v, p2, [](std::int32_t a, std::int32_t b) { return a < b; });  // ascending
  for (int i = threadIdx.x; i < n; i += blockDim.x) idx(t, i) = v[i];
}
}  // namespace

void sort_rows(view<std::int32_t, 2> idx, const std::int32_t* len, const exec& ex) {
  DSV4_CHECK(idx.size(1) <= kMaxTopkK && idx.size(0) <= 2147483647LL, "sort_rows", "the CUDA row sort takes k <= ",
             kMaxTopkK, ", got ", idx.size(1));
  launch l("sort_rows", ex);
  if (idx.size(0) > 0)
    sort_rows_kernel<<<static_cast<unsigned>(idx.size(0)), kSortThreads, 0, l.stream()>>>(idx, len, l.status());
  if (const std::int64_t bad = l.finish(); bad > 0) DSV4_FAIL("sort_rows", bad, " rows have a length outside [0, k]");
}

namespace {
void launch_topk(view<const float, 2> logits, const std::int32_t* n_keys, view<std::int32_t, 2> idx,
                 std::int32_t* len, launch& l) {
  DSV4_CHECK(idx.size(1) <= kMaxTopkK, "topk_rows", "the CUDA top-k takes k <= ", kMaxTopkK, ", got ", idx.size(1));
  if (logits.size(0) > 0)
    topk_kernel<<<static_cast<unsigned>(logits.size(0)), kTopkThreads, 0, l.stream()>>>(logits, n_keys, idx, len,
                                                                                         l.status());
}

void launch_indexer(view<const float, 3> q, view<const float, 2> w, const key_dev& keys,
                    view<const std::int32_t, 2> table, const std::int32_t* row_req, const std::int32_t* n_keys,
                    view<float, 2> logits, launch& l) {
  constexpr const char* op = "indexer_logits";
  const std::int64_t T = q.size(0), H = q.size(1), C = q.size(2), L = logits.size(1);
  const std::int64_t chunks = (L + kIdxThreads - 1) / kIdxThreads;
  DSV4_CHECK(L <= 2147483647LL, op, "shape beyond one launch: ", L, " keys (key indices are 32-bit)");
  if (T == 0 || L == 0) return;
  constexpr std::int64_t kRowsPerLaunch = 65535;  // rows are grid.y
  if (T > kRowsPerLaunch) {  // more rows than one grid holds: launch row ranges (offset views; graph-capturable)
    for (std::int64_t r0 = 0; r0 < T; r0 += kRowsPerLaunch) {
      const std::int64_t n = T - r0 < kRowsPerLaunch ? T - r0 : kRowsPerLaunch;
      view<const float, 3> qs = q;
      qs.data = &q(r0, 0, 0);
      qs.shape[0] = n;
      view<const float, 2> ws = w;
      ws.data = &w(r0, 0);
      ws.shape[0] = n;
      view<float, 2> ls = logits;
      ls.data = &logits(r0, 0);
      ls.shape[0] = n;
      launch_indexer(qs, ws, keys, table, row_req + r0, n_keys + r0, ls, l);
    }
    return;
  }
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(T));
  if (keys.geo.format == cache::key_format::fp8) {
    indexer_fp8_kernel<<<grid, kIdxThreads, 0, l.stream()>>>(q, w, keys, table, row_req, n_keys, logits, l.status());
    return;
  }
  DSV4_CHECK(H <= kMaxHeads, op, "the CUDA indexer takes at most ", kMaxHeads, " heads, got ", H);
  switch (C) {
    case 32: indexer_fp4_kernel<32><<<grid, kIdxThreads, 0, l.stream()>>>(q, w, keys, table, row_req, n_keys, logits, l.status()); break;
    case 64: indexer_fp4_kernel<64><<<grid, kIdxThreads, 0, l.stream()>>>(q, w, keys, table, row_req, n_keys, logits, l.status()); break;
    case 128: indexer_fp4_kernel<128><<<grid, kIdxThreads, 0, l.stream()>>>(q, w, keys, table, row_req, n_keys, logits, l.status()); break;
    default: DSV4_FAIL(op, "the CUDA FP4 indexer takes key dims 32, 64 or 128, got ", C);
  }
}
}  // namespace

void topk_rows(view<const float, 2> logits, const std::int32_t* n_keys, view<std::int32_t, 2> idx, std::int32_t* len,
               const exec& ex) {
  launch l("topk_rows", ex);
  launch_topk(logits, n_keys, idx, len, l);
  l.finish();
}

void indexer_logits(view<const float, 3> q, view<const float, 2> w, const key_dev& keys,
                    view<const std::int32_t, 2> table, const std::int32_t* row_req, const std::int32_t* n_keys,
                    view<float, 2> logits, const exec& ex) {
  launch l("indexer_logits", ex);
  launch_indexer(q, w, keys, table, row_req, n_keys, logits, l);
  l.finish();
}

std::size_t indexer_topk_workspace_bytes(std::int64_t T, std::int64_t max_keys) {
  return static_cast<std::size_t>(T * max_keys) * sizeof(float);
}

void indexer_topk(view<const float, 3> q, view<const float, 2> w, const key_dev& keys,
                  view<const std::int32_t, 2> table, const std::int32_t* row_req, const std::int32_t* n_keys,
                  view<std::int32_t, 2> idx, std::int32_t* len, std::int32_t* slots, const exec& ex) {
  constexpr const char* op = "indexer_topk";
  const std::int64_t T = q.size(0), L = keys.num_slots;
  const std::size_t need = indexer_topk_workspace_bytes(T, L);
  DSV4_CHECK(ex.scratch.data != nullptr && ex.scratch.bytes >= need, op, "exec.scratch holds ", ex.scratch.bytes,
             " bytes; the CUDA indexer_topk needs ", need, " (ops::indexer_topk_workspace_bytes)");
  view<float, 2> lg;
  lg.data = static_cast<float*>(ex.scratch.data);
  lg.shape[0] = T;
  lg.shape[1] = L;
  lg.stride[0] = L;
  lg.stride[1] = 1;
  launch l(op, ex);
  launch_indexer(q, w, keys, table, row_req, n_keys, lg, l);
  view<const float, 2> clg;
  clg.data = lg.data;
  for (int d = 0; d < 2; ++d) {
    clg.shape[d] = lg.shape[d];
    clg.stride[d] = lg.stride[d];
  }
  launch_topk(clg, n_keys, idx, len, l);
  if (slots && T > 0 && idx.size(1) > 0) {
    view<std::int32_t, 2> sv;
    sv.data = slots;
    sv.shape[0] = T;
    sv.shape[1] = idx.size(1);
    sv.stride[0] = idx.size(1);
    sv.stride[1] = 1;
    view<const std::int32_t, 2> ci;
    ci.data = idx.data;
    for (int d = 0; d < 2; ++d) {
      ci.shape[d] = idx.shape[d];
      ci.stride[d] = idx.stride[d];
    }
    const std::int64_t groups = (idx.size(1) + 255) / 256;
    to_slots_kernel<<<dim3(static_cast<unsigned>(T), static_cast<unsigned>(groups)), 256, 0, l.stream()>>>(
        ci, len, row_req, table, keys.geo.page_tokens, sv, l.status());
  }
  l.finish();
}

void sparse_mqa(view<const float, 3> q, const segment_dev& window, const segment_dev* compressed, const float* sink,
                float scale, view<float, 3> out, float* lse, const exec& ex) {
  constexpr const char* op = "sparse_mqa";
  const std::int64_t T = q.size(0), H = q.size(1), D = q.size(2), hg = (H + kMqaHeads - 1) / kMqaHeads;
  DSV4_CHECK(T <= 2147483647LL && hg <= 65535, op, "shape beyond one launch: ", T, " x ", H);
  launch l(op, ex);
  const segment_dev none{};
  const segment_dev& cmp = compressed ? *compressed : none;
  if (T > 0 && H > 0) {
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(hg));
    switch (D) {
      case 128: mqa_kernel<4><<<grid, 32 * kMqaHeads, 0, l.stream()>>>(q, window, cmp, compressed != nullptr, sink, scale, out, lse, l.status()); break;
      case 256: mqa_kernel<8><<<grid, 32 * kMqaHeads, 0, l.stream()>>>(q, window, cmp, compressed != nullptr, sink, scale, out, lse, l.status()); break;
      case 512: mqa_kernel<16><<<grid, 32 * kMqaHeads, 0, l.stream()>>>(q, window, cmp, compressed != nullptr, sink, scale, out, lse, l.status()); break;
      default: DSV4_FAIL(op, "the CUDA sparse MQA takes head_dim 128, 256 or 512, got ", D);
    }
  }
  l.finish();
}

}  // namespace dsv4::cuda
