"""Where the time goes: torch.profiler operator tables for one training step of the recipe model,
one beam-4 decode and one greedy decode of a 64-sentence batch.

    python -m bench.profile [--out bench/results/<date>-<commit>-profile.txt] [--data DIR] [--threads N]
                            [--device cuda] [--marian]

The model and data are the benchmark's (bench/run.py): random weights at the recipe's sizes, a
V=8000 BPE trained on the multi30k training split, one token-bucket batch of about 64 sentences
x 24 tokens. The training step uses the recipe's settings (configs/multi30k.yaml: dropouts,
label smoothing, R-Drop, gradient clipping, AdamW as TranslationModule builds it) in the precision the
recipe trains in (precision null: what pipeline.hardware.choose_precision picks on this machine),
with the loss as TranslationModule computes it. The decode is generate(beam=4) on 64 validation
sentences with EOS forbidden, exactly 30 new tokens per hypothesis, on the model as Translator
prepares it (projections merged), as the benchmark's beam4; the greedy decode is the same with
beam 1, as the benchmark's greedy.
Each is run twice untimed first (warm-up), then once under the profiler; the tables list the
top 25 operators by self CPU time. Like the benchmark, it only means something on an idle machine.
With --device cuda the model and batches are on the GPU, the profiler records CUDA kernels too,
the tables are ordered by self CUDA time and the header counts kernel launches (a small model on a
GPU is bound by launches, not by arithmetic). --marian adds MarianMT's training step on the same
batch with the same recipe settings (bench.run's train_recipe peer), to compare the two step by step.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.run import (QUICK, ROOT, TINY, FixedLength, Settings, Side, cpu_name, decode_batches, git_commit,
                       load_data, log, marian_loss, marian_model, our_config, ours_loss, real_tokens,
                       recipe_settings, synchronize, train_batches)
from pipeline.decoding import DecodingConfig, generate
from pipeline.model import Transformer
from pipeline.translator import inference_model

ROWS = 25


def operator_table(fn, warmup: int = 2, cuda: bool = False) -> tuple[str, float, int]:
    """Top operators by self CPU time (self CUDA time with `cuda`) of one call of fn (after `warmup`
    calls), its wall time under the profiler (GPU work waited for) and its CUDA kernel launches."""
    for _ in range(warmup):
        fn()
    synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        synchronize()
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel"))
    order = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return events.table(sort_by=order, row_limit=ROWS), seconds, launches


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="text file (default bench/results/<date>-<commit>-profile.txt)")
    p.add_argument("--data", default=Settings.data, help="dataset directory (default %(default)s)")
    p.add_argument("--recipe", default=Settings.recipe, help="config whose training settings are used "
                                                             "(default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="toy sizes, to check that it runs (numbers meaningless)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--marian", action="store_true", help="also profile MarianMT's training step on the same batch")
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        raise SystemExit(f"data not found: {args.data} (pass --data DIR)")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (run without --device)")
    # The benchmark's sizes; only the 10k-pair slice of --quick is tokenized (one batch is needed).
    s = replace(Settings(data=args.data, recipe=args.recipe, threads=args.threads, device=args.device),
                train_pairs=QUICK["train_pairs"], train_batches=1, decode_batches=1)
    if args.tiny:
        s = replace(s, **TINY)
    if s.threads:
        torch.set_num_threads(s.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    log(f"data from {s.data}")
    dm = load_data(s)
    batch, src = train_batches(dm, s)[0].to(s.device), decode_batches(dm, s)[0].to(s.device)
    recipe = recipe_settings(s)
    bf16 = "bf16" in recipe["precision"]
    cfg = replace(our_config(s), **recipe["model"])
    torch.manual_seed(s.seed)
    model = Transformer(cfg).to(s.device).train()
    loss = functools.partial(ours_loss, rdrop_alpha=recipe["rdrop_alpha"])  # the recipe's R-Drop, as fit trains
    side = Side("ours", model, loss, s.lr, fused=not bf16, clip=recipe["gradient_clip_val"])

    log(f"training step: batch {list(batch.src.shape)} -> {list(batch.tgt_in.shape)}, {recipe['precision']}")
    train_table, train_seconds, train_launches = operator_table(
        lambda: side.train_step(batch, bf16, recipe["label_smoothing"]), cuda=cuda)
    sections = [("one training step", train_table)]
    lines = [f"training step: src {list(batch.src.shape)}, tgt {list(batch.tgt_in.shape)}, "
             f"{real_tokens(batch)} real tokens; {train_seconds * 1e3:.1f} ms under the profiler"
             + (f", {train_launches} kernel launches" if cuda else "")]
    if args.marian:
        marian = marian_model(cfg).to(s.device).train()
        marian_side = Side("marian", marian, functools.partial(marian_loss, rdrop_alpha=recipe["rdrop_alpha"]),
                           s.lr, fused=not bf16, clip=recipe["gradient_clip_val"])
        log("MarianMT's training step on the same batch")
        table, seconds, launches = operator_table(
            lambda: marian_side.train_step(batch, bf16, recipe["label_smoothing"]), cuda=cuda)
        sections.append(("MarianMT's training step", table))
        lines.append(f"MarianMT's training step (same batch and settings): {seconds * 1e3:.1f} ms under the "
                     f"profiler" + (f", {launches} kernel launches" if cuda else ""))
        del marian_side, marian
    model.eval()
    fixed, n = FixedLength(inference_model(model)), s.max_new_tokens  # as Translator and bench.run decode
    config = DecodingConfig(max_len_ratio=0.0, max_len_extra=n)  # exactly n new tokens: EOS is forbidden
    log(f"beam-4 decode: {src.size(0)} sentences x {n} tokens")
    decode_table, decode_seconds, decode_launches = operator_table(
        lambda: generate(fixed, src, config, beam=4), cuda=cuda)
    log(f"greedy decode: {src.size(0)} sentences x {n} tokens")
    greedy_table, greedy_seconds, greedy_launches = operator_table(
        lambda: generate(fixed, src, config, beam=1), cuda=cuda)
    sections += [("one beam-4 decode", decode_table), ("one greedy decode", greedy_table)]

    commit = git_commit()
    header = [
        f"bench.profile: commit {commit}, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"cpu {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        + (f"gpu {torch.cuda.get_device_name()}, " if cuda else "") +
        f"load average at start {load}" + (" (TINY sizes: numbers meaningless)" if args.tiny else ""),
        f"model: {cfg.to_dict()}",
        f"recipe {recipe['path']}: {recipe['model']}, label smoothing {recipe['label_smoothing']}, gradient clip "
        f"{recipe['gradient_clip_val']}, R-Drop alpha {recipe['rdrop_alpha']}, precision {recipe['precision']} "
        f"({recipe['precision_reason']}), "
        f"AdamW {'fused' if not bf16 else 'foreach'}",
        *lines,
        f"beam-4 decode: {src.size(0)} sentences, src {list(src.shape)}, {n} new tokens per hypothesis (EOS "
        f"forbidden); {decode_seconds * 1e3:.1f} ms under the profiler"
        + (f", {decode_launches} kernel launches" if cuda else ""),
        f"greedy decode: the same sentences and rule; {greedy_seconds * 1e3:.1f} ms under the profiler"
        + (f", {greedy_launches} kernel launches" if cuda else ""),
    ]
    by = "self CUDA time" if cuda else "self CPU time"
    text = "\n".join(header + [part for title, table in sections
                               for part in ("", f"== {title}: top {ROWS} operators by {by}", table)] + [""])
    out = Path(args.out) if args.out else (
        ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}-{commit}-profile.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    if load and load > 0.5:
        print(f"WARNING: load average {load:.2f} at start: other processes were using the CPU", flush=True)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
