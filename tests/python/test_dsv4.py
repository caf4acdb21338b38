"""Tests of the Python module dsv4: every binding against the C++ API's results, bit for bit (the inputs and
results capi_ref writes, the same files the C ABI test uses), the model, errors as dsv4.Error, lifetimes, strided
and read-only inputs, wrong dtypes, threads, and zero-copy PyTorch interop when torch imports.

Run by ctest (`python`): PYTHONPATH=<build>/python, DSV4_TOOL=<dsv4>, DSV4_CAPI_REF=<capi_ref>.
"""
import gc
import os
import subprocess
import threading

import numpy as np
import pytest

import dsv4

try:
    import torch
except Exception:  # noqa: BLE001 - torch is optional
    torch = None


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("dsv4")
    subprocess.run([os.environ["DSV4_TOOL"], "synth", "--preset", "tiny", "--seed", "12", "--out", str(d / "model")],
                   check=True, capture_output=True)
    subprocess.run([os.environ["DSV4_CAPI_REF"], str(d / "model"), str(d / "ref")], check=True, capture_output=True)
    return d


@pytest.fixture(scope="session")
def ref(work):
    return lambda name: np.load(work / "ref" / (name + ".npy"))


@pytest.fixture(scope="session")
def model(work):
    return dsv4.load(str(work / "model"))


def same(a, b):
    """Bitwise equality: same dtype, shape and bytes (NaN-safe)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- ops against the C++ results --------------------------------------------------------------------------------

def test_number_formats(ref):
    x = ref("x")
    q, s = dsv4.ops.block_quantize(x, "fp8_e4m3", 128)
    assert same(q, ref("quant_fp8_q")) and same(s, ref("quant_fp8_s"))
    q4, s4 = dsv4.ops.block_quantize(x, "fp4_e2m1", 32)
    assert q4.shape == (6, 128)  # two codes per byte
    assert same(q4, ref("quant_fp4_q")) and same(s4, ref("quant_fp4_s"))
    assert same(dsv4.ops.block_round_trip(x, "fp4_e2m1", 32), ref("round_trip_fp4"))
    assert same(dsv4.ops.dequantize(q, s, "fp8_e4m3", 1, 128), ref("dequant_fp8"))
    assert same(dsv4.ops.hadamard(x), ref("hadamard"))
    y = dsv4.ops.linear(x, ref("linear_w"), ref("linear_ws"), w_fmt="fp8_e4m3")
    assert same(y, ref("linear_y"))


def test_mhc(ref):
    y, post, comb = dsv4.ops.hc_pre(ref("hc_x"), ref("hc_fn"), ref("hc_scale"), ref("hc_base"))
    assert same(y, ref("hc_pre_y")) and same(post, ref("hc_pre_post")) and same(comb, ref("hc_pre_comb"))
    assert same(dsv4.ops.hc_post(ref("hc_f"), ref("hc_x"), post, comb), ref("hc_post_out"))
    assert same(dsv4.ops.sinkhorn_knopp(ref("sinkhorn_in"), 20, 1e-6), ref("sinkhorn_out"))
    assert same(dsv4.ops.hc_head(ref("hc_x"), ref("hc_head_fn"), ref("hc_head_scale"), ref("hc_head_base")),
                ref("hc_head_y"))


def test_routing(ref):
    w, e = dsv4.ops.moe_route(ref("route_logits"), 4, "sqrtsoftplus", 1.5, bias=ref("route_bias"))
    assert same(w, ref("route_w")) and same(e, ref("route_i"))
    w, e = dsv4.ops.moe_hash_route(ref("route_logits"), ref("hash_tokens"), ref("hash_table"), 4, "sqrtsoftplus", 1.5)
    assert same(w, ref("hash_w")) and same(e, ref("hash_i"))


def test_attention_kernels(ref):
    scores = dsv4.ops.indexer_scores(ref("idx_q"), ref("idx_k"), ref("idx_w"), ref("idx_visible"))
    assert same(scores, ref("idx_scores"))
    assert same(dsv4.ops.topk_select(scores, ref("idx_visible"), 8), ref("idx_topk"))
    out = dsv4.ops.sparse_attention(ref("att_q"), ref("att_kvw"), ref("att_idx"), ref("att_sink"), 0.1,
                                    kv_compressed=ref("att_kvc"))
    assert same(out, ref("att_out"))


def test_paged_ops(ref):
    entry, page = dsv4.KVPages.page_bytes(512, 64, 64)
    assert (entry, page) == (584, 37440)
    assert dsv4.KeyPages.page_bytes(128, 64) == (68, 64 * 68)
    pages = np.zeros_like(ref("kv_pages"))
    kv = dsv4.KVPages(pages, 96, 32, 5)
    dsv4.ops.kv_store(ref("kv_values"), ref("kv_slots"), kv)
    assert same(pages, ref("kv_pages"))  # written in place, zero copy
    assert same(dsv4.ops.kv_load(kv, ref("kv_slots")), ref("kv_back"))
    kpages = np.zeros_like(ref("key_pages"))
    keys = dsv4.KeyPages(kpages, 64, 5)
    dsv4.ops.key_store(ref("key_values"), ref("key_slots"), keys)
    assert same(kpages, ref("key_pages"))
    assert same(dsv4.ops.key_load(keys, ref("key_slots")), ref("key_back"))
    logits = dsv4.ops.indexer_logits(ref("pi_q"), ref("pi_w"), keys, ref("pi_table"), ref("pi_req"), ref("pi_nkeys"), 16)
    assert same(logits, ref("pi_logits"))
    idx, n = dsv4.ops.topk_rows(logits, ref("pi_nkeys"), 6)
    assert same(idx, ref("pi_topk")) and same(n, ref("pi_len"))
    assert same(dsv4.ops.to_slots(idx, n, ref("pi_req"), ref("pi_table"), 5), ref("pi_slots"))
    fi, fl, fs = dsv4.ops.indexer_topk(ref("pi_q"), ref("pi_w"), keys, ref("pi_table"), ref("pi_req"),
                                       ref("pi_nkeys"), 6)
    assert same(fi, idx) and same(fl, n) and same(fs, ref("pi_fused_slots"))
    out, lse = dsv4.ops.sparse_mqa(ref("mqa_q"), kv, ref("mqa_wslots"), ref("mqa_wlen"), ref("mqa_sink"), 0.1,
                                   compressed_slots=ref("mqa_cslots"), compressed_len=ref("mqa_clen"))
    assert same(out, ref("mqa_out")) and same(lse, ref("mqa_lse"))


def test_compressor_against_cpp(ref):
    state = np.zeros_like(ref("comp_state"))
    dsv4.ops.compressor_append(ref("comp_kv"), ref("comp_score"), ref("comp_ape"), ref("comp_pos"), ref("comp_slot"),
                               state, 4, 4, 96, 32)
    assert same(state, ref("comp_state"))
    pages = dsv4.KVPages(np.zeros_like(ref("comp_pages")), 96, 32, 2, "f32")
    entries = dsv4.ops.compressor_emit(ref("comp_pos"), ref("comp_req"), ref("comp_table"), state, 4, ref("comp_norm"),
                                       ref("comp_freq"), ref("comp_out"), pages, 4, 96, 32)
    assert same(entries, ref("comp_entries"))
    assert same(dsv4.ops.kv_load(pages, np.array([0, 1], np.int32)), ref("comp_entries")[[7, 3]])


def test_compressor_ops():
    # Ratio 4 over 8 positions of one request: state pages of 4 rows, entries into f32 KV pages (exact).
    rng = np.random.default_rng(5)
    c, cw = 96, 192
    kv, score = (rng.standard_normal((8, cw)).astype(np.float32) for _ in range(2))
    ape = rng.standard_normal((4, cw)).astype(np.float32)
    state = np.zeros((8, 2 * cw), np.float32)
    pos = np.arange(8, dtype=np.int64)
    slots = np.arange(8, dtype=np.int32)
    dsv4.ops.compressor_append(kv, score, ape, pos, slots, state, 4, 4, c, 32)
    assert np.array_equal(state[:, :cw], kv) and np.array_equal(state[5, cw:], score[5] + ape[1])
    _, pbytes = dsv4.KVPages.page_bytes(c, 32, 2, "f32")
    pages = dsv4.KVPages(np.zeros((1, pbytes), np.uint8), c, 32, 2, "f32")
    out_slot = np.array([-1, -1, -1, 0, -1, -1, -1, 1], np.int32)
    entries = dsv4.ops.compressor_emit(pos, np.zeros(8, np.int32), np.array([[0, 1]], np.int32), state, 4,
                                       np.ones(c, np.float32), np.full(16, 0.01, np.float32), out_slot, pages, 4, c, 32)
    assert np.array_equal(dsv4.ops.kv_load(pages, np.array([0, 1], np.int32)), entries[[3, 7]])
    assert not entries[[0, 1, 2, 4, 5, 6]].any()


# ---- the model ------------------------------------------------------------------------------------------------

def test_model(model, ref):
    cfg = model.config
    assert cfg["vocab_size"] == 512 and cfg["num_hidden_layers"] == 4 and cfg["compress_ratios"][:4] == [0, 4, 128, 4]
    prompt = ref("model_prompt")
    a, b = model.new_sequence(64), model.new_sequence(64)
    chunks = [model.forward(prompt[i:i + 8], a) for i in range(0, 30, 8)]
    assert same(np.concatenate(chunks), ref("model_logits"))
    assert a.pos == 30
    model.forward(list(prompt[:5]), b)  # a plain list of ints works too
    la, lb = model.forward_batch([([7, 8], a), ([9], b)])
    assert same(la, ref("model_batch_a")) and same(lb, ref("model_batch_b"))
    a.truncate(31)
    assert a.pos == 31
    assert same(model.forward([3], a), ref("model_rollback"))
    # Without a sequence: a fresh one each call, the same logits as a chunked run.
    assert same(model.forward(prompt), ref("model_logits"))


def test_model_official_numerics(work, ref):
    official = dsv4.load(str(work / "model"), numerics="official")
    assert same(official.forward(ref("model_prompt")), ref("model_official"))
    with pytest.raises(dsv4.Error, match="unknown numerics policy"):
        dsv4.load(str(work / "model"), numerics="bf16")


def test_model_cuda_backend(work, ref):
    # The whole forward pass on GPU 0. The test model is `tiny`, whose head_dim 96 the CUDA attention does not take:
    # a clear error either way (no GPU, or that shape); tests/test_cuda_forward.cpp runs the `small` preset there.
    with pytest.raises(dsv4.Error, match="no CUDA device is visible|head_dim 128, 256 or 512"):
        dsv4.load(str(work / "model"), backend="cuda")
    with pytest.raises(dsv4.Error, match="fp32 only|no CUDA device"):
        dsv4.load(str(work / "model"), backend="cuda", numerics="official")


def test_errors(model, ref):
    with pytest.raises(dsv4.Error, match="outside the vocabulary"):
        model.forward([1, 100000])
    with pytest.raises(RuntimeError, match="no config file"):
        dsv4.load("/nonexistent")
    with pytest.raises(dsv4.Error, match="float64 is not a dsv4 dtype"):
        dsv4.ops.hadamard(np.ones((2, 64), np.float64))
    with pytest.raises(dsv4.Error, match="multiple of block"):
        dsv4.ops.block_quantize(np.ones((2, 100), np.float32), "fp8_e4m3", 128)
    with pytest.raises(dsv4.Error, match="format \"fp16\""):
        dsv4.ops.block_round_trip(np.ones((1, 32), np.float32), "fp16", 32)
    seq = model.new_sequence(64)
    model.forward([1, 2, 3], seq)
    with pytest.raises(dsv4.Error, match="cannot truncate"):
        seq.truncate(10)


def test_lifetimes(work):
    m = dsv4.load(str(work / "model"))
    seq = m.new_sequence(32)
    m.forward([1, 2, 3], seq)
    del m
    gc.collect()
    assert seq.pos == 3  # the sequence keeps what it needs
    seq.truncate(1)
    assert seq.pos == 1
    del seq
    gc.collect()


def test_strided_and_readonly_inputs(ref):
    x = ref("x")
    wide = np.zeros((6, 512), np.float32)
    wide[:, ::2] = x
    strided = wide[:, ::2]  # inner stride 2: read in place (the ref backend takes strided views; quantizers are
    assert not strided.flags["C_CONTIGUOUS"]  # bitwise equal on every backend)
    assert same(dsv4.ops.block_round_trip(strided, "fp4_e2m1", 32), ref("round_trip_fp4"))
    ro = x.copy()
    ro.setflags(write=False)
    assert same(dsv4.ops.hadamard(ro), ref("hadamard"))  # read-only inputs are fine (buffer protocol)
    with pytest.raises(dsv4.Error, match="read-only"):
        dsv4.ops.hadamard(x, out=ro)
    out = np.empty_like(x)
    assert dsv4.ops.hadamard(x, out=out) is out
    assert same(out, ref("hadamard"))


def test_threads_release_the_gil(model, ref):
    # Four threads at once, each its own sequence: the GIL is released inside, results are the same as alone.
    prompt = ref("model_prompt")
    results = [None] * 4

    def run(i):
        results[i] = model.forward(prompt)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert same(r, ref("model_logits"))


@pytest.mark.skipif(torch is None, reason="torch does not import here")
def test_torch_zero_copy(ref):
    x = torch.from_numpy(ref("x").copy())
    assert same(dsv4.ops.hadamard(x), ref("hadamard"))
    out = torch.empty_like(x)
    dsv4.ops.hadamard(x, out=out)  # written in place through DLPack
    assert same(out.numpy(), ref("hadamard"))
    pages = torch.zeros(tuple(ref("kv_pages").shape), dtype=torch.uint8)
    dsv4.ops.kv_store(torch.from_numpy(ref("kv_values").copy()), torch.from_numpy(ref("kv_slots").copy()),
                      dsv4.KVPages(pages, 96, 32, 5))
    assert same(pages.numpy(), ref("kv_pages"))
    q = x.to(torch.bfloat16)  # bfloat16 crosses through DLPack
    rt = dsv4.ops.block_round_trip(q, "fp8_e4m3", 128)
    assert rt.dtype == np.float32


def test_arrays_released_while_in_use(model, ref):
    # The caller drops its only reference while dsv4 computes on another thread: the binding holds its own
    # reference (and DLPack capsule) for the whole call, so the memory stays valid.
    results = {}
    tokens = np.array(ref("model_prompt"))
    x = ref("x").copy()

    def run(tokens, x):
        results["logits"] = model.forward(tokens)
        results["h"] = dsv4.ops.hadamard(x)

    t = threading.Thread(target=run, args=(tokens, x))
    t.start()
    del tokens, x
    gc.collect()
    t.join()
    assert same(results["logits"], ref("model_logits"))
    assert same(results["h"], ref("hadamard"))
