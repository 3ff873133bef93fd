"""Decoding workers (pipeline.workers): the bench's decode batches in one process on torch's
threads, in forked single-threaded worker processes (fork_map, as Translator and bench.run use
them), and in Python threads of one process with one torch thread each; plus the products of a
decoding step on one thread and on two.

    .venv/bin/python bench/results/2026-11-27-decode-workers.py [--out PATH.json]

Same model and batches as bench.run (random weights, EOS forbidden, 30 new tokens, 4 batches of
64 validation-length sources), interleaved repeats, tokens compared between the ways.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.run import FixedLength, Settings, decode_batches, load_data, our_config  # noqa: E402
from pipeline.decoding import DecodingConfig, generate  # noqa: E402
from pipeline.model import Transformer  # noqa: E402
from pipeline.provenance import cpu_name, git_commit  # noqa: E402
from pipeline.translator import inference_model  # noqa: E402
from pipeline.workers import fork_map  # noqa: E402

REPEATS = 5


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def products(threads_list=(1, 2)) -> list[dict]:
    """F.linear at a decoding step's shapes (rows x in -> out), on each thread count."""
    out = []
    for rows, k, n in [(64, 256, 256), (64, 256, 1024), (64, 1024, 256), (256, 256, 256), (256, 256, 8000),
                       (2048, 2048, 2048)]:
        x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
        calls = 20 if rows == 2048 else 200
        entry = {"shape": [rows, k, n]}
        for threads in threads_list:
            torch.set_num_threads(threads)
            for _ in range(10):
                F.linear(x, w, b)
            seconds = min(timed(lambda: [F.linear(x, w, b) for _ in range(calls)]) / calls for _ in range(3))
            entry[f"us_{threads}_threads"] = round(seconds * 1e6, 1)
            entry[f"gflops_{threads}_threads"] = round(2 * rows * k * n / seconds / 1e9, 1)
        entry["two_threads_speedup"] = round(entry["us_1_threads"] / entry["us_2_threads"], 2)
        out.append(entry)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args()
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    s = Settings()
    dm = load_data(s)
    sources = [src.numpy() for src in decode_batches(dm, s)]
    torch.manual_seed(s.seed)
    model = FixedLength(inference_model(Transformer(our_config(s))))
    fixed_n = DecodingConfig(max_len_ratio=0.0, max_len_extra=s.max_new_tokens)
    pool = ThreadPoolExecutor(threads)
    result = {"commit": git_commit(), "cpu": cpu_name(), "threads": threads, "torch": torch.__version__,
              "loadavg_1min_at_start": round(load, 2), "batches": [list(x.shape) for x in sources],
              "new_tokens": s.max_new_tokens, "repeats": REPEATS, "decodes": {}}
    for beam in (1, 4):
        def decode(src, beam=beam):
            return generate(model, torch.from_numpy(src), fixed_n, beam=beam).tokens.numpy()

        def one_process():
            torch.set_num_threads(threads)
            return list(map(decode, sources))

        def workers():
            torch.set_num_threads(threads)
            return list(fork_map(decode, sources, threads))

        def python_threads():  # each batch split in `threads` row shards, one torch thread in all
            torch.set_num_threads(1)
            out = []
            for src in sources:
                shards = [src[i::threads] for i in range(threads)]
                out.append(list(pool.map(decode, shards)))
            torch.set_num_threads(threads)
            return out

        ways = {"one_process": one_process, "workers": workers, "python_threads": python_threads}
        first = {name: fn() for name, fn in ways.items()}  # warm-up, and the tokens
        same = all((a == b).all() for a, b in zip(first["one_process"], first["workers"]))
        same_threads = all((a[i::threads] == shard).all() for a, shards in zip(first["one_process"],
                                                                                first["python_threads"])
                           for i, shard in enumerate(shards))
        times = {name: [] for name in ways}
        for _ in range(REPEATS):
            for name, fn in ways.items():
                time.sleep(0.3)
                times[name].append(timed(fn))
        n = sum(len(x) for x in sources)
        result["decodes"][f"beam{beam}"] = {
            "sentences_per_s": {name: round(n / statistics.median(t), 1) for name, t in times.items()},
            "seconds": {name: [round(x, 3) for x in t] for name, t in times.items()},
            "workers_vs_one_process": round(statistics.median(times["one_process"]) / statistics.median(times["workers"]), 3),
            "python_threads_vs_one_process": round(statistics.median(times["one_process"])
                                                   / statistics.median(times["python_threads"]), 3),
            "workers_tokens_equal": bool(same), "python_threads_tokens_equal": bool(same_threads)}
        print(beam, json.dumps(result["decodes"][f"beam{beam}"]), flush=True)
    result["products"] = products()
    torch.set_num_threads(threads)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["products"], indent=1))


if __name__ == "__main__":
    main()
