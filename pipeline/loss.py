"""The training objective: label-smoothed cross-entropy per real target token.

One function, used by training, validation, the notebook and the benchmark, so that every
reported loss means the same thing.
"""

from __future__ import annotations

import torch
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


# Rows of (rows × vocabulary) logits handled at once by the fused losses. On a CPU, 256 rows of fp32
# logits (8 MB at V=8000) stay in cache across the passes over them, where 1024 did not (plain loss
# in bf16: 37 ms against 59 per batch, before R-Drop's closed form; bench/results/2026-11-27-loss-chunks.json).
CHUNK_ROWS = 256
# On a GPU every chunk costs the same few dozen kernel launches whatever its size, and a step of a
# small model waits on launches, not arithmetic (docs/speed.md, "On a GPU"): there a chunk holds up
# to 2^25 logits (128 MB in fp32; 4,194 rows at V=8000, the recipe's whole batch in one chunk).
GPU_CHUNK_LOGITS = 2 ** 25


def default_chunk_rows(device: torch.device, vocab: int) -> int:
    """Rows per chunk of the fused losses on `device` for a vocabulary of `vocab` tokens."""
    return CHUNK_ROWS if device.type == "cpu" else max(CHUNK_ROWS, GPU_CHUNK_LOGITS // max(vocab, 1))


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, label_smoothing: float = 0.0,
                         reduction: str = "mean", chunk_rows: int | None = None) -> Tensor:
    """token_cross_entropy(hidden @ weightᵀ, target), computed the fast way for training.

    hidden: (B, T, d) final decoder states, weight: (V, d) output projection, target: (B, T).
    Only the real (non-PAD) positions are projected, in chunks of `chunk_rows` (None: the
    device's default_chunk_rows), so the full (tokens × vocabulary) logits need not exist at
    once. With gradients on, each chunk's gradient is computed right away from the closed form
    ∂loss/∂logits = softmax − q (q: the smoothed target distribution) and turned into the
    gradients of hidden and weight, instead of keeping logits for autograd to walk back through
    log-softmax: fewer passes over the largest tensor of the step. Equal to token_cross_entropy
    (tested, values and gradients).
    """
    real = target != PAD
    h, t = hidden[real], target[real]  # (N, d), (N,)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    total = _ChunkedLoss.apply(h, h, weight, t, label_smoothing, None, chunk_rows) if grad else \
        _chunked_loss(h, None, weight, t, label_smoothing, None, chunk_rows, False)[0]
    return total / max(h.size(0), 1) if reduction == "mean" else total


def rdrop_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, label_smoothing: float = 0.0,
                        alpha: float = 0.0, chunk_rows: int | None = None) -> Tensor:
    """R-Drop (Liang et al., 2021): the label-smoothed loss of two dropout passes over the same
    batch plus α times the symmetric KL divergence between their output distributions.

    hidden: (2B, T, d) final decoder states of the batch run twice (rows 0..B-1, then the same
    B rows again with other dropout masks), weight: (V, d) output projection, target: (B, T).
    Returns, per real target token, ½(CE₁ + CE₂) + α·½·½(KL(p₁‖p₂) + KL(p₂‖p₁)): the paper's
    loss halved, so that α = 0 is exactly `linear_cross_entropy` of the two passes together.
    As there, the output layer runs in chunks of `chunk_rows` real tokens (None: the device's
    default_chunk_rows) and each chunk's gradients come from their closed form (see
    `_loss_chunk`), so no logits are kept for autograd; equal to the loss written out with
    autograd (tested, values and gradients).
    """
    first, second = hidden.chunk(2)
    real = target != PAD
    h1, h2, t = first[real], second[real], target[real]  # (N, d), (N, d), (N,)
    grad = torch.is_grad_enabled() and (h1.requires_grad or weight.requires_grad)
    total = _ChunkedLoss.apply(h1, h2, weight, t, label_smoothing, alpha, chunk_rows) if grad else \
        _chunked_loss(h1, h2, weight, t, label_smoothing, alpha, chunk_rows, False)[0]
    return total / max(t.size(0), 1)


def _loss_chunk(h1: Tensor, h2: Tensor | None, weight: Tensor, target: Tensor, label_smoothing: float,
                alpha: float | None, need_grad: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The summed loss of n rows and, if need_grad, its gradients with respect to the logits.

    h1: (n, d) states, target: (n,). Plain (h2 None): Σ label-smoothed CE, gradient softmax − q
    with q = (1 − ε)·onehot(target) + ε/V. R-Drop (h2: the second pass, alpha set): Σ ½(CE₁ + CE₂)
    + α/4·(KL(p₁‖p₂) + KL(p₂‖p₁)), whose gradient for the first pass's logits is
    ½(p₁ − q) + α/4·(p₁ ⊙ (log p₁ − log p₂ − KL(p₁‖p₂)) + p₁ − p₂), and symmetrically for the second.
    Logits are fp32 whatever the matmul's precision. Returns (loss, ∂/∂logits₁, ∂/∂logits₂): (n, V) each.
    """
    vocab = weight.size(0)
    rows = torch.arange(target.size(0), device=target.device)
    logp = [torch.log_softmax((h @ weight.t()).float(), -1) for h in ((h1,) if h2 is None else (h1, h2))]
    # −Σ q log p = −(1 − ε)·log p[target] − ε·mean(log p)
    nll = [-(1 - label_smoothing) * lp[rows, target] - label_smoothing * lp.mean(-1) for lp in logp]
    if h2 is None:
        loss = nll[0].sum()
        if not need_grad:
            return loss, None, None
        grad = logp[0].exp_().sub_(label_smoothing / vocab)  # softmax − q, in place on the last use
        grad[rows, target] -= 1 - label_smoothing
        return loss, grad, None
    diff = logp[0] - logp[1]  # log p₁ − log p₂
    p1, p2 = logp[0].exp_(), logp[1].exp_()  # the log-probabilities are not needed any more
    kl12, kl21 = (p1 * diff).sum(-1), -(p2 * diff).sum(-1)  # KL(p₁‖p₂), KL(p₂‖p₁) per row
    loss = ((nll[0] + nll[1]) / 2 + alpha / 4 * (kl12 + kl21)).sum()
    if not need_grad:
        return loss, None, None
    c = alpha / 4
    # ½(p₁ − q) + c·(p₁ ⊙ (diff − KL₁₂) + p₁ − p₂) = p₁ ⊙ (½ + c·(1 + diff − KL₁₂)) − c·p₂ − ½q
    g1 = (diff - kl12[:, None]).mul_(c).add_(0.5 + c).mul_(p1).sub_(p2, alpha=c)
    g2 = diff.neg_().sub_(kl21[:, None]).mul_(c).add_(0.5 + c).mul_(p2).sub_(p1, alpha=c)
    for g in (g1, g2):
        g.sub_(label_smoothing / vocab / 2)
        g[rows, target] -= (1 - label_smoothing) / 2
    return loss, g1, g2


def _chunked_loss(h1: Tensor, h2: Tensor | None, weight: Tensor, target: Tensor, label_smoothing: float,
                  alpha: float | None, chunk_rows: int | None, need_grad: bool):
    """`_loss_chunk` over chunks of rows: the summed loss and, if need_grad, the gradients of
    h1, h2 (None for the plain loss) and weight (fp32)."""
    total = torch.zeros((), dtype=torch.float32, device=h1.device)
    grads = [torch.empty_like(h) for h in (h1, h2) if h is not None] if need_grad else []
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
    weight = product_weight(weight)
    chunk_rows = chunk_rows or default_chunk_rows(h1.device, weight.size(0))
    for start in range(0, h1.size(0), chunk_rows):
        rows = slice(start, start + chunk_rows)
        states = [h[rows] for h in (h1, h2) if h is not None]
        loss, *logit_grads = _loss_chunk(*states, *([None] if h2 is None else []), weight, target[rows],
                                         label_smoothing, alpha, need_grad)
        total += loss
        for grad, h, g in zip(grads, states, logit_grads):
            g = g.to(weight.dtype)  # once for both products (autocast would cast it for each)
            grad[rows] = (g @ weight).to(grad.dtype)
            grad_weight += (g.t() @ h.to(weight.dtype)).float()
    return total, grads, grad_weight


def product_weight(weight: Tensor) -> Tensor:
    """The (V, d) output projection in the dtype its products run in: under autocast (bf16-mixed
    training) a bf16 copy made once per loss. Autocast's own cast cache skips views such as
    weight.t(), so each chunk's forward products (both R-Drop passes) would cast the 8 MB weight
    again: the recipe step 1.2-2.8% faster without those (median of pairs, two runs), bitwise the
    same gradients (bench/results/2026-11-27-loss-weight-cast-{1,2}.json)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device) and weight.dtype == torch.float32:
        return weight.to(torch.get_autocast_dtype(device))
    return weight


class _ChunkedLoss(torch.autograd.Function):
    """The summed (plain or R-Drop) loss; forward also computes the gradients (`_chunked_loss`)."""

    @staticmethod
    def forward(ctx, h1: Tensor, h2: Tensor, weight: Tensor, target: Tensor, label_smoothing: float,
                alpha: float | None, chunk_rows: int):
        rdrop = alpha is not None  # plain: h2 is h1 again, only to keep one signature
        total, grads, grad_weight = _chunked_loss(h1, h2 if rdrop else None, weight, target, label_smoothing,
                                                  alpha, chunk_rows, True)
        ctx.rdrop = rdrop
        ctx.save_for_backward(*grads, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        *grads, grad_weight = ctx.saved_tensors
        scaled = [g * grad_total.to(g.dtype) for g in grads]
        grad_h1, grad_h2 = (scaled[0], scaled[1]) if ctx.rdrop else (scaled[0], None)
        return grad_h1, grad_h2, grad_weight * grad_total.to(grad_weight.dtype), None, None, None, None


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
