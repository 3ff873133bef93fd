# The script behind bench/results/2026-11-27-train-compile.json: does `train.compile: true`
# (TranslationModule calls model.compile(), torch.compile with its defaults, on the Transformer's
# forward) speed up the recipe's training step on this CPU? One process per variant (compiled
# code is process state). The recipe's settings (configs/multi30k.yaml: dropouts, R-Drop, label
# smoothing, clipping, bf16-mixed autocast where the recipe's probe picks it) on the bench's model
# sizes, 24 token-bucket batches of the recipe's max_tokens from the shuffled training split (as
# `fit` draws them: shapes change every batch); a first pass (which compiles), then 3 timed passes.
#   .venv/bin/python bench/results/2026-11-27-train-compile.py eager|compile [cuda]
# With `cuda` (a lent GPU: bench/gpu_check.sh's environment) the model and batches are on the GPU,
# the recipe's precision is what the probe rule picks there (bf16-mixed) and each pass ends with a
# synchronize; those results are in bench/results/2026-11-27-train-compile-gpu.json.
import functools, json, os, sys, time
from dataclasses import replace
import torch
sys.path.insert(0, os.getcwd())
from bench.run import Settings, Side, load_data, our_config, ours_loss, real_tokens, recipe_settings
from pipeline.batching import collate
from pipeline.model import Transformer

variant = sys.argv[1]
device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
settings = Settings(device=device, data=os.environ.get("DATA", Settings.data))
dm = load_data(settings)
sampler = dm.sampler("train", 2500, shuffle=True)
sampler.set_epoch(0)
batches = [collate([dm.splits["train"][i] for i in b]).to(device) for b in list(iter(sampler))[:24]]
recipe = recipe_settings(settings)
bf16 = "bf16" in recipe["precision"]
torch.manual_seed(0)
model = Transformer(replace(our_config(settings), **recipe["model"])).to(device).train()
if variant == "compile":
    model.compile()
side = Side(variant, model, functools.partial(ours_loss, rdrop_alpha=recipe["rdrop_alpha"]), 1e-4,
            fused=not bf16, clip=recipe["gradient_clip_val"])
tokens = sum(real_tokens(b) for b in batches)
passes = []
for _ in range(4):
    start = time.perf_counter()
    for b in batches:
        side.train_step(b, bf16, recipe["label_smoothing"])
    if device == "cuda":
        torch.cuda.synchronize()
    passes.append(time.perf_counter() - start)
result = {"variant": variant, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "torch": torch.__version__, "precision": recipe["precision"], "batches": len(batches),
          "shapes": len({(tuple(b.src.shape), tuple(b.tgt_in.shape)) for b in batches}),
          "real_tokens_per_pass": tokens, "first_pass_s": round(passes[0], 1),
          "timed_passes_s": [round(p, 2) for p in passes[1:]],
          "real_tokens_per_s_median": round(tokens / sorted(passes[1:])[1], 1),
          "loadavg_1min_at_end": os.getloadavg()[0]}
if variant == "compile":
    from torch._dynamo.utils import counters
    result["dynamo"] = {"stats": dict(counters["stats"]), "graph_breaks": sum(counters["graph_break"].values()),
                        "graph_break_reasons": list(counters["graph_break"])[:5],
                        "recompiles": sum(counters["recompiles"].values())}
print(json.dumps(result))
