"""Decode independent batches in parallel: forked worker processes, each on one thread.

Why: a decoding step of this model is a few dozen small operators (products of 64-256 rows by
256 columns, attention for one query, layer norms, the search's bookkeeping, Python's dispatch).
torch splits each operator over its threads, which pays for large products (1.7-2.0x on two
threads at a step's shapes) and less for the rest; processes that each decode whole batches on
one thread run all of it side by side. On 2 cores, the bench's batches decoded 1.14x (greedy) and
1.13x (beam 4) as fast in two workers as in one process on two threads, with the same tokens;
Python threads in one process (each batch split into row shards, one torch thread in all) gained
0.99x and 1.09x (bench/results/2026-11-27-decode-workers.{py,json}). CTranslate2 offers the same
choice as `inter_threads` (replicas) against `intra_threads`.

    for tokens in fork_map(lambda src: generate(model, torch.from_numpy(src), config).tokens.tolist(),
                           batches, workers=2):
        ...

The workers are forked, so they start at once and share the parent's memory copy-on-write (warm
what they will read first, e.g. packed weights: translator.Translator decodes one sentence in the
parent before forking); the function is not pickled, only each item and its result (pass numpy
arrays or lists). Where fork is not available (off Linux), for one item or one worker, `fork_map`
runs in the calling process. Callers choose the count: only CPU models may be forked (a process
that has initialised CUDA cannot use it in a forked child); `default_workers` says 1 on GPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

_TASK: Callable[[Any], Any] | None = None  # set just before forking: the workers inherit it
_FORKING = threading.Lock()  # one fork_map at a time sets _TASK and forks (threads of one process)
_PARENT: int | None = None  # the forking process, for the workers to check it is still there


def _unlock_in_child() -> None:
    # A child forked while _FORKING was held (a worker, or a process another thread forked)
    # would otherwise inherit it locked, and its own fork_map would wait forever.
    global _FORKING
    _FORKING = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere nothing forks (can_fork)
    os.register_at_fork(after_in_child=_unlock_in_child)


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux; not macOS, where forking a process
    that has loaded system frameworks can crash, nor Windows, which has no fork)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def default_workers(device: torch.device | str = "cpu") -> int:
    """How many decoding processes to use on `device`: one per thread torch uses on the CPU (at
    most one per CPU this process may run on), 1 on a GPU or where processes cannot be forked."""
    if torch.device(device).type != "cpu" or not can_fork():
        return 1
    return max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))


def _start_worker() -> None:
    # One thread each: the workers are the parallelism.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent stops the workers itself (fork_map),
    # so a worker must not die of it on its own, mid-batch and mid-message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent that dies without stopping us (killed, out of memory) takes its workers along,
    # also if it died before this line.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != _PARENT:
        os._exit(1)


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
    """fn(item) for each item, in order, computed by min(workers, len(items)) forked
    single-threaded processes (or here, in this process, when that is fewer than 2 or fork is
    not available). fn sees the parent's memory as it was when this call started. Consume the
    iterator to its end, or close it (contextlib.closing, where the caller's loop may raise):
    the workers stop when it ends, is closed, or Ctrl-C interrupts it, dropping unfinished
    items. A worker that dies (out of memory, killed) ends the call with
    concurrent.futures.process.BrokenProcessPool."""
    global _TASK, _PARENT
    items = list(items)
    workers = min(workers, len(items))
    if workers < 2 or not can_fork():
        yield from map(fn, items)
        return
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker)
    finished = False
    try:
        with _FORKING:
            before, _TASK, _PARENT = _TASK, fn, os.getpid()
            try:
                with _tokenizers_quiet_at_fork():
                    results = executor.map(_run, items)  # the first submit forks every worker
            finally:
                _TASK = before
        yield from results
        finished = True
    finally:
        if not finished:  # an error, Ctrl-C or an early close: stop what is still running
            processes = list((executor._processes or {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=5)
        executor.shutdown(wait=finished, cancel_futures=True)
