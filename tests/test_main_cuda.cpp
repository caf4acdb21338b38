// CUDA test runner: exits 77 (ctest "skipped") when no CUDA device is visible, so CPU-only machines and CI skip it.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "dsv4/ops/memory.hpp"

int main(int argc, char** argv) {
  if (dsv4::ops::cuda_device_count() == 0) {
    std::printf("no CUDA device visible: CUDA tests skipped\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
