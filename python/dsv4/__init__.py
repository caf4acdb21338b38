"""dsv4: DeepSeek-V4 architecture building blocks.

    import dsv4
    model = dsv4.load("/tmp/small")                # HF config.json + safetensors with the official names
    logits = model.forward([5, 17, 301])            # float32 [3, vocab], a fresh sequence
    seq = model.new_sequence()
    model.forward([5, 17], seq); model.forward([301], seq)   # the same last row, bit for bit
    seq.truncate(2)                                  # roll back (speculative decoding)

dsv4.ops has the ops of the C++ library over any array that speaks DLPack or the buffer protocol (NumPy arrays,
PyTorch CPU tensors), without copies; FP8 / FP4 / E8M0 data is uint8 with the format named by an argument. Errors
raise dsv4.Error (a RuntimeError) with the library's message. The GIL is released while dsv4 computes.
"""
import sys as _sys

from ._dsv4 import Error, KeyPages, KVPages, Model, Sequence, __version__, load, ops

_sys.modules[__name__ + ".ops"] = ops

__all__ = ["Error", "KVPages", "KeyPages", "Model", "Sequence", "__version__", "load", "ops"]
