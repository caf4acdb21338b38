// dsv4/buffer.hpp — a small owning allocation (host or CUDA) that hands out tensor_views.
//
// Host memory is 64-byte aligned (one AVX-512 vector / cache line); host buffers of huge_page_bytes() (2 MiB) and
// more start on a 2 MiB boundary and are advised as transparent huge pages (Linux madvise; src/memory.cpp says
// why). CUDA memory comes from cudaMalloc through the dsv4::cuda library; without it, asking for a CUDA buffer is an
// error. Kernels never allocate: ops that need scratch take it from the caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <vector>

#include "dsv4/tensor.hpp"

namespace dsv4 {

class buffer {
 public:
  buffer() = default;
  buffer(dtype dt, std::span<const std::int64_t> shape, device dev = device::cpu());
  buffer(dtype dt, std::initializer_list<std::int64_t> shape, device dev = device::cpu())
      : buffer(dt, std::span<const std::int64_t>(shape.begin(), shape.size()), dev) {}
  ~buffer();

  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  buffer(buffer&& o) noexcept { swap(o); }
  buffer& operator=(buffer&& o) noexcept {
    buffer tmp(std::move(o));
    swap(tmp);
    return *this;
  }

  const tensor_view& view() const { return view_; }
  operator const tensor_view&() const { return view_; }
  void* data() const { return view_.data(); }
  std::int64_t nbytes() const { return bytes_; }
  // Host buffers this large and larger are 2 MiB-aligned and advised as huge pages.
  static std::size_t huge_page_bytes();

  // Typed access to host data (checks dtype and device).
  template <class T>
  std::span<T> host_span() const {
    DSV4_CHECK(view_.dev().is_cpu(), "buffer::host_span", "buffer lives on ", view_.dev());
    DSV4_CHECK(view_.dt() == dtype_of_v<T>, "buffer::host_span", "dtype ", dtype_name(view_.dt()), " read as ",
               dtype_name(dtype_of_v<T>));
    return {static_cast<T*>(view_.data()), static_cast<std::size_t>(bytes_ / sizeof(T))};
  }

 private:
  void swap(buffer& o) noexcept {
    std::swap(view_, o.view_);
    std::swap(bytes_, o.bytes_);
  }
  tensor_view view_;
  std::int64_t bytes_ = 0;
};

}  // namespace dsv4
