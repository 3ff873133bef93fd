"""A training run's learning curve as a small JSON for results/ (recipe comparisons).

    python -m bench.curve --run runs/NAME --out results/recipes/NAME.json [--command "..."]
    python -m bench.curve --run runs/multi30k --log train.log --out results/multi30k/NAME.json

Reads the run's config.yaml and either its CSV log (run.logger: csv) or, with --log, the
progress lines `fit` prints once per validation (any logger; `make train > train.log`):
validation loss/BLEU (and chrF from the CSV) per epoch, the median training tokens/s, the wall
time, the settings that differ between recipes, and the run's results.json when `fit` wrote one.
Never copies checkpoints.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path

import yaml

from pipeline.provenance import cpu_name, git_commit


# What callbacks.ProgressLog prints after each validation.
PROGRESS = re.compile(r"^epoch (?P<epoch>\d+) step (?P<step>\d+) \| train loss (?P<train_loss>\S+) \| "
                      r"val loss (?P<val_loss>\S+) \| val BLEU (?P<val_bleu>\S+) \| (?P<tokens>[\d,.]+|nan) tok/s \| "
                      r"elapsed (?:(?P<days>\d+) days?, )?(?P<elapsed>\d+:\d\d:\d\d)(?: \||$)")
MEMORY = re.compile(r"\| memory (?P<gb>[\d.]+) GB")  # the process's resident memory, where printed


def seconds(clock: str) -> int:
    """"1:02:03" -> 3723"""
    total = 0
    for part in clock.split(":"):
        total = total * 60 + int(part)
    return total


def csv_curve(run: Path) -> tuple[list[dict], list[float], float]:
    """Per-epoch validation rows, training tokens/s samples and wall time from metrics.csv."""
    rows = list(csv.DictReader((run / "metrics.csv").open(encoding="utf-8")))
    if not rows:
        raise SystemExit(f"{run}/metrics.csv is empty: train with --run.logger csv, or pass --log")
    epochs = [{"epoch": int(r["epoch"]), "step": int(r["step"]), "val_loss": round(float(r["val/loss"]), 4),
               "val_bleu": round(float(r["val/bleu"]), 2), "val_chrf": round(float(r["val/chrf"]), 2)}
              for r in rows if r.get("val/bleu")]
    speed = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    wall = (run / "metrics.csv").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    return epochs, speed, wall


# What Lightning prints when `fit --ckpt_path ...` resumes a run.
RESUMED = "Restored all states from the checkpoint"


def log_curve(log: Path) -> tuple[list[dict], list[float], float]:
    """The same from the progress lines of a `fit` log (elapsed: training time at the last line).

    A log may hold a run and its resumptions (`--ckpt_path last`, appended to the same file),
    each found by Lightning's "Restored all states" line, or by the step or the clock going back.
    A resumed process redoes the steps after its checkpoint: its lines replace those. Its clock
    either goes on from the checkpoint (the max_time Timer's count, about the last kept line's
    elapsed plus one interval between validations) or starts again at 0 (no Timer, or a log from
    before ProgressLog read the Timer: about one interval); in the second case the last kept
    line's elapsed is added to it.
    """
    epochs, speed = [], []
    offset, last_clock, resumed = 0, -1, False
    for text in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if RESUMED in text:
            resumed = True
        m = PROGRESS.match(text)
        if not m:
            continue
        step, clock = int(m["step"]), int(m["days"] or 0) * 86400 + seconds(m["elapsed"])
        if resumed or (epochs and (step <= epochs[-1]["step"] or clock < last_clock)):
            while epochs and epochs[-1]["step"] >= step:  # redone by the resumed process
                epochs.pop()
                speed.pop()
            base = epochs[-1]["elapsed_s"] if epochs else 0
            interval = base / len(epochs) if epochs else 0
            offset = base if clock < base + interval / 2 else 0
            resumed = False
        last_clock = clock
        epochs.append({"epoch": int(m["epoch"]), "step": step, "train_loss": float(m["train_loss"]),
                       "val_loss": float(m["val_loss"]), "val_bleu": float(m["val_bleu"]),
                       "elapsed_s": offset + clock})
        if memory := MEMORY.search(text):
            epochs[-1]["memory_gb"] = float(memory["gb"])
        speed.append(float(m["tokens"].replace(",", "")) if m["tokens"] != "nan" else None)
    if not epochs:
        raise SystemExit(f"no progress lines ('epoch N step M | ...') in {log}")
    return epochs, [x for x in speed if x is not None], float(epochs[-1]["elapsed_s"])


def memory_summary(epochs: list[dict]) -> dict | None:
    """The training process's resident memory at its validations (progress lines that print it):
    first, last, min and max in GB, and the growth from the second validation to the last
    (the first is before the allocator and kernel caches have settled), or None. In a log with
    resumptions the values come from more than one process (each resumed one starts afresh)."""
    gb = [e["memory_gb"] for e in epochs if "memory_gb" in e]
    if not gb:
        return None
    return {"first": gb[0], "last": gb[-1], "min": min(gb), "max": max(gb),
            "growth_after_first": round(gb[-1] - gb[min(1, len(gb) - 1)], 2), "validations": len(gb)}


def curve(run: Path, log: Path | None = None) -> dict:
    epochs, speed, wall = log_curve(log) if log else csv_curve(run)
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    results = run / "results.json"
    return {
        "run": str(run),
        "epochs": epochs,
        "best_val_bleu": max((e["val_bleu"] for e in epochs if e["val_bleu"] == e["val_bleu"]), default=None),
        "train_tokens_per_s_median": round(statistics.median(speed), 1) if speed else None,
        "wall_time_s": round(wall, 1),
        "memory_gb": memory_summary(epochs),
        "final": json.loads(results.read_text(encoding="utf-8")) if results.is_file() else None,
        "precision": config["trainer"].get("precision"),
        "model": config.get("model"), "train": config.get("train"), "decoding": config.get("decoding"),
        "data": {k: config["data"].get(k) for k in ("path", "vocab_size", "max_tokens", "max_len")},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="run directory (its metrics.csv unless --log)")
    p.add_argument("--log", type=Path, default=None, help="a saved `fit` output to read the progress lines from")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write, e.g. results/recipes/NAME.json")
    p.add_argument("--command", default=None, help="the command that trained the run (recorded as is)")
    p.add_argument("--note", default=None, help="anything a reader needs to know (e.g. the machine was shared)")
    args = p.parse_args(argv)
    result = {**curve(args.run, args.log), "command": args.command, "note": args.note, "commit": git_commit(),
              "cpu": cpu_name()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    validations = result["epochs"]  # one entry per validation (every check_val_every_n_epoch epochs)
    last = f", the last at epoch {validations[-1]['epoch']}" if validations else ""
    print(f"wrote {args.out}: best validation BLEU {result['best_val_bleu']} over {len(validations)} validations{last}")
    return result


if __name__ == "__main__":
    main()
