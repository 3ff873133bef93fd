# The A/B script behind bench/results/2026-11-28-onednn-fp32-evaluate.json: `evaluate`-style fp32
# translation of the 1,000 test2016 sources with beam 4 (Translator as `evaluate` builds it: length-
# sorted batches of up to 128 sentences, 2 single-threaded forked workers) with the AMD `make train`
# model, as shipped (fp32 products above PackedLinear.MAX_ROWS rows through torch's F.linear) against
# the same with those products through oneDNN's packed kernel (torch.ops.mkldnn._linear_pointwise on
# a weight reordered once per process), alternating run by run. A quick single-threaded check had
# the oneDNN packed product 1.07-1.26x F.linear at 256 and 512 rows. Run from the repository root:
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-onednn-fp32-evaluate.py CKPT > out.json
import json, os, subprocess, sys, time

import torch
import torch.nn.functional as F

import pipeline.translator as translator
from pipeline.data import load_split
from pipeline.metrics import corpus_scores

ckpt = sys.argv[1]
pairs = load_split("../shared/data/multi30k", "test", "de", "en")
sources, references = list(pairs["src"]), list(pairs["tgt"])
load = os.getloadavg()[0]
shipped_forward = translator.PackedLinear.forward


def onednn_forward(self, x):
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if (x.dtype == torch.float32 and rows > self.MAX_ROWS and x.is_cpu and not torch.is_grad_enabled()
            and x.size(-1) == self.in_features):
        if getattr(self, "onednn", None) is None:
            self.onednn = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 512)
        return torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "none", [], "")
    return shipped_forward(self, x)


model = translator.Translator.from_checkpoint(ckpt, beam=4, device="cpu")


def run(variant):
    translator.PackedLinear.forward = onednn_forward if variant == "onednn_above_256_rows" else shipped_forward
    try:
        start = time.perf_counter()
        hyps = model.translate(sources)
        return hyps, len(sources) / (time.perf_counter() - start)
    finally:
        translator.PackedLinear.forward = shipped_forward


variants = ("shipped", "onednn_above_256_rows")
outputs = {v: run(v)[0] for v in variants}  # (also a warm-up)
rates = {v: [] for v in variants}
for i in range(4):
    for v in (variants if i % 2 == 0 else variants[::-1]):
        rates[v].append(round(run(v)[1], 1))
median = {v: sorted(r)[len(r) // 2] for v, r in rates.items()}
print(json.dumps({
    "script": "bench/results/2026-11-28-onednn-fp32-evaluate.py",
    "command": f"PYTHONPATH=. .venv/bin/python bench/results/2026-11-28-onednn-fp32-evaluate.py {ckpt}",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "workers": model.workers, "load_at_start": round(load, 2),
    "sentences": len(sources), "beam": 4,
    "sentences_per_s": rates, "median": median,
    "speedup_median": round(median["onednn_above_256_rows"] / median["shipped"], 3),
    "bleu": {v: round(corpus_scores(h, references)["bleu"], 2) for v, h in outputs.items()},
    "same_hypotheses": sum(a == b for a, b in zip(*outputs.values())),
}, indent=1))
