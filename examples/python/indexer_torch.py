"""The FP4 lightning indexer on PyTorch tensors, checked against a few lines of PyTorch.

    PYTHONPATH=build/release/python python3 examples/python/indexer_torch.py

Queries and keys go through the indexer's own numerics (Hadamard, then an FP4 E2M1 round trip with UE8M0 scales per
32 values) with dsv4.ops on the torch tensors themselves (DLPack, no copies), then the scores
score[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s]) come from dsv4 and from plain PyTorch. The keys are also stored
in DeepGEMM's paged FP4 layout (68 bytes per key) and the fused paged top-k picks the same entries.
"""
import torch

import dsv4

torch.manual_seed(0)
T, H, C, N = 4, 64, 128, 1000  # V4: 64 indexer heads of 128 dims
q = torch.randn(T, H, C)
k = torch.randn(N, C)
w = torch.randn(T, H) / (C ** 0.5 * H ** 0.5)
for x in (q, k):
    dsv4.ops.hadamard(x, out=x)                         # in place on the torch storage
    dsv4.ops.block_round_trip(x, "fp4_e2m1", 32, out=x)
visible = torch.tensor([N, 700, 1, 0], dtype=torch.int32)

got = torch.from_numpy(dsv4.ops.indexer_scores(q, k, w, visible))
want = (w[:, :, None] * torch.relu(torch.einsum("thc,sc->ths", q.double(), k.double()))).sum(1).float()
for t in range(T):
    n = int(visible[t])
    assert torch.all(torch.isneginf(got[t, n:])), "entries past the visible ones are -inf"
    # fp32 sums in another order: within 1e-5 of the largest |score| of the row.
    err = (got[t, :n] - want[t, :n]).abs().max().item() if n else 0.0
    assert err <= 1e-5 * max(1.0, want[t, :n].abs().max().item() if n else 1.0), err
    print(f"row {t}: {n} keys, max |dsv4 - torch| = {err:.2e}")

# Paged: the same keys in FP4 pages of 64 keys (random page order), fused scores + top-16.
B = 64
pages_needed = (N + B - 1) // B
_, page_bytes = dsv4.KeyPages.page_bytes(C, B)
pages = torch.zeros(pages_needed, page_bytes, dtype=torch.uint8)
table = torch.randperm(pages_needed, dtype=torch.int32)[None, :]
slots = torch.tensor([int(table[0, s // B]) * B + s % B for s in range(N)], dtype=torch.int32)
keys = dsv4.KeyPages(pages, C, B, "fp4")
dsv4.ops.key_store(k, slots, keys)
idx, length, _ = dsv4.ops.indexer_topk(q, w, keys, table, torch.zeros(T, dtype=torch.int32), visible, 16)
for t in range(T):
    n = int(length[t])
    ref = torch.topk(got[t, : int(visible[t])], n).indices if n else torch.empty(0, dtype=torch.int64)
    assert set(idx[t, :n].tolist()) == set(ref.tolist())
print("paged FP4 keys (68 B each), fused top-16: the same picks as torch.topk on the scores")
