"""The one training objective: label-smoothed cross-entropy over real target tokens."""

import math

import torch

from pipeline.loss import token_cross_entropy
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
