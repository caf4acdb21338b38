// The C ABI (dsv4/c_api.h): every entry point catches everything, records the message for dsv4_last_error() on the
// calling thread and returns a status code; DLTensors become tensor_views (uint8 bytes re-read as FP8 / FP4 / E8M0
// when the caller says so) and the C++ ops do the rest, with their own validation.
#include "dsv4/c_api.h"

#include <memory>
#include <new>
#include <string>
#include <vector>

#include "dsv4/dlpack.hpp"
#include "dsv4/dsv4.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;

struct dsv4_model {
  // Shared with the sequences made from it, so freeing the handle first is safe.
  struct state {
    model::model_config cfg;
    io::checkpoint ckpt;
    model::model_weights w;
    std::unique_ptr<model::transformer> tf;
    model::device_weights dw;  // DSV4_BACKEND_CUDA: w copied to the device (the transformer reads these)
  };
  std::shared_ptr<state> s;
};

struct dsv4_sequence {
  std::shared_ptr<dsv4_model::state> model;
  model::sequence_state seq;
};

namespace {

thread_local std::string g_last_error;

struct null_argument {
  const char* name;
};

template <class F>
int guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return DSV4_OK;
  } catch (const null_argument& n) {
    g_last_error = std::string("dsv4: argument ") + n.name + " is NULL";
    return DSV4_ERROR_NULL;
  } catch (const error& e) {
    g_last_error = e.what();
    return DSV4_ERROR;
  } catch (const std::bad_alloc&) {
    g_last_error = "dsv4: out of memory";
    return DSV4_ERROR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = std::string("dsv4: internal error: ") + e.what();
    return DSV4_ERROR_INTERNAL;
  } catch (...) {
    g_last_error = "dsv4: internal error (unknown exception)";
    return DSV4_ERROR_INTERNAL;
  }
}

template <class T>
T* need(T* p, const char* name) {
  if (!p) throw null_argument{name};
  return p;
}

// A DLTensor as a tensor_view; `as` re-reads uint8/int8 bytes as FP8 / FP4 (two per byte) / UE8M0.
tensor_view as_view(const DLTensor* t, const char* name, dsv4_dtype as = DSV4_DTYPE_AUTO) {
  need(t, name);
  tensor_view v = from_dlpack(*t);
  if (as == DSV4_DTYPE_AUTO) return v;
  DSV4_CHECK(v.dt() == dtype::u8 || v.dt() == dtype::i8, "c_api", name, " is ", v.describe(),
             ": FP8 / FP4 / E8M0 data crosses as uint8 bytes");
  std::array<std::int64_t, kMaxRank> shape{}, strides{};
  for (int d = 0; d < v.rank(); ++d) {
    shape[static_cast<std::size_t>(d)] = v.shape(d);
    strides[static_cast<std::size_t>(d)] = v.stride(d);
  }
  dtype dt = dtype::u8;
  switch (as) {
    case DSV4_DTYPE_FP8_E4M3: dt = dtype::fp8_e4m3; break;
    case DSV4_DTYPE_UE8M0: dt = dtype::ue8m0; break;
    case DSV4_DTYPE_FP4_E2M1: {
      dt = dtype::fp4_e2m1;
      DSV4_CHECK(v.rank() >= 1, "c_api", name, ": FP4 bytes need at least one dimension");
      const int last = v.rank() - 1;
      DSV4_CHECK(v.shape(last) <= 1 || v.stride(last) == 1, "c_api", name, " is ", v.describe(),
                 ": FP4 bytes must be contiguous along the last dim");
      shape[static_cast<std::size_t>(last)] *= 2;  // two values per byte
      for (int d = 0; d < last; ++d) strides[static_cast<std::size_t>(d)] *= 2;
      strides[static_cast<std::size_t>(last)] = 1;
      break;
    }
    default: DSV4_FAIL("c_api", name, ": unknown dsv4_dtype ", static_cast<int>(as));
  }
  const auto r = static_cast<std::size_t>(v.rank());
  return tensor_view(v.data(), dt, std::span<const std::int64_t>(shape.data(), r),
                     std::span<const std::int64_t>(strides.data(), r), v.dev());
}

tensor_view optional_view(const DLTensor* t, const char* name, dsv4_dtype as = DSV4_DTYPE_AUTO) {
  return t ? as_view(t, name, as) : tensor_view();
}

// The calling thread's CUDA settings (dsv4_cuda_exec_set), merged into every exec this thread builds.
thread_local dsv4_cuda_exec g_cuda = {DSV4_CHECKS_SYNC, -1, nullptr, nullptr, 0};

exec to_exec(const dsv4_exec* e) {
  exec x;
  x.checks = static_cast<check_policy>(g_cuda.checks);
  x.device = g_cuda.device;
  x.status = g_cuda.status;
  x.scratch = {g_cuda.scratch, static_cast<std::size_t>(g_cuda.scratch_bytes)};
  if (!e) return x;
  DSV4_CHECK(e->backend >= 0 && e->backend <= 3, "c_api", "dsv4_exec.backend ", e->backend, " is not a dsv4_backend");
  x.prefer = static_cast<backend>(e->backend);
  x.threads = e->threads;
  x.cuda_stream = e->cuda_stream;
  return x;
}

ops::quant_format to_format(dsv4_dtype d) {
  DSV4_CHECK(d == DSV4_DTYPE_FP8_E4M3 || d == DSV4_DTYPE_FP4_E2M1, "c_api", "fmt ", static_cast<int>(d),
             " is not DSV4_DTYPE_FP8_E4M3 or DSV4_DTYPE_FP4_E2M1");
  return d == DSV4_DTYPE_FP8_E4M3 ? ops::quant_format::fp8_e4m3 : ops::quant_format::fp4_e2m1;
}

ops::mhc_config to_mhc(const dsv4_mhc_config* c) {
  ops::mhc_config m;
  if (c) m = {c->sinkhorn_iters, c->hc_eps, c->norm_eps};
  return m;
}

ops::route_config to_route(const dsv4_route_config* c) {
  need(c, "cfg");
  DSV4_CHECK(c->score_func >= 0 && c->score_func <= 2, "c_api", "score_func ", c->score_func,
             " is not a dsv4_score_func");
  return {static_cast<ops::score_func>(c->score_func), c->topk, c->route_scale};
}

cache::kv_pages to_kv(const dsv4_kv_pages* k, const char* name) {
  need(k, name);
  DSV4_CHECK(k->format == DSV4_KV_F32 || k->format == DSV4_KV_FP8_DS_MLA, "c_api", name, ".format ", k->format,
             " is not a dsv4_kv_format");
  return {as_view(k->pages, "pages"),
          {k->format == DSV4_KV_F32 ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla, k->head_dim, k->rope_dim,
           k->page_tokens}};
}

cache::key_pages to_keys(const dsv4_key_pages* k, const char* name) {
  need(k, name);
  DSV4_CHECK(k->format == DSV4_KEY_FP4 || k->format == DSV4_KEY_FP8, "c_api", name, ".format ", k->format,
             " is not a dsv4_key_format");
  return {as_view(k->pages, "pages"),
          {k->format == DSV4_KEY_FP4 ? cache::key_format::fp4 : cache::key_format::fp8, k->dim, k->page_tokens}};
}

cache::state_rows to_state(const dsv4_state_rows* s) {
  need(s, "state");
  return {as_view(s->rows, "state.rows"), s->page_tokens};
}

ops::compressor_params to_params(const dsv4_compressor_params* p) {
  need(p, "params");
  ops::compressor_params q;
  q.ratio = p->ratio;
  q.c = p->c;
  q.rope_dim = p->rope_dim;
  q.norm_eps = p->norm_eps;
  q.indexer = p->indexer != 0;
  return q;
}

ops::sparse_segment to_segment(const dsv4_sparse_segment* s, const char* name) {
  need(s, name);
  return {to_kv(&s->kv, name), as_view(s->slots, "slots"), optional_view(s->len, "len")};
}

}  // namespace

extern "C" {

const char* dsv4_version(void) { return kVersion; }

const char* dsv4_last_error(void) { return g_last_error.c_str(); }

// ---- models and sequences ------------------------------------------------------------------------------------

void dsv4_model_options_default(dsv4_model_options* o) {
  if (!o) return;
  o->backend = DSV4_BACKEND_AUTO;
  o->threads = 0;
  o->kv_format = DSV4_KV_F32;
  o->page_tokens = 64;
  o->max_rollback = 32;
}

int dsv4_cuda_exec_set(const dsv4_cuda_exec* settings) {
  return guarded([&] {
    if (!settings) {
      g_cuda = {DSV4_CHECKS_SYNC, -1, nullptr, nullptr, 0};
      return;
    }
    DSV4_CHECK(settings->checks >= DSV4_CHECKS_SYNC && settings->checks <= DSV4_CHECKS_NONE, "c_api",
               "dsv4_cuda_exec.checks ", settings->checks, " is not a dsv4_check_policy");
    DSV4_CHECK(settings->device >= -1, "c_api", "dsv4_cuda_exec.device ", settings->device, " is below -1");
    DSV4_CHECK(settings->checks != DSV4_CHECKS_DEFERRED || settings->status != nullptr, "c_api",
               "DSV4_CHECKS_DEFERRED needs dsv4_cuda_exec.status (a device uint32)");
    DSV4_CHECK(settings->scratch_bytes == 0 || settings->scratch != nullptr, "c_api", "dsv4_cuda_exec.scratch_bytes ",
               settings->scratch_bytes, " with a NULL scratch");
    g_cuda = *settings;
  });
}

int dsv4_cuda_exec_get(dsv4_cuda_exec* out) {
  return guarded([&] { *need(out, "out") = g_cuda; });
}

int dsv4_cuda_check_status(void* cuda_stream) {
  return guarded([&] {
    dsv4_exec e{DSV4_BACKEND_AUTO, 0, cuda_stream};
    check_status(to_exec(&e));
  });
}

int dsv4_model_open(const char* dir, const dsv4_model_options* options, dsv4_model** out) {
  return dsv4_model_open_numerics(dir, options, DSV4_NUMERICS_FP32, out);
}

int dsv4_model_open_numerics(const char* dir, const dsv4_model_options* options, int32_t numerics_policy,
                             dsv4_model** out) {
  return guarded([&] {
    need(dir, "dir");
    need(out, "out");
    *out = nullptr;
    dsv4_model_options o;
    dsv4_model_options_default(&o);
    if (options) o = *options;
    exec ex;
    DSV4_CHECK(o.backend >= 0 && o.backend <= 3, "dsv4_model_open", "backend ", o.backend,
               " (expected DSV4_BACKEND_AUTO, _REF, _CPU or _CUDA)");
    const bool gpu = o.backend == DSV4_BACKEND_CUDA;
    DSV4_CHECK(!gpu || ops::cuda_device_count() > 0, "dsv4_model_open",
               "DSV4_BACKEND_CUDA: no CUDA device is visible (or this build has no CUDA backend)");
    DSV4_CHECK(!gpu || numerics_policy == DSV4_NUMERICS_FP32, "dsv4_model_open",
               "DSV4_BACKEND_CUDA runs numerics fp32 only");
    ex.prefer = gpu ? backend::automatic : static_cast<backend>(o.backend);
    ex.threads = o.threads;
    DSV4_CHECK(o.threads >= 0 && o.threads <= kMaxThreads, "dsv4_model_open", "threads ", o.threads,
               " is outside [0, ", kMaxThreads, "]");
    DSV4_CHECK(numerics_policy == DSV4_NUMERICS_FP32 || numerics_policy == DSV4_NUMERICS_OFFICIAL, "dsv4_model_open",
               "numerics ", numerics_policy, " (expected DSV4_NUMERICS_FP32 or DSV4_NUMERICS_OFFICIAL)");
    const numerics nm = numerics_policy == DSV4_NUMERICS_OFFICIAL ? numerics::official : numerics::fp32;
    model::pool_options po;
    DSV4_CHECK(o.kv_format == DSV4_KV_F32 || o.kv_format == DSV4_KV_FP8_DS_MLA, "dsv4_model_open", "kv_format ",
               o.kv_format, " is not a dsv4_kv_format");
    po.kv = o.kv_format == DSV4_KV_F32 ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla;
    po.page_tokens = o.page_tokens;
    po.max_rollback = o.max_rollback;
    auto m = std::make_unique<dsv4_model>();
    m->s = std::make_shared<dsv4_model::state>(dsv4_model::state{model::load_config(dir), io::checkpoint::open(dir),
                                                                   {}, nullptr, {}});
    m->s->w = model::bind_weights(m->s->ckpt, m->s->cfg);
    if (gpu)  // the weights go to the thread's CUDA device (dsv4_cuda_exec_set; default 0), once; ex stays sync
      m->s->dw = model::upload_weights(m->s->w, device::cuda(g_cuda.device >= 0 ? g_cuda.device : 0));
    m->s->tf = std::make_unique<model::transformer>(m->s->cfg, gpu ? m->s->dw.weights : m->s->w, ex, po, nm);
    *out = m.release();
  });
}

int dsv4_model_close(dsv4_model* model) {
  return guarded([&] { delete model; });
}

int dsv4_model_info_get(const dsv4_model* model, dsv4_model_info* out) {
  return guarded([&] {
    const model::model_config& c = need(model, "model")->s->cfg;
    *need(out, "out") = {c.vocab_size, c.dim, c.n_layers, c.n_heads, c.head_dim, c.window_size,
                         c.max_position_embeddings};
  });
}

int dsv4_sequence_new(dsv4_model* model, int64_t capacity, dsv4_sequence** out) {
  return guarded([&] {
    need(model, "model");
    need(out, "out");
    *out = nullptr;
    DSV4_CHECK(capacity >= 0, "dsv4_sequence_new", "capacity ", capacity, " is negative");
    auto s = std::make_unique<dsv4_sequence>();
    s->model = model->s;
    s->seq = model->s->tf->new_sequence(capacity);
    *out = s.release();
  });
}

int dsv4_sequence_free(dsv4_sequence* seq) {
  return guarded([&] { delete seq; });
}

int dsv4_sequence_pos(const dsv4_sequence* seq, int64_t* out) {
  return guarded([&] { *need(out, "out") = need(seq, "seq")->seq.pos(); });
}

int dsv4_sequence_truncate(dsv4_sequence* seq, int64_t n) {
  return guarded([&] { need(seq, "seq")->seq.truncate(n); });
}

int dsv4_forward(dsv4_model* model, dsv4_sequence* seq, const int64_t* tokens, int64_t n, DLTensor* logits) {
  dsv4_batch_entry e{seq, tokens, n, logits};
  return dsv4_forward_batch(model, &e, 1);
}

int dsv4_forward_batch(dsv4_model* model, const dsv4_batch_entry* entries, int64_t count) {
  return guarded([&] {
    need(model, "model");
    DSV4_CHECK(count >= 0, "dsv4_forward_batch", "count ", count, " is negative");
    if (count > 0) need(entries, "entries");
    std::vector<model::transformer::batch_entry> b;
    for (int64_t i = 0; i < count; ++i) {
      const dsv4_batch_entry& e = entries[i];
      need(e.seq, "entries[i].seq");
      DSV4_CHECK(e.seq->model == model->s, "dsv4_forward", "entry ", i, ": the sequence belongs to another model");
      DSV4_CHECK(e.n >= 0, "dsv4_forward", "entry ", i, ": n = ", e.n, " is negative");
      if (e.n > 0) need(e.tokens, "tokens");
      b.push_back({std::span<const std::int64_t>(e.tokens, static_cast<std::size_t>(e.n)), &e.seq->seq,
                   e.logits ? from_dlpack(*e.logits) : tensor_view(), {}});
    }
    model->s->tf->forward_batch(b);
  });
}

// ---- number formats ------------------------------------------------------------------------------------------

int dsv4_block_quantize(const DLTensor* x, DLTensor* q, dsv4_dtype q_dtype, DLTensor* scale, int32_t block,
                        const dsv4_exec* ex) {
  return guarded([&] {
    DSV4_CHECK(q_dtype == DSV4_DTYPE_FP8_E4M3 || q_dtype == DSV4_DTYPE_FP4_E2M1, "block_quantize", "q_dtype ",
               static_cast<int>(q_dtype), " is not DSV4_DTYPE_FP8_E4M3 or DSV4_DTYPE_FP4_E2M1");
    ops::block_quantize(as_view(x, "x"), as_view(q, "q", q_dtype), as_view(scale, "scale", DSV4_DTYPE_UE8M0), block, to_exec(ex));
  });
}

int dsv4_block_round_trip(const DLTensor* x, DLTensor* y, dsv4_dtype fmt, int32_t block, const dsv4_exec* ex) {
  return guarded([&] { ops::block_round_trip(as_view(x, "x"), as_view(y, "y"), to_format(fmt), block, to_exec(ex)); });
}

int dsv4_dequantize(const DLTensor* q, dsv4_dtype q_dtype, const DLTensor* scale, DLTensor* out, int32_t block_rows,
                    int32_t block_cols, const dsv4_exec* ex) {
  return guarded([&] {
    ops::dequantize(as_view(q, "q", q_dtype), as_view(scale, "scale", DSV4_DTYPE_UE8M0), as_view(out, "out"), block_rows,
                    block_cols, to_exec(ex));
  });
}

int dsv4_hadamard(const DLTensor* x, DLTensor* y, const dsv4_exec* ex) {
  return guarded([&] { ops::hadamard(as_view(x, "x"), as_view(y, "y"), to_exec(ex)); });
}

int dsv4_linear(const DLTensor* x, const DLTensor* w, dsv4_dtype w_dtype, const DLTensor* w_scale, DLTensor* y,
                const dsv4_exec* ex) {
  return guarded([&] {
    ops::linear(as_view(x, "x"), ops::qweight{as_view(w, "w", w_dtype), optional_view(w_scale, "w_scale", DSV4_DTYPE_UE8M0)},
                as_view(y, "y"), to_exec(ex));
  });
}

// ---- mHC -------------------------------------------------------------------------------------------------------

int dsv4_sinkhorn_knopp(const DLTensor* logits, DLTensor* out, int32_t iters, float eps, const dsv4_exec* ex) {
  return guarded([&] { ops::sinkhorn_knopp(as_view(logits, "logits"), as_view(out, "out"), iters, eps, to_exec(ex)); });
}

int dsv4_hc_pre(const DLTensor* x, const DLTensor* fn, const DLTensor* scale, const DLTensor* base, DLTensor* y,
                DLTensor* post, DLTensor* comb, const dsv4_mhc_config* cfg, const dsv4_exec* ex) {
  return guarded([&] {
    ops::hc_pre(as_view(x, "x"), as_view(fn, "fn"), as_view(scale, "scale"), as_view(base, "base"), as_view(y, "y"), as_view(post, "post"),
                as_view(comb, "comb"), to_mhc(cfg), to_exec(ex));
  });
}

int dsv4_hc_post(const DLTensor* f, const DLTensor* x, const DLTensor* post, const DLTensor* comb, DLTensor* out,
                 const dsv4_exec* ex) {
  return guarded([&] {
    ops::hc_post(as_view(f, "f"), as_view(x, "x"), as_view(post, "post"), as_view(comb, "comb"), as_view(out, "out"), to_exec(ex));
  });
}

int dsv4_hc_head(const DLTensor* x, const DLTensor* fn, const DLTensor* scale, const DLTensor* base, DLTensor* y,
                 const dsv4_mhc_config* cfg, const dsv4_exec* ex) {
  return guarded([&] {
    ops::hc_head(as_view(x, "x"), as_view(fn, "fn"), as_view(scale, "scale"), as_view(base, "base"), as_view(y, "y"), to_mhc(cfg),
                 to_exec(ex));
  });
}

// ---- MoE routing -------------------------------------------------------------------------------------------------

int dsv4_moe_route(const DLTensor* logits, const dsv4_route_config* cfg, const DLTensor* bias, DLTensor* weights,
                   DLTensor* experts, const dsv4_exec* ex) {
  return guarded([&] {
    ops::moe_route(as_view(logits, "logits"), to_route(cfg), optional_view(bias, "bias"), as_view(weights, "weights"),
                   as_view(experts, "experts"), to_exec(ex));
  });
}

int dsv4_moe_hash_route(const DLTensor* logits, const dsv4_route_config* cfg, const DLTensor* token_ids,
                        const DLTensor* tid2eid, DLTensor* weights, DLTensor* experts, const dsv4_exec* ex) {
  return guarded([&] {
    ops::moe_hash_route(as_view(logits, "logits"), to_route(cfg), as_view(token_ids, "token_ids"), as_view(tid2eid, "tid2eid"),
                        as_view(weights, "weights"), as_view(experts, "experts"), to_exec(ex));
  });
}

// ---- attention kernels -------------------------------------------------------------------------------------------

int dsv4_indexer_scores(const DLTensor* q, const DLTensor* k, const DLTensor* w, const DLTensor* visible,
                        DLTensor* scores, const dsv4_exec* ex) {
  return guarded([&] {
    ops::indexer_scores(as_view(q, "q"), as_view(k, "k"), as_view(w, "w"), as_view(visible, "visible"), as_view(scores, "scores"),
                        to_exec(ex));
  });
}

int dsv4_topk_select(const DLTensor* scores, const DLTensor* count, DLTensor* idx, const dsv4_exec* ex) {
  return guarded([&] { ops::topk_select(as_view(scores, "scores"), as_view(count, "count"), as_view(idx, "idx"), to_exec(ex)); });
}

int dsv4_sparse_attention(const DLTensor* q, const DLTensor* kv_window, const DLTensor* kv_compressed,
                          const DLTensor* idx, const DLTensor* sink, float scale, DLTensor* out, const dsv4_exec* ex) {
  return guarded([&] {
    ops::sparse_attention(as_view(q, "q"), as_view(kv_window, "kv_window"), optional_view(kv_compressed, "kv_compressed"),
                          as_view(idx, "idx"), as_view(sink, "sink"), scale, as_view(out, "out"), to_exec(ex));
  });
}

// ---- paged caches ------------------------------------------------------------------------------------------------

int dsv4_kv_page_bytes(int32_t format, int64_t head_dim, int64_t rope_dim, int64_t page_tokens, int64_t* entry_bytes,
                       int64_t* page_bytes) {
  return guarded([&] {
    DSV4_CHECK(format == DSV4_KV_F32 || format == DSV4_KV_FP8_DS_MLA, "c_api", "format ", format,
               " is not a dsv4_kv_format");
    DSV4_CHECK(head_dim > rope_dim && rope_dim >= 0 && head_dim <= (1 << 14) && page_tokens >= 1 &&
                   page_tokens <= (1 << 20),
               "c_api", "KV geometry head_dim ", head_dim, " / rope ", rope_dim, " / page_tokens ", page_tokens);
    const cache::kv_geometry g{format == DSV4_KV_F32 ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla, head_dim,
                               rope_dim, page_tokens};
    if (entry_bytes) *entry_bytes = g.entry_bytes();
    if (page_bytes) *page_bytes = g.page_bytes();
  });
}

int dsv4_key_page_bytes(int32_t format, int64_t dim, int64_t page_tokens, int64_t* key_bytes, int64_t* page_bytes) {
  return guarded([&] {
    DSV4_CHECK(format == DSV4_KEY_FP4 || format == DSV4_KEY_FP8, "c_api", "format ", format,
               " is not a dsv4_key_format");
    DSV4_CHECK(dim >= 32 && dim % 32 == 0 && dim <= (1 << 14) && page_tokens >= 1 && page_tokens <= (1 << 20),
               "c_api", "key geometry dim ", dim, " / page_tokens ", page_tokens);
    const cache::key_geometry g{format == DSV4_KEY_FP4 ? cache::key_format::fp4 : cache::key_format::fp8, dim,
                                page_tokens};
    if (key_bytes) *key_bytes = g.key_bytes();
    if (page_bytes) *page_bytes = g.page_bytes();
  });
}

int dsv4_kv_store(const DLTensor* values, const DLTensor* slots, const dsv4_kv_pages* kv, const dsv4_exec* ex) {
  return guarded([&] { ops::kv_store(as_view(values, "values"), as_view(slots, "slots"), to_kv(kv, "kv"), to_exec(ex)); });
}

int dsv4_kv_load(const dsv4_kv_pages* kv, const DLTensor* slots, DLTensor* values, const dsv4_exec* ex) {
  return guarded([&] { ops::kv_load(to_kv(kv, "kv"), as_view(slots, "slots"), as_view(values, "values"), to_exec(ex)); });
}

int dsv4_key_store(const DLTensor* values, const DLTensor* slots, const dsv4_key_pages* keys, const dsv4_exec* ex) {
  return guarded([&] {
    ops::key_store(as_view(values, "values"), as_view(slots, "slots"), to_keys(keys, "keys"), to_exec(ex));
  });
}

int dsv4_key_load(const dsv4_key_pages* keys, const DLTensor* slots, DLTensor* values, const dsv4_exec* ex) {
  return guarded([&] {
    ops::key_load(to_keys(keys, "keys"), as_view(slots, "slots"), as_view(values, "values"), to_exec(ex));
  });
}

int dsv4_compressor_append(const DLTensor* kv, const DLTensor* score, const DLTensor* ape, const DLTensor* positions,
                           const DLTensor* state_slot, const dsv4_state_rows* state,
                           const dsv4_compressor_params* params, const dsv4_exec* ex) {
  return guarded([&] {
    ops::compressor_append(as_view(kv, "kv"), as_view(score, "score"), as_view(ape, "ape"), as_view(positions, "positions"),
                           as_view(state_slot, "state_slot"), to_state(state), to_params(params), to_exec(ex));
  });
}

int dsv4_compressor_emit(const DLTensor* positions, const DLTensor* row_req, const DLTensor* state_table,
                         const dsv4_state_rows* state, const DLTensor* norm_weight, const DLTensor* rope_freq,
                         const DLTensor* out_slot, const dsv4_compressor_params* params,
                         const dsv4_kv_pages* main_out, const dsv4_key_pages* key_out, DLTensor* entries,
                         const dsv4_exec* ex) {
  return guarded([&] {
    const cache::kv_pages kv = main_out ? to_kv(main_out, "main_out") : cache::kv_pages{};
    const cache::key_pages keys = key_out ? to_keys(key_out, "key_out") : cache::key_pages{};
    ops::compressor_emit(as_view(positions, "positions"), as_view(row_req, "row_req"), as_view(state_table, "state_table"),
                         to_state(state), as_view(norm_weight, "norm_weight"), as_view(rope_freq, "rope_freq"),
                         as_view(out_slot, "out_slot"), to_params(params), main_out ? &kv : nullptr,
                         key_out ? &keys : nullptr, optional_view(entries, "entries"), to_exec(ex));
  });
}

int dsv4_indexer_logits(const DLTensor* q, const DLTensor* w, const dsv4_key_pages* keys, const DLTensor* block_table,
                        const DLTensor* row_req, const DLTensor* n_keys, DLTensor* logits, const dsv4_exec* ex) {
  return guarded([&] {
    ops::indexer_logits(as_view(q, "q"), as_view(w, "w"), to_keys(keys, "keys"), as_view(block_table, "block_table"),
                        as_view(row_req, "row_req"), as_view(n_keys, "n_keys"), as_view(logits, "logits"), to_exec(ex));
  });
}

int dsv4_topk_rows(const DLTensor* logits, const DLTensor* n_keys, DLTensor* idx, DLTensor* len, const dsv4_exec* ex) {
  return guarded([&] {
    ops::topk_rows(as_view(logits, "logits"), as_view(n_keys, "n_keys"), as_view(idx, "idx"), as_view(len, "len"), to_exec(ex));
  });
}

int dsv4_to_slots(const DLTensor* idx, const DLTensor* len, const DLTensor* row_req, const DLTensor* block_table,
                  int64_t page_tokens, DLTensor* slots, const dsv4_exec* ex) {
  return guarded([&] {
    ops::to_slots(as_view(idx, "idx"), optional_view(len, "len"), as_view(row_req, "row_req"),
                  as_view(block_table, "block_table"), page_tokens, as_view(slots, "slots"), to_exec(ex));
  });
}

int dsv4_indexer_topk(const DLTensor* q, const DLTensor* w, const dsv4_key_pages* keys, const DLTensor* block_table,
                      const DLTensor* row_req, const DLTensor* n_keys, DLTensor* idx, DLTensor* len, DLTensor* slots,
                      const dsv4_exec* ex) {
  return guarded([&] {
    ops::indexer_topk(as_view(q, "q"), as_view(w, "w"), to_keys(keys, "keys"), as_view(block_table, "block_table"),
                      as_view(row_req, "row_req"), as_view(n_keys, "n_keys"), as_view(idx, "idx"), as_view(len, "len"),
                      optional_view(slots, "slots"), to_exec(ex));
  });
}

int dsv4_sparse_mqa(const DLTensor* q, const dsv4_sparse_segment* window, const dsv4_sparse_segment* compressed,
                    const DLTensor* sink, float scale, DLTensor* out, DLTensor* lse, const dsv4_exec* ex) {
  return guarded([&] {
    const ops::sparse_segment w = to_segment(window, "window");
    const ops::sparse_segment c = compressed ? to_segment(compressed, "compressed") : ops::sparse_segment{};
    ops::sparse_mqa(as_view(q, "q"), w, compressed ? &c : nullptr, as_view(sink, "sink"), scale, as_view(out, "out"),
                    optional_view(lse, "lse"), to_exec(ex));
  });
}

}  // extern "C"
