"""A Transformer translation pipeline: data -> tokenizer -> batches -> model -> decoding -> BLEU.

`from pipeline import Translator` is the Python API of a trained checkpoint (imported on
first use, so `python -m pipeline --help` stays fast)."""

import os

# bf16 matrix products on CPUs run in oneDNN, which compiles a kernel for every new shape and
# keeps 1,024 of them by default. Token-bucketed batches have thousands of shapes, so training
# kept compiling (about 16 kernels, 51 ms, per step of the Multi30k recipe at steady state);
# with room for 16,384 every shape of an epoch stays compiled (no kernel compiled in the second
# epoch, for about 0.4 GB more memory; bench/results/2026-11-26-5e8952d-onednn-cache.json,
# docs/speed.md, "bf16 on CPUs compiles a kernel per shape"). A value set by the user is kept.
# oneDNN reads this when it compiles its first kernel, so it must be set before any bf16 matrix
# product runs.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


def __getattr__(name: str):
    if name == "Translator":
        from pipeline.translator import Translator

        return Translator
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
