"""The training objective: label-smoothed cross-entropy per real target token.

One function, used by training, validation, the notebook and the benchmark, so that every
reported loss means the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, label_smoothing: float = 0.0,
                         reduction: str = "mean", chunk_rows: int = 1024) -> Tensor:
    """token_cross_entropy(hidden @ weightᵀ, target), computed the fast way for training.

    hidden: (B, T, d) final decoder states, weight: (V, d) output projection, target: (B, T).
    Only the real (non-PAD) positions are projected, in chunks of `chunk_rows`, so the full
    (tokens × vocabulary) logits never exist at once. With gradients on, each chunk's gradient
    is computed right away from the closed form ∂loss/∂logits = softmax − q (q: the smoothed
    target distribution) and turned into the gradients of hidden and weight, instead of
    keeping logits for autograd to walk back through log-softmax: fewer passes over the
    largest tensor of the step. Equal to token_cross_entropy (tested, values and gradients).
    """
    real = target != PAD
    h, t = hidden[real], target[real]  # (N, d), (N,)
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        total = _LinearCrossEntropy.apply(h, weight, t, label_smoothing, chunk_rows)
    else:
        total = sum((_chunk_losses(h[i: i + chunk_rows] @ weight.t(), t[i: i + chunk_rows], label_smoothing).sum()
                     for i in range(0, h.size(0), chunk_rows)), torch.zeros((), device=h.device))
    return total / max(h.size(0), 1) if reduction == "mean" else total


def _chunk_losses(logits: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
    """Per-row label-smoothed cross-entropy of (n, V) logits, in fp32: logsumexp minus the
    expected logit under q = (1 − ε)·onehot(target) + ε/V."""
    logits = logits.float()
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    return logits.logsumexp(-1) - (1 - label_smoothing) * target_logit - label_smoothing * logits.mean(-1)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed loss over rows; forward also computes the gradients (see linear_cross_entropy)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, label_smoothing: float, chunk_rows: int):
        n, vocab = hidden.size(0), weight.size(0)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            h, t = hidden[start: start + chunk_rows], target[start: start + chunk_rows]
            logits = (h @ weight.t()).float()  # (n, V); bf16 matmul under autocast, fp32 after
            total += _chunk_losses(logits, t, label_smoothing).sum()
            # softmax − q, computed in place on the logits (the last use of them)
            probs = logits.sub_(logits.logsumexp(-1, keepdim=True)).exp_().sub_(label_smoothing / vocab)
            probs[torch.arange(t.size(0), device=t.device), t] -= 1 - label_smoothing
            grad_logits = probs.to(h.dtype) if h.dtype == weight.dtype else probs
            grad_hidden[start: start + chunk_rows] = (grad_logits @ weight.to(grad_logits.dtype)).to(hidden.dtype)
            grad_weight += (grad_logits.t() @ h.to(grad_logits.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), grad_weight * grad_total.to(grad_weight.dtype), \
            None, None, None


def rdrop_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, label_smoothing: float = 0.0,
                        alpha: float = 0.0, chunk_rows: int = 1024) -> Tensor:
    """R-Drop (Liang et al., 2021): the label-smoothed loss of two dropout passes over the same
    batch plus α times the symmetric KL divergence between their output distributions.

    hidden: (2B, T, d) final decoder states of the batch run twice (rows 0..B-1, then the same
    B rows again with other dropout masks), weight: (V, d) output projection, target: (B, T).
    Returns, per real target token, ½(CE₁ + CE₂) + α·½·½(KL(p₁‖p₂) + KL(p₂‖p₁)): the paper's
    loss halved, so that α = 0 is exactly `linear_cross_entropy` of the two passes together.
    The KL term needs both full distributions, so the output layer runs in chunks of
    `chunk_rows` real tokens, each recomputed in the backward pass rather than kept
    (activation checkpointing): memory stays that of one chunk's (rows × vocabulary) logits.
    """
    first, second = hidden.chunk(2)
    real = target != PAD
    h1, h2, t = first[real], second[real], target[real]  # (N, d), (N, d), (N,)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, t.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        total = total + checkpoint(_rdrop_chunk, h1[rows], h2[rows], weight, t[rows], label_smoothing, alpha,
                                   use_reentrant=False)
    return total / max(t.size(0), 1)


def _rdrop_chunk(h1: Tensor, h2: Tensor, weight: Tensor, target: Tensor, label_smoothing: float,
                 alpha: float) -> Tensor:
    """Summed R-Drop loss of n rows: h1, h2 (n, d) the two passes' states, target (n,)."""
    logits1, logits2 = (h1 @ weight.t()).float(), (h2 @ weight.t()).float()  # (n, V) each
    ce = (_chunk_losses(logits1, target, label_smoothing) + _chunk_losses(logits2, target, label_smoothing)) / 2
    logp1, logp2 = logits1.log_softmax(-1), logits2.log_softmax(-1)
    # KL(p1‖p2) + KL(p2‖p1) = Σ (p1 − p2)(log p1 − log p2): one pass instead of two
    symmetric_kl = ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1)
    return (ce + alpha * symmetric_kl / 4).sum()


def translation_loss(model, batch, label_smoothing: float = 0.0, rdrop_alpha: float = 0.0) -> Tensor:
    """The training loss of a Transformer (pipeline.model) on a Batch: mean label-smoothed
    cross-entropy per real target token, the LM head fused into the loss; with rdrop_alpha > 0,
    the R-Drop loss of the batch run twice (rows stacked: (2B, S) and (2B, T)), which costs
    twice a step. TranslationModule trains with it and the benchmark times it."""
    if rdrop_alpha > 0:
        hidden = model(batch.src.repeat(2, 1), batch.tgt_in.repeat(2, 1), project=False)  # (2B, T, d)
        return rdrop_cross_entropy(hidden, model.lm_head.weight, batch.tgt_out, label_smoothing, rdrop_alpha)
    hidden = model(batch.src, batch.tgt_in, project=False)  # (B, T, d)
    return linear_cross_entropy(hidden, model.lm_head.weight, batch.tgt_out, label_smoothing)
