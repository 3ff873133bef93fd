"""Writing a benchmark's result: one JSON under bench/results/, its table, and a warning when
the machine was not idle (timings from a busy machine are not for reporting)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IDLE_LOAD = 0.5  # 1-minute load average above which a run's timings are not reported


def write_result(result: dict, out: str | None, suffix: str, table: str) -> Path:
    """Write `result` to `out` (default bench/results/<date>-<commit><suffix>.json), print the
    table, and warn if result["loadavg_1min_at_start"] says other processes were running."""
    path = Path(out) if out else (
        ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}-{result['commit']}{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table)
    load = result.get("loadavg_1min_at_start")
    if load is not None and load > IDLE_LOAD:
        print(f"WARNING: load average {load:.2f} at start: other processes were using the CPU, "
              "these timings are not valid for reporting", flush=True)
    print(f"wrote {path}")
    return path
