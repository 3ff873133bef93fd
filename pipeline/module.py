"""The LightningModule: loss, optimiser and schedule, validation BLEU, logging.

The architecture itself is the plain `Transformer` in model.py; this class only trains it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import fields

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from pipeline.batching import Batch
from pipeline.decoding import beam_search, greedy_decode, max_new_tokens
from pipeline.errors import UserError
from pipeline.metrics import corpus_scores
from pipeline.model import Transformer, TransformerConfig
from pipeline.tokenizer import PAD, decode, load_tokenizer


def inverse_sqrt_schedule(warmup_steps: int):
    """LR multiplier: linear warm-up to 1 over `warmup_steps`, then (warmup / step)^0.5."""
    def factor(step: int) -> float:
        step = step + 1
        return step / warmup_steps if step < warmup_steps else math.sqrt(warmup_steps / step)
    return factor


class TranslationModule(L.LightningModule):
    """Trains a `Transformer` with label-smoothed cross-entropy.

    Args:
        vocab_size: joint vocabulary size (linked to data.vocab_size by the CLI).
        d_model: width of the residual stream.
        n_heads: attention heads (d_model must divide by it).
        encoder_layers: encoder depth.
        decoder_layers: decoder depth.
        d_ff: feed-forward inner width.
        dropout: dropout on embeddings and residual branches.
        attention_dropout: dropout on attention weights.
        activation_dropout: dropout inside the feed-forward network.
        pre_norm: LayerNorm before sub-layers (False: after, as in the paper and Marian).
        tie_embeddings: share source/target embeddings and the output projection.
        max_positions: longest sequence the positional table covers.
        fused_attention: use F.scaled_dot_product_attention where weights are not needed.
        label_smoothing: probability mass spread over the vocabulary in the loss.
        lr: peak learning rate, reached at the end of warm-up.
        warmup_steps: linear warm-up steps before inverse-square-root decay.
        betas: Adam betas.
        eps: Adam epsilon.
        weight_decay: decoupled weight decay (AdamW); 0 is plain Adam.
        val_beam: beam size for validation BLEU (1 = greedy).
        length_penalty: beam score = log p / length^length_penalty.
        max_len_ratio: decoding stops after max_len_ratio × source length + max_len_extra tokens.
        max_len_extra: see max_len_ratio.
        n_samples: sample translations logged each validation.
        compile: torch.compile the model for training.
    """

    def __init__(self, vocab_size: int = 8000, d_model: int = 256, n_heads: int = 4, encoder_layers: int = 3,
                 decoder_layers: int = 3, d_ff: int = 1024, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0, pre_norm: bool = True, tie_embeddings: bool = True,
                 max_positions: int = 1024, fused_attention: bool = True, label_smoothing: float = 0.1,
                 lr: float = 7e-4, warmup_steps: int = 4000, betas: tuple[float, float] = (0.9, 0.98),
                 eps: float = 1e-9, weight_decay: float = 0.0, val_beam: int = 1, length_penalty: float = 1.0,
                 max_len_ratio: float = 1.5, max_len_extra: int = 10, n_samples: int = 8, compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        try:
            self.config = TransformerConfig(**{f.name: self.hparams[f.name] for f in fields(TransformerConfig)})
        except ValueError as e:
            raise UserError(str(e)) from None
        if val_beam < 1:
            raise UserError(f"model.val_beam must be >= 1, got {val_beam}")
        self.model = Transformer(self.config)
        self.tokenizer = None  # from the datamodule in setup(), or from the checkpoint
        self.languages = None  # (source key, target key), e.g. ("de", "en")
        self._val = []
        self._t_last = None
        self._rng_states = None  # restored from a checkpoint, applied when training starts

    # -- tokenizer travels inside the checkpoint -------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.tokenizer is None and datamodule is not None:
            self.tokenizer, self.languages = datamodule.tokenizer, (datamodule.src_lang, datamodule.tgt_lang)
        if self.tokenizer is not None and self.tokenizer.get_vocab_size() > self.config.vocab_size:
            raise UserError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but model.vocab_size is "
                            f"{self.config.vocab_size}: use a tokenizer trained with data.vocab_size <= it")
        if self.hparams.compile and stage == "fit":
            self.model.compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.to_str()
        checkpoint["languages"] = self.languages
        # Lightning does not save random states; dropout after a resume must match the
        # uninterrupted run, so they travel with the checkpoint.
        # Stored as tensors and plain tuples so the checkpoint loads with weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None and self.tokenizer.to_str() != checkpoint["tokenizer"]:
            raise UserError("the checkpoint's tokenizer differs from this run's tokenizer.json: pass the "
                            "--run.name of the run that wrote the checkpoint")
        self.tokenizer = load_tokenizer(checkpoint["tokenizer"])
        self.languages = tuple(checkpoint["languages"])
        self._rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        if self._rng_states:
            torch.set_rng_state(self._rng_states["torch"])
            random.setstate(self._rng_states["python"])
            kind, keys, pos, has_gauss, gauss = self._rng_states["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            self._rng_states = None

    # -- training ----------------------------------------------------------------------------
    def loss(self, batch: Batch, label_smoothing: float) -> torch.Tensor:
        """Mean cross-entropy per real target token (padding ignored)."""
        logits = self.model(batch.src, batch.tgt_in)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD,
                               label_smoothing=label_smoothing)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch, self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}: training stopped; last "
                                     f"good checkpoint: {last} (lower model.lr or raise model.warmup_steps)")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.src.size(0))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch.src.size(0))
        now = time.perf_counter()
        if self._t_last is not None:
            tokens = int((batch.src != PAD).sum()) + batch.n_tokens
            self.log("train/tokens_per_sec", tokens / (now - self._t_last), batch_size=batch.src.size(0))
        self._t_last = now
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        self.log("train/grad_norm", torch.stack(norms).norm(), batch_size=1)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                      weight_decay=hp.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(hp.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- decoding and validation -------------------------------------------------------------
    def generate(self, src: torch.Tensor, beam: int = 1) -> torch.Tensor:
        """(B, S) source ids -> (B, T) hypothesis ids (greedy when beam == 1)."""
        max_len = max_new_tokens(src, self.hparams.max_len_ratio, self.hparams.max_len_extra).clamp(
            max=self.config.max_positions - 1)
        if beam == 1:
            return greedy_decode(self.model, src, max_len)
        return beam_search(self.model, src, beam, max_len, self.hparams.length_penalty)[0][:, 0]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self.model(batch.src, batch.tgt_in)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), batch.tgt_out.flatten(), ignore_index=PAD,
                              reduction="sum")
        hyps = decode(self.tokenizer, self.generate(batch.src, self.hparams.val_beam).tolist())
        refs = decode(self.tokenizer, batch.tgt_out.tolist())
        srcs = decode(self.tokenizer, batch.src.tolist())
        self._val.append((float(nll), batch.n_tokens, list(zip(batch.index.tolist(), srcs, refs, hyps))))

    def on_validation_epoch_end(self) -> None:
        gathered = [self._val]
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._val)
        self._val = []
        parts = [p for rank_parts in gathered for p in rank_parts]
        nll, n_tokens = sum(p[0] for p in parts), sum(p[1] for p in parts)
        rows = sorted({r[0]: r for p in parts for r in p[2]}.values())  # one row per sentence
        scores = corpus_scores([r[3] for r in rows], [r[2] for r in rows])
        loss = nll / max(n_tokens, 1)
        metrics = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0)), "val/bleu": scores["bleu"],
                   "val/chrf": scores["chrf"]}
        self.log_dict(metrics, prog_bar=True, sync_dist=False)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            samples = [list(r[1:]) for r in rows[: self.hparams.n_samples]]
            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table("val/samples", columns=["source", "reference", "hypothesis"], data=samples,
                                     step=self.global_step)
