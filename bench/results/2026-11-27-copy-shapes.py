# Where the recipe's bf16 training step casts (aten::copy_), by input shape: one step of the bench's
# recipe model (bf16-mixed, R-Drop, clipping; bench.run's Side.train_step) on one token-bucket batch
# of Multi30k, profiled with record_shapes after 3 warm-ups; counts and self CPU time per shape.
# From the repository root (at the commit to look at):
#   PYTHONPATH=. .venv/bin/python bench/results/2026-11-27-copy-shapes.py > bench/results/<date>-<commit>-copy-shapes.txt
import functools
import os
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from bench.run import QUICK, Settings, Side, load_data, our_config, ours_loss, recipe_settings, train_batches
from pipeline.model import Transformer
from pipeline.provenance import cpu_name, git_commit

load = os.getloadavg()[0]
s = replace(Settings(), train_pairs=QUICK["train_pairs"], train_batches=1, decode_batches=1)
batch = train_batches(load_data(s), s)[0]
recipe = recipe_settings(s)
torch.manual_seed(0)
model = Transformer(replace(our_config(s), **recipe["model"])).train()
side = Side("ours", model, functools.partial(ours_loss, rdrop_alpha=recipe["rdrop_alpha"]), s.lr, fused=False,
            clip=recipe["gradient_clip_val"])
step = lambda: side.train_step(batch, True, recipe["label_smoothing"])  # noqa: E731
for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    step()
print(f"commit {git_commit()}, cpu {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
      f"load average at start {load:.2f}; batch src {list(batch.src.shape)} tgt {list(batch.tgt_in.shape)}")
rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::copy_"]
rows.sort(key=lambda e: -e.count)
total = sum(e.count for e in rows)
print(f"aten::copy_: {total} calls, {sum(e.self_cpu_time_total for e in rows) / 1e3:.1f} ms self CPU")
print("calls  self ms  input shapes")
for e in rows[:20]:
    print(f"{e.count:5d} {e.self_cpu_time_total / 1e3:8.2f}  {e.input_shapes}")
