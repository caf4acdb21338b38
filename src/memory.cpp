// src/memory.cpp — buffer allocation and ops::copy.
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "dsv4/buffer.hpp"
#include "dsv4/ops/memory.hpp"
#include "ops/common.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/runtime.hpp"
#endif

namespace dsv4 {

namespace {
// Host buffers of kHugePage bytes and more start on a 2 MiB boundary and are advised as transparent huge pages
// before they are first touched, so the kernel can back them with 2 MiB pages (Linux; where THP is off, e.g.
// /sys/kernel/mm/transparent_hugepage/enabled = never, the advice does nothing). Why: a decode step streams every
// weight byte once, and with 4 KiB pages a page walk interrupts every 4 KiB of each of the 8 rows a GEMV streams.
// bench_linear, one thread, interleaved (2026-12-02), 4 KiB -> 2 MiB pages: FP8 [32768 x 1024] 26.7-28.0 ->
// 30.4-31.1 GB/s, FP4 [2048 x 4096] 21.9-23.6 -> 23.9-24.7; bench_layer CSA block decode at 4K 9.5-11.4 -> 8.5-10.1
// ms. The padding that aligns the start is never touched, so it costs address space only.
constexpr std::size_t kHugePage = std::size_t{2} << 20;

void* host_alloc(std::size_t n) {
  const std::size_t bytes = (n + 63) / 64 * 64;  // 64 B: one AVX-512 vector, one cache line
  if (bytes < kHugePage) return std::aligned_alloc(64, bytes);
  // posix_memalign: aligned_alloc would want the size a multiple of 2 MiB (C11; ASan enforces it)
  void* p = nullptr;
  if (::posix_memalign(&p, kHugePage, bytes) != 0) return nullptr;
#if defined(MADV_HUGEPAGE)
  (void)::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: a kernel without THP refuses it, harmlessly
#endif
  return p;
}
}  // namespace

std::size_t buffer::huge_page_bytes() { return kHugePage; }

buffer::buffer(dtype dt, std::span<const std::int64_t> shape, device dev) {
  view_ = tensor_view(nullptr, dt, shape, dev);
  bytes_ = view_.nbytes();
  const std::size_t n = static_cast<std::size_t>(bytes_ > 0 ? bytes_ : 1);
  void* p = nullptr;
  if (dev.is_cpu()) {
    DSV4_CHECK(n <= (std::size_t{1} << 62), "buffer", "cannot allocate ", view_.describe(), " (", n, " bytes)");
    p = host_alloc(n);
    DSV4_CHECK(p != nullptr, "buffer", "out of memory allocating ", view_.describe(), " (", n, " bytes)");
    std::memset(p, 0, n);
  } else {
#if DSV4_WITH_CUDA
    p = cuda::device_malloc(n, dev.id);
#else
    DSV4_FAIL("buffer", "cannot allocate ", view_.describe(), ": this build of dsv4 has no CUDA backend");
#endif
  }
  view_ = tensor_view(p, dt, shape, dev);
}

buffer::~buffer() {
  if (!view_.data()) return;
  if (view_.dev().is_cpu()) {
    std::free(view_.data());
  } else {
#if DSV4_WITH_CUDA
    cuda::device_free(view_.data());
#endif
  }
}

namespace ops {

bool cuda_built() { return detail::have_cuda(); }

int cuda_device_count() {
#if DSV4_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

namespace {
// Element-wise strided host copy of any rank (fp4 rows are copied as packed bytes).
void host_copy(const tensor_view& src, const tensor_view& dst) {
  detail::for_each_matrix<2>({src, dst}, [](const std::array<tensor_view, 2>& m) {
    const tensor_view &s = m[0], &d = m[1];
    const std::int64_t rows = s.shape(0), cols = s.shape(1);
    if (is_packed(s.dt())) {
      const std::int64_t bytes = dtype_bytes(s.dt(), cols);
      for (std::int64_t r = 0; r < rows; ++r)
        std::memcpy(static_cast<char*>(d.data()) + r * d.stride(0) / 2,
                    static_cast<const char*>(s.data()) + r * s.stride(0) / 2, static_cast<std::size_t>(bytes));
      return;
    }
    const std::int64_t es = dtype_bits(s.dt()) / 8;
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c)
        std::memcpy(static_cast<char*>(d.data()) + (r * d.stride(0) + c * d.stride(1)) * es,
                    static_cast<const char*>(s.data()) + (r * s.stride(0) + c * s.stride(1)) * es,
                    static_cast<std::size_t>(es));
  });
}
}  // namespace

void copy(const tensor_view& src, const tensor_view& dst, const exec& ex) {
  constexpr const char* op = "copy";
  DSV4_CHECK(src.dt() == dst.dt(), op, "dtype mismatch: ", src.describe(), " -> ", dst.describe());
  detail::check_same_shape(op, src, dst);
  detail::check_aliasing(op, src, dst, false);
  if (src.empty()) return;
  if (src.dev().is_cpu() && dst.dev().is_cpu()) {
    if (src.rank() == 0)
      std::memcpy(dst.data(), src.data(), static_cast<std::size_t>(src.nbytes()));
    else
      host_copy(src, dst);
    return;
  }
  DSV4_CHECK(src.is_contiguous() && dst.is_contiguous(), op, "copies across devices need contiguous views: ",
             src.describe(), " -> ", dst.describe());
#if DSV4_WITH_CUDA
  cuda::copy_bytes(dst.data(), src.data(), static_cast<std::size_t>(src.nbytes()), ex);
#else
  (void)ex;
  DSV4_FAIL(op, src.describe(), " -> ", dst.describe(), ": this build of dsv4 has no CUDA backend");
#endif
}

}  // namespace ops
}  // namespace dsv4
