# The script behind bench/results/2026-11-27-onednn-linear.json: the fp32 linear layers of decoding
# on oneDNN's product (torch.ops.mkldnn._linear_pointwise, the weight as it is) against MKL's packed
# one (translator.PackedLinear, what inference_model builds), swapped inside PackedLinear.forward so
# both run interleaved in one process:
#  1. each product of a decoding step alone, at 64 rows (a greedy step) and 256 (beam 4), µs a call;
#  2. whole decodes of bench.run's batches (64 validation sentences, 30 new tokens, EOS forbidden,
#     random weights, the model as Translator prepares it), greedy and beam 4, 5 pairs each,
#     ms per batch, and whether the tokens are the same.
# Run from the repository root on an idle machine (it caches the tokenized batches in /tmp/exp/srcs.pt):
#   .venv/bin/python bench/results/2026-11-27-onednn-linear.py > out.json
import json, os, subprocess, sys, time

import torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate
from pipeline.translator import PackedLinear, inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))
mkl_packed = PackedLinear.forward


def onednn(self, x):
    if self.rows_if_packed(x) is None:
        return F.linear(x, self.weight, self.bias)
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


KERNELS = {"mkl_packed": mkl_packed, "onednn": onednn}
products = {}
with torch.inference_mode():
    for rows in (64, 256):
        for n_in, n_out in ((256, 768), (256, 256), (256, 1024), (1024, 256), (256, 8000)):
            layer = PackedLinear(torch.nn.Linear(n_in, n_out))
            x = torch.randn(rows, n_in)
            for name, forward in KERNELS.items():
                products.setdefault(f"{rows}x{n_in}->{n_out}", {})[name] = round(
                    per_call_us(lambda: forward(layer, x), calls=100), 1)

tokens = {}
for name, forward in KERNELS.items():
    PackedLinear.forward = forward
    tokens[name] = [generate(fixed, s, config, beam=b).tokens for b in (1, 4) for s in srcs]
same = all(torch.equal(a, b) for a, b in zip(tokens["mkl_packed"], tokens["onednn"]))
ms = {}
for beam in (1, 4):
    for _ in range(5):
        for name, forward in KERNELS.items():
            PackedLinear.forward = forward
            start = time.perf_counter()
            for s in srcs:
                generate(fixed, s, config, beam=beam)
            ms.setdefault(f"beam{beam}", {}).setdefault(name, []).append(
                round((time.perf_counter() - start) / len(srcs) * 1e3, 1))
PackedLinear.forward = mkl_packed
print(json.dumps({
    "script": "bench/results/2026-11-27-onednn-linear.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START,
    "product_us": products,
    "decode_ms_per_batch": ms,
    # each run against the one just before it: the machine's speed drifts within a run
    "onednn_speedup_median_of_pairs": {k: round(sorted(a / b for a, b in zip(v["mkl_packed"], v["onednn"]))[2], 3)
                                       for k, v in ms.items()},
    "same_tokens": same,
}, indent=1))
