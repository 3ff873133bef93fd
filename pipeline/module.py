"""The LightningModule: loss, optimiser and schedule, validation/test BLEU, logging.

The architecture itself is the plain `Transformer` in model.py, built from the
`TransformerConfig` it is given; this class only trains and scores it.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from dataclasses import asdict, dataclass

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import WandbLogger

from pipeline.batching import Batch
from pipeline.checkpoints import schema_fields
from pipeline.decoding import DecodingConfig, generate
from pipeline.errors import UserError
from pipeline.loss import linear_cross_entropy, translation_loss
from pipeline.metrics import corpus_scores
from pipeline.model import Transformer, TransformerConfig
from pipeline.tokenizer import EOS, MAX_SOURCE_TOKENS, PAD, decode, load_tokenizer


@dataclass
class TrainConfig:
    """How the model is trained: the `train:` section of a config.

    Args:
        label_smoothing: probability mass spread uniformly over the vocabulary in the loss.
        lr: peak learning rate, reached at the end of warm-up.
        warmup_steps: linear warm-up steps before the inverse-square-root decay.
        betas: Adam betas.
        eps: Adam epsilon.
        weight_decay: decoupled weight decay (AdamW); 0 is plain Adam.
        rdrop_alpha: R-Drop weight α (Liang et al., 2021): each training batch runs twice (two
            dropout masks); the loss is ½(CE₁ + CE₂) + α/4·(KL(p₁‖p₂) + KL(p₂‖p₁)), the paper's
            loss halved (0: off; > 0 doubles the cost of a step). See loss.rdrop_cross_entropy.
        n_samples: sample translations (source, reference, hypothesis) logged at each validation.
        compile: torch.compile the model's forward for training. Off by default: the recipe's
            step ran slower compiled on both CPUs measured, 0.79x eager on an AMD EPYC after 188 s
            of compiling and 0.83x on an Intel Xeon after 166 s, and 0.96x on an H200 GPU
            (bench/results/2026-11-27-train-compile{-amd,,-gpu}.json).
    """

    label_smoothing: float = 0.1
    lr: float = 7e-4
    warmup_steps: int = 4000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    rdrop_alpha: float = 0.0
    n_samples: int = 8
    compile: bool = False

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.lr <= 0 or self.warmup_steps < 1:
            raise ValueError(f"train.lr must be > 0 and train.warmup_steps >= 1, got {self.lr} and "
                             f"{self.warmup_steps}")
        if self.rdrop_alpha < 0:
            raise ValueError(f"train.rdrop_alpha must be >= 0, got {self.rdrop_alpha}")
        self.betas = tuple(self.betas)


def inverse_sqrt_schedule(warmup_steps: int):
    """LR multiplier: linear warm-up to 1 over `warmup_steps`, then (warmup / step)^0.5."""
    def factor(step: int) -> float:
        step = step + 1
        return step / warmup_steps if step < warmup_steps else math.sqrt(warmup_steps / step)
    return factor


def merge_eval_outputs(gathered: list[list[tuple]]) -> tuple[float, int, list[tuple[int, str]]]:
    """Per-rank lists of (nll sum, target tokens, [(row index, hypothesis), ...]) -> the total
    nll, total tokens and one (index, hypothesis) per row, sorted by index.

    Under DDP the sampler gives the ranks disjoint rows (it splits batches rather than padding
    ranks), so the de-duplication by index is a safeguard that costs nothing; the losses come
    from disjoint batches and are summed."""
    parts = [p for rank_parts in gathered for p in rank_parts]
    rows = sorted({index: hyp for p in parts for index, hyp in p[2]}.items())
    return sum(p[0] for p in parts), sum(p[1] for p in parts), rows


class TranslationModule(L.LightningModule):
    """Trains a `Transformer` with label-smoothed cross-entropy and scores it with sacreBLEU.

    Args:
        model: the architecture (TransformerConfig).
        train: loss, optimiser and schedule (TrainConfig).
        decoding: how validation and test translate (DecodingConfig); saved for evaluate/translate.
    """

    def __init__(self, model: TransformerConfig | None = None, train: TrainConfig | None = None,
                 decoding: DecodingConfig | None = None):
        super().__init__()
        self.config = model or TransformerConfig()
        self.train_config = train or TrainConfig()
        self.decoding = decoding or DecodingConfig()
        self.save_hyperparameters({"model": asdict(self.config), "train": asdict(self.train_config),
                                   "decoding": asdict(self.decoding)})
        self.model = Transformer(self.config)
        self.tokenizer = None  # from the datamodule in setup(), or from the checkpoint
        self.languages = None  # (source key, target key), e.g. ("de", "en")
        self._eval = []
        self._t_last = None
        self._rng_states = None  # restored from a checkpoint, applied when training starts
        self._step_tokens = 0  # real target tokens of the micro-batches since the last optimizer step
        self._token_unit = 4096  # tokens the returned loss is counted in: data.max_tokens once set up

    # -- tokenizer travels inside the checkpoint -------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        if self.tokenizer is None and datamodule is not None:
            self.tokenizer, self.languages = datamodule.tokenizer, (datamodule.src_lang, datamodule.tgt_lang)
        if self.tokenizer is not None and self.tokenizer.get_vocab_size() > self.config.vocab_size:
            size = self.tokenizer.get_vocab_size()
            raise UserError(f"the tokenizer has {size} tokens, more than the model's {self.config.vocab_size} "
                            "embeddings (data.vocab_size; a BPE keeps every character of its training text, so "
                            f"scripts with thousands of characters outgrow small sizes): raise --data.vocab_size to "
                            f"at least {size}")
        if datamodule is not None:
            self._token_unit = getattr(datamodule, "max_tokens", self._token_unit)
            longest = max(getattr(datamodule, "max_len", 0), MAX_SOURCE_TOKENS)  # training pairs; validation's
            if longest > self.config.max_positions:
                raise UserError(f"model.max_positions={self.config.max_positions} is shorter than the {longest}-token "
                                f"sequences this run feeds it (data.max_len={getattr(datamodule, 'max_len', None)}; "
                                f"validation reads up "
                                f"to {MAX_SOURCE_TOKENS}): raise model.max_positions to at least {longest}")
        if self.train_config.compile and stage == "fit":
            self.model.compile()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint.update(schema_fields(self.tokenizer, self.languages))
        # Lightning does not save random states; dropout after a resume must match the
        # uninterrupted run, so they travel with the checkpoint.
        # Stored as tensors and plain tuples so the checkpoint loads with weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                    "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on GPUs draws from these
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

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
            cuda = self._rng_states.get("cuda")
            if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            self._rng_states = None

    # -- training ----------------------------------------------------------------------------
    def loss(self, batch: Batch, label_smoothing: float | None = None) -> torch.Tensor:
        """Mean label-smoothed cross-entropy per real target token (padding ignored);
        label_smoothing defaults to train.label_smoothing. In training mode with
        train.rdrop_alpha > 0, the R-Drop loss of two dropout passes over the batch instead."""
        smoothing = self.train_config.label_smoothing if label_smoothing is None else label_smoothing
        alpha = self.train_config.rdrop_alpha if self.model.training else 0.0  # no dropout to compare in eval
        return translation_loss(self.model, batch, smoothing, alpha)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        if not torch.isfinite(loss):
            written = [Path(cb.dirpath) / "last.ckpt" for cb in self.trainer.checkpoint_callbacks if cb.dirpath]
            last = next((str(p) for p in written if p.exists()), "none written yet")
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}: training stopped; last "
                                     f"good checkpoint: {last} (lower train.lr or raise train.warmup_steps)")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.src.size(0))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch.src.size(0))
        now = time.perf_counter()
        if self._t_last is not None:
            tokens = int((batch.src != PAD).sum()) + batch.n_tokens
            self.log("train/tokens_per_sec", tokens / (now - self._t_last), batch_size=batch.src.size(0))
        self._t_last = now
        # Every real target token of an optimizer step weighs the same, whatever micro-batch or
        # rank it is on (as fairseq and Marian do): the summed loss goes back here, and
        # on_before_optimizer_step divides the gradients by the step's tokens. A per-batch mean
        # would weigh a token of a 1,000-token batch twice as much as one of a full batch when
        # batches are accumulated or split over ranks.
        if not self._weighs_tokens():  # one batch per step: its mean already weighs every token the same
            return loss
        tokens = batch.n_tokens
        self._step_tokens += tokens
        # (In units of a full batch, so that the backward pass keeps the size a mean's has: fp16's
        # GradScaler would otherwise overflow at its first steps.)
        return loss * (tokens / self._token_unit)

    def _weighs_tokens(self) -> bool:
        """Whether a step's gradients come from several batches (accumulated, or one per rank)."""
        return self.trainer.accumulate_grad_batches > 1 or self.trainer.world_size > 1

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad.detach() for p in self.parameters() if p.grad is not None]
        if self._weighs_tokens():
            self._divide_by_step_tokens(grads)
        # Only on the steps whose metrics reach the logger (Lightning writes them after optimizer
        # step number global_step + 1 when that is a multiple of log_every_n_steps): the norm
        # costs a pass over every gradient, and one computed on another step would be logged late.
        if (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0:
            self.log("train/grad_norm", torch.stack(torch._foreach_norm(grads)).norm(), batch_size=1)

    def _divide_by_step_tokens(self, grads: list[torch.Tensor]) -> None:
        # Lightning divided each micro-batch's loss by accumulate_grad_batches, DDP averaged the
        # ranks' gradients: undone here, and the sum divided by the tokens of every micro-batch
        # and rank of this step.
        tokens, world = self._step_tokens, self.trainer.world_size
        if world > 1 and dist.is_available() and dist.is_initialized():
            total = torch.tensor(tokens, dtype=torch.int64, device=self.device)
            dist.all_reduce(total)
            tokens = int(total.item())
        self._step_tokens = 0
        torch._foreach_mul_(grads, self.trainer.accumulate_grad_batches * world * self._token_unit / max(tokens, 1))

    def configure_optimizers(self):
        tc = self.train_config
        params = list(self.parameters())
        # One fused kernel for the whole update where torch has it (CPU and CUDA, float weights).
        # Lightning's mixed-precision plugin refuses to clip gradients for fused optimizers, so
        # mixed precision gets the multi-tensor (foreach) update instead.
        mixed = self._trainer is not None and "mixed" in str(self.trainer.precision)
        fused = not mixed and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps,
                                      weight_decay=tc.weight_decay, fused=fused, foreach=not fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(tc.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- validation and test: the same scoring as `evaluate` ------------------------------------
    def eval_step(self, batch: Batch) -> None:
        """Teacher-forced loss and a translation of every row (empty sources translate to "")."""
        nll = linear_cross_entropy(self.model(batch.src, batch.tgt_in, project=False), self.model.lm_head.weight,
                                   batch.tgt_out, reduction="sum")
        tokens = generate(self.model, batch.src, self.decoding).tokens[:, 0]
        hyps = decode(self.tokenizer, tokens.tolist())
        empty = (batch.src[:, 0] == EOS).tolist()
        hyps = ["" if e else h for h, e in zip(hyps, empty)]
        self._eval.append((float(nll), batch.n_tokens, list(zip(batch.index.tolist(), hyps))))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self.eval_epoch_end("val", "validation")

    def on_test_epoch_end(self) -> None:
        self.eval_epoch_end("test", "test")

    def eval_epoch_end(self, prefix: str, split: str) -> None:
        """Gather every rank's rows, score the hypotheses against the raw reference strings of
        the split (as `evaluate` does), log {prefix}/loss, ppl, bleu, chrf."""
        gathered = [self._eval]
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._eval)
        self._eval = []
        nll, n_tokens, rows = merge_eval_outputs(gathered)
        sources, references = self.trainer.datamodule.texts(split)
        hyps = [hyp for _, hyp in rows]
        refs = [references[index] for index, _ in rows]
        scores = corpus_scores(hyps, refs)
        loss = nll / max(n_tokens, 1)
        metrics = {f"{prefix}/loss": loss, f"{prefix}/ppl": math.exp(min(loss, 50.0)),
                   f"{prefix}/bleu": scores["bleu"], f"{prefix}/chrf": scores["chrf"]}
        self.log_dict(metrics, prog_bar=True, sync_dist=False)
        self.last_scores = {**metrics, "signature": scores["bleu_signature"], "n": len(rows)}
        if prefix == "val" and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            samples = [[sources[i], references[i], hyp] for i, hyp in rows[: self.train_config.n_samples]]
            for logger in self.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_table("val/samples", columns=["source", "reference", "hypothesis"], data=samples,
                                     step=self.global_step)
