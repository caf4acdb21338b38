#!/usr/bin/env bash
# The whole test suite: Release build (CPU + CUDA compiled when nvcc exists; CUDA tests skip without a GPU), then
# the CUDA library again under the cuda-dev preset when nvcc exists (ptxas local-memory and spill warnings are
# errors: every kernel must keep its arrays in registers), then the CPU parts again under AddressSanitizer +
# UndefinedBehaviorSanitizer, then the libFuzzer harnesses of the two file parsers for FUZZ_SECONDS each (default 60;
# clang + libFuzzer from install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
for preset in release asan; do
  echo "=== $preset" >&2
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset"
  ctest --preset "$preset"
  if [ "$preset" = release ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
    echo "=== cuda-dev (ptxas: no local memory, no spills)" >&2
    cmake --preset cuda-dev >/dev/null
    cmake --build --preset cuda-dev --target dsv4_cuda
  fi
done
bash scripts/fuzz.sh
