# One greedy step's products, timed alone (numbers in bench/results/2026-11-27-compile-decode.json):
# 1. each linear layer at 64 rows (and beam-4 shapes at 256) in a loop of 300 calls: F.linear (addmm) against
#    oneDNN pre-packed weights;
# 2. a whole step's products back to back (100 calls), with one layer's weights reused or three distinct
#    layers', and with attention over the step's caches.
#   .venv/bin/python bench/results/2026-11-27-decode-step-products.py
import os, sys, torch, torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from bench.run import per_call_us as bench  # bench(fn, calls, warmup)
# -- 1. each linear layer
tot_a = tot_p = 0
for M, K, N, count in ((64, 256, 768, 3), (64, 256, 256, 9), (64, 256, 1024, 3), (64, 1024, 256, 3), (64, 256, 8000, 1), (256, 256, 8000, 1), (256, 256, 768, 3), (256,256,1024,3)):
    x = torch.randn(M, K); w = torch.randn(N, K); b = torch.randn(N)
    a = bench(lambda: F.linear(x, w, b if N != 8000 else None), 300, 20)
    pw = torch.ops.mkldnn._reorder_linear_weight(w, M)
    p = bench(lambda: torch.ops.mkldnn._linear_pointwise(x, pw, b if N != 8000 else None, "none", [], ""), 300, 20)
    print(M, K, N, f"addmm {a:.1f} us ({2*M*K*N/a/1e3:.0f} GFLOP/s)  mkldnn packed {p:.1f} us ({2*M*K*N/p/1e3:.0f} GFLOP/s)")
    if M == 64: tot_a += a * count; tot_p += p * count
print("greedy step products", tot_a, tot_p)

# -- 2. a whole step
torch.manual_seed(0)
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
print(f"step products, one layer's weights 3x: {bench(lambda: step(shared), 100, 10):.0f} us; 3 distinct layers: {bench(lambda: step(distinct), 100, 10):.0f} us; "
      f"with attention over the caches: {bench(lambda: step_attn(distinct), 100, 10):.0f} us")
