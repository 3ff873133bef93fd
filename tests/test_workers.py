"""Decoding workers: fork_map and Translator(workers=...)."""

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
from pipeline.workers import default_workers, fork_map


def where_and_how(item):
    time.sleep(0.05)  # long enough that every worker gets items
    return item * 2, os.getpid(), torch.get_num_threads()


def test_fork_map_keeps_order_and_runs_single_threaded_workers():
    parent = os.getpid()
    results = list(fork_map(where_and_how, range(12), workers=2))
    assert [r[0] for r in results] == [2 * i for i in range(12)]
    pids = {r[1] for r in results}
    assert parent not in pids and len(pids) == 2  # two processes, neither of them this one
    assert {r[2] for r in results} == {1}


@pytest.mark.parametrize("workers, items", [(1, range(5)), (4, range(1))])
def test_fork_map_runs_here_when_workers_would_not_pay(workers, items):
    results = list(fork_map(where_and_how, items, workers=workers))
    assert {r[1] for r in results} == {os.getpid()}


def test_fork_map_runs_here_where_it_cannot_fork(monkeypatch):
    monkeypatch.setattr(workers_module, "can_fork", lambda: False)
    assert {r[1] for r in fork_map(where_and_how, range(4), workers=2)} == {os.getpid()}
    assert default_workers("cpu") == 1


def test_default_workers_follow_the_threads_on_the_cpu_only():
    assert default_workers("cpu") == torch.get_num_threads()
    assert default_workers("cuda") == 1


def fails_on_three(item):
    if item == 3:
        raise ValueError(f"bad item {item}")
    return item


def test_a_workers_error_reaches_the_caller():
    with pytest.raises(ValueError, match="bad item 3"):
        list(fork_map(fails_on_three, range(6), workers=2))


def dies_on_two(item):
    if item == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def test_a_killed_worker_ends_the_call_instead_of_hanging():
    with pytest.raises(BrokenProcessPool):
        list(fork_map(dies_on_two, range(6), workers=2))


def many_sources(n: int = 40) -> list[str]:
    return [SEED[0]] + read_jsonl(TATOEBA / "validation.jsonl", ("ko",), n - 1)


def test_translations_with_workers_equal_those_without(seed_run, monkeypatch):
    path, _ = seed_run
    calls = []
    real = workers_module.fork_map

    def spy(fn, items, workers):
        items = list(items)
        calls.append((workers, len(items)))
        return real(fn, items, workers)

    monkeypatch.setattr("pipeline.translator.fork_map", spy)
    sources = many_sources()
    for beam in (1, 3):
        alone = Translator.from_checkpoint(path, beam=beam, workers=1).translate(sources)
        side_by_side = Translator.from_checkpoint(path, beam=beam, workers=2).translate(sources)
        assert side_by_side == alone and side_by_side[0] == SEED[1]
    # 40 sentences: 2 workers, so the 128-sentence batch size shrinks to 2 batches of 20
    assert calls == [(1, 1), (2, 2)] * 2
    # Too few sentences for two workers: decoded here in one batch.
    calls.clear()
    Translator.from_checkpoint(path, workers=2).translate(sources[:20])
    assert calls == [(1, 1)]


@pytest.mark.parametrize("workers", [0, -1])
def test_bad_worker_counts_are_user_errors(seed_run, workers):
    with pytest.raises(UserError, match="--workers must be >= 1"):
        Translator.from_checkpoint(seed_run[0], workers=workers)


def test_workers_without_fork_are_a_user_error(seed_run, monkeypatch):
    monkeypatch.setattr("pipeline.translator.can_fork", lambda: False)
    with pytest.raises(UserError, match="need Linux"):
        Translator.from_checkpoint(seed_run[0], workers=2)
    assert Translator.from_checkpoint(seed_run[0]).workers == 1


def test_translate_command_with_workers_prints_only_translations(seed_run):
    sources = many_sources()
    args = ("translate", "--ckpt", str(seed_run[0]))
    alone = run_cli(*args, "--workers", "1", input="\n".join(sources) + "\n")
    side_by_side = run_cli(*args, "--workers", "2", input="\n".join(sources) + "\n")
    assert side_by_side.stdout == alone.stdout and len(alone.stdout.splitlines()) == len(sources)
    assert side_by_side.stderr == alone.stderr  # no warning from the forked workers
