"""On a GPU: the recipe's training step with the fused loss in chunks of 256 rows (the CPU's size,
the code before pipeline.loss.default_chunk_rows) and in the GPU's default chunks (2^25 logits:
the batch in one chunk), beside MarianMT's step on the same batches: kernel launches per step,
peak GPU memory, and seconds per pass over the batches, the three passes alternated in one process.

Each side as bench.run's train_recipe row runs it: configs/multi30k.yaml's dropouts and R-Drop,
label smoothing, clipping, bf16 autocast (a GPU with bf16), AdamW foreach; the bench's model sizes,
token-bucket batches of about 64 sentences x 24 tokens from the --quick slice.

    device run: source bench/gpu_env.sh; python3 bench/results/2026-11-27-gpu-loss-chunks.py \
        --data $DATA --out $OUT/gpu-loss-chunks.json
    (on a CPU with --device cpu --passes 1 it checks that the script runs; the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from bench.run import (QUICK, Settings, Side, alternating_passes, git_commit, load_data, marian_loss, marian_model,
                       our_config, real_tokens, recipe_settings, synchronize, train_batches)
from pipeline.loss import default_chunk_rows, rdrop_cross_entropy
from pipeline.model import Transformer
from pipeline.tokenizer import PAD

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel")


def ours_loss_in_chunks(model, b, label_smoothing, rdrop_alpha, chunk_rows):
    """pipeline.loss.translation_loss (R-Drop) with an explicit chunk size."""
    hidden = model(b.src.repeat(2, 1), b.tgt_in.repeat(2, 1), project=False)
    return rdrop_cross_entropy(hidden, model.lm_head.weight, b.tgt_out, label_smoothing, rdrop_alpha, chunk_rows)


def launches_and_events(step, cuda: bool) -> tuple[int, int]:
    """(kernel launches, profiler events) of one call of step, after one untimed call."""
    step()
    synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        synchronize()
    events = prof.key_averages()
    return sum(e.count for e in events if e.key in LAUNCHES), sum(e.count for e in events)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=Settings.data)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--passes", type=int, default=15)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cuda = args.device == "cuda"
    s = replace(Settings(data=args.data, device=args.device), train_pairs=QUICK["train_pairs"],
                train_batches=args.batches, decode_batches=1)
    batches = [b.to(s.device) for b in train_batches(load_data(s), s)]
    recipe = recipe_settings(s)
    bf16 = "bf16" in recipe["precision"]
    cfg = replace(our_config(s), **recipe["model"])
    alpha, smoothing = recipe["rdrop_alpha"], recipe["label_smoothing"]
    gpu_rows = default_chunk_rows(torch.device("cuda"), cfg.vocab_size)  # the GPU's, also on a CPU dry run
    sides = {}
    for name, chunk in (("ours_chunks_256", 256), (f"ours_chunks_{gpu_rows}", gpu_rows), ("marian", None)):
        torch.manual_seed(s.seed)
        if chunk is None:
            model, loss = marian_model(cfg).to(s.device).train(), functools.partial(marian_loss, rdrop_alpha=alpha)
        else:
            model = Transformer(cfg).to(s.device).train()
            loss = functools.partial(ours_loss_in_chunks, rdrop_alpha=alpha, chunk_rows=chunk)
        sides[name] = Side(name, model, loss, s.lr, fused=not bf16, clip=recipe["gradient_clip_val"])

    # The same loss either way: both chunkings from the same weights and dropout masks.
    ours = [n for n in sides if n != "marian"]
    values = {}
    for name in ours:
        torch.manual_seed(1)
        with torch.autocast(s.device, dtype=torch.bfloat16, enabled=bf16):
            values[name] = sides[name].loss_fn(sides[ours[0]].model, batches[0], smoothing).item()

    counts, memory = {}, {}
    for name, side in sides.items():
        counts[name] = launches_and_events(lambda: side.train_step(batches[0], bf16, smoothing), cuda)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            side.train_step(batches[0], bf16, smoothing)
            synchronize()
            memory[name] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)

    def run_pass(name):
        for b in batches:
            sides[name].train_step(b, bf16, smoothing)
        synchronize()

    seconds = alternating_passes(run_pass, list(sides), args.passes)
    tokens = sum(real_tokens(b) for b in batches)
    rates = {name: [round(tokens / t, 1) for t in ts] for name, ts in seconds.items()}
    median = {name: statistics.median(r) for name, r in rates.items()}
    result = {
        "script": "bench/results/2026-11-27-gpu-loss-chunks.py", "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "recipe": {k: recipe[k] for k in ("model", "rdrop_alpha", "label_smoothing", "gradient_clip_val",
                                          "precision")},
        "batches": [[list(b.src.shape), list(b.tgt_in.shape), int((b.tgt_out != PAD).sum())] for b in batches],
        "real_tokens_per_pass": tokens, "passes": args.passes,
        "loss_same_masks": values,
        "kernel_launches_per_step": {n: c[0] for n, c in counts.items()},
        "profiler_events_per_step": {n: c[1] for n, c in counts.items()},
        "peak_gpu_memory_mb": memory,
        "seconds_per_pass": seconds, "real_tokens_per_s": rates, "median_real_tokens_per_s": median,
        "ratio_to_marian_by_medians": {n: round(median[n] / median["marian"], 3) for n in ours},
        "gpu_chunks_over_256_by_medians": round(median[ours[1]] / median[ours[0]], 3),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("kernel_launches_per_step", "peak_gpu_memory_mb", "loss_same_masks",
                                             "median_real_tokens_per_s", "ratio_to_marian_by_medians",
                                             "gpu_chunks_over_256_by_medians")}, indent=1))


if __name__ == "__main__":
    main()
