"""Run a DeepSeek-V4 checkpoint from Python on NumPy: a prompt, greedy decoding, a batch, a rollback.

    PYTHONPATH=build/release/python python3 examples/python/run_model.py /tmp/small
"""
import sys

import numpy as np

import dsv4

model = dsv4.load(sys.argv[1])  # backend="cpu", threads=0 (all cores), kv="f32"
cfg = model.config
print(f"dsv4 {dsv4.__version__}: {cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}, "
      f"compress ratios {cfg['compress_ratios']}")

prompt = np.array([5, 17, 301, 9, 44], dtype=np.int64) % cfg["vocab_size"]
seq = model.new_sequence()
logits = model.forward(prompt, seq)  # float32 [5, vocab]
tokens = [int(np.argmax(logits[-1]))]
for _ in range(5):
    tokens.append(int(np.argmax(model.forward(tokens[-1:], seq)[-1])))
print("greedy continuation:", tokens, "at position", seq.pos)

# Two sequences in one batched step (each weight read once for both); speculative rollback of the last 3 tokens.
other = model.new_sequence()
model.forward(prompt[:2], other)
la, lb = model.forward_batch([([1, 2], seq), ([3], other)])
seq.truncate(seq.pos - 3)
print("batched logits", la.shape, lb.shape, "; rolled back to", seq.pos)

try:
    model.forward([cfg["vocab_size"]])  # out of the vocabulary
except dsv4.Error as e:
    print("dsv4.Error:", str(e).split(" [")[0])
