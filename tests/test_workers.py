"""Decoding workers: fork_map and Translator(workers=...)."""

import contextlib
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from helpers import SEED, TATOEBA, read_jsonl, run_cli
from pipeline import workers as workers_module
from pipeline.errors import UserError
from pipeline.translator import Translator
from pipeline.workers import can_fork, default_workers, fork_map

needs_fork = pytest.mark.skipif(not can_fork(), reason="no fork here (Linux only): decoding workers run in-process "
                                "off Linux, which test_fork_map_runs_here_where_it_cannot_fork checks")


def where_and_how(item):
    time.sleep(0.05)  # long enough that every worker gets items
    return item * 2, os.getpid(), torch.get_num_threads()


@pytest.fixture
def two_threads():
    """The parent on two threads (the test session runs on one), so that the workers' one is theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@needs_fork
def test_fork_map_keeps_order_and_runs_single_threaded_workers(two_threads):
    parent = os.getpid()
    results = list(fork_map(where_and_how, range(12), workers=2))
    assert [r[0] for r in results] == [2 * i for i in range(12)]
    pids = {r[1] for r in results}
    assert parent not in pids and len(pids) == 2  # two processes, neither of them this one
    assert {r[2] for r in results} == {1} and torch.get_num_threads() == 2


@pytest.mark.parametrize("workers, items", [(1, range(5)), (4, range(1))])
def test_fork_map_runs_here_when_workers_would_not_pay(workers, items):
    results = list(fork_map(where_and_how, items, workers=workers))
    assert {r[1] for r in results} == {os.getpid()}


def test_fork_map_runs_here_where_it_cannot_fork(monkeypatch):
    monkeypatch.setattr(workers_module, "can_fork", lambda: False)
    assert {r[1] for r in fork_map(where_and_how, range(4), workers=2)} == {os.getpid()}
    assert default_workers("cpu") == 1


@needs_fork
def test_default_workers_follow_the_threads_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert default_workers("cpu") == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers("cpu") == 2  # no more than the CPUs this process may use
    assert default_workers("cuda") == 1


def fails_on_three(item):
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


@needs_fork
def test_a_workers_error_reaches_the_caller():
    with pytest.raises(ValueError, match="bad item 3"):
        list(fork_map(fails_on_three, range(6), workers=2))


def dies_on_two(item):
    if item == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


@needs_fork
def test_a_killed_worker_ends_the_call_instead_of_hanging():
    with pytest.raises(BrokenProcessPool):
        list(fork_map(dies_on_two, range(6), workers=2))


def slow_pid(item):
    time.sleep(1.0 if item < 4 else 30.0)  # two pairs side by side; the rest would outlast the test
    return os.getpid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_fork
@pytest.mark.parametrize("how", ["close", "raise"])
def test_leaving_early_stops_the_workers(how):
    """Closing the iterator, or an error in the caller's loop, stops the workers at once, in
    the middle of the items they are running (30 s each)."""
    results = fork_map(slow_pid, range(8), workers=2)
    pids = {next(results), next(results)}
    start = time.monotonic()
    if how == "close":
        results.close()
    else:  # as Translator.translate consumes it
        with pytest.raises(KeyError), contextlib.closing(results):
            for _ in results:
                raise KeyError("the caller's own error")
    while any(alive(pid) for pid in pids) and time.monotonic() < start + 10:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids) and time.monotonic() - start < 10


@needs_fork
def test_concurrent_calls_run_their_own_functions():
    """fork_map hands its function to the workers through a module global while it forks: two
    threads calling it at once must each get their own function's results."""
    from concurrent.futures import ThreadPoolExecutor

    def call(offset):
        return list(fork_map(lambda x: x + offset, range(6), workers=2))

    with ThreadPoolExecutor(2) as threads:
        got = list(threads.map(call, (100, 200, 300, 400)))
    assert got == [[offset + i for i in range(6)] for offset in (100, 200, 300, 400)]


def many_sources(n: int = 40) -> list[str]:
    return [SEED[0]] + read_jsonl(TATOEBA / "validation.jsonl", ("ko",), n - 1)


@needs_fork
@pytest.mark.parametrize("beam, quantize", [(1, None), (3, None), (2, "int8")])
def test_translations_with_workers_equal_those_without(seed_run, monkeypatch, beam, quantize, two_threads):
    """The same batches whatever the workers (int8's per-batch activation scale included), so
    the same translations; the workers only decode them side by side."""
    path, _ = seed_run
    calls, widths = [], []
    real = workers_module.fork_map

    def spy(fn, items, workers):
        items = list(items)
        calls.append((workers, [len(x) for x in items]))
        widths.append([x.shape[1] for x in items])
        return real(fn, items, workers)

    monkeypatch.setattr("pipeline.translator.fork_map", spy)
    sources = many_sources() + ["", "  "]
    alone = Translator.from_checkpoint(path, beam=beam, batch_size=8, workers=1, quantize=quantize)
    side_by_side = Translator.from_checkpoint(path, beam=beam, batch_size=8, workers=2, quantize=quantize)
    one_process = alone.translate(sources)
    assert side_by_side.translate(sources) == one_process
    assert one_process[0] == SEED[1] and one_process[-2:] == ["", ""]
    assert side_by_side.workers_used == 2 and alone.workers_used == 1
    assert calls[0][0] == 1 and calls[1][0] == 2
    assert calls[0][1] == calls[1][1] == [8] * 5  # the same batches...
    assert widths[1] == sorted(widths[1], reverse=True) and widths[1][0] > widths[1][-1]  # ...longest first
    # One batch: decoded here, whatever the workers.
    side_by_side.translate(sources[:5])
    assert calls[-1] == (1, [5]) and side_by_side.workers_used == 1


@pytest.mark.parametrize("workers", [0, -1])
def test_bad_worker_counts_are_user_errors(seed_run, workers):
    with pytest.raises(UserError, match="--workers must be >= 1"):
        Translator.from_checkpoint(seed_run[0], workers=workers)


def test_workers_without_fork_are_a_user_error(seed_run, monkeypatch):
    monkeypatch.setattr("pipeline.translator.can_fork", lambda: False)
    monkeypatch.setattr("pipeline.translator.default_workers", lambda device: 1)
    with pytest.raises(UserError, match="need Linux"):
        Translator.from_checkpoint(seed_run[0], workers=2)
    assert Translator.from_checkpoint(seed_run[0]).workers == 1


@needs_fork
def test_translate_command_with_workers_prints_only_translations(seed_run):
    sources = many_sources()
    args = ("translate", "--ckpt", str(seed_run[0]), "--batch_size", "8")
    alone = run_cli(*args, "--workers", "1", input="\n".join(sources) + "\n")
    side_by_side = run_cli(*args, "--workers", "2", input="\n".join(sources) + "\n")
    assert side_by_side.stdout == alone.stdout and len(alone.stdout.splitlines()) == len(sources)
    assert side_by_side.stderr == alone.stderr  # no warning from the forked workers
