"""Choosing the training precision from the machine, measured rather than assumed.

bf16 autocast trains faster only where bf16 matrix products are much faster than fp32 ones:
on GPUs with bf16 support, and on CPUs with AMX or fast AVX-512 bf16 units; on other CPUs
it is slower. `choose_precision` settles it at start-up with a short matmul probe (a second
or two); an explicit --trainer.precision skips the probe.
"""

from __future__ import annotations

import os
import time

import torch

ENV = "PIPELINE_PRECISION"  # the choice of the first process, inherited by the DDP workers it starts
SPEEDUP = 1.5  # bf16 must multiply at least this much faster than fp32 to be chosen on CPU


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 1024, seconds: float = 0.25) -> float:
    """Measured GFLOP/s of (n, n) @ (n, n) products in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (kernel selection, caches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2 * n ** 3 * count / (time.perf_counter() - start) / 1e9


def choose_precision(accelerator: str = "auto") -> tuple[str, str]:
    """("bf16-mixed" or "32-true", the reason in words) for this machine."""
    if os.environ.get(ENV):
        return os.environ[ENV], "chosen by the launching process"
    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if cuda:
        choice, reason = ("bf16-mixed", "the GPU supports bf16") if torch.cuda.is_bf16_supported() else \
            ("32-true", "the GPU has no bf16")
    else:
        fp32 = matmul_gflops(torch.float32, torch.device("cpu"))
        bf16 = matmul_gflops(torch.bfloat16, torch.device("cpu"))
        choice = "bf16-mixed" if bf16 >= SPEEDUP * fp32 else "32-true"
        reason = f"bf16 matmul {bf16:.0f} GFLOP/s against fp32 {fp32:.0f} ({bf16 / fp32:.1f}x; bf16 needs {SPEEDUP}x)"
    os.environ[ENV] = choice
    return choice, reason
