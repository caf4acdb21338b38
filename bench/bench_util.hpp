// bench/bench_util.hpp — what the benchmark binaries share: this machine's roofline figures, exec construction and
// a wall-clock timer for the baselines measured in the same run.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include <benchmark/benchmark.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include "dsv4/buffer.hpp"
#include "dsv4/exec.hpp"

namespace dsv4::bench {

constexpr double kDramGBs = 40.0;      // DRAM bandwidth of both Zen 5 cores (figure given for this machine)
constexpr double kPeakGFlops = 400.0;  // fp32 FMA peak of both cores (figure given for this machine)

inline exec with(backend be, int threads) {
  exec ex;
  ex.prefer = be;
  ex.threads = threads;
  return ex;
}

// Mean wall seconds of `reps` calls of f.
template <class F>
double seconds_per_call(F&& f, int reps = 1) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

// The read-bandwidth baseline: `threads` threads each sum their part of a 256 MiB buffer (8x the L3) with 64
// independent lanes, so the adds never limit the loads; returns GB/s. The buffer is a dsv4::buffer like the weights
// it is compared with, so both sides read the same kind of pages (2 MiB where the kernel gives them:
// dsv4/buffer.hpp; on 4 KiB pages this pass measured ~20% less, 2026-12-02). The neighbours on this machine move the
// bandwidth by 30% and more from minute to minute, so a benchmark that reports a fraction of it runs one pass after
// each of its own rounds. It runs on an arena of `threads` oneTBB workers, as the library's ops do, so neither side
// pays for waking the other's threads.
inline double read_pass(int threads) {
  constexpr std::size_t n = (std::size_t{256} << 20) / sizeof(float);
  static const buffer mem = [] {
    buffer b(dtype::f32, {static_cast<std::int64_t>(n)});
    const auto s = b.host_span<float>();
    std::fill(s.begin(), s.end(), 1.f);
    return b;
  }();
  const std::span<const float> buf = mem.host_span<float>();
  static std::map<int, std::unique_ptr<tbb::task_arena>> arenas;
  auto& arena = arenas[threads];
  if (!arena) arena = std::make_unique<tbb::task_arena>(threads);
  std::vector<float> sums(static_cast<std::size_t>(threads));
  auto sum_part = [&](int t) {
    const std::size_t b = n / threads * t, e = t + 1 == threads ? n : n / threads * (t + 1);
    float acc[64] = {};
    for (std::size_t i = b; i + 64 <= e; i += 64)
      for (int l = 0; l < 64; ++l) acc[l] += buf[i + l];
    float s = 0;
    for (float a : acc) s += a;
    sums[static_cast<std::size_t>(t)] = s;
  };
  const double sec = seconds_per_call([&] {
    arena->execute([&] { tbb::parallel_for(0, threads, [&](int t) { sum_part(t); }, tbb::static_partitioner{}); });
  });
  volatile float sink = sums[0];
  (void)sink;
  return static_cast<double>(n * sizeof(float)) / sec / 1e9;
}

// read_pass with the benchmark's clock paused: what a benchmark reporting a fraction of the read bandwidth runs
// after each of its timed rounds, so both see the same minutes of the neighbours.
inline double paused_read_pass(benchmark::State& state, int threads) {
  state.PauseTiming();
  const double gbs = read_pass(threads);
  state.ResumeTiming();
  return gbs;
}

}  // namespace dsv4::bench
