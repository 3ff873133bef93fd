"""Dropout with the cheaper CPU mask: rate, scaling, seeding, and eval mode."""

import pytest
import torch

from pipeline.dropout import Dropout, dropout_mask


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_mask_keeps_the_right_fraction_and_is_not_patterned(p):
    torch.manual_seed(0)
    mask = dropout_mask(torch.Size([400, 500]), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (400, 500)
    assert abs(mask.float().mean().item() - (1 - p)) < 0.005
    # Neighbouring lanes of one 64-bit draw are independent: no correlation between them.
    flat = mask.flatten().float()
    lag1 = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(lag1.item()) < 0.01


def test_dropout_scales_kept_values_and_is_seeded():
    x = torch.randn(64, 128)
    layer = Dropout(0.25).train()
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert torch.equal(a, b)  # masks come from torch's global generator
    kept = a != 0
    torch.testing.assert_close(a[kept], x[kept] / 0.75)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_gradient_flows_through_kept_elements_only():
    x = torch.randn(32, 16, requires_grad=True)
    torch.manual_seed(2)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
