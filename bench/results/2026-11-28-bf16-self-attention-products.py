# The A/B script behind bench/results/2026-11-28-bf16-self-attention-products.json: with `--quantize bf16`,
# a CPU decoding step's self-attention through torch's fused kernel (F.scaled_dot_product_attention on the
# KV cache's views) against plain batched products (attention.scaled_dot_product_attention;
# MultiHeadAttention.CPU_BF16_SELF_PRODUCTS), cross-attention through products in both (as shipped),
# alternating in one process:
#  1. bench.run's decode rows: 64 validation sentences a batch, 30 new tokens, EOS forbidden, random
#     weights, the model as Translator prepares it with quantize="bf16", greedy and beam 4, 2 threads;
#  2. `evaluate`-style translation of the 1,000 test2016 sources (2 single-threaded forked workers,
#     length-sorted batches of up to 128) with a trained checkpoint and --quantize bf16, beam 4 and greedy;
# and whether the outputs are the same. Run from the repository root on an idle machine:
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-bf16-self-attention-products.py CKPT > out.json
import json, os, subprocess, sys, time

import torch

from bench.run import FixedLength, record_decoding_setup
from pipeline.attention import MultiHeadAttention
from pipeline.data import load_split
from pipeline.decoding import generate
from pipeline.translator import Translator, inference_model

ckpt = sys.argv[1]
quantize = "bf16"
LOAD_AT_START = os.getloadavg()[0]
VARIANTS = ("fused_kernel", "products")


def use(variant: str) -> None:
    MultiHeadAttention.CPU_BF16_SELF_PRODUCTS = variant == "products"


def median(values):
    return sorted(values)[len(values) // 2]


# 1: the bench's decode rows
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model, quantize))


def bench_run(beam: int, variant: str) -> list[torch.Tensor]:
    use(variant)
    return [generate(fixed, src, config, beam=beam).tokens for src in srcs]


bench_same = {f"beam{b}": all(torch.equal(x, y) for x, y in zip(bench_run(b, VARIANTS[0]), bench_run(b, VARIANTS[1])))
              for b in (1, 4)}
bench_ms = {f"beam{b}": {v: [] for v in VARIANTS} for b in (1, 4)}
for i in range(9):
    for b in (1, 4):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            start = time.perf_counter()
            bench_run(b, v)
            bench_ms[f"beam{b}"][v].append(round((time.perf_counter() - start) / len(srcs) * 1e3, 1))

# 2: evaluate-style, test2016, 2 workers
sources = list(load_split("../shared/data/multi30k", "test", "de", "en")["src"])
evaluate_rates, evaluate_same = {}, {}
for beam in (4, 1):
    translator = Translator.from_checkpoint(ckpt, beam=beam, device="cpu", quantize=quantize)

    def translate(variant: str):
        use(variant)
        start = time.perf_counter()
        hyps = translator.translate(sources)
        return hyps, round(len(sources) / (time.perf_counter() - start), 1)

    outputs = {v: translate(v)[0] for v in VARIANTS}  # (also a warm-up)
    evaluate_same[f"beam{beam}"] = sum(a == b for a, b in zip(*outputs.values()))
    rates = evaluate_rates[f"beam{beam}"] = {v: [] for v in VARIANTS}
    for i in range(4):
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            rates[v].append(translate(v)[1])
use("products")

print(json.dumps({
    "script": "bench/results/2026-11-28-bf16-self-attention-products.py",
    "command": f"PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-bf16-self-attention-products.py {ckpt}",
    "quantize": quantize,
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": round(LOAD_AT_START, 2),
    "bench_decode_ms_per_batch": bench_ms,
    "bench_speedup_median": {c: round(median(v["fused_kernel"]) / median(v["products"]), 3) for c, v in bench_ms.items()},
    # each products run against the fused run next to it: the machine's speed drifts within a run
    "bench_speedup_median_of_pairs": {c: round(median([a / b for a, b in zip(v["fused_kernel"], v["products"])]), 3)
                                      for c, v in bench_ms.items()},
    "bench_same_tokens": bench_same,
    "evaluate_test2016_sentences_per_s": evaluate_rates,
    "evaluate_speedup_median": {c: round(median(v["products"]) / median(v["fused_kernel"]), 3)
                                for c, v in evaluate_rates.items()},
    "evaluate_same_hypotheses_of_1000": evaluate_same,
}, indent=1))
