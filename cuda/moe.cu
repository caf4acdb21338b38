// cuda/moe.cu — MoE routing and the expert FFN on CUDA (dsv4/cuda/moe.hpp has the steps and their orders).
#include <cstring>

#include "check.cuh"
#include "dsv4/cuda/moe.hpp"
#include "linear_core.cuh"

namespace dsv4::cuda {
namespace {

using namespace detail;  // linear_core.cuh
using ref::wfmt;
constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kPerLane = kMaxRoutedExperts / 32;  // experts a lane scores
constexpr unsigned kEltThreads = 256;             // element-wise kernels

// ---- routing --------------------------------------------------------------------------------------------------

// This lane's scores s[j] (and selection values sel[j] = s + bias) of experts e = lane + 32·j < E (ref::score_row).
__device__ void token_scores(view<const float, 2> logits, std::int64_t t, int E, ops::score_func f,
                             const float* bias, float (&s)[kPerLane], float (&sel)[kPerLane],
                             const status_ref& st) {
  const int lane = threadIdx.x & 31;
  bool finite = true;
  float mx = -3.4028235e38f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    const float l = e < E ? logits(t, e) : 0.f;
    finite = finite && fabsf(l) <= 3.4028235e38f;
    if (e < E) mx = l > mx ? l : mx;
    switch (f) {
      case ops::score_func::sqrtsoftplus: s[j] = sqrtf(l > 20.f ? l : log1pf(expf(l))); break;
      case ops::score_func::sigmoid: s[j] = 1.f / (1.f + expf(-l)); break;  // ref::score_row's formula
      case ops::score_func::softmax: s[j] = l; break;
    }
  }
  if (f == ops::score_func::softmax) {  // exp(l - max) / Σ (the sum by a butterfly, not ref's sequential order)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float other = __shfl_xor_sync(kFull, mx, o);
      mx = other > mx ? other : mx;
    }
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      s[j] = lane + 32 * j < E ? expf(s[j] - mx) : 0.f;
      sum += s[j];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(kFull, sum, o);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) s[j] /= sum;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    sel[j] = e < E ? (bias ? s[j] + bias[e] : s[j]) : 0.f;
  }
  if (!__all_sync(kFull, finite) && lane == 0) st.raise(status_nonfinite_input);
}

// The score of expert e (held by lane e % 32), broadcast to every lane. e < 0: 0.
__device__ float score_at(const float (&s)[kPerLane], int e) {
  float v = 0.f;
  const int j = e >= 0 ? e / 32 : -1;
#pragma unroll
  for (int jj = 0; jj < kPerLane; ++jj)
    if (jj == j) v = s[jj];
  return __shfl_sync(kFull, v, e >= 0 ? e % 32 : 0);
}

// ref::route_weights from lane 0's chosen scores cs[0:k) (selection order), written by lane 0.
__device__ void write_weights(const float (&cs)[kMaxTopk], const int (&ce)[kMaxTopk], int k,
                              const ops::route_config& cfg, std::int64_t t, view<float, 2> w,
                              view<std::int32_t, 2> idx) {
  if ((threadIdx.x & 31) != 0) return;
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxTopk; ++i)
    if (i < k && ce[i] >= 0) sum += cs[i];
#pragma unroll
  for (int i = 0; i < kMaxTopk; ++i)
    if (i < k) {
      idx(t, i) = ce[i];
      w(t, i) = ce[i] < 0 ? 0.f : (cfg.score == ops::score_func::softmax ? cs[i] : cs[i] / sum) * cfg.route_scale;
    }
}

constexpr unsigned kRouteWarps = 4;

__global__ void __launch_bounds__(32 * kRouteWarps) route_kernel(view<const float, 2> logits, ops::route_config cfg,
                                                                 const float* bias, view<float, 2> w,
                                                                 view<std::int32_t, 2> idx, status_ref st) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * kRouteWarps + threadIdx.x / 32;
  if (t >= logits.size(0)) return;
  const int lane = threadIdx.x & 31, E = static_cast<int>(logits.size(1)), k = cfg.topk;
  float s[kPerLane], sel[kPerLane];
  token_scores(logits, t, E, cfg.score, bias, s, sel, st);
  unsigned taken = 0;
  float cs[kMaxTopk];
  int ce[kMaxTopk];
#pragma unroll
  for (int i = 0; i < kMaxTopk; ++i) {
    cs[i] = 0.f;
    ce[i] = -1;
    if (i >= k) continue;  // k is uniform: every lane takes the same path
    // this lane's best untaken (value, expert): increasing e, strict > keeps the lower index on ties
    bool has = false;
    float bv = 0.f;
    int be = -1;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < E && !((taken >> j) & 1u) && sel[j] == sel[j] && (!has || sel[j] > bv)) {  // NaN never picked
        has = true;
        bv = sel[j];
        be = e;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {  // warp argmax, ties to the lower index
      const float ov = __shfl_xor_sync(kFull, bv, o);
      const int oe = __shfl_xor_sync(kFull, be, o);
      const bool oh = __shfl_xor_sync(kFull, has ? 1 : 0, o) != 0;
      if (oh && (!has || ov > bv || (ov == bv && oe < be))) {
        has = true;
        bv = ov;
        be = oe;
      }
    }
    if (has && lane == be % 32) taken |= 1u << (be / 32);
    cs[i] = score_at(s, has ? be : -1);
    ce[i] = has ? be : -1;
  }
  write_weights(cs, ce, k, cfg, t, w, idx);
}

__device__ std::int64_t read_id(const void* p, std::int64_t off, bool i32) {
  return i32 ? static_cast<const std::int32_t*>(p)[off] : static_cast<const std::int64_t*>(p)[off];
}

__global__ void __launch_bounds__(32 * kRouteWarps) hash_route_kernel(
    view<const float, 2> logits, ops::route_config cfg, const void* ids, std::int64_t ids_stride, bool ids_i32,
    const void* map, std::int64_t V, std::int64_t ms0, std::int64_t ms1, bool map_i32, view<float, 2> w,
    view<std::int32_t, 2> idx, status_ref st) {
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * kRouteWarps + threadIdx.x / 32;
  if (t >= logits.size(0)) return;
  const int lane = threadIdx.x & 31, E = static_cast<int>(logits.size(1)), k = cfg.topk;
  float s[kPerLane], sel[kPerLane];
  token_scores(logits, t, E, cfg.score, nullptr, s, sel, st);
  const std::int64_t tok = read_id(ids, t * ids_stride, ids_i32);
  const bool tok_ok = tok >= 0 && tok < V;
  float cs[kMaxTopk];
  int ce[kMaxTopk];
  bool oob = !tok_ok;
#pragma unroll
  for (int i = 0; i < kMaxTopk; ++i) {
    cs[i] = 0.f;
    ce[i] = -1;
    if (i >= k) continue;
    const std::int64_t e = tok_ok ? read_id(map, tok * ms0 + i * ms1, map_i32) : -1;
    const bool ok = e >= 0 && e < E;
    oob = oob || !ok;
    cs[i] = score_at(s, ok ? static_cast<int>(e) : -1);
    ce[i] = ok ? static_cast<int>(e) : -1;
  }
  if (oob && lane == 0) st.raise(status_index_oob);
  write_weights(cs, ce, k, cfg, t, w, idx);
}

// ---- expert FFN -------------------------------------------------------------------------------------------------

// The routed experts' weights: one format and shape (shape[m]: w1, w3, w2 with their strides; data pointers unused)
// and per expert the code and scale pointers. A __grid_constant__ kernel parameter (about 25 KiB at 512 experts).
struct expert_table {
  ref::weight_ref shape[3];
  bool vec[3];
  const void* codes[kMaxRoutedExperts][3];
  const void* scales[kMaxRoutedExperts][3];
};

template <wfmt F>
__device__ ref::weight_ref expert_weight(const expert_table& tb, int e, int m) {
  ref::weight_ref w = tb.shape[m];
  if constexpr (F == wfmt::f32) w.f32.data = static_cast<const float*>(tb.codes[e][m]);
  if constexpr (F == wfmt::bf16) w.bf.data = static_cast<const bf16*>(tb.codes[e][m]);
  if constexpr (F == wfmt::fp8_b128) w.f8.data = static_cast<const fp8_e4m3*>(tb.codes[e][m]);
  if constexpr (F == wfmt::fp4_b32) w.f4.data = static_cast<const fp4x2*>(tb.codes[e][m]);
  w.scale.data = static_cast<const ue8m0*>(tb.scales[e][m]);
  return w;
}

// The plan's device arrays (carved from exec::scratch).
struct plan_arrays {
  int* counts;      // [E]
  int* offsets;     // [E + 1]
  int* ntiles;      // [1]
  int4* tiles;      // [max_tiles]: expert, first row, rows, first tile of its expert (0/1)
  int* row_token;   // [T·k]
  float* row_w;     // [T·k]
  int* pair_row;    // [T·k]: grouped row of pair (t, i), -1 when skipped
};

// Pair p = t·k + i of idx: is it routed to e? (32-bit division by k: P < 2^31, checked by the launcher.)
__device__ int pair_expert(view<const std::int32_t, 2> idx, int p, int k) { return idx(p / k, p % k); }

__global__ void plan_count_kernel(view<const std::int32_t, 2> idx, int E, plan_arrays pa, status_ref st) {
  const int e = blockIdx.x, lane = threadIdx.x, k = static_cast<int>(idx.size(1));
  const int P = static_cast<int>(idx.size(0)) * k;
  int c = 0;
  bool bad = false;
  for (int base = 0; base < P; base += 32) {
    const int p = base + lane;
    const int pe = p < P ? pair_expert(idx, p, k) : -1;
    c += __popc(__ballot_sync(kFull, p < P && pe == e));
    bad = bad || (e == 0 && p < P && (pe < 0 || pe >= E));
  }
  if (lane == 0) pa.counts[e] = c;
  if (__any_sync(kFull, bad) && lane == 0) st.raise(status_index_oob);
}

// offsets, and the tile list: each expert's rows in tiles of TT (one thread: E <= 512 steps).
__global__ void plan_scan_kernel(int E, int TT, plan_arrays pa) {
  int off = 0, nt = 0;
  for (int e = 0; e < E; ++e) {
    pa.offsets[e] = off;
    const int c = pa.counts[e];
    for (int r0 = 0; r0 < c; r0 += TT) pa.tiles[nt++] = make_int4(e, off + r0, c - r0 < TT ? c - r0 : TT, r0 == 0);
    off += c;
  }
  pa.offsets[E] = off;
  *pa.ntiles = nt;
}

__global__ void pair_init_kernel(int P, plan_arrays pa) {
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < P; p += gridDim.x * blockDim.x) pa.pair_row[p] = -1;
}

// Expert e's pairs in ascending pair order -> rows offsets[e] + rank.
__global__ void plan_fill_kernel(view<const std::int32_t, 2> idx, view<const float, 2> w, plan_arrays pa) {
  const int e = blockIdx.x, lane = threadIdx.x, k = static_cast<int>(idx.size(1));
  const int P = static_cast<int>(idx.size(0)) * k;
  int row = pa.offsets[e];
  for (int base = 0; base < P; base += 32) {
    const int p = base + lane;
    const bool in = p < P && pair_expert(idx, p, k) == e;
    const unsigned mask = __ballot_sync(kFull, in);
    if (in) {
      const int r = row + __popc(mask & ((1u << lane) - 1u));
      pa.row_token[r] = p / k;
      pa.row_w[r] = w(p / k, p % k);
      pa.pair_row[p] = r;
    }
    row += __popc(mask);
  }
}

template <class TX>
__global__ void gather_kernel(view<const TX, 2> x, plan_arrays pa, int E, view<float, 2> xg) {
  const int r = blockIdx.x;
  if (r >= pa.offsets[E]) return;
  const std::int64_t t = pa.row_token[r];
  for (std::int64_t d = static_cast<std::int64_t>(blockIdx.y) * kEltThreads + threadIdx.x; d < xg.size(1);
       d += static_cast<std::int64_t>(gridDim.y) * kEltThreads)
    xg(r, d) = to_f32(x(t, d));
}

template <wfmt F, int TT>
__global__ void __launch_bounds__(kThreads) grouped_kernel(view<const float, 2> X, view<float, 2> Y,
                                                           const __grid_constant__ expert_table tb, int m,
                                                           plan_arrays pa, status_ref st) {
  if (static_cast<int>(blockIdx.y) >= *pa.ntiles) return;
  const int4 tile = pa.tiles[blockIdx.y];
  const ref::weight_ref w = expert_weight<F>(tb, tile.x, m);
  const int lane = threadIdx.x & 31;
  const std::int64_t n0 = (static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * kRows;
  if (n0 >= w.n) return;
  const int nr = static_cast<int>(w.n - n0 < kRows ? w.n - n0 : kRows), nt = tile.z;
  const std::int64_t row0 = tile.y;
  float acc[TT][kRows];
  const int bad = rows_dot<F, TT>(w, n0, nr, nt, tb.vec[m], [=](int t, std::int64_t k) { return X(row0 + t, k); },
                                  acc);
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (lane == r * TT + t && t < nt && r < nr) Y(row0 + t, n0 + r) = acc[t][r];
  if (tile.w) warp_raise_nan(bad, st);
}

// g = swiglu(g, u) times the row's route weight (row_w null: 1) for rows < *rows (rows null: fixed_rows).
__global__ void swiglu_kernel(view<float, 2> g, view<const float, 2> u, const int* rows, int fixed_rows,
                              const float* row_w, float limit) {
  const int R = rows ? *rows : fixed_rows;
  const std::int64_t I = g.size(1);
  for (int r = blockIdx.x; r < R; r += gridDim.x)
    for (std::int64_t i = threadIdx.x; i < I; i += blockDim.x) g(r, i) = ref::swiglu(g(r, i), u(r, i), limit, row_w ? row_w[r] : 1.f);
}

// y[t, d] = Σ over t's slots in ascending (expert, slot) of og[pair_row] + os[t, d] (if shared).
template <class TY>
__global__ void combine_kernel(view<const std::int32_t, 2> idx, plan_arrays pa, view<const float, 2> og,
                               view<const float, 2> os, bool shared, view<TY, 2> y) {
  const std::int64_t t = blockIdx.x;
  const int k = static_cast<int>(idx.size(1));
  for (std::int64_t d = static_cast<std::int64_t>(blockIdx.y) * kEltThreads + threadIdx.x; d < y.size(1);
       d += static_cast<std::int64_t>(gridDim.y) * kEltThreads) {
    float acc = 0.f;
    int pe = -1, pi = -1;  // the last (expert, slot) taken
    for (int r = 0; r < k; ++r) {
      int be = 0x7FFFFFFF, bi = -1;
      for (int i = 0; i < k; ++i) {
        const int e = idx(t, i);
        const bool after = e > pe || (e == pe && i > pi);
        if (after && (e < be || (e == be && i < bi))) {
          be = e;
          bi = i;
        }
      }
      if (bi < 0) break;
      pe = be;
      pi = bi;
      const int row = pa.pair_row[t * k + bi];
      if (row >= 0) acc += og(row, d);
    }
    if (shared) acc += os(t, d);
    y(t, d) = from_f32<TY>(acc);
  }
}

// 256-byte aligned carving of the scratch.
struct carver {
  char* base;
  std::size_t used = 0;
  template <class T>
  T* take(std::int64_t n) {
    T* p = reinterpret_cast<T*>(base ? base + used : nullptr);
    used += (static_cast<std::size_t>(n) * sizeof(T) + 255) / 256 * 256;
    return p;
  }
};

constexpr int kMinTT = 4;  // the smallest grouped-GEMM token tile (sizes the tile list)

struct ffn_buffers {
  plan_arrays pa;
  float *xg, *g, *u, *og, *gs, *us, *os;
};

ffn_buffers carve(char* base, std::int64_t T, std::int64_t k, std::int64_t E, std::int64_t D, std::int64_t I,
                  bool shared, std::int64_t sI, std::size_t* used) {
  carver c{base};
  const std::int64_t P = T * k, tiles = P / kMinTT + E + 1;
  ffn_buffers b{};
  b.pa.counts = c.take<int>(E);
  b.pa.offsets = c.take<int>(E + 1);
  b.pa.ntiles = c.take<int>(1);
  b.pa.tiles = c.take<int4>(tiles);
  b.pa.row_token = c.take<int>(P);
  b.pa.row_w = c.take<float>(P);
  b.pa.pair_row = c.take<int>(P);
  b.xg = c.take<float>(P * D);
  b.g = c.take<float>(P * I);
  b.u = c.take<float>(P * I);
  b.og = c.take<float>(P * D);
  b.gs = c.take<float>(shared ? T * sI : 0);
  b.us = c.take<float>(shared ? T * sI : 0);
  b.os = c.take<float>(shared ? T * D : 0);
  if (used) *used = c.used;
  return b;
}

template <class T>
view<T, 2> rows_view(T* p, std::int64_t rows, std::int64_t cols) {
  view<T, 2> v;
  v.data = p;
  v.shape[0] = rows;
  v.shape[1] = cols;
  v.stride[0] = cols;
  v.stride[1] = 1;
  return v;
}

// Fill the table from the routed experts (checked alike by the launcher).
void fill_table(expert_table& tb, const std::vector<ref::ffn_ref>& routed) {
  std::memset(static_cast<void*>(&tb), 0, sizeof tb);
  const ref::weight_ref* first[3] = {&routed[0].w1, &routed[0].w3, &routed[0].w2};
  for (int m = 0; m < 3; ++m) {
    tb.shape[m] = *first[m];
    tb.vec[m] = true;
  }
  for (std::size_t e = 0; e < routed.size(); ++e) {
    const ref::weight_ref* ws[3] = {&routed[e].w1, &routed[e].w3, &routed[e].w2};
    for (int m = 0; m < 3; ++m) {
      const ref::weight_ref& w = *ws[m];
      switch (w.fmt) {
        case wfmt::f32: tb.codes[e][m] = w.f32.data; break;
        case wfmt::bf16: tb.codes[e][m] = w.bf.data; break;
        case wfmt::fp8_b128: tb.codes[e][m] = w.f8.data; break;
        case wfmt::fp4_b32: tb.codes[e][m] = w.f4.data; break;
      }
      tb.scales[e][m] = w.scale.data;
      tb.vec[m] = tb.vec[m] && rows_aligned(w);
    }
  }
}

// The layout fields of two weights (everything but the data pointers) are equal.
bool same_layout(const ref::weight_ref& a, const ref::weight_ref& b) {
  auto same2 = [](const auto& x, const auto& y) {
    return x.shape[0] == y.shape[0] && x.shape[1] == y.shape[1] && x.stride[0] == y.stride[0] &&
           x.stride[1] == y.stride[1];
  };
  return a.fmt == b.fmt && a.n == b.n && a.k == b.k && same2(a.f32, b.f32) && same2(a.bf, b.bf) &&
         same2(a.f8, b.f8) && same2(a.f4, b.f4) && same2(a.scale, b.scale);
}

template <wfmt F>
void launch_grouped(view<const float, 2> X, view<float, 2> Y, const expert_table& tb, int m, const plan_arrays& pa,
                    std::int64_t max_tiles, launch& l) {
  constexpr int TT = 32 / fmt_traits<F>::E;
  const std::int64_t N = tb.shape[m].n, groups = (N + kRows * kWarps - 1) / (kRows * kWarps);
  grouped_kernel<F, TT><<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(max_tiles)), kThreads, 0,
                          l.stream()>>>(X, Y, tb, m, pa, l.status());
}

}  // namespace

void moe_route(view<const float, 2> logits, const ops::route_config& cfg, const float* bias, view<float, 2> w,
               view<std::int32_t, 2> idx, const exec& ex) {
  DSV4_CHECK(logits.size(1) <= kMaxRoutedExperts && cfg.topk <= kMaxTopk, "moe_route", "the CUDA backend takes at most ",
             kMaxRoutedExperts, " experts and top-", kMaxTopk, ", got ", logits.size(1), " and top-", cfg.topk);
  launch l("moe_route", ex);
  const std::int64_t T = logits.size(0), blocks = (T + kRouteWarps - 1) / kRouteWarps;
  DSV4_CHECK(blocks <= 2147483647LL, "moe_route", "too many tokens: ", T);
  if (T > 0)
    route_kernel<<<static_cast<unsigned>(blocks), 32 * kRouteWarps, 0, l.stream()>>>(logits, cfg, bias, w, idx,
                                                                                     l.status());
  l.finish();
}

void moe_hash_route(view<const float, 2> logits, const ops::route_config& cfg, const void* token_ids,
                    std::int64_t ids_stride, bool ids_i32, const void* tid2eid, std::int64_t V,
                    std::int64_t map_stride0, std::int64_t map_stride1, bool map_i32, view<float, 2> w,
                    view<std::int32_t, 2> idx, const exec& ex) {
  DSV4_CHECK(logits.size(1) <= kMaxRoutedExperts && cfg.topk <= kMaxTopk, "moe_hash_route",
             "the CUDA backend takes at most ", kMaxRoutedExperts, " experts and top-", kMaxTopk);
  launch l("moe_hash_route", ex);
  const std::int64_t T = logits.size(0), blocks = (T + kRouteWarps - 1) / kRouteWarps;
  DSV4_CHECK(blocks <= 2147483647LL, "moe_hash_route", "too many tokens: ", T);
  if (T > 0)
    hash_route_kernel<<<static_cast<unsigned>(blocks), 32 * kRouteWarps, 0, l.stream()>>>(
        logits, cfg, token_ids, ids_stride, ids_i32, tid2eid, V, map_stride0, map_stride1, map_i32, w, idx,
        l.status());
  l.finish();
}

std::size_t moe_ffn_workspace_bytes(std::int64_t T, std::int64_t k, std::int64_t E, std::int64_t D, std::int64_t I,
                                    bool shared, std::int64_t shared_I) {
  std::size_t used = 0;
  carve(nullptr, T, k, E, D, I, shared, shared_I, &used);
  return used;
}

template <class TX, class TY>
std::int64_t moe_ffn(view<const TX, 2> x, view<const float, 2> w, view<const std::int32_t, 2> idx,
                     const std::vector<ref::ffn_ref>& routed, const ref::ffn_ref* shared, float limit, view<TY, 2> y,
                     const exec& ex) {
  constexpr const char* op = "moe_ffn";
  const std::int64_t T = x.size(0), D = x.size(1), k = idx.size(1), E = static_cast<std::int64_t>(routed.size());
  DSV4_CHECK(E >= 1 && E <= kMaxRoutedExperts && k <= kMaxTopk, op, "the CUDA backend takes 1 to ",
             kMaxRoutedExperts, " routed experts and top-k <= ", kMaxTopk, ", got ", E, " and ", k);
  DSV4_CHECK(T * k < 2147483647LL, op, "T·k = ", T * k, " pairs is beyond one launch");
  for (std::int64_t e = 1; e < E; ++e)
    DSV4_CHECK(same_layout(routed[e].w1, routed[0].w1) && same_layout(routed[e].w3, routed[0].w3) &&
                   same_layout(routed[e].w2, routed[0].w2),
               op, "the CUDA backend needs every routed expert in one format, shape and stride layout; expert ", e,
               " differs from expert 0");
  const std::int64_t I = routed[0].w1.n, sI = shared ? shared->w1.n : 0;
  std::size_t need = 0;
  carve(nullptr, T, k, E, D, I, shared != nullptr, sI, &need);
  DSV4_CHECK(ex.scratch.bytes >= need && ex.scratch.data != nullptr, op, "exec.scratch holds ", ex.scratch.bytes,
             " bytes; the CUDA MoE needs ", need, " (ops::moe_ffn_workspace_bytes)");
  DSV4_CHECK(reinterpret_cast<std::uintptr_t>(ex.scratch.data) % 256 == 0, op, "exec.scratch must be 256-byte aligned");
  const ffn_buffers b = carve(static_cast<char*>(ex.scratch.data), T, k, E, D, I, shared != nullptr, sI, nullptr);
  static thread_local expert_table tb;  // 25 KiB: off the stack
  fill_table(tb, routed);
  launch l(op, ex);
  if (T > 0) {
    const std::int64_t P = T * k, max_tiles = P / kMinTT + E + 1;
    DSV4_CHECK(max_tiles <= 65535 && P <= 2147483647LL, op, "T·k = ", P, " is beyond one launch of the grouped GEMM");
    if (P > 0) {
      const unsigned eb = static_cast<unsigned>(E);
      plan_count_kernel<<<eb, 32, 0, l.stream()>>>(idx, static_cast<int>(E), b.pa, l.status());
      plan_scan_kernel<<<1, 1, 0, l.stream()>>>(static_cast<int>(E), 32 / (routed[0].w1.fmt == wfmt::f32 ? 4 : 8),
                                                b.pa);
      pair_init_kernel<<<static_cast<unsigned>((P + 255) / 256), 256, 0, l.stream()>>>(static_cast<int>(P), b.pa);
      plan_fill_kernel<<<eb, 32, 0, l.stream()>>>(idx, w, b.pa);
      const unsigned dgroups = static_cast<unsigned>((D + kEltThreads - 1) / kEltThreads);
      gather_kernel<<<dim3(static_cast<unsigned>(P), dgroups), kEltThreads, 0, l.stream()>>>(
          x, b.pa, static_cast<int>(E), rows_view(b.xg, P, D));
      const auto xg = rows_view<const float>(b.xg, P, D);
      const auto g = rows_view(b.g, P, I), u = rows_view(b.u, P, I), og = rows_view(b.og, P, D);
      auto grouped = [&](view<const float, 2> X, view<float, 2> Y, int m) {
        switch (routed[0].w1.fmt) {
          case wfmt::f32: return launch_grouped<wfmt::f32>(X, Y, tb, m, b.pa, max_tiles, l);
          case wfmt::bf16: return launch_grouped<wfmt::bf16>(X, Y, tb, m, b.pa, max_tiles, l);
          case wfmt::fp8_b128: return launch_grouped<wfmt::fp8_b128>(X, Y, tb, m, b.pa, max_tiles, l);
          case wfmt::fp4_b32: return launch_grouped<wfmt::fp4_b32>(X, Y, tb, m, b.pa, max_tiles, l);
        }
      };
      grouped(xg, g, 0);
      grouped(xg, u, 1);
      swiglu_kernel<<<static_cast<unsigned>(P < 65535 ? P : 65535), kEltThreads, 0, l.stream()>>>(
          g, rows_view<const float>(b.u, P, I), b.pa.offsets + E, 0, b.pa.row_w, limit);
      grouped(rows_view<const float>(b.g, P, I), og, 2);
    }
    if (shared) {
      const auto gs = rows_view(b.gs, T, sI), us = rows_view(b.us, T, sI), os = rows_view(b.os, T, D);
      linear_into(x, shared->w1, gs, l);
      linear_into(x, shared->w3, us, l);
      swiglu_kernel<<<static_cast<unsigned>(T < 65535 ? T : 65535), kEltThreads, 0, l.stream()>>>(
          gs, rows_view<const float>(b.us, T, sI), nullptr, static_cast<int>(T), nullptr, limit);
      linear_into(rows_view<const float>(b.gs, T, sI), shared->w2, os, l);
    }
    const unsigned dgroups = static_cast<unsigned>((D + kEltThreads - 1) / kEltThreads);
    combine_kernel<<<dim3(static_cast<unsigned>(T), dgroups), kEltThreads, 0, l.stream()>>>(
        idx, b.pa, rows_view<const float>(b.og, P, D), rows_view<const float>(b.os, T, D), shared != nullptr, y);
  }
  return l.finish();
}

#define DSV4_CUDA_MOE(TX, TY)                                                                                        \
  template std::int64_t moe_ffn<TX, TY>(view<const TX, 2>, view<const float, 2>, view<const std::int32_t, 2>,        \
                                        const std::vector<ref::ffn_ref>&, const ref::ffn_ref*, float, view<TY, 2>,   \
                                        const exec&);
DSV4_CUDA_MOE(float, float)
DSV4_CUDA_MOE(float, bf16)
DSV4_CUDA_MOE(bf16, float)
DSV4_CUDA_MOE(bf16, bf16)
#undef DSV4_CUDA_MOE

}  // namespace dsv4::cuda
