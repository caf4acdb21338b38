// page_pool: growable page arrays with free lists, per-sequence block tables, sliding release, rollback.
#include "dsv4/model/pool.hpp"

#include <algorithm>
#include <limits>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/ops/memory.hpp"

namespace dsv4::model {

namespace {

constexpr const char* kOp = "page_pool";

// Fixed-size pages in one growable allocation (64-byte aligned; host memory or device memory of the pool's device),
// with a free list. Host pages are zeroed when mapped. Device pages are not (mapping happens on the host, between
// and while steps are recorded into CUDA graphs, where no copy may wait): nothing reads a byte of a page before a
// store wrote it (entries and state rows are read only below the position that wrote them), so the outputs do not
// depend on it.
class page_array {
 public:
  explicit page_array(std::int64_t page_bytes = 0, device dev = device::cpu()) : page_bytes_(page_bytes), dev_(dev) {}
  std::int64_t page_bytes() const { return page_bytes_; }
  std::int64_t pages() const { return pages_; }
  std::int64_t in_use() const { return pages_ - static_cast<std::int64_t>(free_.size()); }
  std::uint8_t* data() const { return static_cast<std::uint8_t*>(mem_.data()); }
  std::int64_t bytes() const { return mem_.nbytes(); }

  std::int32_t alloc() {
    if (free_.empty()) grow();
    const std::int32_t p = free_.back();
    free_.pop_back();
    if (dev_.is_cpu()) std::fill(data() + p * page_bytes_, data() + (p + 1) * page_bytes_, std::uint8_t{0});
    return p;
  }
  void release(std::int32_t p) { free_.push_back(p); }

 private:
  // Doubles the array (at least 4 pages), keeping the pages' contents: block tables hold page indices, not addresses.
  void grow() {
    const std::int64_t more = std::max<std::int64_t>(pages_, 4);
    DSV4_CHECK((pages_ + more) * page_bytes_ < (std::int64_t{1} << 40) &&
                   pages_ + more < std::numeric_limits<std::int32_t>::max() / 1024,
               kOp, "out of pages: ", pages_, " pages of ", page_bytes_, " bytes already allocated");
    buffer grown(dtype::u8, {(pages_ + more) * page_bytes_}, dev_);
    if (pages_ > 0)
      ops::copy(tensor_view(mem_.data(), dtype::u8, {pages_ * page_bytes_}, dev_),
                tensor_view(grown.data(), dtype::u8, {pages_ * page_bytes_}, dev_));
    mem_ = std::move(grown);
    for (std::int64_t p = pages_ + more - 1; p >= pages_; --p) free_.push_back(static_cast<std::int32_t>(p));
    pages_ += more;
  }
  std::int64_t page_bytes_ = 0, pages_ = 0;
  device dev_;
  buffer mem_;
  std::vector<std::int32_t> free_;
};

// One block table: logical page -> physical page (-1: not mapped / handed back).
struct block_table {
  std::vector<std::int32_t> pages;
  // Maps logical entries [0, end) that are not mapped yet, from `from` on (pages below were handed back).
  void map_to(std::int64_t end, std::int64_t B, std::int64_t from, page_array& a) {
    const std::int64_t need = (end + B - 1) / B;
    if (static_cast<std::int64_t>(pages.size()) < need) pages.resize(static_cast<std::size_t>(need), -1);
    for (std::int64_t lp = std::max<std::int64_t>(0, from / B); lp < need; ++lp)
      if (pages[static_cast<std::size_t>(lp)] < 0) pages[static_cast<std::size_t>(lp)] = a.alloc();
  }
  // Hands back the pages whose entries all lie below `below`.
  void release_below(std::int64_t below, std::int64_t B, page_array& a) {
    for (std::int64_t lp = 0; lp < static_cast<std::int64_t>(pages.size()) && (lp + 1) * B <= below; ++lp)
      if (pages[static_cast<std::size_t>(lp)] >= 0) {
        a.release(pages[static_cast<std::size_t>(lp)]);
        pages[static_cast<std::size_t>(lp)] = -1;
      }
  }
  void release_all(page_array& a) {
    for (auto& p : pages)
      if (p >= 0) a.release(p);
    pages.clear();
  }
};

}  // namespace

struct page_pool::impl {
  struct layer {
    int ratio = 0;
    std::int64_t state_width_main = 0, state_width_index = 0;  // floats per state row
    page_array kv, keys, state_main, state_index;
  };
  struct seq_layer {
    std::int64_t pos = 0;
    block_table window, comp, keys, state_main, state_index;
  };
  struct seq {
    bool live = false;
    std::int64_t capacity = 0, furthest = 0;
    std::vector<seq_layer> layers;
  };
  std::vector<layer> layers;
  std::vector<seq> seqs;
  std::vector<std::int64_t> free_ids;
  cache::kv_geometry kv_geo;
  cache::key_geometry key_geo;

  seq& at(std::int64_t id) {
    DSV4_CHECK(id >= 0 && id < static_cast<std::int64_t>(seqs.size()) && seqs[static_cast<std::size_t>(id)].live, kOp,
               "sequence ", id, " does not exist in this pool");
    return seqs[static_cast<std::size_t>(id)];
  }
  const seq& at(std::int64_t id) const { return const_cast<impl*>(this)->at(id); }
};

page_pool::page_pool(const model_config& cfg, const pool_options& opt) : cfg_(cfg), opt_(opt), d_(new impl) {
  cfg.validate();
  DSV4_CHECK(cfg.family == model_family::v4, kOp, "config ", cfg.name, " is not a V4 model");
  DSV4_CHECK(opt.page_tokens >= 1 && opt.page_tokens <= (1 << 16), kOp, "page_tokens ", opt.page_tokens,
             " must be in [1, 65536]");
  DSV4_CHECK(opt.max_rollback >= 0 && opt.max_rollback <= (1 << 20), kOp, "max_rollback ", opt.max_rollback,
             " must be in [0, 2^20]");
  DSV4_CHECK(opt.dev.is_cpu() || ops::cuda_device_count() > opt.dev.id, kOp, "pages on ", opt.dev,
             " but this process sees ", ops::cuda_device_count(), " CUDA devices");
  const std::int64_t B = opt.page_tokens;
  d_->kv_geo = {opt.kv, cfg.head_dim, cfg.rope_head_dim, B};
  d_->key_geo = {opt.keys, cfg.index_head_dim, B};
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    impl::layer L;
    L.ratio = cfg.compress_ratio(l);
    L.kv = page_array(d_->kv_geo.page_bytes(), opt.dev);
    if (L.ratio == 4) L.keys = page_array(d_->key_geo.page_bytes(), opt.dev);
    if (L.ratio != 0) {
      const std::int64_t coff = L.ratio == 4 ? 2 : 1;
      L.state_width_main = 2 * coff * cfg.head_dim;
      L.state_main = page_array(B * L.state_width_main * 4, opt.dev);
    }
    if (L.ratio == 4) {
      L.state_width_index = 2 * 2 * cfg.index_head_dim;
      L.state_index = page_array(B * L.state_width_index * 4, opt.dev);
    }
    d_->layers.push_back(std::move(L));
  }
}

page_pool::~page_pool() = default;

std::int64_t page_pool::add_sequence(std::int64_t capacity) {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const std::int64_t cap = capacity > 0 ? capacity : cfg_.max_position_embeddings;
  DSV4_CHECK(cap >= 1 && cap <= limits::positions, kOp, "capacity ", cap, " is outside [1, ", limits::positions, "]");
  std::int64_t id;
  if (!d_->free_ids.empty()) {
    id = d_->free_ids.back();
    d_->free_ids.pop_back();
  } else {
    id = static_cast<std::int64_t>(d_->seqs.size());
    d_->seqs.emplace_back();
  }
  impl::seq& s = d_->seqs[static_cast<std::size_t>(id)];
  s = impl::seq{};
  s.live = true;
  s.capacity = cap;
  s.layers.resize(d_->layers.size());
  return id;
}

void page_pool::remove_sequence(std::int64_t id) {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  impl::seq& s = d_->at(id);
  for (std::size_t l = 0; l < s.layers.size(); ++l) {
    impl::layer& L = d_->layers[l];
    impl::seq_layer& q = s.layers[l];
    q.window.release_all(L.kv);
    q.comp.release_all(L.kv);
    q.keys.release_all(L.keys);
    q.state_main.release_all(L.state_main);
    q.state_index.release_all(L.state_index);
  }
  s = impl::seq{};
  d_->free_ids.push_back(id);
}

bool page_pool::live(std::int64_t id) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  return id >= 0 && id < static_cast<std::int64_t>(d_->seqs.size()) && d_->seqs[static_cast<std::size_t>(id)].live;
}

std::int64_t page_pool::capacity(std::int64_t id) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  return d_->at(id).capacity;
}

std::int64_t page_pool::pos(std::int64_t id, std::int64_t layer) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const impl::seq& s = d_->at(id);
  DSV4_CHECK(layer >= 0 && layer < static_cast<std::int64_t>(s.layers.size()), kOp, "layer ", layer, " outside [0, ",
             s.layers.size(), ")");
  return s.layers[static_cast<std::size_t>(layer)].pos;
}

std::int64_t page_pool::rollback_floor(std::int64_t id) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  return std::max<std::int64_t>(0, d_->at(id).furthest - opt_.max_rollback);
}

void page_pool::truncate(std::int64_t id, std::int64_t n) {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  impl::seq& s = d_->at(id);
  std::int64_t pos = 0;
  for (const auto& q : s.layers) pos = std::max(pos, q.pos);
  DSV4_CHECK(n >= 0 && n <= pos, kOp, "cannot truncate sequence ", id, " to ", n, ": it holds positions [0, ", pos,
             ")");
  DSV4_CHECK(n >= rollback_floor(id), kOp, "cannot truncate sequence ", id, " to ", n, ": it reached position ",
             s.furthest, " and keeps max_rollback = ", opt_.max_rollback, " positions of window and compressor state, ",
             "so it can go back to ", rollback_floor(id), " at most");
  for (auto& q : s.layers) q.pos = std::min(q.pos, n);
}

void page_pool::prepare(std::int64_t id, std::int64_t layer, std::int64_t end) {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  impl::seq& s = d_->at(id);
  DSV4_CHECK(layer >= 0 && layer < static_cast<std::int64_t>(s.layers.size()), kOp, "layer ", layer, " outside [0, ",
             s.layers.size(), ")");
  impl::seq_layer& q = s.layers[static_cast<std::size_t>(layer)];
  impl::layer& L = d_->layers[static_cast<std::size_t>(layer)];
  DSV4_CHECK(end >= q.pos && end <= s.capacity, kOp, "positions [", q.pos, ", ", end,
             ") run past the sequence's capacity of ", s.capacity, " positions");
  const std::int64_t B = opt_.page_tokens, W = cfg_.window_size;
  // The window of the first new position reaches back W − 1; the compressor of a block ending in it reads coff·ratio.
  q.window.map_to(end, B, std::max<std::int64_t>(0, q.pos - W), L.kv);
  if (L.ratio != 0) {
    const std::int64_t coff = L.ratio == 4 ? 2 : 1;
    q.comp.map_to(end / L.ratio, B, 0, L.kv);
    q.state_main.map_to(end, B, std::max<std::int64_t>(0, q.pos - coff * L.ratio), L.state_main);
  }
  if (L.ratio == 4) {
    q.keys.map_to(end / 4, B, 0, L.keys);
    q.state_index.map_to(end, B, std::max<std::int64_t>(0, q.pos - 8), L.state_index);
  }
}

void page_pool::commit(std::int64_t id, std::int64_t layer, std::int64_t end) {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  impl::seq& s = d_->at(id);
  impl::seq_layer& q = s.layers[static_cast<std::size_t>(layer)];
  impl::layer& L = d_->layers[static_cast<std::size_t>(layer)];
  q.pos = end;
  s.furthest = std::max(s.furthest, end);
  const std::int64_t B = opt_.page_tokens, R = opt_.max_rollback, keep = s.furthest - R;
  q.window.release_below(keep - cfg_.window_size, B, L.kv);
  if (L.ratio != 0) q.state_main.release_below(keep - (L.ratio == 4 ? 8 : L.ratio), B, L.state_main);
  if (L.ratio == 4) q.state_index.release_below(keep - 8, B, L.state_index);
}

cache::kv_pages page_pool::kv_view(std::int64_t layer) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const page_array& a = d_->layers[static_cast<std::size_t>(layer)].kv;
  return {tensor_view(a.data(), dtype::u8, {a.pages(), a.page_bytes()}, opt_.dev), d_->kv_geo};
}

cache::key_pages page_pool::key_view(std::int64_t layer) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const page_array& a = d_->layers[static_cast<std::size_t>(layer)].keys;
  return {tensor_view(a.data(), dtype::u8, {a.pages(), a.page_bytes()}, opt_.dev), d_->key_geo};
}

cache::state_rows page_pool::state_view(std::int64_t layer, bool indexer) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const impl::layer& L = d_->layers[static_cast<std::size_t>(layer)];
  const page_array& a = indexer ? L.state_index : L.state_main;
  const std::int64_t w = indexer ? L.state_width_index : L.state_width_main;
  return {tensor_view(a.data(), dtype::f32, {a.pages() * opt_.page_tokens, w}, opt_.dev), opt_.page_tokens};
}

const std::vector<std::int32_t>& page_pool::table(std::int64_t id, std::int64_t layer, region r) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const impl::seq_layer& q = d_->at(id).layers[static_cast<std::size_t>(layer)];
  switch (r) {
    case region::window: return q.window.pages;
    case region::compressed: return q.comp.pages;
    case region::keys: return q.keys.pages;
    case region::state_main: return q.state_main.pages;
    case region::state_index: return q.state_index.pages;
  }
  return q.window.pages;
}

std::int64_t page_pool::held_bytes(std::int64_t id, std::int64_t layer) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  const impl::seq_layer& q = d_->at(id).layers[static_cast<std::size_t>(layer)];
  const impl::layer& L = d_->layers[static_cast<std::size_t>(layer)];
  const std::int64_t e = d_->kv_geo.entry_bytes();
  std::int64_t n = std::min(q.pos, cfg_.window_size) * e;
  if (L.ratio != 0) {
    const std::int64_t coff = L.ratio == 4 ? 2 : 1;
    n += q.pos / L.ratio * e + 4 * coff * L.ratio * L.state_width_main;
  }
  if (L.ratio == 4) n += q.pos / 4 * d_->key_geo.key_bytes() + 4 * 8 * L.state_width_index;
  return n;
}

std::int64_t page_pool::held_bytes(std::int64_t id) const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  std::int64_t n = 0;
  for (std::int64_t l = 0; l < static_cast<std::int64_t>(d_->layers.size()); ++l) n += held_bytes(id, l);
  return n;
}

std::int64_t page_pool::pages_in_use() const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  std::int64_t n = 0;
  for (const auto& L : d_->layers) n += L.kv.in_use() + L.keys.in_use() + L.state_main.in_use() + L.state_index.in_use();
  return n;
}

std::int64_t page_pool::allocated_bytes() const {
  const std::lock_guard<std::recursive_mutex> lock(mu_);
  std::int64_t n = 0;
  for (const auto& L : d_->layers) n += L.kv.bytes() + L.keys.bytes() + L.state_main.bytes() + L.state_index.bytes();
  return n;
}

}  // namespace dsv4::model
