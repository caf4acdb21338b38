// src/cpu/parallel.hpp — oneTBB row parallelism with a caller-chosen thread count.
//
// Work is split into independent row ranges; no result depends on how ranges are assigned, so every CPU op built
// on this is bitwise identical for any thread count.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "dsv4/exec.hpp"

namespace dsv4::cpu::detail {

// One arena per requested thread count, created once: constructing a task_arena per call costs ~100 us, more than a
// whole decode-sized op.
inline tbb::task_arena& arena_for(int threads) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<tbb::task_arena>> arenas;
  std::lock_guard<std::mutex> lock(mu);
  auto& a = arenas[threads];
  if (!a) a = std::make_unique<tbb::task_arena>(threads);
  return *a;
}

// fn(begin, end) over [0, rows) in chunks of at least `grain` rows.
template <class Fn>
void parallel_rows(std::int64_t rows, std::int64_t grain, const exec& ex, Fn&& fn) {
  if (rows <= 0) return;
  auto run = [&] {
    tbb::parallel_for(tbb::blocked_range<std::int64_t>(0, rows, grain < 1 ? 1 : grain),
                      [&](const tbb::blocked_range<std::int64_t>& r) { fn(r.begin(), r.end()); });
  };
  if (ex.threads == 1 || rows <= grain) {
    fn(std::int64_t{0}, rows);
  } else if (ex.threads > 1) {
    arena_for(ex.threads).execute(run);
  } else {
    run();
  }
}

}  // namespace dsv4::cpu::detail
