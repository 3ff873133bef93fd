"""Fault tolerance: a run killed with SIGKILL after a mid-epoch checkpoint resumes to exactly
the weights of an uninterrupted run (CPU, fp32); a non-finite loss and early stopping end a
run cleanly. (Atomic writes and averaging: test_checkpoints.py.)"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, run_cli


STEPS, EVERY = 24, 4
ARGS = ["--config", "configs/smoke.yaml", "--data.train_limit", "600", "--trainer.max_epochs", "-1",
        "--trainer.max_steps", str(STEPS), "--checkpoint.every_n_train_steps", str(EVERY),
        "--trainer.enable_progress_bar", "false"]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path):
    run_cli("fit", *ARGS, "--run.root", tmp_path, "--run.name", "whole")

    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "fit", *ARGS, "--run.root", str(tmp_path),
                             "--run.name", "killed"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < step < STEPS  # killed mid-run, after at least one checkpoint

    # A resume that forgets the first part's settings (here: other languages, another width)
    # stops before training, naming them and the run's own config, and leaves the run as it was.
    config_before = (tmp_path / "killed" / "config.yaml").read_text()
    wrong = run_cli("fit", *ARGS, "--run.root", tmp_path, "--run.name", "killed", "--ckpt_path", "last",
                    "--data.src_lang", "en", "--data.tgt_lang", "de", "--model.d_model", "32", check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr, wrong.stderr
    for words in ("data.src_lang de -> en", "data.tgt_lang en -> de", "model.d_model 64 -> 32", "--config",
                  str(tmp_path / "killed" / "config.yaml")):
        assert words in wrong.stderr, (words, wrong.stderr)
    assert (tmp_path / "killed" / "config.yaml").read_text() == config_before
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step

    resume = run_cli("fit", *ARGS, "--run.root", tmp_path, "--run.name", "killed", "--ckpt_path", "last")
    assert "exists and is not empty" not in resume.stderr  # (Lightning's note on the run's own directory)
    whole, resumed = weights(tmp_path / "whole/checkpoints/last.ckpt"), weights(last)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == STEPS
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


@pytest.mark.slow
def test_resume_from_an_end_of_epoch_checkpoint_equals_uninterrupted_run(tmp_path):
    # `make train` cut by a session's end resumes from last.ckpt, written after an epoch's
    # validation: the next epoch must get its own batch order and random draws, not the finished
    # epoch's again (the loader's iterator is made before Lightning advances its epoch counter).
    args = ["--config", "configs/smoke.yaml", "--data.train_limit", "300", "--data.val_limit", "10",
            "--trainer.enable_progress_bar", "false", "--final.enabled", "false", "--run.root", tmp_path]
    run_cli("fit", *args, "--run.name", "whole", "--trainer.max_epochs", "3")
    run_cli("fit", *args, "--run.name", "cut", "--trainer.max_epochs", "1")
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    run_cli("fit", *args, "--run.name", "cut", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    whole, resumed = weights(tmp_path / "whole/checkpoints/last.ckpt"), weights(last)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == \
        torch.load(tmp_path / "whole/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    # metrics.csv (the smoke config logs to CSV) keeps the cut run's epoch 0 and goes on after it.
    assert validations(tmp_path / "cut") == validations(tmp_path / "whole")


def validations(run):
    """(epoch, step, validation BLEU) of each validation row of a run's metrics.csv."""
    import csv

    rows = csv.DictReader((run / "metrics.csv").open(encoding="utf-8"))
    return [(r["epoch"], r["step"], r["val/bleu"]) for r in rows if r.get("val/bleu")]


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--data.train_limit", "200",
                   "--train.lr", "1e30", "--train.warmup_steps", "1", "--trainer.gradient_clip_val", "null",
                   "--trainer.max_epochs", "5", check=False)
    assert proc.returncode == 3, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "at step" in error[0] and "last good checkpoint" in error[0]
    assert "Traceback" not in proc.stderr


def test_early_stopping_on_validation_bleu(tmp_path):
    # A learning rate this small never improves BLEU, so patience 1 stops after epoch 2.
    run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--data.train_limit", "200",
            "--data.val_limit", "20", "--train.lr", "1e-12", "--trainer.max_epochs", "20",
            "--checkpoint.early_stop_patience", "1", "--trainer.enable_progress_bar", "false")
    last = torch.load(tmp_path / "smoke/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] <= 3
