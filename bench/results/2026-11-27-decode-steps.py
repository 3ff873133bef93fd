# The A/B script behind bench/results/2026-11-27-decode-steps.json: decode the bench's 4 validation
# batches (64 sentences, 30 new tokens, EOS forbidden) with random weights, greedy and beam 4,
# 5 timed runs after a warm-up; prints the median sentences/s. Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-decode-steps.py [fp32|int8|bf16]
# (it caches the tokenized batches in /tmp/exp/srcs.pt on the first run).
import sys, time, os, torch
from dataclasses import replace
sys.path.insert(0, os.getcwd())
from bench.run import QUICK, Settings, decode_batches, load_data, our_config, FixedLength
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer
from pipeline.translator import inference_model
os.makedirs("/tmp/exp", exist_ok=True)
p = "/tmp/exp/srcs.pt"
s = replace(Settings(), train_pairs=QUICK["train_pairs"], train_batches=1)
if not os.path.exists(p):
    dm = load_data(s); torch.save(decode_batches(dm, s), p)
srcs = torch.load(p)
torch.manual_seed(0)
model = Transformer(our_config(s)).eval()
prec = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "fp32" else None
fixed = FixedLength(inference_model(model, prec))
config = DecodingConfig(max_len_ratio=0.0, max_len_extra=30)
def run(beam):
    for src in srcs: generate(fixed, src, config, beam=beam)
for beam in (1, 4):
    run(beam)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); run(beam); ts.append(time.perf_counter() - t)
    n = sum(x.size(0) for x in srcs)
    ts.sort()
    print(f"beam {beam}: {n/ts[2]:.1f} sent/s (min {n/ts[-1]:.1f} max {n/ts[0]:.1f})", flush=True)
