"""`evaluate` end to end with a trained checkpoint, in each decoding precision: speed and BLEU.

    python -m bench.evaluate --ckpt runs/multi30k/checkpoints/final.ckpt [--beam 4] [--out PATH.json]

For fp32 and each `--quantize` value (int8, bf16), runs `python -m pipeline evaluate` (the
function behind it, in this process) on the validation and test splits: tokenization, batching
by length, decoding and detokenization, as a user runs it. Records BLEU, chrF and evaluate's own
sentences/s (time spent translating, model loading excluded), `--repeats` times per split with
the precisions interleaved, and each precision's validation BLEU against fp32's: the speed issue
keeps a quantization only if validation BLEU stays within 0.3 of fp32.

Writes bench/results/<date>-<commit>-evaluate.json (or --out). Timings only mean something on
an otherwise idle machine; the load average at start is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.report import write_result
from bench.tables import evaluate_table
from pipeline.commands import evaluate
from pipeline.provenance import cpu_name, git_commit
from pipeline.translator import QUANTIZE

MAX_BLEU_DROP = 0.3  # validation BLEU a quantization may lose against fp32
TARGET_TEST_BEAM4 = 240.0  # sentences/s of evaluate on test2016 with beam 4 (the speed issue)


def one_run(ckpt: str, data: str, split: str, beam: int | None, quantize: str | None,
            workers: int | None = None) -> dict:
    """evaluate's metrics.json for one split and precision (its printed lines are swallowed)."""
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        evaluate(ckpt, data, out, split=split, beam=beam, quantize=quantize, workers=workers)
        return json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))


def run(ckpt: str, data: str, beam: int | None, repeats: int, splits: tuple[str, ...],
        workers: int | None = None) -> dict:
    variants = [None, *QUANTIZE]
    found: dict = {}
    for quantize in variants:  # warm-up: file caches, allocator, kernel selection and packing
        one_run(ckpt, data, splits[0], beam, quantize, workers)
    for _ in range(repeats):
        for split in splits:
            for quantize in variants:
                m = one_run(ckpt, data, split, beam, quantize, workers)
                entry = found.setdefault(split, {}).setdefault(quantize or "fp32", {
                    "bleu": m["bleu"], "chrf": m["chrf"], "n": m["n"], "beam": m["beam"],
                    "length_penalty": m["length_penalty"], "workers": m["workers"], "sentences_per_s": []})
                if entry["bleu"] != m["bleu"]:
                    raise AssertionError(f"{split} {quantize}: BLEU {m['bleu']} then {entry['bleu']} (not deterministic)")
                entry["sentences_per_s"].append(m["sentences_per_sec"])
    for split in found.values():
        for entry in split.values():
            rates = entry.pop("sentences_per_s")
            entry["sentences_per_s"] = statistics.median(rates)
            entry["spread"] = {"min": min(rates), "max": max(rates)}
    validation = found.get("validation")
    verdicts = {}
    if validation:
        for name, entry in validation.items():
            drop = round(validation["fp32"]["bleu"] - entry["bleu"], 2)
            verdicts[name] = {"validation_bleu_drop": drop, "kept": drop <= MAX_BLEU_DROP,
                              "speedup_vs_fp32": round(entry["sentences_per_s"] / validation["fp32"]["sentences_per_s"], 2)}
    return {"splits": found, "quantization": verdicts}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a trained checkpoint, e.g. runs/multi30k/checkpoints/final.ckpt")
    p.add_argument("--data", default="../shared/data/multi30k", help="dataset directory with the splits")
    p.add_argument("--splits", nargs="+", default=["validation", "test"], help="splits to translate")
    p.add_argument("--beam", type=int, default=4, help="beam size (0: the checkpoint's own decoding.beam)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per split and precision")
    p.add_argument("--workers", type=int, default=0,
                   help="evaluate's --workers (default 0: evaluate's own default, one per CPU thread)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<date>-<commit>-evaluate.json)")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = {
        "command": "python -m bench.evaluate " + " ".join(argv if argv is not None else sys.argv[1:]),
        "ckpt": args.ckpt, "data": args.data, "commit": git_commit(), "cpu": cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg_1min_at_start": round(load, 2),
        "max_validation_bleu_drop": MAX_BLEU_DROP, "target_test_beam4_sentences_per_s": TARGET_TEST_BEAM4,
        **run(args.ckpt, args.data, args.beam or None, args.repeats, tuple(args.splits), args.workers or None),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_result(result, args.out, "-evaluate", evaluate_table(result))
    return result


if __name__ == "__main__":
    main()
