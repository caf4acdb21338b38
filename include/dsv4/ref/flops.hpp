// dsv4/ref/flops.hpp — a FLOP counter inside the scalar reference kernels (compiled in, off by default).
//
// The ref kernels add 2 FLOPs per multiply-add of their matrix products (ref::linear, the expert dots of
// ref::moe_ffn, the mHC mixes of ref::hc_pre / hc_head, q·k and p·v of ref::sparse_attention, the indexer's q·k and
// its weighted ReLU head sum in ref::indexer_scores) while a scoped_flop_count is alive. Elementwise work is
// not counted. The tests compare these counts with the calculator's formulas (dsv4/model/costs.hpp) on real
// weights, so the calculator's per-term rules are checked against execution. One relaxed atomic load per kernel
// call when disabled; the counter is process-wide, so count one thing at a time.
#pragma once

#include <atomic>
#include <cstdint>

namespace dsv4::ref {

struct flop_counter {
  static inline std::atomic<bool> enabled{false};
  static inline std::atomic<std::uint64_t> flops{0};
};

inline void count_flops(std::uint64_t n) noexcept {
  if (flop_counter::enabled.load(std::memory_order_relaxed))
    flop_counter::flops.fetch_add(n, std::memory_order_relaxed);
}

// Counts from construction to destruction (or to the last read).
class scoped_flop_count {
 public:
  scoped_flop_count() {
    flop_counter::flops.store(0);
    flop_counter::enabled.store(true);
  }
  ~scoped_flop_count() { flop_counter::enabled.store(false); }
  scoped_flop_count(const scoped_flop_count&) = delete;
  scoped_flop_count& operator=(const scoped_flop_count&) = delete;
  std::uint64_t flops() const { return flop_counter::flops.load(); }
};

}  // namespace dsv4::ref
