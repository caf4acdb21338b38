// src/cpu/linear.cpp — CPU backend of y = x · W^T: oneTBB over blocks of 16 weight rows; a task decodes up to 4 of
// its blocks into an fp32 panel once and runs every token tile against it (linear_simd_impl.hpp). Up to gemv_max_t
// tokens (decode, batched decode, an expert's few tokens) skip the panel where a fused GEMV exists (AVX-512: FP4,
// FP8, BF16, F32): same values, same fma chain, same bits. More tokens on AVX-512 take the prefill GEMM (panel_gemm:
// x packed once per call, 64-row panels decoded and transposed by the kernel), again the same bits. Otherwise x is
// first put in the weight format's lane order when the ISA decodes in one (linear_simd.hpp).
#include "dsv4/cpu/linear.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "linear_simd.hpp"
#include "f32_rows.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

// Up to gemv_max_t tokens (kGemvMaxTokens, kGemvMaxTokensFp4: linear.hpp) a call runs the register-decode GEMV (token
// groups of kMaxGemvTokens, each decoding the block's weights again) instead of a decoded panel. bench_linear, 2
// threads, 2026-12-02: at 4 and 8 tokens the GEMV took 0.36-0.72 of the dot panel's time. Against the prefill GEMM
// (panel_gemm, interleaved, GFLOP/s GEMV vs GEMM): 12 tokens FP4 [2048 x 4096] 243-255 vs 121-128, [4096 x 2048]
// 230-261 vs 134-148, FP8 [32768 x 1024] 190-192 vs 120-127, [4096 x 8192] 149-152 vs 128-130; 16 tokens about even for
// FP8 and ahead for FP4; 24-32 tokens FP8 runs 130-160 on the GEMV against 160-220 on the GEMM. A MoE prefill's experts
// see ~12 tokens each.
// FP4 stays on the GEMV longer: its decode (a table and two vpermps per 32 weights) is cheap next to the GEMM's
// decode + transpose of a panel. 2 threads, weights in L3, best of 30, GEMV vs GEMM GFLOP/s (2026-12-02):
// [2048 x 4096] 17 tokens 275-311 vs 198-200, 24: 317-332 vs 239-246, 32: 332-334 vs 256-277, 48: 320-368 vs
// 295-327, 64: 354 vs 351-353, 96-128: 308-348 vs 344-370; [4096 x 2048] 20: 306 vs 215, 32: 330 vs 293, 48: 311 vs
// 300, 64: 304 vs 347. A V4-Flash MoE prefill of 512 tokens gives ~10% of its routed experts 17-30 tokens.
std::int64_t gemv_max_t(const ref::weight_ref& w) {
  return w.fmt == ref::wfmt::fp4_b32 ? kGemvMaxTokensFp4 : kGemvMaxTokens;
}

// The panel path decodes up to this many bytes of 16-row blocks at once (at most kMaxPanelRows rows: 64 at K <= 2048,
// 32 at 4096, 16 at 8192) and runs every token against them. x of a prefill (T·K·4 bytes, 2-16 MiB) comes from L3
// once per panel, so 16-row panels read it 4x as often at K <= 2048. bench_linear T = 512, 2 threads, interleaved
// rounds on 2026-12-02: FP8 [32768 x 1024] 195-208 -> 213-227 GFLOP/s, FP4 [4096 x 2048] 216-255 -> 225-261,
// FP4 [2048 x 4096] 155-242 -> 213-242 (on 2026-12-01, a quieter day, 64-row panels had measured no gain).
constexpr std::int64_t kPanelBytes = std::int64_t{512} << 10;
// 16-row blocks per panel: panel_gemm (x packed) chunks K itself, so always kMaxPanelRows rows; the dot panel as
// many as fit kPanelBytes.
std::int64_t panel_blocks(std::int64_t K, bool packed) {
  const std::int64_t most = detail::kMaxPanelRows / kLinearRowBlock;
  if (packed) return most;
  const std::int64_t fit = kPanelBytes / (kLinearRowBlock * detail::panel_ld(K) * std::int64_t{sizeof(float)});
  return std::clamp<std::int64_t>(fit, 1, most);
}

const detail::linear_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::linear_kernels, detail::select_linear_kernels>();
  return k;
}

}  // namespace

namespace {

// How many weights of row n decode to NaN (ref::decode_row's count), in chunks on the stack.
std::int64_t count_nan_weights(const ref::weight_ref& w, std::int64_t n) {
  float tmp[256];
  std::int64_t bad = 0;
  for (std::int64_t k = 0; k < w.k; k += 256) bad += ref::decode_row(w, n, k, std::min(w.k, k + 256), tmp);
  return bad;
}

}  // namespace

const float* lane_order(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx,
                        std::vector<float>& buf, std::int64_t* ld, const exec& ex) {
  const auto& k = kernels();
  *ld = ldx;
  if (T <= 0 || !k.permutes(w)) return x;
  const std::int64_t K = w.k;
  buf.resize(static_cast<std::size_t>(T * K));
  detail::parallel_rows(T, 16, ex, [&](std::int64_t t0, std::int64_t t1) {
    k.order_x(w, x + t0 * ldx, t1 - t0, ldx, buf.data() + t0 * K);
  });
  *ld = K;
  return buf.data();
}

const float* pack_panel_x(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx,
                          std::unique_ptr<float[]>& buf, const exec& ex) {
  const auto& k = kernels();
  if (T <= gemv_max_t(w) || !k.panel_gemm) return nullptr;
  // every float is written by pack_x (zero-filling 8 MiB first was 1% of a prefill GEMM in perf)
  buf = std::make_unique_for_overwrite<float[]>(static_cast<std::size_t>(k.packed_x_floats(T, w.k)));
  detail::parallel_rows(detail::pack_tiles(T), 4, ex,
                        [&](std::int64_t i0, std::int64_t i1) { k.pack_x(w, x, ldx, T, i0, i1, buf.get()); });
  return buf.get();
}

std::int64_t linear_blocks(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                           std::int64_t ldy, std::int64_t b0, std::int64_t b1, const float* xp) {
  const auto& k = kernels();
  const std::int64_t N = w.n, K = w.k;
  const std::int64_t ldw = detail::panel_ld(K);
  // Decoded rows, per thread and kept between calls (every value is written before it is read): a fresh zeroed
  // 256 KiB per call was 3-7% of a MoE prefill, whose experts see ~12 tokens each.
  thread_local std::vector<float> panel;
  float out[detail::kMaxGemvTokens * detail::kMaxTileN];
  std::int64_t bad = 0;
  const bool packed = xp != nullptr;  // panel_gemm (pack_panel_x packs only past gemv_max_t tokens)
  const std::int64_t group = panel_blocks(K, packed);
  for (std::int64_t b = b0; b < b1;) {
    const std::int64_t n0 = b * kLinearRowBlock;
    std::int64_t n1 = std::min(N, n0 + kLinearRowBlock);
    // Decode and small batches: weights straight from their stored bytes into the dots of up to kMaxGemvTokens
    // tokens at a time (bitwise the panel's), the block's rows decoded once per token group.
    bool fused = !packed && T <= gemv_max_t(w);
    for (std::int64_t t0 = 0; t0 < T && fused; t0 += detail::kMaxGemvTokens) {
      const int mt = static_cast<int>(std::min<std::int64_t>(detail::kMaxGemvTokens, T - t0));
      const int rows = detail::gemv_rows(mt);
      for (std::int64_t j0 = n0; j0 < n1 && fused; j0 += rows) {
        const int nt = static_cast<int>(std::min<std::int64_t>(rows, n1 - j0));
        fused = k.gemv(x + t0 * ldx, ldx, mt, w, j0, nt, out, detail::kMaxTileN);
        if (fused)
          for (int i = 0; i < mt; ++i)
            for (int j = 0; j < nt; ++j) y[(t0 + i) * ldy + j0 + j] = out[i * detail::kMaxTileN + j];
      }
    }
    if (fused) {
      ++b;
    } else {  // this block and up to group - 1 more
      const std::int64_t bn = std::min(b1, b + group);
      n1 = std::min(N, bn * kLinearRowBlock);
      b = bn;
      if (packed) {
        k.panel_gemm(xp, x, ldx, T, w, n0, static_cast<int>(n1 - n0), y + n0, ldy);
      } else {
        if (panel.size() < static_cast<std::size_t>(detail::kMaxPanelRows * ldw))
          panel.resize(static_cast<std::size_t>(detail::kMaxPanelRows * ldw));
        for (std::int64_t n = n0; n < n1; ++n) k.decode_row(w, n, panel.data() + (n - n0) * ldw);
        k.panel_dots(x, ldx, T, panel.data(), ldw, static_cast<int>(n1 - n0), K, y + n0, ldy);
      }
    }
    // A NaN weight makes every output of its row NaN (fma propagates it), so the rows with a NaN output are the only
    // ones that can hold NaN weights: count those exactly, off the fast path. The outputs are scanned along y's rows
    // (walking a column, 512 tokens ldy floats apart, was 6% of a prefill GEMM in perf: a TLB miss per token).
    bool nan_row[detail::kMaxPanelRows] = {};
    const std::int64_t nr = n1 - n0;
    for (std::int64_t t = 0; t < T; ++t) {
      const float* yr = y + t * ldy + n0;
      for (std::int64_t j = 0; j < nr; ++j) nan_row[j] |= yr[j] != yr[j];
    }
    for (std::int64_t j = 0; j < nr; ++j)
      if (nan_row[j]) bad += count_nan_weights(w, n0 + j);
  }
  return bad;
}

std::int64_t linear_f32(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                        std::int64_t ldy, const exec& ex) {
  if (T <= 0) return 0;
  std::vector<float> buf;
  std::unique_ptr<float[]> packed;
  std::int64_t ld = ldx;
  // once for every row block: x packed for the prefill GEMM (which reads x itself only for its element-order tail),
  // else x in W's lane order
  const float* xp = pack_panel_x(w, x, T, ldx, packed, ex);
  const float* xo = xp ? x : lane_order(w, x, T, ldx, buf, &ld, ex);
  std::atomic<std::int64_t> bad{0};
  // Tasks of whole panels where that still leaves 8 tasks or more, aligned to panel boundaries (oneTBB halves a
  // range: 448 blocks, V4-Pro's N = 7168, would otherwise end in ranges of 7 blocks, a panel of 4 and one of 3).
  const std::int64_t blocks = linear_row_blocks(w);
  const std::int64_t unit =
      T > gemv_max_t(w) ? std::min(panel_blocks(w.k, xp != nullptr), std::max<std::int64_t>(1, blocks / 8)) : 1;
  detail::parallel_rows((blocks + unit - 1) / unit, 1, ex, [&](std::int64_t u0, std::int64_t u1) {
    const std::int64_t my_bad = linear_blocks(xo, T, ld, w, y, ldy, u0 * unit, std::min(blocks, u1 * unit), xp);
    if (my_bad) bad += my_bad;
  });
  return bad.load();
}

template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex) {
  return detail::on_f32_rows(x, w.k, y, w.n, [&](const float* xp, std::int64_t T, std::int64_t ldx, float* yp,
                                                 std::int64_t ldy) { return linear_f32(xp, T, ldx, w, yp, ldy, ex); });
}

template std::int64_t linear<float, float>(view<const float, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear<float, bf16>(view<const float, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);
template std::int64_t linear<bf16, float>(view<const bf16, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear<bf16, bf16>(view<const bf16, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);

}  // namespace dsv4::cpu
