"""TranslationModule: its config groups, schedule, loss and the merging of per-rank outputs."""

import math

import pytest
import torch

from helpers import tiny_config
from pipeline.batching import collate
from pipeline.decoding import DecodingConfig
from pipeline.loss import rdrop_cross_entropy, token_cross_entropy
from pipeline.module import TrainConfig, TranslationModule, inverse_sqrt_schedule, merge_eval_outputs


def test_schedule_warms_up_linearly_then_decays_as_inverse_sqrt():
    factor = inverse_sqrt_schedule(100)
    assert factor(0) == pytest.approx(0.01) and factor(49) == pytest.approx(0.5)
    assert factor(99) == pytest.approx(1.0)  # the peak, at the end of warm-up
    assert factor(399) == pytest.approx(0.5) and factor(9999) == pytest.approx(0.1)
    assert all(factor(s) > factor(s + 1) for s in range(100, 500))


def test_optimizer_follows_train_config():
    module = TranslationModule(tiny_config(), TrainConfig(lr=2e-3, warmup_steps=10, weight_decay=0.01))
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.defaults["weight_decay"] == 0.01 and optimizer.defaults["betas"] == (0.9, 0.98)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(2e-4) and max(lrs) == pytest.approx(2e-3) and lrs.index(max(lrs)) == 9
    assert lrs[39] == pytest.approx(2e-3 * math.sqrt(10 / 40))


def test_hyperparameters_are_the_three_config_groups():
    module = TranslationModule(tiny_config(d_model=16), TrainConfig(lr=1e-3), DecodingConfig(beam=2))
    assert set(module.hparams) == {"model", "train", "decoding"}
    assert module.hparams["model"]["d_model"] == 16 and module.hparams["train"]["lr"] == 1e-3
    assert module.hparams["decoding"]["beam"] == 2 and module.model.cfg.d_model == 16


@pytest.mark.parametrize("kwargs, field", [({"label_smoothing": 1.0}, "label_smoothing"), ({"lr": 0}, "lr"),
                                           ({"warmup_steps": 0}, "warmup_steps"), ({"rdrop_alpha": -1}, "rdrop_alpha")])
def test_train_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_loss_uses_the_configured_smoothing_and_ignores_padding():
    torch.manual_seed(0)
    module = TranslationModule(tiny_config(), TrainConfig(label_smoothing=0.2)).eval()
    batch = collate([{"src_ids": [5, 6, 7], "tgt_ids": [8, 9], "index": 0},
                     {"src_ids": [5], "tgt_ids": [8, 9, 10, 11], "index": 1}])
    logits = module.model(batch.src, batch.tgt_in)
    torch.testing.assert_close(module.loss(batch), token_cross_entropy(logits, batch.tgt_out, 0.2))
    torch.testing.assert_close(module.loss(batch, 0.0), token_cross_entropy(logits, batch.tgt_out, 0.0))
    assert int((batch.tgt_out == 0).sum()) == 2 and batch.n_tokens == 8


def test_rdrop_runs_each_training_batch_twice_with_different_dropout():
    torch.manual_seed(0)
    module = TranslationModule(tiny_config(dropout=0.3), TrainConfig(label_smoothing=0.1, rdrop_alpha=5.0))
    batch = collate([{"src_ids": [5, 6, 7], "tgt_ids": [8, 9], "index": 0},
                     {"src_ids": [5], "tgt_ids": [8, 9, 10, 11], "index": 1}])
    module.train()
    state = torch.get_rng_state()
    loss = module.loss(batch)
    torch.set_rng_state(state)  # the same dropout masks, drawn for the doubled batch
    hidden = module.model(batch.src.repeat(2, 1), batch.tgt_in.repeat(2, 1), project=False)
    assert not torch.allclose(hidden[:2], hidden[2:])  # two passes, two masks
    torch.testing.assert_close(loss, rdrop_cross_entropy(hidden, module.model.lm_head.weight, batch.tgt_out, 0.1,
                                                         5.0))
    module.eval()  # validation: the plain loss, one pass
    logits = module.model(batch.src, batch.tgt_in)
    torch.testing.assert_close(module.loss(batch), token_cross_entropy(logits, batch.tgt_out, 0.1))


def test_merge_eval_outputs_deduplicates_rows_across_ranks():
    rank0 = [(10.0, 5, [(0, "a"), (2, "c")]), (4.0, 2, [(4, "e")])]
    rank1 = [(6.0, 3, [(1, "b"), (3, "d")]), (1.0, 1, [(0, "a")])]  # row 0 again: the sampler padded rank 1
    nll, tokens, rows = merge_eval_outputs([rank0, rank1])
    assert (nll, tokens) == (21.0, 11)
    assert rows == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]


def test_grad_norm_is_computed_on_the_steps_whose_metrics_lightning_writes():
    # Lightning writes logged training metrics after optimizer step n (1-based) when n is a multiple
    # of log_every_n_steps; on_before_optimizer_step runs with global_step = n - 1. A norm computed
    # on another step would be written steps late (or, on the first steps, not at all).
    from types import SimpleNamespace

    module = TranslationModule(tiny_config())
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    trainer = SimpleNamespace(log_every_n_steps=5, global_step=0, world_size=1, accumulate_grad_batches=1)
    module._trainer = trainer
    logged = []
    module.log = lambda name, value, **kwargs: logged.append((trainer.global_step, name, float(value)))
    for step in range(12):
        trainer.global_step = step
        module.on_before_optimizer_step(None)
    count = sum(p.numel() for p in module.parameters())
    assert [(s, name) for s, name, _ in logged] == [(4, "train/grad_norm"), (9, "train/grad_norm")]
    assert logged[0][2] == pytest.approx(math.sqrt(count))


def test_every_target_token_of_an_optimizer_step_weighs_the_same():
    # Two accumulated micro-batches of 2 and 6 real target tokens: the step's gradients are those
    # of the mean over all 8 tokens (not the mean of the two batch means), as Lightning runs it:
    # each returned loss divided by accumulate_grad_batches, backward, then the hook.
    from types import SimpleNamespace

    torch.manual_seed(0)
    module = TranslationModule(tiny_config(), TrainConfig(label_smoothing=0.1))
    module.log = lambda *args, **kwargs: None
    module.optimizers = lambda: SimpleNamespace(param_groups=[{"lr": 0.0}])
    module._trainer = SimpleNamespace(log_every_n_steps=50, global_step=0, world_size=1, accumulate_grad_batches=2)
    short = collate([{"src_ids": [5, 6, 7], "tgt_ids": [8], "index": 0}])  # 1 token + EOS
    long = collate([{"src_ids": [5, 6], "tgt_ids": [9, 10, 11, 12, 13], "index": 1}])  # 5 tokens + EOS
    assert (short.n_tokens, long.n_tokens) == (2, 6)
    module.eval()  # no dropout: the two ways must agree
    for batch in (short, long):
        (module.training_step(batch, 0) / 2).backward()
    module.on_before_optimizer_step(None)
    stepped = {name: p.grad.clone() for name, p in module.named_parameters()}
    module.zero_grad()
    total = (token_cross_entropy(module.model(short.src, short.tgt_in), short.tgt_out, 0.1, reduction="sum")
             + token_cross_entropy(module.model(long.src, long.tgt_in), long.tgt_out, 0.1, reduction="sum")) / 8
    total.backward()
    for name, p in module.named_parameters():
        torch.testing.assert_close(stepped[name], p.grad, msg=name)


def test_token_weighting_holds_under_a_real_trainer_with_accumulation():
    # The same as above through Lightning's own loop: its division by accumulate_grad_batches and
    # its hook order (the gradients caught after the module's on_before_optimizer_step).
    import copy

    import lightning as L
    from torch.utils.data import DataLoader

    class Probe(TranslationModule):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)
            self.stepped = {name: p.grad.clone() for name, p in self.named_parameters()}

    torch.manual_seed(0)
    module = Probe(tiny_config(), TrainConfig(label_smoothing=0.1))
    start = copy.deepcopy(module.model)
    short = collate([{"src_ids": [5, 6, 7], "tgt_ids": [8], "index": 0}])
    long = collate([{"src_ids": [5, 6], "tgt_ids": [9, 10, 11, 12, 13], "index": 1}])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader([short, long], batch_size=None))
    total = sum(token_cross_entropy(start(b.src, b.tgt_in), b.tgt_out, 0.1, reduction="sum") for b in (short, long))
    (total / 8).backward()
    for name, p in start.named_parameters():
        torch.testing.assert_close(module.stepped["model." + name], p.grad, msg=name)
