# The script behind bench/results/2026-11-28-packed-bf16-{1,2}.json: bf16 linear layers run through
# oneDNN's packed product (translator.PackedLinear with a bf16 weight: torch.ops.mkldnn._linear_pointwise
# on a weight reordered once) against torch's own bf16 product (F.linear, which reorders the weight at
# every call), on bench.run's decode rows (64 validation sentences a batch, 30 new tokens, EOS forbidden,
# random weights, the model as Translator prepares it):
#  1. one product alone, per call, µs, at the shapes a decoding step runs (1, 64 and 256 rows);
#  2. fp32 greedy, whose ArgmaxHead takes each row's best token from a bf16 product of the LM head;
#  3. `--quantize bf16` greedy and beam 4 (every linear layer in bf16);
# packed and unpacked alternating in one process, ms per batch, and whether the tokens are the same.
# Run from the repository root on an idle machine (it caches the tokenized batches in /tmp/exp/srcs.pt):
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-packed-bf16.py > bench/results/2026-11-28-packed-bf16-N.json
import json, os, subprocess, sys, time

import torch
import torch.nn.functional as F
from torch import nn

from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate
from pipeline.translator import PackedLinear, inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()

# 1: products alone
products = {}
torch.manual_seed(0)
for n_in, n_out in ((256, 768), (256, 256), (256, 1024), (1024, 256), (256, 8000)):
    linear = nn.Linear(n_in, n_out).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for rows in (1, 64, 256):
        x = torch.randn(rows, n_in).to(torch.bfloat16)
        with torch.inference_mode():
            unpacked_us, packed_us = per_call_us(lambda: linear(x)), per_call_us(lambda: packed(x))
            same = torch.equal(linear(x), packed(x))
        products[f"{rows}x{n_in}->{n_out}"] = {"unpacked_us": round(unpacked_us, 1), "packed_us": round(packed_us, 1),
                                               "speedup": round(unpacked_us / packed_us, 3), "same_result": same}


def unpacked(module: nn.Module) -> nn.Module:
    """The same model with each bf16 PackedLinear back to an nn.Linear over the same weight."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear) and child.weight.dtype == torch.bfloat16:
                plain = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
                plain.weight = child.weight
                if child.bias is not None:
                    plain.bias = child.bias
                setattr(parent, name, plain)
    return module


fp32 = inference_model(model)
head = fp32.argmax_head
packed_product, plain_product = head.product, (lambda x: F.linear(x, head.weight_bf16))
bf16_packed = inference_model(model, "bf16")
bf16_plain = unpacked(inference_model(model, "bf16"))
assert not any(isinstance(m, PackedLinear) for m in bf16_plain.modules())


def run(case: str, packed: bool) -> list[torch.Tensor]:
    if case == "fp32_greedy":
        head.product = packed_product if packed else plain_product
        prepared, beam = fp32, 1
    else:
        prepared, beam = (bf16_packed if packed else bf16_plain), (1 if case == "bf16_greedy" else 4)
    fixed = FixedLength(prepared)
    return [generate(fixed, src, config, beam=beam).tokens for src in srcs]


cases = ("fp32_greedy", "bf16_greedy", "bf16_beam4")
same_tokens = {case: all(torch.equal(a, b) for a, b in zip(run(case, False), run(case, True))) for case in cases}
ms = {case: {"unpacked": [], "packed": []} for case in cases}
for _ in range(5):
    for case in cases:
        for variant in ("unpacked", "packed"):
            start = time.perf_counter()
            run(case, variant == "packed")
            ms[case][variant].append(round((time.perf_counter() - start) / len(srcs) * 1e3, 1))


def median(values):
    return sorted(values)[len(values) // 2]


print(json.dumps({
    "script": "bench/results/2026-11-28-packed-bf16.py",
    "command": "PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-packed-bf16.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": round(LOAD_AT_START, 2),
    "product_per_call": products,
    "decode_ms_per_batch": ms,
    "speedup_median": {case: round(median(v["unpacked"]) / median(v["packed"]), 3) for case, v in ms.items()},
    # each packed run against the unpacked one just before it: the machine's speed drifts within a run
    "speedup_median_of_pairs": {case: round(median([a / b for a, b in zip(v["unpacked"], v["packed"])]), 3)
                                for case, v in ms.items()},
    "same_tokens": same_tokens,
}, indent=1))
