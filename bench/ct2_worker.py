"""CTranslate2 in a process of its own, for bench.run's ct2_* rows.

Why a separate process: CTranslate2's wheel brings its own OpenMP runtime (a second libgomp) and
its own math libraries. Loaded into the bench's process it slowed our PyTorch decoding down by
1.31x, even with CTranslate2 idle (bench/results/2026-11-26-13b44f6-ct2-in-process.json), so
every row timed after it was loaded (ours and MarianMT) measured a machine that users do not
have. In its own process each engine runs as it would alone; the bench still alternates the
contestants within each repeat, one at a time (the parent waits while the worker decodes).

The worker times each call itself, so the figure is CTranslate2's decoding alone, without the
pipe (bench.run's `interleaved` pauses before every timed call, on either side, so that no
engine's idle threads still spin while the other is timed).

    with CT2Worker(model_dir, threads=2, suppress=[["<pad>"]]) as worker:   # loads fp32 and int8
        seconds, hypotheses = worker.translate("float32", batches, beams=4, n=30, keep=True)
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

COMPUTE_TYPES = ("float32", "int8")
REPLICATED = "float32-replicas"  # fp32 as `replicas` replicas of threads // replicas threads each
ROOT = Path(__file__).resolve().parent.parent  # the worker runs `-m bench.ct2_worker` from here


def serve(model_dir: str, threads: int, suppress: list[list[str]], replicas: int = 1) -> None:
    """Worker loop on stdin/stdout (pickled messages): load the translators, answer ("ready",
    version) or ("error", message), then answer each ("translate", compute, batches, beams, n,
    keep) with ("ok", seconds, hypotheses or None) or ("error", message), until ("close",) or
    the end of input. With replicas > 1 one more fp32 translator, REPLICATED, has `replicas`
    replicas (inter_threads) of threads // replicas threads each: its batches are queued at once
    and decoded side by side, each whole by one replica, as our decoding workers do."""
    # Replies go out on a private copy of stdout; fd 1 then points at stderr, so that anything
    # the libraries print cannot corrupt the pickled stream.
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def reply(*message) -> None:
        pickle.dump(message, replies)
        replies.flush()

    try:
        import ctranslate2

        translators = {compute: ctranslate2.Translator(model_dir, device="cpu", compute_type=compute,
                                                       inter_threads=1, intra_threads=threads)
                       for compute in COMPUTE_TYPES}
        if replicas > 1:
            translators[REPLICATED] = ctranslate2.Translator(model_dir, device="cpu", compute_type="float32",
                                                             inter_threads=replicas,
                                                             intra_threads=max(1, threads // replicas))
    except Exception as e:
        reply("error", f"{type(e).__name__}: {e}")
        return
    reply("ready", ctranslate2.__version__)
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:
            return
        if message[0] == "close":
            return
        try:
            _, compute, batches, beams, n, keep = message
            start = time.perf_counter()
            queued = compute == REPLICATED
            results = [translators[compute].translate_batch(
                tokens, beam_size=beams, num_hypotheses=1, length_penalty=1.0, min_decoding_length=n,
                max_decoding_length=n, max_batch_size=0, suppress_sequences=suppress, asynchronous=queued)
                for tokens in batches]
            if queued:  # every batch was queued at once; wait for all of them
                results = [[r.result() for r in batch] for batch in results]
            seconds = time.perf_counter() - start
        except Exception as e:  # the parent raises it with this message; the worker stays usable
            reply("error", f"{type(e).__name__}: {e}")
            continue
        reply("ok", seconds, [[r.hypotheses[0] for r in batch] for batch in results] if keep else None)


class CT2Worker:
    """A CTranslate2 model (exported by pipeline.export.export_ctranslate2 to `model_dir`) loaded
    in fp32 and int8 by `python -m bench.ct2_worker` in a process of its own (a plain
    subprocess, not multiprocessing: its spawn would import the bench, and with it torch, into
    the worker). `suppress` lists token sequences ruled out at every step (bench.run forbids PAD
    and BOS, as our decoding does); with replicas > 1 it also loads REPLICATED: fp32 as
    `replicas` replicas (inter_threads) of threads // replicas threads (intra_threads), decoding
    whole batches side by side. Use it as a context manager, or call close()."""

    def __init__(self, model_dir: str, threads: int, suppress: list[list[str]], replicas: int = 1):
        args = json.dumps({"model_dir": str(model_dir), "threads": threads, "suppress": suppress,
                           "replicas": replicas})
        self.process = subprocess.Popen([sys.executable, "-m", "bench.ct2_worker", args], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            status, detail = self._receive()
        except BaseException:
            self.close()
            raise
        if status != "ready":
            self.close()
            raise RuntimeError(f"CTranslate2 worker could not load {model_dir}: {detail}")
        self.version, self.threads, self.replicas = detail, threads, replicas

    def translate(self, compute: str, batches: list[list[list[str]]], beams: int, n: int,
                  keep: bool = False) -> tuple[float, list | None]:
        """Decode every batch (each a list of source token lists) to exactly n tokens per
        hypothesis; returns the seconds CTranslate2 took and, with keep, the best hypotheses."""
        try:
            pickle.dump(("translate", compute, batches, beams, n, keep), self.process.stdin)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise RuntimeError(f"CTranslate2 worker is gone (exit code {self.process.poll()})") from None
        status, *answer = self._receive()
        if status != "ok":
            raise RuntimeError(f"CTranslate2 worker failed to translate: {answer[0]}")
        return answer[0], answer[1]

    def _receive(self) -> tuple:
        try:
            return pickle.load(self.process.stdout)
        except EOFError:
            return "error", f"the worker exited (exit code {self.process.wait()}; its stderr is above)"

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                pickle.dump(("close",), self.process.stdin)
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if not pipe.closed:
                pipe.close()

    def __enter__(self) -> "CT2Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    serve(**json.loads(sys.argv[1]))
