# One greedy step's linear layers at 64 rows (and beam-4 shapes at 256), each timed in a loop: F.linear (addmm)
# against oneDNN pre-packed weights; numbers in bench/results/2026-11-27-compile-decode.json.
#   .venv/bin/python bench/results/2026-11-27-decode-step-linears.py
import torch, time, torch.nn.functional as F
def bench(fn, n=300):
    for _ in range(20): fn()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n): fn()
        ts.append((time.perf_counter() - t) / n * 1e6)
    return sorted(ts)[2]
tot_a = tot_p = 0
for M, K, N, count in ((64, 256, 768, 3), (64, 256, 256, 9), (64, 256, 1024, 3), (64, 1024, 256, 3), (64, 256, 8000, 1), (256, 256, 8000, 1), (256, 256, 768, 3), (256,256,1024,3)):
    x = torch.randn(M, K); w = torch.randn(N, K); b = torch.randn(N)
    a = bench(lambda: F.linear(x, w, b if N != 8000 else None))
    pw = torch.ops.mkldnn._reorder_linear_weight(w, M)
    p = bench(lambda: torch.ops.mkldnn._linear_pointwise(x, pw, b if N != 8000 else None, "none", [], ""))
    print(M, K, N, f"addmm {a:.1f} us ({2*M*K*N/a/1e3:.0f} GFLOP/s)  mkldnn packed {p:.1f} us ({2*M*K*N/p/1e3:.0f} GFLOP/s)")
    if M == 64: tot_a += a * count; tot_p += p * count
print("greedy step products", tot_a, tot_p)
