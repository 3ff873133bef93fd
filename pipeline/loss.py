"""The training objective: label-smoothed cross-entropy per real target token.

One function, used by training, validation, the notebook and the benchmark, so that every
reported loss means the same thing.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pipeline.tokenizer import PAD


def token_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits (B, T, V) against target ids (B, T), PAD positions ignored.

    With label_smoothing ε the target distribution is (1 - ε) on the reference token plus ε
    spread uniformly over the vocabulary. The logits are upcast to fp32 first, so bf16
    training computes its log-softmax in full precision. reduction: "mean" (per real target
    token, the training loss) or "sum" (validation adds these up across batches).
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=PAD,
                           label_smoothing=label_smoothing, reduction=reduction)
