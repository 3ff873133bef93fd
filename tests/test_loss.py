"""The one training objective: label-smoothed cross-entropy over real target tokens, and its
fused form (projection + loss in chunks on real tokens) that training uses."""

import math

import pytest

import torch

from pipeline.loss import (CHUNK_ROWS, GPU_CHUNK_LOGITS, default_chunk_rows, linear_cross_entropy,
                           rdrop_cross_entropy, token_cross_entropy)
from pipeline.tokenizer import PAD


def test_padding_positions_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[4, 5, 6, PAD], [4, PAD, PAD, PAD]])
    loss = token_cross_entropy(logits, target)
    garbage = logits.clone()
    garbage[target == PAD] = 1e4 * torch.randn_like(garbage[target == PAD])  # whatever the pad rows hold
    torch.testing.assert_close(token_cross_entropy(garbage, target), loss)
    real = target != PAD
    by_hand = -logits.log_softmax(-1)[real].gather(1, target[real][:, None]).mean()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(token_cross_entropy(logits, target, reduction="sum"), by_hand * int(real.sum()))


def test_label_smoothing_spreads_mass_uniformly():
    logits = torch.zeros(1, 1, 10)
    logits[0, 0, 3] = 5.0
    target = torch.tensor([[3]])
    eps = 0.1
    logp = logits.log_softmax(-1)[0, 0]
    expected = -(1 - eps) * logp[3] - eps * logp.mean()
    torch.testing.assert_close(token_cross_entropy(logits, target, eps), expected)
    assert token_cross_entropy(logits, target, eps) > token_cross_entropy(logits, target)


def test_bf16_logits_are_scored_in_fp32():
    logits = torch.randn(3, 5, 11)
    target = torch.randint(4, 11, (3, 5))
    full = token_cross_entropy(logits, target)
    half = token_cross_entropy(logits.bfloat16(), target)
    assert half.dtype == torch.float32 and math.isclose(float(half), float(full), rel_tol=2e-2)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [3, 1024])
def test_fused_projection_and_loss_equal_the_reference(label_smoothing, chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    target = torch.randint(4, 40, (3, 6))
    target[0, 4:], target[2, 1:] = PAD, PAD
    reference = token_cross_entropy(hidden @ weight.t(), target, label_smoothing)
    fused = linear_cross_entropy(hidden, weight, target, label_smoothing, chunk_rows=chunk_rows)
    torch.testing.assert_close(fused, reference)
    for got, want in zip(torch.autograd.grad(fused * 3, (hidden, weight)),
                         torch.autograd.grad(reference * 3, (hidden, weight))):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # validation: the summed loss, no gradients computed
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, target, reduction="sum"),
                                   token_cross_entropy(hidden @ weight.t(), target, reduction="sum"))


def test_chunks_are_cache_sized_on_cpu_and_launch_saving_on_gpus():
    # CPU: 256 rows whatever the vocabulary; a GPU: as many rows as 2^25 logits hold, never fewer
    # than the CPU's (a vocabulary of 8,000 puts the recipe's ~2,500 target tokens in one chunk).
    assert default_chunk_rows(torch.device("cpu"), 8000) == CHUNK_ROWS == 256
    assert default_chunk_rows(torch.device("cuda"), 8000) == GPU_CHUNK_LOGITS // 8000 == 4194
    assert default_chunk_rows(torch.device("cuda", 1), 32000) == 1048
    assert default_chunk_rows(torch.device("cuda"), 10 ** 6) == CHUNK_ROWS


def test_fused_loss_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    target = torch.randint(4, 64, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, target, 0.1)
    grads = torch.autograd.grad(fused, (hidden, weight))
    assert fused.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float32, torch.float32]
    reference = token_cross_entropy(hidden @ weight.t(), target, 0.1)
    assert abs(float(fused) - float(reference)) < 0.05 * float(reference)
    for got, want in zip(grads, torch.autograd.grad(reference, (hidden, weight))):
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99


def test_rdrop_is_the_mean_of_both_passes_plus_alpha_times_symmetric_kl():
    torch.manual_seed(0)
    hidden = torch.randn(4, 5, 16, requires_grad=True)  # two passes over a batch of 2
    weight = torch.randn(30, 16, requires_grad=True)
    target = torch.randint(4, 30, (2, 5))
    target[1, 3:] = PAD
    logits = hidden @ weight.t()
    ce = (token_cross_entropy(logits[:2], target, 0.1) + token_cross_entropy(logits[2:], target, 0.1)) / 2
    lp1, lp2 = logits[:2].log_softmax(-1), logits[2:].log_softmax(-1)
    kl = lambda a, b: (a.exp() * (a - b)).sum(-1)  # noqa: E731  KL(p_a ‖ p_b) per position
    real = target != PAD
    reference = ce + 3.0 * ((kl(lp1, lp2) + kl(lp2, lp1)) / 4)[real].mean()
    for chunk_rows in (3, 1024):
        loss = rdrop_cross_entropy(hidden, weight, target, 0.1, alpha=3.0, chunk_rows=chunk_rows)
        torch.testing.assert_close(loss, reference)
        for got, want in zip(torch.autograd.grad(loss, (hidden, weight)),
                             torch.autograd.grad(reference, (hidden, weight), retain_graph=True)):
            torch.testing.assert_close(got, want)
    # alpha 0: the plain loss of both passes; identical passes: no KL, so alpha changes nothing
    torch.testing.assert_close(rdrop_cross_entropy(hidden, weight, target, 0.1, alpha=0.0),
                               linear_cross_entropy(hidden, weight, target.repeat(2, 1), 0.1))
    same = torch.cat([hidden[:2], hidden[:2]])
    torch.testing.assert_close(rdrop_cross_entropy(same, weight, target, 0.1, alpha=5.0),
                               linear_cross_entropy(hidden[:2], weight, target, 0.1))
    assert float(rdrop_cross_entropy(hidden, weight, target, 0.1, alpha=5.0)) > float(ce)


def test_rdrop_under_bf16_autocast_matches_fp32():
    """The recipe trains R-Drop in bf16-mixed: the closed-form gradients (bf16 products, fp32
    softmax and KL) point where the fp32 autograd ones do."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    target = torch.randint(4, 64, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = rdrop_cross_entropy(hidden, weight, target, 0.1, alpha=1.0, chunk_rows=5)
    grads = torch.autograd.grad(fused, (hidden, weight))
    assert fused.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float32, torch.float32]
    reference = rdrop_cross_entropy(hidden, weight, target, 0.1, alpha=1.0)
    assert abs(float(fused) - float(reference)) < 0.05 * float(reference)
    for got, want in zip(grads, torch.autograd.grad(reference, (hidden, weight))):
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99

