// bench/bench_util.hpp — what the benchmark binaries share: this machine's roofline figures, exec construction and
// a wall-clock timer for the baselines measured in the same run.
#pragma once

#include <chrono>

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

}  // namespace dsv4::bench
