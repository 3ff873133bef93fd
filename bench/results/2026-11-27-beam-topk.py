# The micro-benchmark behind bench/results/2026-11-27-beam-topk.json: one beam-4 step's candidate
# selection at 64 sentences x 4 hypotheses x 8,000 tokens (random logits, PAD and BOS at -inf):
# log_softmax into a buffer + the hypotheses' log p + topk over (64, 32,000), against the same with
# the top-k found through chunk maxima (pipeline.decoding.topk_wide), chunk sizes 64-500; checks the
# values and indices are equal. From the repository root: .venv/bin/python bench/results/2026-11-27-beam-topk.py
import os, sys, functools, torch
sys.path.insert(0, os.getcwd())
from bench.run import per_call_us
bench = functools.partial(per_call_us, calls=50, warmup=10)
torch.manual_seed(0)
b, k, V = 64, 4, 8000
logits = torch.randn(b * k, V) * 3; alive = torch.randn(b, k); buf = torch.empty(b * k * V)
logits[:, 0] = float("-inf"); logits[:, 1] = float("-inf")
def current():
    total = torch.log_softmax(logits, -1, out=buf.view_as(logits)); total.add_(alive.reshape(-1, 1))
    return total.view(b, k * V).topk(2 * k, dim=1)
def chunked(C=128):
    total = torch.log_softmax(logits, -1, out=buf.view_as(logits)); total.add_(alive.reshape(-1, 1))
    flat = total.view(b, k * V)
    n = flat.size(1) // C
    maxes = flat[:, : n * C].view(b, n, C).amax(-1)  # (b, n)
    top_chunks = maxes.topk(2 * k, dim=1).indices  # (b, 2k)
    idx = (top_chunks[..., None] * C + torch.arange(C)).view(b, -1)  # (b, 2k*C)
    vals = flat.gather(1, idx)
    v, i = vals.topk(2 * k, dim=1)
    return v, idx.gather(1, i)
def chunked_noadd(C=128):
    # top-2k per sentence from log_softmax + per-row offsets, chunks within rows
    total = torch.log_softmax(logits, -1, out=buf.view_as(logits))
    n = V // C
    maxes = total[:, : n * C].view(b * k, n, C).amax(-1).add_(alive.reshape(-1, 1)).view(b, k * n)
    return maxes
ref_v, ref_i = current()
for C in (64, 128, 256, 500):
    v, i = chunked(C)
    print(C, "equal", torch.equal(v, ref_v), torch.equal(i, ref_i), f"{bench(lambda: chunked(C)):.0f} us")
print("current", f"{bench(current):.0f} us")
print("log_softmax+add alone", f"{bench(lambda: torch.log_softmax(logits, -1, out=buf.view_as(logits)).add_(alive.reshape(-1, 1))):.0f} us")
total = torch.log_softmax(logits, -1, out=buf.view_as(logits))
print("amax chunks 128", f"{bench(lambda: total.view(b, -1, 128).amax(-1)):.0f} us", "max rows", f"{bench(lambda: total.max(-1)):.0f} us")
