"""Choosing the training precision from the machine, measured rather than assumed.

bf16 autocast trains faster only where bf16 matrix products are much faster than fp32 ones
(GPUs with bf16 support; CPUs with AMX or fast AVX-512 bf16 units) and where they are most of
the step: casts, dropout and the other element-wise work do not speed up. So on a CPU
`choose_precision` times a few training steps of the configured model, at the configured batch
size, in both precisions at start-up (a few seconds), rather than a bare matrix product; on a
GPU with bf16 it takes bf16. An explicit --trainer.precision skips the probe.
"""

from __future__ import annotations

import os
import time

import torch

ENV = "PIPELINE_PRECISION"  # the choice of the first process, inherited by the DDP workers it starts
SPEEDUP = 1.1  # a bf16 training step must be at least this much faster than fp32 to be chosen on CPU


def step_seconds(model: dict | None = None, tokens: int = 2048, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one CPU training step (forward, fused label-smoothed loss, backward) of
    the model that `model` (TransformerConfig fields) describes, on a random batch of about
    `tokens` target tokens, in fp32 and in bf16 autocast: {"fp32": s, "bf16": s}. The two
    alternate, after a warm-up each, so drifting load hits both alike. The global random state
    is left as it was."""
    from pipeline.loss import linear_cross_entropy
    from pipeline.model import Transformer, TransformerConfig

    with torch.random.fork_rng(devices=[]):  # CPU only: never initialise CUDA here
        torch.manual_seed(0)
        net = Transformer(TransformerConfig(**(model or {}))).train()
        vocab, length = net.cfg.vocab_size, 24
        rows = max(1, tokens // length)
        src = torch.randint(4, vocab, (rows, length))
        tgt = torch.randint(4, vocab, (rows, length + 1))

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hidden = net(src, tgt[:, :-1], project=False)
                loss = linear_cross_entropy(hidden, net.lm_head.weight, tgt[:, 1:], 0.1)
            loss.backward()
            net.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        times = {"fp32": [], "bf16": []}
        step(False), step(True)  # warm-up: allocator, kernel selection
        for _ in range(repeats):
            times["fp32"].append(step(False))
            times["bf16"].append(step(True))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def choose_precision(accelerator: str = "auto", model: dict | None = None, tokens: int = 2048) -> tuple[str, str]:
    """("bf16-mixed" or "32-true", the reason in words) for training `model` (TransformerConfig
    fields; None: the defaults) on this machine, with batches of about `tokens` tokens."""
    if os.environ.get(ENV):
        return os.environ[ENV], "chosen by the launching process"
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if cuda:
        choice, reason = ("bf16-mixed", "the GPU supports bf16") if torch.cuda.is_bf16_supported() else \
            ("32-true", "the GPU has no bf16")
    else:
        seconds = step_seconds(model, tokens)
        speedup = seconds["fp32"] / seconds["bf16"]
        choice = "bf16-mixed" if speedup >= SPEEDUP else "32-true"
        reason = (f"a training step of this model took {seconds['bf16'] * 1e3:.0f} ms in bf16 against "
                  f"{seconds['fp32'] * 1e3:.0f} ms in fp32 ({speedup:.2f}x; bf16 needs {SPEEDUP}x)")
    os.environ[ENV] = choice
    return choice, reason
