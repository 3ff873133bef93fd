# The script behind bench/results/2026-11-27-argmax-head.json: greedy decoding's best tokens picked by
# translator.ArgmaxHead (a bf16 product of the final states with the LM head, its best candidates
# rescored in fp32, every token within the bf16 error bound rescored where those do not settle it) against the fp32 LM head's product and
# max, on bench.run's greedy row (64 validation sentences a batch, 30 new tokens, EOS forbidden, random
# weights, the model as Translator prepares it):
#  1. the pick alone at a greedy step's shape (64 rows x 256 -> 8000), per call, µs;
#  2. whole greedy decodes, the two alternating in one process, ms per batch; the tokens of both;
#  3. how many rows the candidates did not settle (rescored in ArgmaxHead.settle) in those decodes.
# Run from the repository root on an idle machine (it caches the tokenized batches in /tmp/exp/srcs.pt):
#   .venv/bin/python bench/results/2026-11-27-argmax-head.py > out.json
import json, os, subprocess, sys, time

import torch
sys.path.insert(0, os.getcwd())
from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate
from pipeline.tokenizer import BOS, EOS, PAD
from pipeline.translator import ArgmaxHead, inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
prepared = inference_model(model)
head = ArgmaxHead(prepared.lm_head)
fixed = FixedLength(prepared)
banned = (PAD, BOS, EOS)

states = torch.nn.functional.layer_norm(torch.randn(64, model.cfg.d_model), (model.cfg.d_model,))
with torch.inference_mode():
    pick_us = {"fp32_product_and_max": per_call_us(lambda: prepared.lm_head(states).max(-1)),
               "argmax_head": per_call_us(lambda: head(states, banned))}


def greedy(with_head):
    prepared.argmax_head = head if with_head else None
    return [generate(fixed, src, config, beam=1).tokens for src in srcs]


same = all(torch.equal(a, b) for a, b in zip(greedy(False), greedy(True)))
ms = {"fp32_head": [], "argmax_head": []}
for _ in range(7):
    for name, with_head in (("fp32_head", False), ("argmax_head", True)):
        start = time.perf_counter()
        greedy(with_head)
        ms[name].append((time.perf_counter() - start) / len(srcs) * 1e3)

# 3: the rows whose candidates did not settle the token (ArgmaxHead.settle's second stage)
settled, rows_seen = [], []
original_settle, original_call = ArgmaxHead.settle, ArgmaxHead.__call__
ArgmaxHead.settle = lambda self, rows, *rest: (settled.append(rows.numel()), original_settle(self, rows, *rest))[1]
ArgmaxHead.__call__ = lambda self, y, b=(): (rows_seen.append(y.size(0)), original_call(self, y, b))[1]
greedy(True)
ArgmaxHead.settle, ArgmaxHead.__call__ = original_settle, original_call
unsure, total = sum(settled), sum(rows_seen)

median = {k: sorted(v)[len(v) // 2] for k, v in ms.items()}
print(json.dumps({
    "script": "bench/results/2026-11-27-argmax-head.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START,
    "pick_per_call_us": {k: round(v, 1) for k, v in pick_us.items()},
    "greedy_ms_per_batch": {k: [round(x, 1) for x in v] for k, v in ms.items()},
    "greedy_speedup_median": round(median["fp32_head"] / median["argmax_head"], 3),
    # each run against the one just before it: the machine's speed drifts within a run
    "greedy_speedup_median_of_pairs": round(sorted(a / b for a, b in zip(ms["fp32_head"], ms["argmax_head"]))[3], 3),
    "same_tokens": same,
    "rows_settled_in_second_stage": {"unsure": unsure, "rows": total, "fraction": round(unsure / total, 4)},
}, indent=1))
