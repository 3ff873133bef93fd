# Where the near-zero-arithmetic greedy decode's time goes (the 43 ms a batch of 2026-11-27-decode-overhead.py):
# cProfile of 5 x 4 batches with d_model 16 and 64 tokens (needs /tmp/exp/srcs.pt, written by that script), then
# scaled_dot_product_attention against plain products at head width 4 and 64 (2 threads). Numbers in
# bench/results/2026-11-27-beam-topk.json (also_measured). From the repository root:
#   .venv/bin/python bench/results/2026-11-27-decode-overhead-cprofile.py
import sys, os, functools, torch, cProfile, pstats
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from dataclasses import replace
from bench.run import Settings, our_config, FixedLength, per_call_us
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer
from pipeline.translator import inference_model
srcs = [x.clamp(max=63) for x in torch.load("/tmp/exp/srcs.pt")]
config = DecodingConfig(max_len_ratio=0.0, max_len_extra=30)
cfg = replace(our_config(Settings()), d_model=16, n_heads=4, d_ff=16, vocab_size=64)
m = FixedLength(inference_model(Transformer(cfg).eval(), None))
for src in srcs: generate(m, src, config, beam=1)
pr = cProfile.Profile(); pr.enable()
for _ in range(5):
    for src in srcs: generate(m, src, config, beam=1)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(30)

# -- attention at the tiny and the real head width
bench = functools.partial(per_call_us, calls=500, warmup=20)
for d in (4, 64):
    q = torch.randn(64, 4, 1, d); k = torch.randn(64, 4, 15, d); v = torch.randn(64, 4, 15, d)
    kc = torch.randn(64, 4, 39, d); vc = torch.randn(64, 4, 39, d); m = torch.ones(64, 1, 1, 39, dtype=torch.bool)
    def manual(q, k, v, mask=None):
        s = torch.matmul(q, k.transpose(-1, -2))
        if mask is not None: s = s.masked_fill(~mask, float("-inf"))
        return torch.matmul(s.softmax(-1), v)
    print(d, "self sdpa", round(bench(lambda: F.scaled_dot_product_attention(q, k, v))), "manual", round(bench(lambda: manual(q, k, v))),
          "cross sdpa", round(bench(lambda: F.scaled_dot_product_attention(q, kc, vc, attn_mask=m))), "manual", round(bench(lambda: manual(q, kc, vc, m))),
          "layer_norm", round(bench(lambda: F.layer_norm(q.view(64, -1), (q.view(64, -1).size(1),)))))
