# The A/B script behind bench/results/2026-11-27-compile-decode.json: greedy and beam-4 decoding
# of 4 batches of 64 random sentences (6-40 tokens, 30 new tokens, EOS forbidden, random weights of
# the bench's model), eager against torch.compile of the model's decode step (steps after the first:
# dynamic shapes, one graph, no graph breaks once KVCache tracks its buffers without data_ptr);
# 5 timed runs after a first (compiling) run; prints median sentences/s. From the repository root:
#   .venv/bin/python bench/results/2026-11-27-compile-decode.py eager|default|freezing|cppwrap [1,4]
# (freezing: torch._inductor.config.freezing, weights pre-packed for oneDNN; cppwrap: freezing and
# the C++ wrapper.) Not adopted: see the JSON.
import sys, os, time, torch
sys.path.insert(0, os.getcwd())
from bench.run import Settings, our_config, FixedLength
from pipeline.attention import KVCache
from pipeline.model import Transformer
from pipeline.translator import inference_model
from pipeline.decoding import DecodingConfig, generate
KVCache._in_buffers = lambda self: self._buffers is not None
variant = sys.argv[1]
beams = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "1,4").split(",")]
import torch._inductor.config as ic
if variant in ("freezing", "cppwrap"):
    ic.freezing = True
if variant == "cppwrap":
    ic.cpp_wrapper = True
torch.manual_seed(0)
model = inference_model(Transformer(our_config(Settings())).eval(), None)
g = torch.Generator().manual_seed(1)
srcs = []
for _ in range(4):
    lengths = torch.randint(6, 40, (64,), generator=g)
    src = torch.full((64, int(lengths.max())), 0)
    for i, n in enumerate(lengths.tolist()):
        src[i, :n - 1] = torch.randint(4, 8000, (n - 1,), generator=g); src[i, n - 1] = 2
    srcs.append(src)
class Compiled(FixedLength):
    def __init__(self, model):
        super().__init__(model)
        self.step = torch.compile(model.decode, dynamic=True)
    def decode(self, tgt, memory, src_mask, cache=None):
        fn = self.step if cache and len(cache[0][0]) else self.model.decode
        logits = fn(tgt, memory, src_mask, cache)
        logits[..., 2] = float("-inf")
        return logits
config = DecodingConfig(max_len_ratio=0.0, max_len_extra=30)
def run(m, beam):
    return [generate(m, src, config, beam=beam).tokens for src in srcs]
eager = FixedLength(model)
m = eager if variant == "eager" else Compiled(model)
for beam in beams:
    ref = run(eager, beam)
    t = time.perf_counter(); out = run(m, beam); first = time.perf_counter() - t
    ts = []
    for _ in range(5):
        t = time.perf_counter(); run(m, beam); ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{variant} beam {beam}: first run {first:.1f}s, {256 / ts[2]:.1f} sent/s (min {256/ts[-1]:.1f} max {256/ts[0]:.1f}), "
          f"equal {all(torch.equal(a, b) for a, b in zip(ref, out))}", flush=True)
from torch._dynamo.utils import counters
print(dict(counters["stats"]), {k: dict(v) for k, v in counters.items() if k in ("graph_break", "recompiles")})
