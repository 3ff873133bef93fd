"""Dropout with a cheaper random source on CPU.

On CPU, `F.dropout` draws one random number per element from the global Mersenne Twister,
and that draw was the largest single cost of a training step of the recipe model (about a
quarter of a bf16 step). Here each 64-bit draw makes four 16-bit lanes, each compared with
a threshold: the keep probability is exact to 1/65,536, the masks still come from torch's
global generator (so seeding and exact resume work as before), and it is about 3x faster.
CUDA keeps `F.dropout`, whose Philox generator is already cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """A boolean (shape) mask, True with probability 1 - p (to within 1/65,536)."""
    n = shape.numel()
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    lanes = bits.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return lanes >= round(p * 65536) - 32768


class Dropout(nn.Module):
    """nn.Dropout's behaviour (zero with probability p, scale the rest by 1 / (1 - p), only in
    training), with the faster mask on CPU."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * dropout_mask(x.shape, self.p, x.device) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
