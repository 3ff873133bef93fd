"""Training-time callbacks: the W&B attention image and the per-validation progress line."""

from __future__ import annotations

import os
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import SEED
from pipeline.batching import collate
from pipeline.callbacks import AtomicCheckpointIO, AttentionImageCallback, ProgressLog, ReleaseFreedMemory
from pipeline.tokenizer import PAD, encode


class RecordingLogger:
    """A real WandbLogger (the callback looks for that type) whose log_image only records."""

    def __new__(cls, save_dir):
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(save_dir=str(save_dir), offline=True)
        logger.calls = []
        logger.log_image = lambda **kwargs: logger.calls.append(kwargs)
        return logger


def test_callback_logs_cross_attention_image(module, tmp_path):
    logger = RecordingLogger(tmp_path)
    trainer = SimpleNamespace(sanity_checking=True, is_global_zero=True, loggers=[logger], global_step=7)
    callback = AttentionImageCallback(text=SEED[0])
    callback.on_validation_end(trainer, module)
    assert logger.calls == []  # not during the sanity check
    trainer.sanity_checking = False
    callback.on_validation_end(trainer, module)
    assert len(logger.calls) == 1
    call = logger.calls[0]
    assert call["key"] == "val/attention" and call["step"] == 7
    image = call["images"][0]
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 10
    assert call["caption"] == [f"{SEED[0]} → {SEED[1]}"]
    trainer.is_global_zero = False
    callback.on_validation_end(trainer, module)
    assert len(logger.calls) == 1  # other ranks do not log


def test_callback_without_text_watches_a_validation_sentence(module, tmp_path):
    sources = ["감사합니다.", SEED[0], "안녕!"]
    ids = encode(module.tokenizer, sources)
    batch = collate([{"src_ids": s, "tgt_ids": [5], "index": i} for i, s in enumerate(ids)])
    callback = AttentionImageCallback()
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[RecordingLogger(tmp_path)],
                              global_step=1)
    callback.on_validation_batch_start(trainer, module, batch, 0)
    assert callback.text in sources
    callback.on_validation_end(trainer, module)
    assert len(trainer.loggers[0].calls) == 1


def test_progress_line_after_each_validation(capsys):
    import torch

    callback = ProgressLog()
    epoch_loop = SimpleNamespace(done=True)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=1, global_step=40,
                              estimated_stepping_batches=100, callbacks=[],  # 5 epochs of 20 steps
                              fit_loop=SimpleNamespace(epoch_loop=epoch_loop),
                              callback_metrics={"train/loss": torch.tensor(3.25), "val/loss": torch.tensor(2.5),
                                                "val/bleu": torch.tensor(20.391), "train/tokens_per_sec":
                                                    torch.tensor(999.0)})
    callback.on_validation_end(trainer, None)
    assert capsys.readouterr().out == ""  # nothing before training started
    trainer.global_step = 0
    callback.on_train_start(trainer, None)
    # tok/s: the real tokens of the steps since the last validation over their time (here two
    # batches of 3 source + 10,237 target tokens in 4 s), not the last step's logged rate.
    batch = SimpleNamespace(src=torch.tensor([[5, 6, 7, PAD]]), n_tokens=10237)
    for i in range(2):
        callback.on_train_batch_start(trainer, None, batch, i)
        callback.on_train_batch_end(trainer, None, None, batch, i)
    callback.window_start -= 4.0
    callback.on_validation_start(trainer, None)
    trainer.global_step = 40
    callback.start -= 100  # 100 s for 2 epochs: 3 more epochs take about 150 s
    callback.on_validation_end(trainer, None)
    line = capsys.readouterr().out
    assert line.startswith("epoch 1 step 40 | train loss 3.250 | val loss 2.500 | val BLEU 20.39 | 5,120 tok/s")
    assert "elapsed 0:01:40" in line and "remaining ~0:02:3" in line and line.count("\n") == 1
    if sys.platform.startswith("linux"):  # this process's resident memory, as ps reports it
        printed = float(re.search(r"\| memory ([\d.]+) GB$", line.strip())[1])
        with open(f"/proc/{os.getpid()}/status") as status:
            vm_rss_kb = int(next(x for x in status if x.startswith("VmRSS:")).split()[1])
        assert abs(printed - vm_rss_kb * 1024 / 1e9) < 0.05
    trainer.sanity_checking = True
    callback.on_validation_end(trainer, None)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("mid_epoch", [False, True])
def test_progress_line_of_a_resumed_run_goes_on_from_the_checkpoint(capsys, mid_epoch):
    """Resumed with 1:02:00 already trained, at the start of epoch 23 or with 90% of it done
    (a mid-epoch last.ckpt): elapsed continues from the Timer's restored count, and the rate
    comes from this process's steps only (it once divided this process's time by all 24
    epochs, and said 19 minutes were left where 45 were)."""
    import torch

    class Timer:  # what ProgressLog reads of Lightning's Timer
        _duration = 2 * 3600.0

        def time_elapsed(self, stage):
            return 3720.0 + 100.0

    steps = 200  # per epoch; 30 epochs in all
    callback = ProgressLog()
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=23,
                              global_step=23 * steps + (180 if mid_epoch else 0),
                              estimated_stepping_batches=30 * steps, callbacks=[Timer()],
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(done=True)),
                              callback_metrics={"train/loss": torch.tensor(2.5)})
    callback.on_train_start(trainer, None)
    trainer.global_step = 25 * steps  # epochs 23 and 24 done in this process: 5 epochs left
    done_here = trainer.global_step - callback.first_step
    callback.start -= done_here / steps * 100  # 100 s an epoch in this process
    callback.on_validation_end(trainer, None)
    line = capsys.readouterr().out
    assert "elapsed 1:03:40" in line and "remaining ~0:08:20" in line
    trainer.estimated_stepping_batches = 200 * steps  # now the Timer ends the run first: 7200 - 3820 s
    callback.on_validation_end(trainer, None)
    assert "remaining ~0:56:20" in capsys.readouterr().out


def test_freed_heap_memory_goes_back_every_n_steps():
    import sys

    callback = ReleaseFreedMemory(every_n_steps=50)
    if sys.platform.startswith("linux"):
        assert callback.trim is not None  # glibc's malloc_trim was found
        assert callback.trim(0) in (0, 1)  # and runs
    calls = []
    callback.trim = calls.append
    for step in range(1, 151):
        callback.on_train_batch_end(SimpleNamespace(global_step=step), None, None, None, step)
    assert calls == [0, 0, 0]  # at steps 50, 100, 150


def test_lightning_writes_checkpoints_through_a_picklable_atomic_plugin(tmp_path, monkeypatch):
    """The Trainer's checkpoint plugin survives pickling (ddp_spawn pickles the Trainer) and
    writes through checkpoints.save_atomically (tested in test_checkpoints.py)."""
    import pickle

    import pipeline.callbacks

    written = []
    monkeypatch.setattr(pipeline.callbacks, "save_atomically", lambda checkpoint, path: written.append((checkpoint, path)))
    io = pickle.loads(pickle.dumps(AtomicCheckpointIO()))
    io.save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert written == [({"step": 1}, tmp_path / "last.ckpt")]


def test_csv_logger_of_a_resumed_run_appends_to_its_rows(tmp_path):
    """A resumed fit keeps the rows metrics.csv has (Lightning's writer deletes the file), under
    the same header, a new column added to every row; a row a kill cut short is dropped."""
    import csv

    from pipeline.callbacks import ResumableCSVLogger

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,9,4.5\n0,19,4.0\n1,2", encoding="utf-8")
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    logger.log_metrics({"epoch": 1, "train/loss": 3.5, "val/bleu": 12.0}, step=29)
    logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open(encoding="utf-8")))
    assert [(r["step"], r["train/loss"], r["val/bleu"]) for r in rows] == [
        ("9", "4.5", ""), ("19", "4.0", ""), ("29", "3.5", "12.0")]
