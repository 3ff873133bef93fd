# Where a decoding step's time goes: the bench's greedy and beam-4 decode (its 4 validation batches, 30 new
# tokens, EOS forbidden) with the bench's model, with d_model 16 (next to no arithmetic but the 8,000-token
# vocabulary), and with d_model 16 and 64 tokens (Python and dispatch only); plus the encoder alone.
# From the repository root: .venv/bin/python bench/results/2026-11-27-decode-overhead.py
import sys, os, time, torch
sys.path.insert(0, os.getcwd())
from dataclasses import replace
from bench.run import QUICK, Settings, decode_batches, load_data, our_config, FixedLength
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer, TransformerConfig
from pipeline.translator import inference_model
p = "/tmp/exp/srcs.pt"
s = replace(Settings(), train_pairs=QUICK["train_pairs"], train_batches=1)
if not os.path.exists(p):
    dm = load_data(s); torch.save(decode_batches(dm, s), p)
srcs = torch.load(p)
print([tuple(x.shape) for x in srcs], [round(float((x != 0).float().mean()), 2) for x in srcs])
config = DecodingConfig(max_len_ratio=0.0, max_len_extra=30)
def timeit(m, beam, reps=5, clamp=None):
    global srcs
    keep = srcs
    if clamp: srcs = [x.clamp(max=clamp) for x in srcs]
    for src in srcs: generate(m, src, config, beam=beam)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        for src in srcs: generate(m, src, config, beam=beam)
        ts.append(time.perf_counter() - t)
    srcs = keep
    return sorted(ts)[reps // 2] / len(srcs) * 1000
torch.manual_seed(0)
full = FixedLength(inference_model(Transformer(our_config(s)).eval(), None))
tiny_cfg = replace(our_config(s), d_model=16, n_heads=4, d_ff=16, vocab_size=8000)
tiny = FixedLength(inference_model(Transformer(tiny_cfg).eval(), None))
tiny_v = FixedLength(inference_model(Transformer(replace(tiny_cfg, vocab_size=64)).eval(), None))
with torch.inference_mode():
    enc = []
    for _ in range(5):
        t = time.perf_counter()
        for src in srcs: full.encode(src)
        enc.append(time.perf_counter() - t)
print(f"encode: {sorted(enc)[2] / len(srcs) * 1000:.1f} ms a batch")
for beam in (1, 4):
    print(f"beam {beam}: full {timeit(full, beam):.1f} ms a batch, d=16 vocab 8000 {timeit(tiny, beam):.1f}, d=16 vocab 64 {timeit(tiny_v, beam, clamp=63):.1f}")
