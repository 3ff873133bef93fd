# The script behind bench/results/2026-11-27-decode-attention-in-context.json: where attention's time
# goes inside the bench's decodes (64 validation sentences a batch, 30 new tokens, EOS forbidden, random
# weights, the model as Translator prepares it), and one lever tried for it:
#  1. every F.scaled_dot_product_attention call of 4 greedy batches timed where it runs, by kind
#     (encoder, decoder self-attention, cross-attention), µs a call, against the same cross-attention
#     call alone at its shape (keys as the cache holds them), hot in the CPU caches and cold (64 MB of
#     other memory written before each call);
#  2. cross-attention over length groups: the batch sorted by source length (longest first) and each
#     decoding step's cross-attention run on 4 groups of 16 rows, each over its own longest source only
#     (padding keys not read), against one call over the padded batch; whole decodes of the sorted
#     batches, greedy and beam 4, 5 pairs each, ms per batch, and whether the tokens are the same.
# Run from the repository root on an idle machine (it caches the tokenized batches in /tmp/exp/srcs.pt):
#   .venv/bin/python bench/results/2026-11-27-decode-attention-in-context.py > out.json
import collections, json, os, subprocess, sys, time

import torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
import pipeline.attention as attention
from bench.run import FixedLength, per_call_us, record_decoding_setup
from pipeline.decoding import generate
from pipeline.tokenizer import PAD
from pipeline.translator import inference_model

LOAD_AT_START = os.getloadavg()[0]
settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))
sdpa = F.scaled_dot_product_attention

# 1: per-call times where the calls run
seconds = collections.defaultdict(list)
last_cross = {}


def timed_sdpa(q, k, v, attn_mask=None, **kw):
    start = time.perf_counter()
    out = sdpa(q, k, v, attn_mask=attn_mask, **kw)
    kind = "encoder" if q.size(2) > 1 else ("cross" if attn_mask is not None else "self")
    seconds[kind].append(time.perf_counter() - start)
    if kind == "cross":
        last_cross.update(q=q, k=k, v=v, mask=attn_mask)
    return out


for src in srcs:  # warm-up
    generate(fixed, src, config, beam=1)
attention.F.scaled_dot_product_attention = timed_sdpa
for src in srcs:
    generate(fixed, src, config, beam=1)
attention.F.scaled_dot_product_attention = sdpa
in_context = {kind: {"calls": len(t), "us_per_call": round(sum(t) / len(t) * 1e6, 1),
                     "ms_per_batch": round(sum(t) / len(srcs) * 1e3, 1)} for kind, t in seconds.items()}
c = last_cross
with torch.inference_mode():
    alone = per_call_us(lambda: sdpa(c["q"], c["k"], c["v"], attn_mask=c["mask"]), calls=100)
    # the same call with cold caches: 64 MB of other memory written before each call (a decoding
    # step reads about 40 MB of weights and caches between two calls of one layer)
    other = torch.zeros(16 << 20)
    cold = []
    for _ in range(100):
        other.add_(1.0)
        start = time.perf_counter()
        sdpa(c["q"], c["k"], c["v"], attn_mask=c["mask"])
        cold.append(time.perf_counter() - start)
    alone_cold = sorted(cold)[50] * 1e6
    del other
cross_shape = {"q": list(c["q"].shape), "keys": c["k"].size(2)}

# 2: cross-attention over length groups of the sorted batch
GROUPS = 4
sorted_srcs = [s[(s != PAD).sum(1).argsort(descending=True)] for s in srcs]


def grouped_sdpa(q, k, v, attn_mask=None, **kw):
    if attn_mask is None or q.size(2) > 4 or attn_mask.size(0) != q.size(0):  # decoding's cross-attention only
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)
    lengths, rows, out = attn_mask[:, 0, 0, :].sum(1), q.size(0), torch.empty_like(q)
    bounds = [round(i * rows / GROUPS) for i in range(GROUPS + 1)]
    for a, b in zip(bounds, bounds[1:]):
        if a < b:
            n = int(lengths[a:b].max())
            out[a:b] = sdpa(q[a:b], k[a:b, :, :n], v[a:b, :, :n], attn_mask=attn_mask[a:b, ..., :n], **kw)
    return out


VARIANTS = {"one_call": sdpa, "length_groups": grouped_sdpa}
tokens = {}
for name, fn in VARIANTS.items():
    attention.F.scaled_dot_product_attention = fn
    tokens[name] = [generate(fixed, s, config, beam=b).tokens for b in (1, 4) for s in sorted_srcs]
same = all(torch.equal(a, b) for a, b in zip(tokens["one_call"], tokens["length_groups"]))
ms = {}
for beam in (1, 4):
    for _ in range(5):
        for name, fn in VARIANTS.items():
            attention.F.scaled_dot_product_attention = fn
            start = time.perf_counter()
            for s in sorted_srcs:
                generate(fixed, s, config, beam=beam)
            ms.setdefault(f"beam{beam}", {}).setdefault(name, []).append(
                round((time.perf_counter() - start) / len(srcs) * 1e3, 1))
attention.F.scaled_dot_product_attention = sdpa
print(json.dumps({
    "script": "bench/results/2026-11-27-decode-attention-in-context.py",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" \t:"),
    "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": LOAD_AT_START,
    "greedy_attention_in_context": in_context,
    "last_cross_attention_call_alone_us": round(alone, 1),
    "last_cross_attention_call_alone_cold_caches_us": round(alone_cold, 1), "last_cross_attention_shape": cross_shape,
    "length_groups": {"groups": GROUPS, "ms_per_batch": ms, "same_tokens": same,
                      "speedup_median_of_pairs": {k: round(sorted(a / b for a, b in zip(v["one_call"], v["length_groups"]))[2], 3)
                                                  for k, v in ms.items()}},
}, indent=1))
