#include "common.hpp"

#include <algorithm>

#include "dsv4/cpu/quant.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/runtime.hpp"
#endif

namespace dsv4 {

void check_status(const exec& ex) {
  DSV4_CHECK(ex.checks == check_policy::deferred, "check_status", "exec.checks is not check_policy::deferred: ",
             "sync ops check before returning and none checks nothing");
#if DSV4_WITH_CUDA
  cuda::check_status_word(ex);
#else
  DSV4_FAIL("check_status", "this build of dsv4 has no CUDA backend");
#endif
}

}  // namespace dsv4

namespace dsv4::ops::detail {

bool have_cuda() noexcept {
#if DSV4_WITH_CUDA
  return true;
#else
  return false;
#endif
}

backend choose_backend(const char* op, const exec& ex, device dev, const char* cpu_declines) {
  DSV4_CHECK(ex.threads >= 0 && ex.threads <= kMaxThreads, op, "exec.threads = ", ex.threads, " is outside [0, ",
             kMaxThreads, "] (0 = all cores)");
  if (dev.is_cuda()) {
    DSV4_CHECK(ex.prefer == backend::automatic || ex.prefer == backend::cuda, op, "backend ",
               backend_name(ex.prefer), " requested but the tensors live on ", dev);
    DSV4_CHECK(have_cuda(), op, "tensors live on ", dev, " but this build of dsv4 has no CUDA backend");
    return backend::cuda;
  }
  if (!cpu::simd_isa()) cpu_declines = "no SIMD kernels for this CPU or build";
  switch (ex.prefer) {
    case backend::cuda:
      DSV4_FAIL(op, "backend cuda requested but the tensors live on ", dev);
    case backend::ref:
      return backend::ref;
    case backend::cpu:
      DSV4_CHECK(!cpu_declines, op, "backend cpu cannot run this input: ", cpu_declines);
      return backend::cpu;
    case backend::automatic:
      break;
  }
  return cpu_declines ? backend::ref : backend::cpu;
}

void check_host_only(const char* op, const char* family, std::initializer_list<const tensor_view*> ts) {
  for (const tensor_view* t : ts)
    DSV4_CHECK(t->dev().is_cpu(), op, t->describe(), ": the ", family, " CUDA backend is not implemented yet");
}

exec on_device(const char* op, const exec& ex, device dev) {
  DSV4_CHECK(ex.device == -1 || (dev.is_cuda() && ex.device == dev.id), op, "exec.device = ", ex.device,
             " but the tensors live on ", dev);
  exec e = ex;
  if (dev.is_cuda()) e.device = dev.id;
  return e;
}

void check_same_device(const char* op, std::initializer_list<const tensor_view*> ts) {
  const device d = (*ts.begin())->dev();
  for (const tensor_view* t : ts)
    DSV4_CHECK(t->dev() == d, op, "tensors on different devices: ", (*ts.begin())->describe(), " and ",
               t->describe());
}

namespace {
// [first, last) bytes a view can touch.
std::pair<const char*, const char*> byte_extent(const tensor_view& t) {
  if (t.empty()) return {nullptr, nullptr};
  std::int64_t lo = 0, hi = 0;
  for (int d = 0; d < t.rank(); ++d) {
    const std::int64_t span = (t.shape(d) - 1) * t.stride(d);
    (span < 0 ? lo : hi) += span;
  }
  const auto* base = static_cast<const char*>(t.data());
  const std::int64_t bits = dtype_bits(t.dt());
  return {base + lo * bits / 8, base + (hi * bits + bits + 7) / 8};
}
}  // namespace

void check_aliasing(const char* op, const tensor_view& a, const tensor_view& b, bool allow_identical) {
  const auto [a0, a1] = byte_extent(a);
  const auto [b0, b1] = byte_extent(b);
  if (a0 == nullptr || b0 == nullptr || a1 <= b0 || b1 <= a0) return;
  const bool identical = a.data() == b.data() && a.dt() == b.dt() && a.rank() == b.rank() &&
                         std::equal(a.shape().begin(), a.shape().end(), b.shape().begin()) &&
                         std::equal(a.strides().begin(), a.strides().end(), b.strides().begin());
  DSV4_CHECK(allow_identical && identical, op, "input ", a.describe(), " and output ", b.describe(),
             allow_identical ? " overlap without being the same view (in place needs identical views)"
                             : " overlap in memory");
}

void check_tensor(const char* op, const char* name, const tensor_view& t, dtype dt,
                  std::initializer_list<std::int64_t> shape) {
  bool ok = t.dt() == dt && t.rank() == static_cast<int>(shape.size());
  int d = 0;
  for (std::int64_t s : shape) ok = ok && t.shape(d++) == s;
  if (!ok) {
    std::string want = std::string(dtype_name(dt)) + "[";
    d = 0;
    for (std::int64_t s : shape) want += (d++ ? ", " : "") + std::to_string(s);
    DSV4_FAIL(op, name, " is ", t.describe(), ", expected ", want, "]");
  }
}

void check_same_shape(const char* op, const tensor_view& a, const tensor_view& b, bool except_last) {
  bool same = a.rank() == b.rank();
  for (int d = 0; same && d < a.rank(); ++d)
    same = (except_last && d == a.rank() - 1) || a.shape(d) == b.shape(d);
  DSV4_CHECK(same, op, "shape mismatch: ", a.describe(), " vs ", b.describe(),
             except_last ? " (leading dims must match)" : "");
}

}  // namespace dsv4::ops::detail
