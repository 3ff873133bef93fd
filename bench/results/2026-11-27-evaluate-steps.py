# Where `evaluate`'s beam-4 decoding of test2016 spends its time, in one single-threaded process (what
# each of evaluate's two workers is): every decoder step's row count (hypotheses still searched) and
# seconds, grouped by rows, and the arithmetic rate of the large steps (products of the decoder
# layers and the LM head, 2 FLOPs a multiply-add; attention left out) against torch.mm's fp32 peak
# on one thread, measured here too. Translator as `evaluate` builds it (batch 128, beam 4, workers 1).
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-evaluate-steps.py CKPT OUT.json
import collections
import json
import os
import sys
import time

import torch

from bench.run import git_commit, matmul_gflops
from pipeline.translator import Translator


def main(ckpt: str, out: str) -> None:
    load = os.getloadavg()[0]
    torch.set_num_threads(1)
    sentences = [json.loads(line)["de"] for line in open("../shared/data/multi30k/test.jsonl", encoding="utf-8")]
    translator = Translator.from_checkpoint(ckpt, beam=4, device="cpu", workers=1)
    cfg = translator.checkpoint.config
    steps = []
    decode = translator.model.decode

    def timed_decode(tgt, *args, **kwargs):
        start = time.perf_counter()
        result = decode(tgt, *args, **kwargs)
        steps.append((tgt.size(0), time.perf_counter() - start))
        return result

    translator.model.decode = timed_decode
    translator.translate(sentences[:64])  # warm-up: packing, allocator
    steps.clear()
    start = time.perf_counter()
    translator.translate(sentences)
    total = time.perf_counter() - start
    d, f = cfg.d_model, cfg.d_ff
    macs_per_row = cfg.decoder_layers * (3 * d * d + d * d + d * d + d * d + 2 * d * f) + d * cfg.vocab_size
    head_share = d * cfg.vocab_size / macs_per_row
    groups = collections.defaultdict(lambda: [0, 0.0, 0])
    for rows, seconds in steps:
        key = "<32" if rows < 32 else "32-127" if rows < 128 else "128-255" if rows < 256 else ">=256"
        groups[key][0] += 1
        groups[key][1] += seconds
        groups[key][2] += rows
    big = [(r, s) for r, s in steps if r >= 256]
    big_gflops = 2 * macs_per_row * sum(r for r, _ in big) / sum(s for _, s in big) / 1e9
    peak = matmul_gflops(torch.float32, 2048)
    result = {"script": "bench/results/2026-11-27-evaluate-steps.py", "commit": git_commit(), "checkpoint": ckpt,
              "load_average_at_start": load, "threads": 1, "sentences": len(sentences),
              "seconds_total": round(total, 2), "sentences_per_s": round(len(sentences) / total, 1),
              "decoder_steps": len(steps), "decoder_seconds": round(sum(s for _, s in steps), 2),
              "by_rows": {k: {"steps": v[0], "seconds": round(v[1], 2), "mean_rows": round(v[2] / v[0], 1)}
                          for k, v in sorted(groups.items())},
              "lm_head_share_of_step_macs": round(head_share, 3),
              "large_steps_gflops": round(big_gflops, 1), "fp32_mm_peak_gflops_1_thread": round(peak, 1),
              "large_steps_share_of_peak": round(big_gflops / peak, 3)}
    with open(out, "w", encoding="utf-8") as file:
        json.dump(result, file, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
