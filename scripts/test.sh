#!/usr/bin/env bash
# The whole test suite: Release build (CPU + CUDA compiled when nvcc exists; CUDA tests skip without a GPU), then
# the CPU parts again under AddressSanitizer + UndefinedBehaviorSanitizer, then the libFuzzer harnesses of the two
# file parsers for FUZZ_SECONDS each (default 60; clang + libFuzzer from install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
for preset in release asan; do
  echo "=== $preset" >&2
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset"
  ctest --preset "$preset"
done
bash scripts/fuzz.sh
