# The script behind bench/results/2026-11-27-cross-kv-contiguous.json (run twice: 5 and 9 pairs):
#   .venv/bin/python bench/results/2026-11-27-cross-kv-contiguous.py PAIRS > OUT.json
# head every 2 KB) against copied once per batch into contiguous (B, h, S, d_k) blocks.
# Whole decodes of the bench's batches (64 sentences, 30 new tokens, EOS forbidden, random weights,
# the model as Translator prepares it), greedy and beam 4, interleaved pairs; also the SDPA call alone.
import json, os, statistics, subprocess, sys, time
import torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
import pipeline.attention as attention
from bench.run import FixedLength, record_decoding_setup
from pipeline.decoding import generate
from pipeline.translator import inference_model

LOAD = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))
original = attention.MultiHeadAttention.project_kv


def contiguous_kv(self, x, packing=None):
    k, v = original(self, x, packing)
    return k.contiguous(), v.contiguous()


def decode_ms(beam):
    start = time.perf_counter()
    toks = [generate(fixed, src, config, beam=beam).tokens for src in srcs]
    return (time.perf_counter() - start) / len(srcs) * 1e3, toks


results = {}
for beam in (1, 4):
    times = {"views": [], "contiguous": []}
    same = True
    for variant in ("views", "contiguous"):  # warm-up
        attention.MultiHeadAttention.project_kv = contiguous_kv if variant == "contiguous" else original
        decode_ms(beam)
    for pair in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        order = ("views", "contiguous") if pair % 2 == 0 else ("contiguous", "views")
        toks = {}
        for variant in order:
            attention.MultiHeadAttention.project_kv = contiguous_kv if variant == "contiguous" else original
            ms, toks[variant] = decode_ms(beam)
            times[variant].append(round(ms, 1))
        same &= all(torch.equal(a, b) for a, b in zip(toks["views"], toks["contiguous"]))
    ratios = [a / b for a, b in zip(times["views"], times["contiguous"])]
    results[f"beam{beam}"] = {"ms_per_batch": times, "same_tokens": same,
                              "speedup_median_of_pairs": round(statistics.median(ratios), 3)}
attention.MultiHeadAttention.project_kv = original
print(json.dumps({"script": "cross_contig.py", "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                  capture_output=True, text=True).stdout.strip(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "load_at_start": LOAD, **results}, indent=1))
