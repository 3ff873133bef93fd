"""Decode independent batches in parallel: one forked process per CPU thread, each single-threaded.

Why: a decoding step of this model is a few dozen small operators (products of 64-256 rows by
256 columns, attention for one query, layer norms, the search's bookkeeping, about 1 ms of
Python and dispatch). torch splits each operator over its threads, which pays for the products
(1.7-2.0x on two threads) but not for the rest; processes that each decode whole batches on one
thread run all of it side by side. On 2 cores, the bench's batches decoded 1.14x (greedy) and
1.13x (beam 4) as fast in two workers as in one process on two threads, with the same tokens;
Python threads in one process, one torch thread each, gained 0.99x and 1.09x: they wait on each
other for Python's lock (bench/results/2026-11-27-decode-workers.{py,json}).
CTranslate2 offers the same choice as `inter_threads` (replicas) against `intra_threads`.

    for tokens in fork_map(lambda src: generate(model, src, config).tokens, batches, workers=2):
        ...

The workers are forked, so they start at once and share the parent's weights (copy-on-write);
the function and the model are not pickled, only each batch and its result. Where fork is not
available (Windows, macOS' default is unsafe with many libraries), on GPUs, for one batch or one
worker, `fork_map` runs in the calling process instead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

_TASK: Callable[[Any], Any] | None = None  # set just before forking: the workers inherit it


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux; not macOS, where forking a process
    that has loaded system frameworks can crash, nor Windows, which has no fork)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def default_workers(device: torch.device | str = "cpu") -> int:
    """How many decoding processes pay on `device`: one per thread torch uses on the CPU (each
    single-threaded), 1 on a GPU or where processes cannot be forked."""
    if torch.device(device).type != "cpu" or not can_fork():
        return 1
    return max(1, torch.get_num_threads())


def _start_worker() -> None:
    # One thread each: the workers are the parallelism. Ctrl-C goes to the whole process group;
    # the parent handles it (and ends the workers), so a worker must not die of it mid-batch.
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(item: Any) -> Any:
    return _TASK(item)


@contextlib.contextmanager
def _tokenizers_quiet_at_fork():
    # Hugging Face tokenizers prints a warning in every forked child if its thread pool was used
    # before the fork (the children never tokenize); a configured TOKENIZERS_PARALLELISM
    # silences it. Set only while forking, so the parent's own tokenization keeps its threads.
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def fork_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> Iterator[Any]:
    """fn(item) for each item, in order, computed by `workers` forked single-threaded processes
    (or here, in this process, when workers < 2, there are fewer than 2 items, or fork is not
    available). Items and results travel pickled: pass numpy arrays or small tensors. fn sees
    the parent's memory as it was when this call started. A worker that dies (out of memory,
    killed) ends the call with concurrent.futures.process.BrokenProcessPool; the other workers
    are stopped either way."""
    items = list(items)
    if workers < 2 or len(items) < 2 or not can_fork():
        yield from map(fn, items)
        return
    global _TASK
    _TASK = fn
    workers = min(workers, len(items))
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker)
    try:
        with _tokenizers_quiet_at_fork():  # every worker is forked by the first submit
            results = executor.map(_run, items)
        yield from results
    finally:
        _TASK = None
        executor.shutdown(wait=True, cancel_futures=True)
