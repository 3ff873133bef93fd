"""A training run's learning curve as a small JSON for results/ (recipe comparisons).

    python -m bench.curve --run runs/NAME --out results/recipes/NAME.json [--command "..."]

Reads the run's CSV log (run.logger: csv) and config.yaml: validation loss/BLEU/chrF per
epoch, the median training tokens/s, the wall time from the log's file times, and the
settings that differ between recipes. Never copies checkpoints.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

from pipeline.provenance import cpu_name, git_commit


def curve(run: Path) -> dict:
    rows = list(csv.DictReader((run / "metrics.csv").open(encoding="utf-8")))
    if not rows:
        raise SystemExit(f"{run}/metrics.csv is empty: train with --run.logger csv")
    val = [r for r in rows if r.get("val/bleu")]
    speed = [float(r["train/tokens_per_sec"]) for r in rows if r.get("train/tokens_per_sec")]
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    return {
        "run": str(run),
        "epochs": [{"epoch": int(r["epoch"]), "step": int(r["step"]), "val_loss": round(float(r["val/loss"]), 4),
                    "val_bleu": round(float(r["val/bleu"]), 2), "val_chrf": round(float(r["val/chrf"]), 2)}
                   for r in val],
        "best_val_bleu": round(max(float(r["val/bleu"]) for r in val), 2) if val else None,
        "train_tokens_per_s_median": round(statistics.median(speed), 1) if speed else None,
        "wall_time_s": round((run / "metrics.csv").stat().st_mtime - (run / "config.yaml").stat().st_mtime, 1),
        "precision": config["trainer"].get("precision"),
        "model": config.get("model"), "train": config.get("train"), "decoding": config.get("decoding"),
        "data": {k: config["data"].get(k) for k in ("path", "vocab_size", "max_tokens", "max_len")},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="run directory written with --run.logger csv")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write, e.g. results/recipes/NAME.json")
    p.add_argument("--command", default=None, help="the command that trained the run (recorded as is)")
    p.add_argument("--note", default=None, help="anything a reader needs to know (e.g. the machine was shared)")
    args = p.parse_args(argv)
    result = {**curve(args.run), "command": args.command, "note": args.note, "commit": git_commit(),
              "cpu": cpu_name()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: best validation BLEU {result['best_val_bleu']} after {len(result['epochs'])} epochs")
    return result


if __name__ == "__main__":
    main()
