// cuda/linear.cu — y = x · W^T on CUDA cores, fp32 policy (dsv4/cuda/linear.hpp has the dot order).
//
// One kernel template: a CTA of kWarps warps, each warp R = 4 weight rows and TT tokens (TT = 1: the decode GEMV,
// which streams the weights once at memory speed; TT = 32 / E for prefill (8 for f32, 4 for the 8-element formats:
// more spills registers on sm_100a), where each decoded weight feeds TT fmas and x comes from L1/L2). The dot itself
// is linear_core.cuh's rows_dot. grid.x = row groups of 4·kWarps, grid.y = token tiles. A lane's E weights of a row are one vector load
// (when the rows are aligned for it: a kernel argument, checked by the launcher; else E scalar loads of the same
// values), decoded exactly: FP8 through the hardware e4m3x2 -> f16x2 conversion (exact: every E4M3 value is an
// f16), FP4 from its bit fields, BF16 by a shift, then times the block scale (the product ref::decode_row forms).
// NaN weights (FP8 / FP4 codes or scales, ref's count) are counted by the token-tile-0 CTAs only, so each once.
#include <type_traits>

#include "check.cuh"
#include "dsv4/cuda/linear.hpp"
#include "linear_core.cuh"

namespace dsv4::cuda {
namespace {

using namespace detail;  // linear_core.cuh
using ref::wfmt;

template <wfmt F, int TT, class TX, class TY>
__global__ void __launch_bounds__(kThreads) linear_kernel(view<const TX, 2> x, ref::weight_ref w, view<TY, 2> y,
                                                          bool vec, detail::status_ref st) {
  const int lane = threadIdx.x & 31;
  const std::int64_t n0 = (static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * kRows;
  const std::int64_t t0 = static_cast<std::int64_t>(blockIdx.y) * TT;
  const std::int64_t N = w.n, T = x.size(0);
  if (n0 >= N) return;  // warp-uniform
  const int nr = static_cast<int>(N - n0 < kRows ? N - n0 : kRows);
  const int nt = static_cast<int>(T - t0 < TT ? T - t0 : TT);
  float acc[TT][kRows];
  const int bad = rows_dot<F, TT>(w, n0, nr, nt, vec, [=](int t, std::int64_t k) { return to_f32(x(t0 + t, k)); },
                                  acc);
  // lane r·TT + t (< 32) writes output (t, r): every lane holds every sum
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      if (lane == r * TT + t && t < nt && r < nr) y(t0 + t, n0 + r) = from_f32<TY>(acc[t][r]);
  if (blockIdx.y == 0) warp_raise_nan(bad, st);
}

template <wfmt F, class TX, class TY>
void launch_linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, launch& l) {
  const bool vec = detail::rows_aligned(w);
  const std::int64_t T = x.size(0), N = w.n;
  const std::int64_t row_groups = (N + kRows * kWarps - 1) / (kRows * kWarps);
  if (T == 1) {
    linear_kernel<F, 1><<<dim3(static_cast<unsigned>(row_groups), 1), kThreads, 0, l.stream()>>>(x, w, y, vec,
                                                                                                 l.status());
  } else {
    constexpr int TT = 32 / fmt_traits<F>::E;  // 8 tokens for f32 (E = 4), 4 for the 8-element formats
    const std::int64_t tiles = (T + TT - 1) / TT;
    DSV4_CHECK(tiles <= 65535, "linear", "the CUDA backend takes at most ", 65535 * TT, " tokens per call, got ", T);
    linear_kernel<F, TT><<<dim3(static_cast<unsigned>(row_groups), static_cast<unsigned>(tiles)), kThreads, 0,
                           l.stream()>>>(x, w, y, vec, l.status());
  }
}

template <class TX, class TY>
void dispatch_linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, detail::launch& l) {
  const std::int64_t row_groups = (w.n + kRows * kWarps - 1) / (kRows * kWarps);
  DSV4_CHECK(row_groups <= 2147483647LL, "linear", "N = ", w.n, " is beyond one launch");
  if (x.size(0) == 0 || w.n == 0) return;
  switch (w.fmt) {
    case wfmt::f32: return launch_linear<wfmt::f32>(x, w, y, l);
    case wfmt::bf16: return launch_linear<wfmt::bf16>(x, w, y, l);
    case wfmt::fp8_b128: return launch_linear<wfmt::fp8_b128>(x, w, y, l);
    case wfmt::fp4_b32: return launch_linear<wfmt::fp4_b32>(x, w, y, l);
  }
}

}  // namespace

namespace detail {
template <class TX>
void linear_into(view<const TX, 2> x, const ref::weight_ref& w, view<float, 2> y, launch& l) {
  dispatch_linear(x, w, y, l);
}
template void linear_into<float>(view<const float, 2>, const ref::weight_ref&, view<float, 2>, launch&);
template void linear_into<bf16>(view<const bf16, 2>, const ref::weight_ref&, view<float, 2>, launch&);
}  // namespace detail

template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex) {
  detail::launch l("linear", ex);
  dispatch_linear(x, w, y, l);
  return l.finish();
}

template std::int64_t linear<float, float>(view<const float, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear<float, bf16>(view<const float, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);
template std::int64_t linear<bf16, float>(view<const bf16, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear<bf16, bf16>(view<const bf16, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);

}  // namespace dsv4::cuda
