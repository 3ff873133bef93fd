# A whole greedy step's products back to back, with one layer's weights reused or three distinct layers', and with
# attention over the step's caches; numbers in bench/results/2026-11-27-compile-decode.json.
#   .venv/bin/python bench/results/2026-11-27-decode-step-products.py
import torch, time, torch.nn.functional as F
torch.manual_seed(0)
def bench(fn, n=100):
    for _ in range(10): fn()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n): fn()
        ts.append((time.perf_counter() - t) / n * 1e6)
    return sorted(ts)[2]
shapes = [(256, 768), (256, 256), (256, 256), (256, 256), (256, 1024), (1024, 256)]
def layer_weights(): return [(torch.randn(n, k), torch.randn(n)) for k, n in shapes]
distinct = [layer_weights() for _ in range(3)]; shared = [distinct[0]] * 3
head = torch.randn(8000, 256)
xs = {k: torch.randn(64, k) for k in (256, 1024)}
def step(layers):
    for ws in layers:
        for w, b in ws: F.linear(xs[w.size(1)], w, b)
    F.linear(xs[256], head)
# with the step's caches read in between, as attention does: self (64,4,15,64) and cross (64,4,39,64) per layer
caches = [(torch.randn(64, 4, 15, 64), torch.randn(64, 4, 15, 64), torch.randn(64, 4, 39, 64), torch.randn(64, 4, 39, 64)) for _ in range(3)]
q = torch.randn(64, 4, 1, 64)
def step_attn(layers):
    for ws, (k, v, kc, vc) in zip(layers, caches):
        for w, b in ws: F.linear(xs[w.size(1)], w, b)
        F.scaled_dot_product_attention(q, k, v); F.scaled_dot_product_attention(q, kc, vc)
    F.linear(xs[256], head)
print(f"step products, one layer's weights 3x: {bench(lambda: step(shared)):.0f} us; 3 distinct layers: {bench(lambda: step(distinct)):.0f} us; "
      f"with attention over the caches: {bench(lambda: step_attn(distinct)):.0f} us")
