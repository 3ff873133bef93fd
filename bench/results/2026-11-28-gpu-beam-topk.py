"""On a GPU: does beam search's chunked top-k (pipeline.decoding.topk_wide, built for CPUs, where
torch's topk walks each long row once per call) cost more than torch.topk there?

  topk_us      one call on (64 sentences x 4 beams x vocabulary) scores, 2k = 8 picked: topk_wide
               and Tensor.topk, median of 200 calls after 20 (CUDA-synchronised per call);
  beam4_ms     generate(beam=4) on the bench's 4 decoding batches (64 validation sentences, exactly
               30 new tokens), the recipe-sized model with random weights prepared as Translator
               prepares it, with topk_wide and with topk swapped in: ms per batch, 7 interleaved
               repeats, medians; same_tokens says whether both gave the same tokens.

    device run: source bench/gpu_env.sh; python3 bench/results/2026-11-28-gpu-beam-topk.py $OUT/gpu-beam-topk.json
    (on a CPU it runs too: `... OUT.json cpu`; the CPU's answer is bench/results/2026-11-27-beam-topk.json)
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import torch

import pipeline.decoding as decoding
from bench.run import FixedLength, git_commit, interleaved, record_decoding_setup, synchronize, timed
from pipeline.decoding import generate
from pipeline.translator import inference_model


def synced_call_us(fn, calls: int = 200, warmup: int = 20) -> float:
    """Median µs of single calls, each synchronised (bench.run.timed), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn) for _ in range(calls)) * 1e6


def main(out: str, device: str) -> None:
    settings, sources, config, model = record_decoding_setup()
    model = FixedLength(inference_model(model.to(device)))
    sources = [s.to(device) for s in sources]
    vocab = model.cfg.vocab_size
    wide = torch.randn(64, 4 * vocab, device=device)
    topk_us = {"topk_wide": synced_call_us(lambda: decoding.topk_wide(wide, 8)),
               "topk": synced_call_us(lambda: wide.topk(8, dim=1))}

    chunked = decoding.topk_wide

    def plain(scores, count, chunk=128):
        return scores.topk(count, dim=1)

    def run_with(topk):
        def decode_all():
            decoding.topk_wide = topk
            try:
                tokens = [generate(model, src, config, beam=4).tokens for src in sources]
                synchronize()
                return tokens
            finally:
                decoding.topk_wide = chunked
        return decode_all

    fns = {"topk_wide": run_with(chunked), "topk": run_with(plain)}
    same = all(torch.equal(a, b) for a, b in zip(fns["topk_wide"](), fns["topk"]()))
    seconds = interleaved(fns, repeats=int(os.environ.get("REPEATS", 7)))
    beam4_ms = {name: statistics.median(times) * 1e3 / len(sources) for name, times in seconds.items()}
    result = {"commit": git_commit(), "device": torch.cuda.get_device_name() if device == "cuda" else device,
              "torch": torch.__version__, "vocab": vocab, "batches": len(sources), "sentences_per_batch": 64,
              "new_tokens": settings.max_new_tokens, "topk_us": topk_us, "beam4_ms": beam4_ms,
              "beam4_seconds": seconds, "same_tokens": same}
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps({k: result[k] for k in ("device", "topk_us", "beam4_ms", "same_tokens")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cuda")
