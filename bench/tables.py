"""Markdown tables for the README, generated from committed benchmark JSON (never typed by hand).

    python -m bench.tables bench/results/2026-11-26-fe75563.json            # make bench
    python -m bench.tables bench/results/2026-11-26-fe75563-serve.json      # make bench-serve
    python -m bench.tables bench/results/2026-11-26-fe75563-data.json       # make bench-data
    python -m bench.tables bench/results/DATE-COMMIT-evaluate.json          # make bench-evaluate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def speed_table(result: dict) -> str:
    lines = ["| figure | unit | ours: median (min–max) | peer | peer: median (min–max) | ratio | target |",
             "|---|---|---|---|---|---|---|"]

    def cell(spread: dict, median: float) -> str:
        return f"{median:,.1f} ({spread['min']:,.1f}–{spread['max']:,.1f})" if spread else f"{median:,.1f}"

    for row in result["rows"]:
        peer, spread = row["peer"], row.get("spread", {})
        target = result["targets"].get(row["figure"])  # as recorded with the measurement
        verdict = "" if target is None else f"≥ {target}× " + ("met" if row["ratio"] >= target else "not met")
        lines.append(f"| {row['figure']} | {row['unit']} | {cell(spread.get('ours'), row['ours'])} | {peer} | "
                     f"{cell(spread.get(peer), row[peer])} | {row['ratio']:.2f}× | {verdict} |")
    return "\n".join(lines)


def serve_table(result: dict) -> str:
    lines = ["| run | max batch | requests/s | sentences/s | p50 ms | p95 ms | p99 ms | errors | server RSS MB before → after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ("micro_batching", "one_at_a_time"):
        r = result[name]
        lat = r["latency_ms"]
        lines.append(f"| {name.replace('_', ' ')} | {r['max_batch']} | {r['requests_per_s']:.1f} | "
                     f"{r['sentences_per_s']:.1f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | "
                     f"{r['errors']} | {r['rss_mb_before']:.0f} → {r['rss_mb_after']:.0f} |")
    return "\n".join(lines)


def data_table(result: dict) -> str:
    lines = ["| pairs | peak RSS MB | tokenized pairs/s | raw encode_batch pairs/s | cache MB | sampler s | "
             "first step s, cold | first step s, warm |", "|---|---|---|---|---|---|---|---|"]
    for r in result["sizes"]:
        lines.append(f"| {r['pairs']:,} | {r['peak_rss_mb']:,.0f} | {r['tokenized_pairs_per_s']:,.0f} | "
                     f"{r['encode_batch_pairs_per_s']:,.0f} | {r['cache_mb']:,.1f} | {r['sampler_build_s']:.2f} | "
                     f"{r['first_step_s_cold']:.1f} | {r['first_step_s_warm']:.1f} |")
    return "\n".join(lines)


def evaluate_table(result: dict) -> str:
    lines = ["| split | decoding | beam | workers | BLEU | chrF | sentences/s: median (min–max) |",
             "|---|---|---|---|---|---|---|"]
    for split, entries in result["splits"].items():
        for name, e in entries.items():
            lines.append(f"| {split} | {name} | {e['beam']} | {e.get('workers', 1)} | {e['bleu']:.2f} | {e['chrf']:.2f} | "
                         f"{e['sentences_per_s']:,.1f} ({e['spread']['min']:,.1f}–{e['spread']['max']:,.1f}) |")
    return "\n".join(lines)


def epochs_phrase(epochs: list[dict]) -> str:
    """"N epochs", or, when max_time cut the last one short (fewer steps than the first epoch's),
    "N full epochs (N+1 validations, the last after a partial epoch)"."""
    steps = [e.get("step") for e in epochs]
    if len(epochs) < 2 or None in steps or steps[-1] - steps[-2] >= steps[0]:
        return f"{len(epochs)} epochs"
    return f"{len(epochs) - 1} full epochs ({len(epochs)} validations, the last after a partial epoch)"


def results_table(result: dict) -> str:
    """A training run's held-out scores (bench.curve JSON of a run that `fit` finalized)."""
    final = result["final"]
    chosen = (f"{final['chosen_from']}, beam {final['beam']}, length penalty {final['length_penalty']}")
    lines = ["| split | BLEU | chrF | chosen on validation |", "|---|---|---|---|"]
    for split in ("validation", "test"):
        if final.get(split):
            lines.append(f"| {split} | {final[split]['bleu']:.2f} | {final[split]['chrf']:.2f} | {chosen} |")
    lines.append("")
    lines.append(f"{epochs_phrase(result['epochs'])} in {result['wall_time_s'] / 3600:.2f} h of training "
                 f"({final.get('precision', result.get('precision'))}), best greedy validation BLEU during training "
                 f"{result['best_val_bleu']:.2f}; sacreBLEU {final['test']['signature'] if final.get('test') else ''}; "
                 f"commit {final['commit']}")
    return "\n".join(lines)


def table(result: dict) -> str:
    if "final" in result and "epochs" in result:
        return results_table(result)
    if "quantization" in result:
        return evaluate_table(result)
    if "sizes" in result:
        return data_table(result)
    if "micro_batching" in result:
        return serve_table(result)
    return speed_table(result)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="a bench/results/*.json file")
    args = p.parse_args(argv)
    print(table(json.loads(args.json.read_text(encoding="utf-8"))))


if __name__ == "__main__":
    main()
