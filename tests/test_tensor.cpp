// The tensor interface: views, sub-views, the fp4 packing rules, DLPack round trips, buffers, copies, dtype dispatch.
#include <algorithm>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>

#include "dsv4/dlpack.hpp"
#include "dsv4/dtype.hpp"
#include "dsv4/tensor.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

TEST_SUITE("tensor") {

TEST_CASE("contiguous views, strides in elements, narrow / select / transpose") {
  std::vector<float> data(2 * 3 * 4);
  std::iota(data.begin(), data.end(), 0.f);
  const tensor_view t(data.data(), dtype::f32, {2, 3, 4});
  CHECK(t.rank() == 3);
  CHECK(t.stride(0) == 12);
  CHECK(t.stride(1) == 4);
  CHECK(t.stride(2) == 1);
  CHECK(t.is_contiguous());
  CHECK(t.nbytes() == 96);
  const auto v = t.as<const float, 3>();
  CHECK(v(1, 2, 3) == 23.f);
  const tensor_view n = t.narrow(2, 1, 2);
  CHECK_FALSE(n.is_contiguous());
  CHECK(n.as<const float, 3>()(1, 1, 0) == 17.f);
  const tensor_view s = t.select(1, 2);
  CHECK(s.rank() == 2);
  CHECK(s.as<const float, 2>()(1, 3) == 23.f);
  const tensor_view tr = t.transpose(0, 2);
  CHECK(tr.shape(0) == 4);
  CHECK(tr.as<const float, 3>()(3, 2, 1) == 23.f);
  CHECK(t.narrow(-1, 0, 1).shape(2) == 1);
  check_error([&] { t.narrow(1, 2, 2); }, {"narrow", "outside dim 1"});
  check_error([&] { t.as<const float, 2>(); }, {"rank 3 viewed as rank 2"});
  check_error([&] { t.as<const bf16, 3>(); }, {"dtype f32 viewed as bf16"});
  const std::int64_t big[7] = {1, 1, 1, 1, 1, 1, 1};
  check_error([&] { tensor_view(data.data(), dtype::f32, big); }, {"kMaxRank"});
}

TEST_CASE("fp4: packed pairs, rows on byte boundaries") {
  std::vector<std::uint8_t> bytes(3 * 8);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i);
  const tensor_view t(bytes.data(), dtype::fp4_e2m1, {3, 16});
  CHECK(t.nbytes() == 24);
  const auto v = t.as<const fp4x2, 2>();
  CHECK(v.shape[1] == 8);
  CHECK(v.stride[0] == 8);
  CHECK(v(2, 1).bits == 17);
  CHECK(t.narrow(1, 4, 8).as<const fp4x2, 2>()(0, 0).bits == 2);
  check_error([&] { t.narrow(1, 3, 4); }, {"fp4 sub-view must start on a byte"});
  const std::int64_t shape[2] = {3, 16}, odd[2] = {15, 1}, strided[2] = {16, 2};
  check_error([&] { tensor_view(bytes.data(), dtype::fp4_e2m1, shape, odd); }, {"odd"});
  check_error([&] { tensor_view(bytes.data(), dtype::fp4_e2m1, shape, strided); }, {"innermost stride must be 1"});
}

TEST_CASE("DLPack: O(1) round trip of pointer, dtype, device, shape and strides") {
  std::vector<bf16> data(6 * 4);
  const tensor_view t = tensor_view(data.data(), dtype::bf16, {6, 4}).transpose(0, 1);
  const DLTensor d = to_dlpack(t);
  CHECK(d.ndim == 2);
  CHECK(d.dtype.code == kDLBfloat);
  CHECK(d.dtype.bits == 16);
  CHECK(d.device.device_type == kDLCPU);
  CHECK(d.shape[0] == 4);
  CHECK(d.strides[0] == 1);
  CHECK(d.strides[1] == 4);
  const tensor_view back = from_dlpack(d);
  CHECK(back.data() == t.data());
  CHECK(back.dt() == dtype::bf16);
  CHECK(back.shape(1) == 6);
  CHECK(back.stride(1) == 4);

  // null strides = compact row-major; byte_offset is honoured; CUDA devices map both ways
  std::int64_t shape[3] = {2, 3, 5};
  std::vector<std::int32_t> ints(40);
  DLTensor c{};
  c.data = ints.data();
  c.device = {kDLCUDA, 1};
  c.ndim = 3;
  c.dtype = {kDLInt, 32, 1};
  c.shape = shape;
  c.byte_offset = 8;
  const tensor_view ct = from_dlpack(c);
  CHECK(ct.dt() == dtype::i32);
  CHECK(ct.dev() == device::cuda(1));
  CHECK(ct.stride(0) == 15);
  CHECK(ct.data() == ints.data() + 2);
  CHECK(to_dlpack(ct).device.device_type == kDLCUDA);

#if !DSV4_DLPACK_HAS_FP8_FP4
  check_error([] { to_dlpack_dtype(dtype::fp8_e4m3); }, {"to_dlpack", "fp8_e4m3", "DLPack"});
#endif
  c.dtype = {kDLFloat, 32, 4};
  check_error([&] { from_dlpack(c); }, {"lanes"});
  c.dtype = {kDLFloat, 64, 1};
  check_error([&] { from_dlpack(c); }, {"float64 is not a dsv4 dtype"});
  c.ndim = 9;
  check_error([&] { from_dlpack(c); }, {"ndim 9"});
}

TEST_CASE("visit_dtype: one place where a runtime dtype becomes a type") {
  int seen = 0;
  visit_dtype<float, bf16>(dtype::bf16, "op", [&]<class T>(std::type_identity<T>) { seen = sizeof(T); });
  CHECK(seen == 2);
  check_error([] { visit_dtype<float, bf16>(dtype::i64, "my_op", []<class T>(std::type_identity<T>) {}); },
              {"my_op", "unsupported dtype i64", "(supported: f32, bf16)"});
}

TEST_CASE("buffer: aligned, zeroed, movable; copy honours strides") {
  buffer b(dtype::f32, {3, 5});
  CHECK(reinterpret_cast<std::uintptr_t>(b.data()) % 64 == 0);
  for (float v : b.host_span<float>()) CHECK(v == 0.f);
  buffer moved = std::move(b);
  CHECK(b.data() == nullptr);
  CHECK(moved.view().shape(1) == 5);
  auto s = moved.host_span<float>();
  std::iota(s.begin(), s.end(), 0.f);
  buffer t(dtype::f32, {5, 3});
  ops::copy(moved, t.view().transpose(0, 1));
  CHECK(t.host_span<float>()[1 * 3 + 2] == 11.f);  // t[1][2] = moved[2][1]
  check_error([&] { ops::copy(moved, buffer(dtype::bf16, {3, 5})); }, {"copy", "dtype mismatch"});
  check_error([&] { moved.host_span<bf16>(); }, {"read as bf16"});
  if (ops::cuda_device_count() == 0) {
    // no GPU: asking for CUDA memory is a clear error, never a crash
    check_error([] { buffer(dtype::f32, {4}, device::cuda(0)); }, {});
  }
}

// The "THPeligible:" field of the /proc/self/smaps mapping that holds p: 1 when the kernel may back it with 2 MiB
// pages (needs the madvise where THP is in madvise mode), -1 when this kernel does not say.
int thp_eligible(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(':') > line.find(' ')) {
      inside = lo <= a && a < hi;
    } else if (inside && line.rfind("THPeligible:", 0) == 0) {
      return std::stoi(line.substr(12));
    }
  }
  return -1;
}

TEST_CASE("buffer: host buffers of 2 MiB and more start on a 2 MiB boundary, advised as huge pages") {
  CHECK(buffer::huge_page_bytes() == std::size_t{2} << 20);
  const std::int64_t n = (std::int64_t{5} << 20) / 4 + 3;  // 5 MiB + 12 B of f32: not a multiple of 2 MiB
  buffer big(dtype::f32, {n});
  CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % buffer::huge_page_bytes() == 0);
  const auto s = big.host_span<float>();
  CHECK(static_cast<std::int64_t>(s.size()) == n);
  CHECK(std::all_of(s.begin(), s.end(), [](float v) { return v == 0.f; }));  // zeroed, like every buffer
  s.back() = 1.f;                                                              // the tail is ours (ASan checks)
  std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(mode, modes);
  // Where THP can be used at all ("always" or "madvise"), the kernel must see the buffer as eligible. In madvise
  // mode (this machine) that holds only because of the advice: without it, THPeligible reads 0.
  if (!modes.empty() && modes.find("[never]") == std::string::npos) {
    const int eligible = thp_eligible(big.data());
    if (eligible >= 0) CHECK(eligible == 1);
  }
  buffer small(dtype::f32, {1000});  // below 2 MiB: 64-byte alignment only (no padding to a 2 MiB boundary)
  CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % 64 == 0);
}

}  // TEST_SUITE
