/* dsv4/c_api.h — the C ABI of dsv4 (plain C11), built into libdsv4.so.
 *
 * For engines that link kernels without sharing a C++ ABI (llama.cpp-style engines, Rust / Go / Zig hosts). Every
 * function returns a status: DSV4_OK (0) on success, otherwise an error code; dsv4_last_error() then returns the
 * calling thread's last message (the same text the C++ API puts in dsv4::error, e.g. "dsv4::linear: x f32[2, 3] ...").
 * No exception crosses this boundary. Nothing here keeps a pointer to a caller's tensor after the call returns.
 *
 * Tensors are DLPack DLTensors (dlpack/dlpack.h; Debian ships DLPack 0.6). DLPack 0.6 has no codes for FP8, FP4 and
 * E8M0, so such data crosses as uint8 (or int8) tensors together with an explicit dsv4_dtype argument saying how to
 * read them: FP8 E4M3 and UE8M0 one byte per value (same shape), FP4 E2M1 two values per byte (the DLTensor is
 * [..., K/2] bytes, viewed as [..., K] values; element 2c in the low nibble).
 *
 * The semantics of each op are those of the C++ op of the same name (include/dsv4/ops/<op>.hpp); a NULL `ex` means the
 * default execution (automatic backend, all cores). Thread safety: ops are reentrant; a model may run forward calls
 * from one thread at a time (its sequences share one page pool).
 */
#ifndef DSV4_C_API_H
#define DSV4_C_API_H

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#if defined(_WIN32)
#define DSV4_API __declspec(dllexport)
#else
#define DSV4_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status, version --------------------------------------------------------------------------------------- */

typedef enum dsv4_status {
  DSV4_OK = 0,
  DSV4_ERROR = 1,               /* the input was rejected or the operation failed: see dsv4_last_error() */
  DSV4_ERROR_NULL = 2,          /* a required pointer argument was NULL */
  DSV4_ERROR_OUT_OF_MEMORY = 3,
  DSV4_ERROR_INTERNAL = 4       /* anything else (a bug: please report the message) */
} dsv4_status;

DSV4_API const char* dsv4_version(void);     /* "0.1.0" */
DSV4_API const char* dsv4_last_error(void);  /* the calling thread's last error message ("" if none) */

/* ---- dtypes and execution ---------------------------------------------------------------------------------- */

typedef enum dsv4_dtype {
  DSV4_DTYPE_AUTO = 0,      /* the DLTensor's own dtype */
  DSV4_DTYPE_FP8_E4M3 = 1,  /* uint8 bytes holding E4M3 codes */
  DSV4_DTYPE_FP4_E2M1 = 2,  /* uint8 bytes holding two E2M1 codes each */
  DSV4_DTYPE_UE8M0 = 3      /* uint8 bytes holding UE8M0 scales */
} dsv4_dtype;

typedef enum dsv4_backend { DSV4_BACKEND_AUTO = 0, DSV4_BACKEND_REF = 1, DSV4_BACKEND_CPU = 2, DSV4_BACKEND_CUDA = 3 } dsv4_backend;

typedef struct dsv4_exec {
  int32_t backend;    /* dsv4_backend */
  int32_t threads;    /* CPU worker threads, 0 = all cores, at most 1024 */
  void* cuda_stream;  /* a cudaStream_t for the CUDA backend (NULL: the default stream) */
} dsv4_exec;

/* ---- CUDA execution settings of the calling thread (dsv4/exec.hpp) ------------------------------------------
 * dsv4_exec keeps its layout; what an engine needs beyond a stream is set per thread, like cudaSetDevice, and
 * applies to every later call on that thread (CPU and ref backends ignore it):
 *   checks   DSV4_CHECKS_SYNC (default: the call waits and returns DSV4_ERROR on what its kernels found),
 *            DSV4_CHECKS_DEFERRED (kernels OR bits into *status, a device uint32; the call returns at once, with no
 *            allocation, synchronization or host read: capturable in a CUDA graph; dsv4_cuda_check_status reads it),
 *            DSV4_CHECKS_NONE. DEFERRED and NONE need a non-NULL dsv4_exec.cuda_stream.
 *   device   -1: the tensors' device; else it must be theirs.
 *   scratch  device memory for the ops that need it (none of this ABI's ops yet). */
typedef enum dsv4_check_policy {
  DSV4_CHECKS_SYNC = 0,
  DSV4_CHECKS_DEFERRED = 1,
  DSV4_CHECKS_NONE = 2
} dsv4_check_policy;

typedef struct dsv4_cuda_exec {
  int32_t checks;         /* dsv4_check_policy */
  int32_t device;         /* -1 or a CUDA device */
  uint32_t* status;       /* device word for DSV4_CHECKS_DEFERRED */
  void* scratch;          /* device scratch, 256-byte aligned */
  uint64_t scratch_bytes;
} dsv4_cuda_exec;

/* NULL: back to the defaults (sync, the tensors' device, no status word, no scratch). */
DSV4_API int dsv4_cuda_exec_set(const dsv4_cuda_exec* settings);
/* The thread's settings, as set (the defaults when none were). */
DSV4_API int dsv4_cuda_exec_get(dsv4_cuda_exec* out);
/* Waits for cuda_stream, reads and clears the thread's status word, and returns DSV4_ERROR naming the bits found
 * (DSV4_OK when none). An error when the thread's policy is not DSV4_CHECKS_DEFERRED or there is no CUDA backend. */
DSV4_API int dsv4_cuda_check_status(void* cuda_stream);

/* ---- models and sequences --------------------------------------------------------------------------------- */

typedef struct dsv4_model dsv4_model;
typedef struct dsv4_sequence dsv4_sequence;

typedef enum dsv4_kv_format { DSV4_KV_F32 = 0, DSV4_KV_FP8_DS_MLA = 1 } dsv4_kv_format;
typedef enum dsv4_key_format { DSV4_KEY_FP4 = 0, DSV4_KEY_FP8 = 1 } dsv4_key_format;

typedef struct dsv4_model_options {
  int32_t backend;       /* dsv4_backend (default AUTO). CUDA: the weights are copied once to the calling thread's
                            CUDA device (dsv4_cuda_exec_set; default 0) and the whole forward pass runs there
                            (eager, numerics fp32; logits still land in the caller's host arrays) */
  int32_t threads;       /* default 0: all cores */
  int32_t kv_format;     /* dsv4_kv_format (default F32: exact under the fp32 policy) */
  int32_t page_tokens;   /* entries per cache page (default 64) */
  int32_t max_rollback;  /* positions a sequence can be truncated back by (default 32) */
} dsv4_model_options;

typedef struct dsv4_model_info {
  int64_t vocab_size, dim, n_layers, n_heads, head_dim, window_size, max_position_embeddings;
} dsv4_model_info;

/* The numerics policy (dsv4/numerics.hpp): fp32 (exact weights, fp32 activations) or the rounding points of
 * DeepSeek's own inference code (BF16 activations, FP8 1x128 activation quantization, BF16 index scores, ...). */
typedef enum dsv4_numerics { DSV4_NUMERICS_FP32 = 0, DSV4_NUMERICS_OFFICIAL = 1 } dsv4_numerics;

DSV4_API void dsv4_model_options_default(dsv4_model_options* options);
/* Loads DIR (HF config.json + safetensors, the official tensor names); options may be NULL (the defaults). */
DSV4_API int dsv4_model_open(const char* dir, const dsv4_model_options* options, dsv4_model** out);
/* The same with a numerics policy (dsv4_numerics); dsv4_model_open is this with DSV4_NUMERICS_FP32. A separate entry
 * point rather than a field of dsv4_model_options, so programs built against the earlier struct keep working. */
DSV4_API int dsv4_model_open_numerics(const char* dir, const dsv4_model_options* options, int32_t numerics,
                                      dsv4_model** out);
/* Frees the model handle. Sequences keep what they need alive and must still be freed; forward calls with a closed
 * model are not allowed. NULL is accepted (nothing happens). */
DSV4_API int dsv4_model_close(dsv4_model* model);
DSV4_API int dsv4_model_info_get(const dsv4_model* model, dsv4_model_info* out);

/* A new sequence accepting `capacity` positions (0: the model's max_position_embeddings). */
DSV4_API int dsv4_sequence_new(dsv4_model* model, int64_t capacity, dsv4_sequence** out);
DSV4_API int dsv4_sequence_free(dsv4_sequence* seq); /* NULL is accepted */
DSV4_API int dsv4_sequence_pos(const dsv4_sequence* seq, int64_t* out);
/* Rollback for speculative decoding: back to position n (exact for n >= furthest position − max_rollback). */
DSV4_API int dsv4_sequence_truncate(dsv4_sequence* seq, int64_t n);

/* n tokens (ids in [0, vocab)) at the sequence's next positions; logits: a float32 [n, vocab] contiguous CPU
 * DLTensor, or NULL when no logits are wanted. */
DSV4_API int dsv4_forward(dsv4_model* model, dsv4_sequence* seq, const int64_t* tokens, int64_t n,
                          DLTensor* logits);

/* Several sequences of one model in one call (each weight read once per step); each entry's logits are bitwise
 * what dsv4_forward gives for it alone. */
typedef struct dsv4_batch_entry {
  dsv4_sequence* seq;
  const int64_t* tokens;
  int64_t n;
  DLTensor* logits; /* float32 [n, vocab], or NULL */
} dsv4_batch_entry;
DSV4_API int dsv4_forward_batch(dsv4_model* model, const dsv4_batch_entry* entries, int64_t count);

/* ---- number formats (dsv4/ops/quant.hpp, hadamard.hpp, linear.hpp) ------------------------------------------ */

/* x [..., K] f32|bf16 -> q (FP8 or FP4 codes, q_dtype says which) and scale [..., K/block] UE8M0 (uint8). */
DSV4_API int dsv4_block_quantize(const DLTensor* x, DLTensor* q, dsv4_dtype q_dtype, DLTensor* scale, int32_t block,
                                 const dsv4_exec* ex);
/* fmt: DSV4_DTYPE_FP8_E4M3 or DSV4_DTYPE_FP4_E2M1; y may be x. */
DSV4_API int dsv4_block_round_trip(const DLTensor* x, DLTensor* y, dsv4_dtype fmt, int32_t block,
                                   const dsv4_exec* ex);
DSV4_API int dsv4_dequantize(const DLTensor* q, dsv4_dtype q_dtype, const DLTensor* scale, DLTensor* out,
                             int32_t block_rows, int32_t block_cols, const dsv4_exec* ex);
DSV4_API int dsv4_hadamard(const DLTensor* x, DLTensor* y, const dsv4_exec* ex);
/* y [T, N] = x [T, K] · W^T; W [N, K] f32|bf16 (w_scale NULL), FP8 with 128x128 UE8M0 tiles or FP4 with 1x32. */
DSV4_API int dsv4_linear(const DLTensor* x, const DLTensor* w, dsv4_dtype w_dtype, const DLTensor* w_scale,
                         DLTensor* y, const dsv4_exec* ex);

/* ---- mHC (dsv4/ops/mhc.hpp) ------------------------------------------------------------------------------- */

typedef struct dsv4_mhc_config {
  int32_t sinkhorn_iters; /* 20 in V4 */
  float hc_eps;           /* 1e-6 */
  float norm_eps;         /* 1e-6 */
} dsv4_mhc_config;

DSV4_API int dsv4_sinkhorn_knopp(const DLTensor* logits, DLTensor* out, int32_t iters, float eps,
                                 const dsv4_exec* ex);
/* cfg NULL: the V4 defaults. */
DSV4_API int dsv4_hc_pre(const DLTensor* x, const DLTensor* fn, const DLTensor* scale, const DLTensor* base,
                         DLTensor* y, DLTensor* post, DLTensor* comb, const dsv4_mhc_config* cfg, const dsv4_exec* ex);
DSV4_API int dsv4_hc_post(const DLTensor* f, const DLTensor* x, const DLTensor* post, const DLTensor* comb,
                          DLTensor* out, const dsv4_exec* ex);
DSV4_API int dsv4_hc_head(const DLTensor* x, const DLTensor* fn, const DLTensor* scale, const DLTensor* base,
                          DLTensor* y, const dsv4_mhc_config* cfg, const dsv4_exec* ex);

/* ---- MoE routing (dsv4/ops/moe.hpp) ------------------------------------------------------------------------ */

typedef enum dsv4_score_func { DSV4_SCORE_SQRTSOFTPLUS = 0, DSV4_SCORE_SIGMOID = 1, DSV4_SCORE_SOFTMAX = 2 } dsv4_score_func;
typedef struct dsv4_route_config {
  int32_t score_func; /* dsv4_score_func */
  int32_t topk;
  float route_scale;
} dsv4_route_config;

/* bias may be NULL. */
DSV4_API int dsv4_moe_route(const DLTensor* logits, const dsv4_route_config* cfg, const DLTensor* bias,
                            DLTensor* weights, DLTensor* experts, const dsv4_exec* ex);
DSV4_API int dsv4_moe_hash_route(const DLTensor* logits, const dsv4_route_config* cfg, const DLTensor* token_ids,
                                 const DLTensor* tid2eid, DLTensor* weights, DLTensor* experts, const dsv4_exec* ex);

/* ---- attention kernels (dsv4/ops/attention.hpp) ------------------------------------------------------------ */

DSV4_API int dsv4_indexer_scores(const DLTensor* q, const DLTensor* k, const DLTensor* w, const DLTensor* visible,
                                 DLTensor* scores, const dsv4_exec* ex);
DSV4_API int dsv4_topk_select(const DLTensor* scores, const DLTensor* count, DLTensor* idx, const dsv4_exec* ex);
/* kv_compressed may be NULL. */
DSV4_API int dsv4_sparse_attention(const DLTensor* q, const DLTensor* kv_window, const DLTensor* kv_compressed,
                                   const DLTensor* idx, const DLTensor* sink, float scale, DLTensor* out,
                                   const dsv4_exec* ex);

/* ---- paged caches (dsv4/cache.hpp, dsv4/ops/paged.hpp) ----------------------------------------------------- */

typedef struct dsv4_kv_pages {
  DLTensor* pages;      /* uint8 [num_pages, >= page_bytes] */
  int32_t format;       /* dsv4_kv_format */
  int64_t head_dim, rope_dim, page_tokens;
} dsv4_kv_pages;

typedef struct dsv4_key_pages {
  DLTensor* pages;      /* uint8 [num_pages, >= page_bytes] */
  int32_t format;       /* dsv4_key_format */
  int64_t dim, page_tokens;
} dsv4_key_pages;

typedef struct dsv4_state_rows {
  DLTensor* rows;       /* float32 [slots, 2 · coff · c] */
  int64_t page_tokens;
} dsv4_state_rows;

typedef struct dsv4_compressor_params {
  int32_t ratio;        /* 4 or 128 */
  int64_t c, rope_dim;
  double norm_eps;
  int32_t indexer;      /* 0: FP8 entries into KV pages; 1: Hadamard + FP4 keys into key pages */
} dsv4_compressor_params;

typedef struct dsv4_sparse_segment {
  dsv4_kv_pages kv;
  DLTensor* slots;      /* int32 [T, K] */
  DLTensor* len;        /* int32 [T], or NULL (every lane) */
} dsv4_sparse_segment;

/* Page geometry: bytes per entry / key and per page (the layouts of dsv4/cache.hpp). */
DSV4_API int dsv4_kv_page_bytes(int32_t format, int64_t head_dim, int64_t rope_dim, int64_t page_tokens,
                                int64_t* entry_bytes, int64_t* page_bytes);
DSV4_API int dsv4_key_page_bytes(int32_t format, int64_t dim, int64_t page_tokens, int64_t* key_bytes,
                                 int64_t* page_bytes);

DSV4_API int dsv4_kv_store(const DLTensor* values, const DLTensor* slots, const dsv4_kv_pages* kv, const dsv4_exec* ex);
DSV4_API int dsv4_kv_load(const dsv4_kv_pages* kv, const DLTensor* slots, DLTensor* values, const dsv4_exec* ex);
DSV4_API int dsv4_key_store(const DLTensor* values, const DLTensor* slots, const dsv4_key_pages* keys,
                            const dsv4_exec* ex);
DSV4_API int dsv4_key_load(const dsv4_key_pages* keys, const DLTensor* slots, DLTensor* values, const dsv4_exec* ex);
DSV4_API int dsv4_compressor_append(const DLTensor* kv, const DLTensor* score, const DLTensor* ape,
                                    const DLTensor* positions, const DLTensor* state_slot, const dsv4_state_rows* state,
                                    const dsv4_compressor_params* params, const dsv4_exec* ex);
/* main_out for the main compressor, key_out for the indexer's (the other NULL); entries may be NULL. */
DSV4_API int dsv4_compressor_emit(const DLTensor* positions, const DLTensor* row_req, const DLTensor* state_table,
                                  const dsv4_state_rows* state, const DLTensor* norm_weight, const DLTensor* rope_freq,
                                  const DLTensor* out_slot, const dsv4_compressor_params* params,
                                  const dsv4_kv_pages* main_out, const dsv4_key_pages* key_out, DLTensor* entries,
                                  const dsv4_exec* ex);
DSV4_API int dsv4_indexer_logits(const DLTensor* q, const DLTensor* w, const dsv4_key_pages* keys,
                                 const DLTensor* block_table, const DLTensor* row_req, const DLTensor* n_keys,
                                 DLTensor* logits, const dsv4_exec* ex);
DSV4_API int dsv4_topk_rows(const DLTensor* logits, const DLTensor* n_keys, DLTensor* idx, DLTensor* len,
                            const dsv4_exec* ex);
/* len may be NULL. */
DSV4_API int dsv4_to_slots(const DLTensor* idx, const DLTensor* len, const DLTensor* row_req,
                           const DLTensor* block_table, int64_t page_tokens, DLTensor* slots, const dsv4_exec* ex);
/* slots may be NULL. */
DSV4_API int dsv4_indexer_topk(const DLTensor* q, const DLTensor* w, const dsv4_key_pages* keys,
                               const DLTensor* block_table, const DLTensor* row_req, const DLTensor* n_keys,
                               DLTensor* idx, DLTensor* len, DLTensor* slots, const dsv4_exec* ex);
/* compressed and lse may be NULL. */
DSV4_API int dsv4_sparse_mqa(const DLTensor* q, const dsv4_sparse_segment* window,
                             const dsv4_sparse_segment* compressed, const DLTensor* sink, float scale, DLTensor* out,
                             DLTensor* lse, const dsv4_exec* ex);

#ifdef __cplusplus
}
#endif

#endif /* DSV4_C_API_H */
