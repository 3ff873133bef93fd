"""Fault tolerance: a run killed with SIGKILL after a mid-epoch checkpoint resumes to exactly
the weights of an uninterrupted run (CPU, fp32), and checkpoints are written atomically."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from cli_utils import ROOT, run_cli

from pipeline.checkpoints import AtomicCheckpointIO, average_checkpoints
from pipeline.errors import UserError

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

    run_cli("fit", *ARGS, "--run.root", tmp_path, "--run.name", "killed", "--ckpt_path", "last")
    whole, resumed = weights(tmp_path / "whole/checkpoints/last.ckpt"), weights(last)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == STEPS
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_atomic_save_keeps_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # stands in for a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_average_of_checkpoints_is_elementwise_mean(tmp_path):
    def ckpt(value):
        return {"state_dict": {"w": torch.full((2, 2), value)}, "hyper_parameters": {"d_model": 2},
                "tokenizer": "{}", "languages": ("de", "en")}
    for i, v in enumerate([1.0, 2.0, 6.0]):
        torch.save(ckpt(v), tmp_path / f"epoch{i:03d}.ckpt")
    avg = average_checkpoints(sorted(tmp_path.glob("epoch*.ckpt")))
    assert torch.equal(avg["state_dict"]["w"], torch.full((2, 2), 3.0))
    assert "optimizer_states" not in avg and avg["languages"] == ("de", "en")
    other = ckpt(1.0) | {"hyper_parameters": {"d_model": 4}}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="different model config"):
        average_checkpoints([tmp_path / "epoch000.ckpt", tmp_path / "other.ckpt"])


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--data.train_limit", "200",
                   "--model.lr", "1e30", "--model.warmup_steps", "1", "--trainer.gradient_clip_val", "null",
                   "--trainer.max_epochs", "5", check=False)
    assert proc.returncode == 3, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "at step" in error[0] and "last good checkpoint" in error[0]
    assert "Traceback" not in proc.stderr


def test_early_stopping_on_validation_bleu(tmp_path):
    # A learning rate this small never improves BLEU, so patience 1 stops after epoch 2.
    run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", tmp_path, "--data.train_limit", "200",
            "--data.val_limit", "20", "--model.lr", "1e-12", "--trainer.max_epochs", "20",
            "--checkpoint.early_stop_patience", "1", "--trainer.enable_progress_bar", "false")
    last = torch.load(tmp_path / "smoke/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] <= 3
