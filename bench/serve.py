"""Load bench of `python -m pipeline serve`: concurrent clients against a real server process.

    python -m bench.serve --ckpt CKPT [--clients 16] [--seconds 300] [--out PATH.json]
    make bench-serve CKPT=... [CLIENTS=16 SECONDS=300 BENCH_OUT=path.json]

Two runs, each against a fresh `serve` process on 127.0.0.1 (loopback only):
  micro_batching   the server as deployed (--max_batch 32, --max_wait_ms 5): `--seconds` long,
                   with the server's resident memory sampled throughout (flat = no leak)
  one_at_a_time    --max_batch 1, every request translated alone: `--compare-seconds` long
Each client (asyncio + httpx, one keep-alive connection each) sends POST /translate with
`--sentences-per-request` sentences from the validation split of the checkpoint's source
language, waits for the answer and sends the next, until the time is up. A warm-up of
`--warmup-seconds` precedes each timed run (the allocator grows during the first requests).

The JSON (bench/results/<date>-<commit>-serve.json, or --out) holds per run: requests/s,
sentences/s, latency percentiles (ms), errors (non-200 or malformed answers, with samples),
the server's resident memory before, after and sampled (psutil), the server's own batch
counters; and `micro_batching_speedup` (sentences/s ratio), commit, machine, settings, the
load average at start. Timings only mean something on an otherwise idle machine: the client
shares the CPU with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import httpx
import psutil

from bench.report import write_result
from bench.tables import serve_table
from pipeline.provenance import cpu_name, git_commit

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TARGETS = {"errors": 0, "micro_batching_speedup": 2.0, "rss_growth_mb": 50.0}


class ServerProcess:
    """`python -m pipeline serve` on a free loopback port, as a context manager: waits for
    /health on entry, stops the process (SIGTERM, then SIGKILL) on exit. Output goes to `log`."""

    def __init__(self, ckpt: str | Path, *args: str, log: Path | None = None, start_timeout: float = 180.0):
        self.command = [sys.executable, "-m", "pipeline", "serve", "--ckpt", str(ckpt), "--host", HOST,
                        "--port", "0", *map(str, args)]
        self.own_log = log is None  # a temporary file, removed on stop
        if log is None:
            fd, log = tempfile.mkstemp(prefix="pipeline-serve-", suffix=".log")
            os.close(fd)
        self.log = Path(log)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "ServerProcess":
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with code {self.proc.returncode}:\n{self.output()}")
                found = re.search(r"http://127\.0\.0\.1:(\d+)/", self.output())
                if found:
                    self.url = f"http://{HOST}:{found.group(1)}"
                    try:
                        if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                            return self
                    except httpx.HTTPError:
                        pass
                time.sleep(0.2)
            raise RuntimeError(f"serve did not answer /health within {self.start_timeout:.0f} s:\n{self.output()}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_log:
            self.log.unlink(missing_ok=True)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()


def source_sentences(data: str | None, src_lang: str, n: int) -> tuple[list[str], str]:
    """Up to n non-empty `src_lang` texts of a .jsonl file (default: the validation.jsonl under
    ../shared/data whose rows have that key), and the file used."""
    if data:
        candidates = [Path(data)]
    else:
        candidates = sorted((ROOT.parent / "shared" / "data").glob("*/validation.jsonl"))
    for path in candidates:
        if not path.is_file():
            continue
        texts = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get(src_lang) if line.strip() else None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
                if len(texts) == n:
                    break
        if texts:
            return texts, str(path)
    raise SystemExit(f"no .jsonl file with {src_lang!r} texts found ({data or '../shared/data/*/validation.jsonl'}): "
                     "pass --data FILE.jsonl")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))]


async def drive(url: str, clients: int, seconds: float, sentences: list[str], per_request: int,
                beam: int | None, sample=None, sample_every: float = 5.0) -> dict:
    """`clients` closed-loop clients for `seconds`; `sample()` is called every `sample_every` s."""
    latencies: list[float] = []
    errors: list[str] = []
    samples: list[list[float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        deadline = start + seconds

        async def client(i: int) -> None:
            k = i * per_request
            while time.perf_counter() < deadline:
                texts = [sentences[(k + j) % len(sentences)] for j in range(per_request)]
                k += clients * per_request
                body = {"texts": texts} | ({"beam": beam} if beam else {})
                sent = time.perf_counter()
                try:
                    response = await http.post("/translate", json=body)
                    answer = response.json()
                    ok = response.status_code == 200 and len(answer.get("translations", ())) == per_request
                    problem = "" if ok else f"{response.status_code}: {str(answer)[:200]}"
                except (httpx.HTTPError, ValueError) as e:
                    problem = f"{type(e).__name__}: {e}"
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(time.perf_counter() - sent)

        async def sampler() -> None:
            while sample is not None and time.perf_counter() < deadline:
                samples.append([round(time.perf_counter() - start, 1), round(sample(), 1)])
                await asyncio.sleep(min(sample_every, max(0.0, deadline - time.perf_counter())))

        await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {"seconds": round(elapsed, 2), "requests": len(latencies), "sentences": len(latencies) * per_request,
            "errors": len(errors), "error_samples": errors[:5],
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "sentences_per_s": round(len(latencies) * per_request / elapsed, 2),
            "latency_ms": {"p50": round(percentile(ms, 50), 2), "p95": round(percentile(ms, 95), 2),
                           "p99": round(percentile(ms, 99), 2), "mean": round(statistics.fmean(ms), 2) if ms else None,
                           "max": round(ms[-1], 2) if ms else None},
            "rss_samples": samples}


def run_phase(name: str, args, max_batch: int, seconds: float, inputs: dict) -> dict:
    """One timed run against a fresh server; `inputs` caches the sentences (read on first use,
    in the served model's source language) and the languages."""
    log(f"{name}: starting serve --max_batch {max_batch}")
    with ServerProcess(args.ckpt, "--max_batch", max_batch, "--max_wait_ms", args.max_wait_ms,
                       *(["--beam", args.beam] if args.beam else [])) as server:
        if not inputs:
            inputs["languages"] = server.health()["languages"]
            inputs["sentences"], inputs["data"] = source_sentences(args.data, inputs["languages"]["source"],
                                                                   args.sentences)
        sentences = inputs["sentences"]
        if args.warmup_seconds > 0:
            asyncio.run(drive(server.url, args.clients, args.warmup_seconds, sentences, args.sentences_per_request,
                              args.beam))
        before, counters, cpu = server.rss_mb(), server.health()["batching"], server.cpu_s()
        log(f"{name}: {args.clients} clients for {seconds:g} s")
        result = asyncio.run(drive(server.url, args.clients, seconds, sentences, args.sentences_per_request,
                                   args.beam, sample=server.rss_mb, sample_every=args.sample_every))
        after, counters_after, cpu = server.rss_mb(), server.health()["batching"], server.cpu_s() - cpu
    batches = counters_after["batches"] - counters["batches"]
    rss = [mb for _, mb in result["rss_samples"]] + [before, after]
    return {"max_batch": max_batch, "max_wait_ms": args.max_wait_ms, **result,
            "rss_mb_before": round(before, 1), "rss_mb_after": round(after, 1), "rss_mb_max": round(max(rss), 1),
            "rss_growth_mb": round(after - before, 1), "server_cpu_s": round(cpu, 1), "server_batches": batches,
            "mean_batch_sentences": round((counters_after["sentences"] - counters["sentences"]) / batches, 2)
            if batches else None}


def log(message: str) -> None:
    print(f"[bench-serve {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint to serve")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default %(default)s, at most 256)")
    p.add_argument("--seconds", type=float, default=300, help="length of the micro-batching run (default %(default)s)")
    p.add_argument("--compare-seconds", type=float, help="length of the one-at-a-time run (default min(60, --seconds))")
    p.add_argument("--warmup-seconds", type=float, default=5, help="untimed load before each run (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=32, help="server micro-batch size (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server batching wait (default %(default)s)")
    p.add_argument("--beam", type=int, help="beam of every request (default: the server's)")
    p.add_argument("--sentences-per-request", type=int, default=1, help="default %(default)s")
    p.add_argument("--sentences", type=int, default=200, help="distinct source sentences (default %(default)s)")
    p.add_argument("--data", help="a .jsonl file with the source language (default: ../shared/data/*/validation.jsonl)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--out", help="JSON path (default bench/results/<date>-<commit>-serve.json)")
    args = p.parse_args(argv)
    args.compare_seconds = min(60.0, args.seconds) if args.compare_seconds is None else args.compare_seconds
    # Bounded load: a bench, not a stress tool.
    if not 1 <= args.clients <= 256 or not 1 <= args.sentences_per_request <= 64 or not 1 <= args.sentences <= 10000:
        p.error("--clients must be 1..256, --sentences-per-request 1..64, --sentences 1..10000")
    if not (0 < args.seconds <= 3600 and 0 < args.compare_seconds <= 3600 and 0 <= args.warmup_seconds <= 600
            and args.sample_every > 0):
        p.error("--seconds and --compare-seconds must be in (0, 3600], --warmup-seconds in [0, 600]")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    inputs: dict = {}
    micro = run_phase("micro_batching", args, args.max_batch, args.seconds, inputs)
    single = run_phase("one_at_a_time", args, 1, args.compare_seconds, inputs)
    commit = git_commit()
    result = {
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": metadata.version("torch"),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "loadavg_1min_at_start": load,
        "settings": {"ckpt": str(args.ckpt), "languages": inputs["languages"], "host": HOST, "clients": args.clients,
                     "seconds": args.seconds, "compare_seconds": args.compare_seconds,
                     "warmup_seconds": args.warmup_seconds, "max_batch": args.max_batch,
                     "max_wait_ms": args.max_wait_ms, "beam": args.beam,
                     "sentences_per_request": args.sentences_per_request, "data": inputs["data"],
                     "distinct_sentences": len(inputs["sentences"])},
        "micro_batching": micro,
        "one_at_a_time": single,
        "micro_batching_speedup": round(micro["sentences_per_s"] / single["sentences_per_s"], 2)
        if single["sentences_per_s"] else None,
        "targets": TARGETS,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    write_result(result, args.out, "-serve", table(result))
    return result


def table(result: dict) -> str:
    """The README's markdown table (bench/tables.py) and a summary line."""
    s = result["settings"]
    return (serve_table(result) + f"\nmicro-batching speedup {result['micro_batching_speedup']}x (target >= "
            f"{TARGETS['micro_batching_speedup']}x); {s['clients']} clients, {s['seconds']:g} s / "
            f"{s['compare_seconds']:g} s; commit {result['commit']}, {result['machine']['cores']} cores, "
            f"load average at start {result['loadavg_1min_at_start']}")


if __name__ == "__main__":
    main()
