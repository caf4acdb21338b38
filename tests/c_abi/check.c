/* check MODEL_DIR REF_DIR — a C11 program against the installed libdsv4 (pkg-config dsv4): runs every entry point of
 * the C ABI on the inputs capi_ref wrote to REF_DIR and requires each output to equal the C++ API's result byte for
 * byte; then the error paths (status codes, dsv4_last_error, NULL arguments). Prints "c_abi: N checks" on success.
 */
#include <dsv4/c_api.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char* g_dir;
static int g_checks = 0, g_failed = 0;

/* Every buffer this program allocates, freed at the end (the sanitizer build checks for leaks). */
static void* g_allocs[1024];
static int g_nallocs = 0;
static void* track(void* p) {
  if (!p || g_nallocs == 1024) {
    fprintf(stderr, "check: out of memory\n");
    exit(1);
  }
  g_allocs[g_nallocs++] = p;
  return p;
}
static void free_all(void) {
  while (g_nallocs > 0) free(g_allocs[--g_nallocs]);
}

typedef struct arr {
  DLTensor t;
  int64_t shape[6];
  void* data;
  size_t bytes;
} arr;

static void die(const char* what) {
  fprintf(stderr, "check: %s (%s)\n", what, dsv4_last_error());
  exit(1);
}

/* A .npy file of dtype <f4, <i4, <i8 or |u1 (C order). */
static arr load(const char* name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s.npy", g_dir, name);
  FILE* f = fopen(path, "rb");
  if (!f) die(path);
  unsigned char pre[10];
  if (fread(pre, 1, 10, f) != 10) die(path);
  const size_t hl = (size_t)pre[8] | ((size_t)pre[9] << 8);
  char* h = (char*)calloc(hl + 1, 1);
  if (!h) die("out of memory");
  if (fread(h, 1, hl, f) != hl) die(path);
  arr a;
  memset(&a, 0, sizeof a);
  const char* d = strstr(h, "'descr': '") + 10;
  int bits = 32, code = kDLFloat;
  if (!strncmp(d, "<f4", 3)) { bits = 32; code = kDLFloat; }
  else if (!strncmp(d, "<i4", 3)) { bits = 32; code = kDLInt; }
  else if (!strncmp(d, "<i8", 3)) { bits = 64; code = kDLInt; }
  else if (!strncmp(d, "|u1", 3)) { bits = 8; code = kDLUInt; }
  else die("dtype");
  const char* s = strchr(strstr(h, "'shape': ("), '(') + 1;
  int nd = 0;
  size_t n = 1;
  while (*s && *s != ')') {
    char* end;
    const long long v = strtoll(s, &end, 10);
    if (end == s) break;
    a.shape[nd++] = v;
    n *= (size_t)v;
    s = end;
    while (*s == ',' || *s == ' ') ++s;
  }
  free(h);
  a.bytes = n * (size_t)(bits / 8);
  a.data = track(malloc(a.bytes ? a.bytes : 1));
  if (fread(a.data, 1, a.bytes, f) != a.bytes) die(path);
  fclose(f);
  a.t.data = a.data;
  a.t.device.device_type = kDLCPU;
  a.t.ndim = nd;
  a.t.dtype.code = (uint8_t)code;
  a.t.dtype.bits = (uint8_t)bits;
  a.t.dtype.lanes = 1;
  a.t.shape = (int64_t*)track(malloc(sizeof(int64_t) * 6)); /* on the heap: the struct is returned by value */
  memcpy(a.t.shape, a.shape, sizeof a.shape);
  a.t.strides = NULL;
  return a;
}

/* A zeroed output shaped like reference `ref`. */
static arr like(const arr* ref) {
  arr a = *ref;
  a.data = track(calloc(a.bytes ? a.bytes : 1, 1));
  a.t.data = a.data;
  a.t.shape = (int64_t*)track(malloc(sizeof(int64_t) * 6));
  memcpy(a.t.shape, a.shape, sizeof a.shape);
  return a;
}

static void same(const char* what, const arr* got, const char* ref_name) {
  arr ref = load(ref_name);
  ++g_checks;
  if (got->bytes != ref.bytes || memcmp(got->data, ref.data, ref.bytes) != 0) {
    ++g_failed;
    fprintf(stderr, "MISMATCH %s vs %s\n", what, ref_name);
  }
}

static void ok(int status, const char* what) {
  if (status != DSV4_OK) {
    fprintf(stderr, "%s failed: %d %s\n", what, status, dsv4_last_error());
    exit(1);
  }
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: check MODEL_DIR REF_DIR\n");
    return 2;
  }
  g_dir = argv[2];
  printf("dsv4 %s\n", dsv4_version());

  /* Number formats. */
  arr x = load("x");
  arr r = load("quant_fp8_q"), rs = load("quant_fp8_s");
  arr q8 = like(&r), s8 = like(&rs);
  ok(dsv4_block_quantize(&x.t, &q8.t, DSV4_DTYPE_FP8_E4M3, &s8.t, 128, NULL), "block_quantize fp8");
  same("block_quantize fp8 codes", &q8, "quant_fp8_q");
  same("block_quantize fp8 scales", &s8, "quant_fp8_s");
  r = load("quant_fp4_q");
  rs = load("quant_fp4_s");
  arr q4 = like(&r), s4 = like(&rs);
  ok(dsv4_block_quantize(&x.t, &q4.t, DSV4_DTYPE_FP4_E2M1, &s4.t, 32, NULL), "block_quantize fp4");
  same("block_quantize fp4 codes", &q4, "quant_fp4_q");
  same("block_quantize fp4 scales", &s4, "quant_fp4_s");
  arr y = like(&x);
  ok(dsv4_block_round_trip(&x.t, &y.t, DSV4_DTYPE_FP4_E2M1, 32, NULL), "round trip");
  same("block_round_trip fp4", &y, "round_trip_fp4");
  ok(dsv4_dequantize(&q8.t, DSV4_DTYPE_FP8_E4M3, &s8.t, &y.t, 1, 128, NULL), "dequantize");
  same("dequantize fp8", &y, "dequant_fp8");
  ok(dsv4_hadamard(&x.t, &y.t, NULL), "hadamard");
  same("hadamard", &y, "hadamard");
  arr lw = load("linear_w"), lws = load("linear_ws"), ly_ref = load("linear_y"), ly = like(&ly_ref);
  dsv4_exec two = {DSV4_BACKEND_CPU, 2, NULL};
  ok(dsv4_linear(&x.t, &lw.t, DSV4_DTYPE_FP8_E4M3, &lws.t, &ly.t, &two), "linear");
  same("linear fp8", &ly, "linear_y");

  /* mHC. */
  arr hx = load("hc_x"), fn = load("hc_fn"), hs = load("hc_scale"), hb = load("hc_base");
  arr ry = load("hc_pre_y"), rp = load("hc_pre_post"), rc = load("hc_pre_comb");
  arr hy = like(&ry), hp = like(&rp), hc = like(&rc);
  ok(dsv4_hc_pre(&hx.t, &fn.t, &hs.t, &hb.t, &hy.t, &hp.t, &hc.t, NULL, NULL), "hc_pre");
  same("hc_pre y", &hy, "hc_pre_y");
  same("hc_pre post", &hp, "hc_pre_post");
  same("hc_pre comb", &hc, "hc_pre_comb");
  arr hf = load("hc_f"), ho = like(&hx);
  ok(dsv4_hc_post(&hf.t, &hx.t, &hp.t, &hc.t, &ho.t, NULL), "hc_post");
  same("hc_post", &ho, "hc_post_out");
  arr hhfn = load("hc_head_fn"), hhs = load("hc_head_scale"), hhb = load("hc_head_base"), hh_ref = load("hc_head_y");
  arr hh = like(&hh_ref);
  ok(dsv4_hc_head(&hx.t, &hhfn.t, &hhs.t, &hhb.t, &hh.t, NULL, NULL), "hc_head");
  same("hc_head", &hh, "hc_head_y");
  arr sl = load("sinkhorn_in"), so = like(&sl);
  ok(dsv4_sinkhorn_knopp(&sl.t, &so.t, 20, 1e-6f, NULL), "sinkhorn");
  same("sinkhorn_knopp", &so, "sinkhorn_out");

  /* MoE routing. */
  arr gl = load("route_logits"), gb = load("route_bias"), rw_ref = load("route_w"), ri_ref = load("route_i");
  arr rw = like(&rw_ref), ri = like(&ri_ref);
  dsv4_route_config rcfg = {DSV4_SCORE_SQRTSOFTPLUS, 4, 1.5f};
  ok(dsv4_moe_route(&gl.t, &rcfg, &gb.t, &rw.t, &ri.t, NULL), "moe_route");
  same("moe_route weights", &rw, "route_w");
  same("moe_route experts", &ri, "route_i");
  arr tid = load("hash_tokens"), tab = load("hash_table");
  ok(dsv4_moe_hash_route(&gl.t, &rcfg, &tid.t, &tab.t, &rw.t, &ri.t, NULL), "moe_hash_route");
  same("moe_hash_route weights", &rw, "hash_w");
  same("moe_hash_route experts", &ri, "hash_i");

  /* Attention kernels. */
  arr iq = load("idx_q"), ik = load("idx_k"), iw = load("idx_w"), vis = load("idx_visible");
  arr sc_ref = load("idx_scores"), sc = like(&sc_ref), tk_ref = load("idx_topk"), tk = like(&tk_ref);
  ok(dsv4_indexer_scores(&iq.t, &ik.t, &iw.t, &vis.t, &sc.t, NULL), "indexer_scores");
  same("indexer_scores", &sc, "idx_scores");
  ok(dsv4_topk_select(&sc.t, &vis.t, &tk.t, NULL), "topk_select");
  same("topk_select", &tk, "idx_topk");
  arr aq = load("att_q"), akw = load("att_kvw"), akc = load("att_kvc"), as = load("att_sink"), ai = load("att_idx");
  arr ao = like(&aq);
  ok(dsv4_sparse_attention(&aq.t, &akw.t, &akc.t, &ai.t, &as.t, 0.1f, &ao.t, NULL), "sparse_attention");
  same("sparse_attention", &ao, "att_out");

  /* Paged caches. */
  int64_t entry = 0, page = 0;
  ok(dsv4_kv_page_bytes(DSV4_KV_FP8_DS_MLA, 512, 64, 64, &entry, &page), "kv_page_bytes");
  ++g_checks;
  if (entry != 584 || page != 37440) { ++g_failed; fprintf(stderr, "MISMATCH V4 page geometry\n"); }
  int64_t key = 0, kpage = 0;
  ok(dsv4_key_page_bytes(DSV4_KEY_FP4, 128, 64, &key, &kpage), "key_page_bytes");
  ++g_checks;
  if (key != 68 || kpage != 64 * 68) { ++g_failed; fprintf(stderr, "MISMATCH FP4 key page geometry\n"); }
  arr pages_ref = load("kv_pages"), pages = like(&pages_ref), vals = load("kv_values"), slots = load("kv_slots");
  dsv4_kv_pages kv = {&pages.t, DSV4_KV_FP8_DS_MLA, 96, 32, 5};
  ok(dsv4_kv_store(&vals.t, &slots.t, &kv, NULL), "kv_store");
  same("kv_store page bytes", &pages, "kv_pages");
  arr back = like(&vals);
  ok(dsv4_kv_load(&kv, &slots.t, &back.t, NULL), "kv_load");
  same("kv_load", &back, "kv_back");
  arr kpages_ref = load("key_pages"), kpages = like(&kpages_ref), kvals = load("key_values"), kslots = load("key_slots");
  dsv4_key_pages keys = {&kpages.t, DSV4_KEY_FP4, 64, 5};
  ok(dsv4_key_store(&kvals.t, &kslots.t, &keys, NULL), "key_store");
  same("key_store page bytes", &kpages, "key_pages");
  arr kback = like(&kvals);
  ok(dsv4_key_load(&keys, &kslots.t, &kback.t, NULL), "key_load");
  same("key_load", &kback, "key_back");
  {
    arr ckv = load("comp_kv"), csc = load("comp_score"), cape = load("comp_ape"), cnorm = load("comp_norm");
    arr cfreq = load("comp_freq"), cpos = load("comp_pos"), cslot = load("comp_slot"), creq = load("comp_req");
    arr ctab = load("comp_table"), cout = load("comp_out"), state_ref = load("comp_state"), state = like(&state_ref);
    arr cpages_ref = load("comp_pages"), cpages = like(&cpages_ref), cent_ref = load("comp_entries");
    arr cent = like(&cent_ref);
    dsv4_state_rows rows = {&state.t, 4};
    dsv4_compressor_params p = {4, 96, 32, 1e-6, 0};
    ok(dsv4_compressor_append(&ckv.t, &csc.t, &cape.t, &cpos.t, &cslot.t, &rows, &p, NULL), "compressor_append");
    same("compressor_append state rows", &state, "comp_state");
    dsv4_kv_pages cp = {&cpages.t, DSV4_KV_F32, 96, 32, 2};
    ok(dsv4_compressor_emit(&cpos.t, &creq.t, &ctab.t, &rows, &cnorm.t, &cfreq.t, &cout.t, &p, &cp, NULL, &cent.t, NULL),
       "compressor_emit");
    same("compressor_emit pages", &cpages, "comp_pages");
    same("compressor_emit entries", &cent, "comp_entries");
  }
  arr pq = load("pi_q"), pw = load("pi_w"), bt = load("pi_table"), rq = load("pi_req"), nk = load("pi_nkeys");
  arr pl_ref = load("pi_logits"), pl = like(&pl_ref);
  ok(dsv4_indexer_logits(&pq.t, &pw.t, &keys, &bt.t, &rq.t, &nk.t, &pl.t, NULL), "indexer_logits");
  same("indexer_logits", &pl, "pi_logits");
  arr pi_ref = load("pi_topk"), pi = like(&pi_ref), pn_ref = load("pi_len"), pn = like(&pn_ref), ps = like(&pi_ref);
  ok(dsv4_topk_rows(&pl.t, &nk.t, &pi.t, &pn.t, NULL), "topk_rows");
  same("topk_rows idx", &pi, "pi_topk");
  same("topk_rows len", &pn, "pi_len");
  ok(dsv4_to_slots(&pi.t, &pn.t, &rq.t, &bt.t, 5, &ps.t, NULL), "to_slots");
  same("to_slots", &ps, "pi_slots");
  arr fi = like(&pi_ref), fl = like(&pn_ref), fs = like(&pi_ref);
  ok(dsv4_indexer_topk(&pq.t, &pw.t, &keys, &bt.t, &rq.t, &nk.t, &fi.t, &fl.t, &fs.t, NULL), "indexer_topk");
  same("indexer_topk slots", &fs, "pi_fused_slots");
  arr mq = load("mqa_q"), ms = load("mqa_sink"), wsl = load("mqa_wslots"), wln = load("mqa_wlen");
  arr csl = load("mqa_cslots"), cln = load("mqa_clen"), mlse_ref = load("mqa_lse"), mo = like(&mq), mlse = like(&mlse_ref);
  dsv4_sparse_segment win = {kv, &wsl.t, &wln.t}, comp = {kv, &csl.t, &cln.t};
  ok(dsv4_sparse_mqa(&mq.t, &win, &comp, &ms.t, 0.1f, &mo.t, &mlse.t, NULL), "sparse_mqa");
  same("sparse_mqa out", &mo, "mqa_out");
  same("sparse_mqa lse", &mlse, "mqa_lse");

  /* The model: chunked prefill, a batched decode of two sequences, a rollback. */
  dsv4_model* model = NULL;
  dsv4_model_options opts;
  dsv4_model_options_default(&opts);
  opts.threads = 2;
  ok(dsv4_model_open(argv[1], &opts, &model), "model_open");
  dsv4_model_info info;
  ok(dsv4_model_info_get(model, &info), "model_info");
  arr prompt = load("model_prompt"), lg_ref = load("model_logits"), lg = like(&lg_ref);
  const int64_t* p = (const int64_t*)prompt.data;
  dsv4_sequence *a = NULL, *b = NULL;
  ok(dsv4_sequence_new(model, 64, &a), "sequence_new");
  ok(dsv4_sequence_new(model, 64, &b), "sequence_new");
  for (int64_t t0 = 0; t0 < 30; t0 += 8) {
    const int64_t n = t0 + 8 <= 30 ? 8 : 30 - t0;
    DLTensor chunk = lg.t;
    int64_t shape[2] = {n, info.vocab_size};
    chunk.shape = shape;
    chunk.data = (float*)lg.data + t0 * info.vocab_size;
    ok(dsv4_forward(model, a, p + t0, n, &chunk), "forward");
  }
  same("forward logits (prefill in chunks of 8)", &lg, "model_logits");
  ok(dsv4_forward(model, b, p, 5, NULL), "forward without logits");
  arr la_ref = load("model_batch_a"), lb_ref = load("model_batch_b"), la = like(&la_ref), lb = like(&lb_ref);
  const int64_t ta[2] = {7, 8}, tb[1] = {9};
  dsv4_batch_entry e[2] = {{a, ta, 2, &la.t}, {b, tb, 1, &lb.t}};
  ok(dsv4_forward_batch(model, e, 2), "forward_batch");
  same("forward_batch sequence a", &la, "model_batch_a");
  same("forward_batch sequence b", &lb, "model_batch_b");
  ok(dsv4_sequence_truncate(a, 31), "truncate");
  int64_t pos = 0;
  ok(dsv4_sequence_pos(a, &pos), "pos");
  ++g_checks;
  if (pos != 31) { ++g_failed; fprintf(stderr, "MISMATCH pos %lld after truncate\n", (long long)pos); }
  arr lr_ref = load("model_rollback"), lr = like(&lr_ref);
  const int64_t tr[1] = {3};
  ok(dsv4_forward(model, a, tr, 1, &lr.t), "forward after rollback");
  same("forward after rollback", &lr, "model_rollback");
  {  /* the official numerics policy */
    dsv4_model* om = NULL;
    dsv4_sequence* os = NULL;
    ok(dsv4_model_open_numerics(argv[1], &opts, DSV4_NUMERICS_OFFICIAL, &om), "model_open_numerics");
    ok(dsv4_sequence_new(om, 64, &os), "sequence_new (official)");
    arr lo_ref = load("model_official"), lo = like(&lo_ref);
    ok(dsv4_forward(om, os, p, 30, &lo.t), "forward (official)");
    same("forward logits, numerics official", &lo, "model_official");
    dsv4_sequence_free(os);
    dsv4_model_close(om);
    dsv4_model* bad = NULL;
    ++g_checks;
    if (dsv4_model_open_numerics(argv[1], &opts, 7, &bad) != DSV4_ERROR || bad != NULL ||
        !strstr(dsv4_last_error(), "numerics 7")) {
      ++g_failed;
      fprintf(stderr, "MISMATCH bad numerics accepted: %s\n", dsv4_last_error());
    }
  }

  {  /* DSV4_BACKEND_CUDA: a clear error where no GPU is visible, and on a GPU for this model (tiny: head_dim 96, which
        the CUDA attention does not take); 4 is no backend at all */
    dsv4_model_options co = opts;
    dsv4_model* cm = NULL;
    co.backend = 4;
    ++g_checks;
    if (dsv4_model_open(argv[1], &co, &cm) != DSV4_ERROR || cm != NULL || !strstr(dsv4_last_error(), "backend 4")) {
      ++g_failed;
      fprintf(stderr, "MISMATCH backend 4 accepted: %s\n", dsv4_last_error());
    }
    co.backend = DSV4_BACKEND_CUDA;
    const int st = dsv4_model_open(argv[1], &co, &cm);
    ++g_checks;
    if (st == DSV4_OK || cm != NULL ||
        (!strstr(dsv4_last_error(), "no CUDA device is visible") && !strstr(dsv4_last_error(), "head_dim 128, 256"))) {
      ++g_failed;
      fprintf(stderr, "MISMATCH DSV4_BACKEND_CUDA open: %s\n", dsv4_last_error());
    }
    if (cm) dsv4_model_close(cm);
  }

  /* The thread's CUDA settings: validated when set, read back, ignored by host backends, reset by NULL. */
  {
    dsv4_cuda_exec bad_policy = {7, -1, NULL, NULL, 0}, no_status = {DSV4_CHECKS_DEFERRED, -1, NULL, NULL, 0};
    ++g_checks;
    if (dsv4_cuda_exec_set(&bad_policy) != DSV4_ERROR || !strstr(dsv4_last_error(), "checks 7")) {
      ++g_failed;
      fprintf(stderr, "MISMATCH bad check policy accepted: %s\n", dsv4_last_error());
    }
    ++g_checks;
    if (dsv4_cuda_exec_set(&no_status) != DSV4_ERROR || !strstr(dsv4_last_error(), "needs dsv4_cuda_exec.status")) {
      ++g_failed;
      fprintf(stderr, "MISMATCH deferred without a status word accepted: %s\n", dsv4_last_error());
    }
    uint32_t word = 0; /* a host address stands in: host backends never touch it */
    dsv4_cuda_exec none = {DSV4_CHECKS_NONE, -1, &word, NULL, 0}, back;
    ok(dsv4_cuda_exec_set(&none), "cuda_exec_set");
    ok(dsv4_cuda_exec_get(&back), "cuda_exec_get");
    ++g_checks;
    if (back.checks != DSV4_CHECKS_NONE || back.status != &word || back.device != -1) {
      ++g_failed;
      fprintf(stderr, "MISMATCH cuda_exec_get\n");
    }
    ok(dsv4_hadamard(&x.t, &y.t, NULL), "hadamard under CUDA settings");
    same("hadamard under CUDA settings", &y, "hadamard");
    ++g_checks;
    if (dsv4_cuda_check_status(NULL) != DSV4_ERROR || !strstr(dsv4_last_error(), "check_status")) {
      ++g_failed;
      fprintf(stderr, "MISMATCH check_status outside the deferred policy: %s\n", dsv4_last_error());
    }
    ok(dsv4_cuda_exec_set(NULL), "cuda_exec_set(NULL)");
    ok(dsv4_cuda_exec_get(&back), "cuda_exec_get");
    ++g_checks;
    if (back.checks != DSV4_CHECKS_SYNC || back.status != NULL) {
      ++g_failed;
      fprintf(stderr, "MISMATCH cuda_exec_set(NULL) did not reset\n");
    }
  }

  /* Errors: status codes and messages, never a crash. */
  ++g_checks;
  if (dsv4_forward(model, a, tr, 1, &lg.t) != DSV4_ERROR || !strstr(dsv4_last_error(), "expected contiguous f32[1, ")) {
    ++g_failed;
    fprintf(stderr, "MISMATCH wrong logits shape: %s\n", dsv4_last_error());
  }
  ++g_checks;
  if (dsv4_hadamard(NULL, &y.t, NULL) != DSV4_ERROR_NULL || !strstr(dsv4_last_error(), "argument x is NULL")) {
    ++g_failed;
    fprintf(stderr, "MISMATCH NULL argument: %s\n", dsv4_last_error());
  }
  ++g_checks;
  dsv4_model* none = NULL;
  if (dsv4_model_open("/nonexistent", NULL, &none) != DSV4_ERROR || none != NULL ||
      !strstr(dsv4_last_error(), "no config file")) {
    ++g_failed;
    fprintf(stderr, "MISMATCH missing model: %s\n", dsv4_last_error());
  }
  ++g_checks;
  if (dsv4_block_quantize(&x.t, &q8.t, DSV4_DTYPE_UE8M0, &s8.t, 128, NULL) != DSV4_ERROR) {
    ++g_failed;
    fprintf(stderr, "MISMATCH bad dtype accepted\n");
  }
  ++g_checks;
  if (dsv4_hadamard(&x.t, &y.t, NULL) != DSV4_OK || dsv4_last_error()[0] != '\0') {
    ++g_failed;
    fprintf(stderr, "MISMATCH the last error is not cleared by a success\n");
  }
  /* The model handle may go first: the sequences keep what they need and are freed afterwards. */
  ok(dsv4_model_close(model), "model_close");
  ok(dsv4_sequence_free(a), "sequence_free");
  ok(dsv4_sequence_free(b), "sequence_free");

  printf("c_abi: %d checks, %d mismatches\n", g_checks, g_failed);
  free_all();
  return g_failed == 0 ? 0 : 1;
}
