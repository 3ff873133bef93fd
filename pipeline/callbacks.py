"""Training-time callbacks: a progress line per validation, attention images in W&B; the
plugin through which Lightning writes checkpoints, and the CSV logger that a resumed run appends to."""

from __future__ import annotations

import csv
import ctypes
import math
import os
import time
from datetime import timedelta

import lightning as L
import numpy as np
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from pipeline.checkpoints import save_atomically
from pipeline.errors import UserError
from pipeline.tokenizer import PAD, decode


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


class ProgressLog(L.Callback):
    """One plain line per validation on stdout, terminal or not, so `tail -f train.log` shows
    where a run stands:

        epoch 3 step 748 | train loss 3.210 | val loss 2.905 | val BLEU 20.39 | 5,120 tok/s |
        elapsed 0:10:31 | remaining ~1:35:12 | memory 4.21 GB
    tok/s is this process's real (non-padding) source and target tokens over its training time
    since the previous validation (validation itself left out), not one step's rate, which
    swings with each batch's shape and whatever else the machine runs.
    The remaining time is the sooner of trainer.max_time and the steps left (to max_epochs or
    max_steps) at this process's mean time per step, validation included (steps, not epochs: a
    run resumed mid-epoch has done part of its first one). Elapsed is the training time the
    Timer of trainer.max_time counts, which a resumed run restores from its checkpoint (so the
    line goes on where the cut run left off), or the time since training started without one.
    Memory is this process's resident set (Linux; left out elsewhere), so a long run's log
    shows whether it stays flat (bench.curve records it per epoch).
    """

    def __init__(self):
        self.start = None
        self.first_step = 0
        self.window_start = None  # when the training steps since the last validation began
        self.window_tokens, self.window_seconds = 0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()
        self.first_step = trainer.global_step  # past 0 when resumed from a checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.window_start is None:
            self.window_start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # summed where the batch is (a tensor): read once per validation, no GPU sync per step
        self.window_tokens = self.window_tokens + (batch.src != PAD).sum() + batch.n_tokens

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.window_start is not None:  # the training since the last validation ends here
            self.window_seconds += time.monotonic() - self.window_start
            self.window_start = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.start is None:
            return
        metrics = trainer.callback_metrics
        value = lambda key: float(metrics[key]) if key in metrics else float("nan")  # noqa: E731
        rate = float(self.window_tokens) / self.window_seconds if self.window_seconds > 0 else float("nan")
        self.window_tokens, self.window_seconds = 0, 0.0
        here = time.monotonic() - self.start  # this process's share
        elapsed = here
        steps_here, total = trainer.global_step - self.first_step, trainer.estimated_stepping_batches
        left = []
        if steps_here > 0 and math.isfinite(total):
            left.append(here / steps_here * max(total - trainer.global_step, 0))
        timer = next((c for c in trainer.callbacks if type(c).__name__ == "Timer"), None)
        if timer is not None and timer._duration is not None:
            elapsed = timer.time_elapsed("train")
            left.append(timer._duration - elapsed)
        line = (f"epoch {trainer.current_epoch} step {trainer.global_step} | train loss {value('train/loss'):.3f} | "
                f"val loss {value('val/loss'):.3f} | val BLEU {value('val/bleu'):.2f} | "
                f"{rate:,.0f} tok/s | elapsed {_clock(elapsed)}")
        if left:
            line += f" | remaining ~{_clock(min(left))}"
        rss = resident_gb()
        if rss is not None:
            line += f" | memory {rss:.2f} GB"
        print(line, flush=True)


def resident_gb() -> float | None:
    """This process's resident memory in GB (10⁹ bytes) from /proc (Linux), else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


class ReleaseFreedMemory(L.Callback):
    """Every `every_n_steps` training steps, hand the free pages of the C heap back to the OS
    (glibc's malloc_trim; a no-op elsewhere). Batches of ever-changing shapes leave the heap
    full of freed blocks that glibc keeps: 300 steps of the Multi30k recipe held 4.37 GB without
    this and 2.08 GB with it, at the same speed (bench/results/2026-11-26-84b20eb-memory-trim.json).
    """

    def __init__(self, every_n_steps: int = 50):
        self.every = every_n_steps
        try:
            self.trim = ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
        except (OSError, AttributeError):
            self.trim = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.trim is not None and trainer.global_step % self.every == 0:
            self.trim(0)


class AttentionImageCallback(L.Callback):
    """After each validation (rank zero, not the sanity check), translate `text` greedily,
    draw the head-averaged cross-attention of every decoder layer and log the image to each
    WandbLogger under `key` (one panel per layer; the caption is the translation).

    Args:
        text: source sentence to watch; None takes a median-length source sentence of the
            first validation batch (so any dataset works without configuration).
        key: W&B media key.
        every_n_validations: log on every n-th validation only.
    """

    def __init__(self, text: str | None = None, key: str = "val/attention", every_n_validations: int = 1):
        if every_n_validations < 1:
            raise UserError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.text, self.key, self.every = text, key, every_n_validations
        self._count = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.text is None and batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking \
                and pl_module.tokenizer is not None and hasattr(batch, "src"):
            lengths = (batch.src != PAD).sum(1)
            row = batch.src[int(lengths.argsort()[len(lengths) // 2])].tolist()
            self.text = decode(pl_module.tokenizer, [row])[0] or None

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._count += 1
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.text is None or pl_module.tokenizer is None or (self._count - 1) % self.every:
            return
        image, caption = self.render(pl_module)
        for logger in loggers:
            logger.log_image(key=self.key, images=[image], caption=[caption], step=trainer.global_step)

    def render(self, pl_module) -> tuple[np.ndarray, str]:
        """(H, W, 3) image of the head-averaged cross-attention per decoder layer, caption."""
        from pipeline.attention_maps import compute_attention
        from pipeline.plotting import figure_to_array, layers_figure, plot_style

        maps = compute_attention(pl_module.model, pl_module.tokenizer, self.text, decoding=pl_module.decoding)
        with plot_style():
            array = figure_to_array(layers_figure(maps, "cross"))
        return array, f"{maps.source} → {maps.target}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (a Trainer plugin), writing atomically: a kill mid-save
    leaves the previous checkpoint whole (checkpoints.save_atomically)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_atomically(checkpoint, path)


class LastCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt after every validation, improved or not (Lightning's `save_last`
    writes it only when a top-k checkpoint is written, i.e. with best.ckpt), so that
    `--ckpt_path last` resumes from the newest state, not from the best epoch. A class of its
    own: its state key differs from a plain ModelCheckpoint's (Lightning refuses two alike)."""

    def __init__(self, dirpath):
        super().__init__(dirpath=dirpath, filename="last", save_top_k=1, auto_insert_metric_name=False,
                         enable_version_counter=False)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (runs/<name>/metrics.csv), except that a resumed fit (--ckpt_path)
    appends to the rows the run logged before: Lightning's writer deletes an existing
    metrics.csv when it starts. Rows a run logged after the checkpoint it resumes from stay, so
    a step can appear twice."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # (called by __init__; Lightning's removes metrics.csv)
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            text = file.read()
        if text and not text.endswith("\n"):  # a row cut by a kill: dropped, not joined to the next
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                file.write(text[: text.rfind("\n") + 1])
        self.metrics_keys = next(csv.reader(text.splitlines()), [])  # new rows go under the same columns
