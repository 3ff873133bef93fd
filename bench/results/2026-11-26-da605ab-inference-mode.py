"""A/B: decoding under torch.no_grad (today) vs torch.inference_mode, bench.run's decode workload."""
import json, os, statistics, sys, time
from dataclasses import replace
import torch
from bench import run as b
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer
from pipeline.translator import inference_model
s = b.Settings()
if "--quick" in sys.argv: s = replace(s, **b.QUICK)
dm = b.load_data(s)
sources = b.decode_batches(dm, s)
torch.manual_seed(0)
model = b.FixedLength(inference_model(Transformer(b.our_config(s))))
cfg = DecodingConfig(max_len_ratio=0.0, max_len_extra=s.max_new_tokens)
def run(beam, inf):
    def f():
        if inf:
            with torch.inference_mode():
                return [generate(model, src, cfg, beam=beam) for src in sources]
        return [generate(model, src, cfg, beam=beam) for src in sources]
    return f
res = {"load": os.getloadavg()[0], "commit": b.git_commit()}
for beam in (1, 4):
    t = b.interleaved({"no_grad": run(beam, False), "inference_mode": run(beam, True)}, 5, settle_s=0.3)
    res[f"beam{beam}"] = {k: statistics.median(v) for k, v in t.items()}
    res[f"beam{beam}"]["speedup"] = res[f"beam{beam}"]["no_grad"] / res[f"beam{beam}"]["inference_mode"]
print(json.dumps(res, indent=1))
