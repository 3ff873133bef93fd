# The A/B script behind bench/results/2026-11-27-loss-chunks.json: the fused training loss alone
# (forward + backward) on a (64, 24) batch of 20 real target tokens per row, d 256, V 8000,
# label smoothing 0.1, plain and R-Drop (alpha 1, hidden of both passes), bf16 autocast and fp32,
# per chunk size; median of 5 after 2 warm-ups. From the repository root:
#   .venv/bin/python bench/results/2026-11-27-loss-chunks.py
import sys, os, time, torch
sys.path.insert(0, os.getcwd())
from pipeline import loss as L
torch.manual_seed(0)
B, T, d, V = 64, 24, 256, 8000
def run(fn, bf16, rdrop, chunk):
    hid = torch.randn(2 * B if rdrop else B, T, d, requires_grad=True)
    W = (torch.randn(V, d) * 0.05).requires_grad_()
    tgt = torch.randint(4, V, (B, T)); tgt[:, 20:] = 0
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            l = L.rdrop_cross_entropy(hid, W, tgt, 0.1, 1.0, chunk) if rdrop else L.linear_cross_entropy(hid, W, tgt, 0.1, chunk_rows=chunk)
        l.backward()
        return l
    for _ in range(2): step()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
    return sorted(ts)[2] * 1e3
for rdrop in (False, True):
    for chunk in (1024, 256, 128):
        print("rdrop" if rdrop else "plain", chunk, "bf16 %.1f ms" % run(None, True, rdrop, chunk), "fp32 %.1f ms" % run(None, False, rdrop, chunk), flush=True)
