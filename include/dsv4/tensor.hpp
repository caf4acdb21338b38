// dsv4/tensor.hpp — the one tensor interface.
//
//   tensor_view   runtime-typed, non-owning {data, dtype, device, rank, shape, strides}: what crosses the public
//                 API. Shapes and strides are in ELEMENTS, outermost dimension first. It converts to and from
//                 DLPack's DLTensor in O(1) (dsv4/dlpack.hpp).
//   view<T, R>    typed, non-owning pointer + shape + strides that kernels index (host and device code).
//
// Sub-byte dtypes (fp4_e2m1): `data` is the byte holding element 0 in its low nibble, the innermost stride is 1
// (elements are packed) and every other stride is even, so each row starts on a byte boundary. Kernels see such a
// tensor as view<fp4x2, R> whose last extent is halved.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <sstream>
#include <string>

#include "dsv4/dtype.hpp"
#include "dsv4/error.hpp"

namespace dsv4 {

enum class device_kind : std::uint8_t { cpu, cuda };

struct device {
  device_kind kind = device_kind::cpu;
  int id = 0;

  static constexpr device cpu() { return {device_kind::cpu, 0}; }
  static constexpr device cuda(int id = 0) { return {device_kind::cuda, id}; }
  constexpr bool is_cpu() const { return kind == device_kind::cpu; }
  constexpr bool is_cuda() const { return kind == device_kind::cuda; }
  friend constexpr bool operator==(device a, device b) { return a.kind == b.kind && a.id == b.id; }
};

inline std::ostream& operator<<(std::ostream& os, device d) {
  return d.is_cpu() ? (os << "cpu") : (os << "cuda:" << d.id);
}

inline constexpr int kMaxRank = 6;

// A typed strided view for kernels. Plain arrays (not std::array) so that device code can index it.
template <class T, int R>
struct view {
  static_assert(R >= 1 && R <= kMaxRank);
  T* data = nullptr;
  std::int64_t shape[R] = {};
  std::int64_t stride[R] = {};

  DSV4_HD std::int64_t size(int d) const { return shape[d]; }
  template <class... I>
  DSV4_HD T& operator()(I... idx) const {
    static_assert(sizeof...(I) == R, "view: one index per dimension");
    const std::int64_t ix[R] = {static_cast<std::int64_t>(idx)...};
    std::int64_t off = 0;
    for (int d = 0; d < R; ++d) off += ix[d] * stride[d];
    return data[off];
  }
  // Row r of a rank-2 view, as a pointer (meaningful when the inner stride is 1).
  DSV4_HD T* row(std::int64_t r) const { return data + r * stride[0]; }
  DSV4_HD bool is_contiguous_rows() const { return stride[R - 1] == 1; }
};

class tensor_view {
 public:
  tensor_view() = default;

  // Contiguous row-major view.
  tensor_view(void* data, dtype dt, std::span<const std::int64_t> shape, device dev = device::cpu())
      : data_(data), dtype_(dt), device_(dev), rank_(static_cast<int>(shape.size())) {
    check_rank();
    std::int64_t s = 1;
    bool overflow = false;
    for (int d = rank_ - 1; d >= 0; --d) {
      shape_[d] = shape[d];
      strides_[d] = s;
      overflow = overflow || __builtin_mul_overflow(s, shape[d] < 0 ? 0 : shape[d], &s);
    }
    check_layout();
    DSV4_CHECK(!overflow, "tensor_view", "a contiguous ", describe(), " has more than 2^63 elements");
  }
  tensor_view(void* data, dtype dt, std::initializer_list<std::int64_t> shape, device dev = device::cpu())
      : tensor_view(data, dt, std::span<const std::int64_t>(shape.begin(), shape.size()), dev) {}

  // Strided view.
  tensor_view(void* data, dtype dt, std::span<const std::int64_t> shape, std::span<const std::int64_t> strides,
              device dev = device::cpu())
      : data_(data), dtype_(dt), device_(dev), rank_(static_cast<int>(shape.size())) {
    check_rank();
    DSV4_CHECK(strides.size() == shape.size(), "tensor_view", "rank ", rank_, " shape with ", strides.size(),
               " strides");
    for (int d = 0; d < rank_; ++d) {
      shape_[d] = shape[d];
      strides_[d] = strides[d];
    }
    check_layout();
  }

  void* data() const { return data_; }
  dtype dt() const { return dtype_; }
  device dev() const { return device_; }
  int rank() const { return rank_; }
  std::int64_t shape(int d) const { return shape_[index(d)]; }
  std::int64_t stride(int d) const { return strides_[index(d)]; }
  std::span<const std::int64_t> shape() const { return {shape_.data(), static_cast<std::size_t>(rank_)}; }
  std::span<const std::int64_t> strides() const { return {strides_.data(), static_cast<std::size_t>(rank_)}; }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int d = 0; d < rank_; ++d) n *= shape_[d];
    return n;
  }
  bool empty() const { return numel() == 0; }

  bool is_contiguous() const {
    std::int64_t s = 1;
    for (int d = rank_ - 1; d >= 0; --d) {
      if (shape_[d] != 1 && strides_[d] != s) return false;
      s *= shape_[d];
    }
    return true;
  }
  // Bytes spanned by a contiguous view.
  std::int64_t nbytes() const { return dtype_bytes(dtype_, numel()); }

  // Sub-views (no copies). narrow keeps dim d's elements [start, start+len); select drops dim d at index i;
  // transpose swaps two dims (gives a non-contiguous view).
  tensor_view narrow(int d, std::int64_t start, std::int64_t len) const {
    d = index(d);
    DSV4_CHECK(start >= 0 && len >= 0 && start + len <= shape_[d], "tensor_view::narrow", "range [", start, ", ",
               start + len, ") outside dim ", d, " of extent ", shape_[d]);
    tensor_view t = *this;
    t.data_ = offset_ptr(start * strides_[d]);
    t.shape_[d] = len;
    t.check_layout();
    return t;
  }
  tensor_view select(int d, std::int64_t i) const {
    d = index(d);
    DSV4_CHECK(i >= 0 && i < shape_[d], "tensor_view::select", "index ", i, " outside dim ", d, " of extent ",
               shape_[d]);
    tensor_view t = *this;
    t.data_ = offset_ptr(i * strides_[d]);
    for (int k = d; k + 1 < rank_; ++k) {
      t.shape_[k] = shape_[k + 1];
      t.strides_[k] = strides_[k + 1];
    }
    --t.rank_;
    t.check_layout();
    return t;
  }
  tensor_view transpose(int a, int b) const {
    a = index(a);
    b = index(b);
    tensor_view t = *this;
    std::swap(t.shape_[a], t.shape_[b]);
    std::swap(t.strides_[a], t.strides_[b]);
    t.check_layout();
    return t;
  }

  // Typed access for kernels; the dtype and rank must match. fp4 tensors are seen as view<fp4x2, R> with the last
  // extent halved (it must be even).
  template <class T, int R>
  view<T, R> as() const {
    constexpr dtype want = dtype_of_v<T>;
    DSV4_CHECK(dtype_ == want, "tensor_view::as", "dtype ", dtype_name(dtype_), " viewed as ", dtype_name(want));
    DSV4_CHECK(rank_ == R, "tensor_view::as", "rank ", rank_, " viewed as rank ", R);
    view<T, R> v;
    v.data = static_cast<T*>(data_);
    for (int d = 0; d < R; ++d) {
      v.shape[d] = shape_[d];
      v.stride[d] = strides_[d];
    }
    if constexpr (std::is_same_v<std::remove_const_t<T>, fp4x2>) {
      DSV4_CHECK(shape_[R - 1] % 2 == 0, "tensor_view::as", "fp4 view with odd last extent ", shape_[R - 1]);
      v.shape[R - 1] /= 2;
      for (int d = 0; d + 1 < R; ++d) v.stride[d] /= 2;
    }
    return v;
  }

  std::string describe() const {
    std::ostringstream os;
    os << dtype_name(dtype_) << '[';
    for (int d = 0; d < rank_; ++d) os << (d ? ", " : "") << shape_[d];
    os << "] on " << device_;
    if (!is_contiguous()) {
      os << " strides (";
      for (int d = 0; d < rank_; ++d) os << (d ? ", " : "") << strides_[d];
      os << ')';
    }
    return os.str();
  }

 private:
  int index(int d) const {
    const int k = d < 0 ? d + rank_ : d;
    DSV4_CHECK(k >= 0 && k < rank_, "tensor_view", "dim ", d, " out of range for rank ", rank_);
    return k;
  }
  void check_rank() const {
    DSV4_CHECK(rank_ >= 0 && rank_ <= kMaxRank, "tensor_view", "rank ", rank_, " > kMaxRank ", kMaxRank);
  }
  void check_layout() const {
    for (int d = 0; d < rank_; ++d)
      DSV4_CHECK(shape_[d] >= 0, "tensor_view", "negative extent ", shape_[d], " in dim ", d);
    if (is_packed(dtype_) && rank_ > 0) {
      DSV4_CHECK(strides_[rank_ - 1] == 1 || shape_[rank_ - 1] <= 1, "tensor_view",
                 "fp4 tensors are packed: innermost stride must be 1, got ", strides_[rank_ - 1]);
      for (int d = 0; d + 1 < rank_; ++d)
        DSV4_CHECK(strides_[d] % 2 == 0 || shape_[d] <= 1, "tensor_view",
                   "fp4 rows must start on a byte: stride ", strides_[d], " of dim ", d, " is odd");
    }
  }
  void* offset_ptr(std::int64_t elements) const {
    if (is_packed(dtype_)) {
      DSV4_CHECK(elements % 2 == 0, "tensor_view", "fp4 sub-view must start on a byte (element offset ", elements,
                 " is odd)");
      return static_cast<char*>(data_) + elements / 2;
    }
    return static_cast<char*>(data_) + elements * (dtype_bits(dtype_) / 8);
  }

  void* data_ = nullptr;
  dtype dtype_ = dtype::f32;
  device device_ = device::cpu();
  int rank_ = 0;
  std::array<std::int64_t, kMaxRank> shape_{};
  std::array<std::int64_t, kMaxRank> strides_{};
};

}  // namespace dsv4
