"""`python -m pipeline sweep`: Optuna trials of the smoke config, a leaderboard, a resumed study."""

import json

import pytest
import yaml

from helpers import ROOT, run_cli


@pytest.mark.slow
def test_two_trials_then_resume_adds_only_the_missing_one(tmp_path):
    sweep = yaml.safe_load((ROOT / "configs/sweeps/smoke.yaml").read_text())
    sweep["args"] = [*sweep["args"], "--data.train_limit", "200", "--data.val_limit", "10",
                     "--trainer.enable_progress_bar", "false"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    first = run_cli("sweep", "--sweep", path, "--root", tmp_path / "sweeps")
    board = json.loads((tmp_path / "sweeps/smoke/leaderboard.json").read_text())
    assert [row["state"] for row in board] == ["complete", "complete"]
    assert board[0]["val_bleu"] >= board[1]["val_bleu"]  # best first
    for row in board:
        assert set(row["params"]) == {"train.lr", "model.dropout"}
        assert 0.001 <= row["params"]["train.lr"] <= 0.01 and row["params"]["model.dropout"] in (0.0, 0.1)
        assert (tmp_path / "sweeps/smoke" / f"trial{row['trial']:03d}" / "checkpoints/best.ckpt").is_file()
    assert "trial   0" in first.stdout and "leaderboard.json" in first.stdout
    again = run_cli("sweep", "--sweep", path, "--root", tmp_path / "sweeps", "--trials", "3")
    assert again.stdout.count("sweep smoke: trial") == 1  # trials 0 and 1 are in study.db already
    board = json.loads((tmp_path / "sweeps/smoke/leaderboard.json").read_text())
    assert sorted(row["trial"] for row in board) == [0, 1, 2]


def test_bad_sweep_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\nbase: configs/smoke.yaml\nspace: {}\n")
    proc = run_cli("sweep", "--sweep", empty, check=False)
    assert proc.returncode == 2 and "empty space" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: configs/smoke.yaml\nspace: {train.lr: {low: 0.1}}\n")
    proc = run_cli("sweep", "--sweep", bad, check=False)
    assert proc.returncode == 2 and "space.train.lr needs" in proc.stderr
    for text, words in (("name: x\nbase: configs/nope.yaml\nspace: {train.lr: {low: 0.1, high: 0.2}}\n", "not found"),
                        ("name: x\nbase: configs/smoke.yaml\nspace: {train.lr: {low: 0.01, high: 0.001}}\n",
                         "low <= high")):
        bad.write_text(text)
        proc = run_cli("sweep", "--sweep", bad, check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_a_trial_with_a_bad_key_fails_and_is_not_left_running(tmp_path):
    import sqlite3

    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nbase: configs/smoke.yaml\ntrials: 1\nspace: {train.lrr: {low: 0.001, high: 0.002}}\n")
    proc = run_cli("sweep", "--sweep", typo, "--root", tmp_path / "sweeps", check=False)
    assert proc.returncode == 2 and "lrr" in proc.stderr and "trial000 stopped before training" in proc.stderr
    assert "did you mean --train.lr?" in proc.stderr and "Traceback" not in proc.stderr
    states = sqlite3.connect(tmp_path / "sweeps/typo/study.db").execute("select state from trials").fetchall()
    assert states == [("FAIL",)]


def test_a_trial_whose_process_died_is_marked_failed_and_run_again(tmp_path, monkeypatch):
    """A sweep killed mid-trial leaves that trial "running" in study.db; once its heartbeat is
    stale, the next start of the sweep marks it failed, and a failed trial does not count as
    done: a sweep of 2 trials with one complete runs one more."""
    import time
    from types import SimpleNamespace

    import optuna
    import torch

    from pipeline import sweep, training

    monkeypatch.setattr(sweep, "HEARTBEAT_S", 1)
    monkeypatch.setattr(sweep, "STALE_AFTER_S", 1)
    fits = []  # the trial's `fit`, stood in for: it validated at 12.5 BLEU
    monkeypatch.setattr(training, "lightning_cli", lambda args, extra_callbacks=None: fits.append(args) or SimpleNamespace(
        trainer=SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_score=torch.tensor(12.5)))))
    (tmp_path / "sweeps/dead").mkdir(parents=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'sweeps/dead/study.db'}", heartbeat_interval=1,
                                         grace_period=1)
    study = optuna.create_study(study_name="dead", storage=storage, direction="maximize")
    trial = study.ask()  # the trial a killed process was running: its last heartbeat, then silence
    storage.record_heartbeat(trial._trial_id)
    done = study.ask()
    study.tell(done, 30.0)
    time.sleep(2.5)
    sweep_file = tmp_path / "dead.yaml"
    sweep_file.write_text("name: dead\nbase: configs/smoke.yaml\ntrials: 2\n"
                          "space: {train.lr: {low: 0.001, high: 0.002}}\n", encoding="utf-8")
    board = sweep.run_sweep(str(sweep_file), root=str(tmp_path / "sweeps"))
    assert {row["trial"]: row["state"] for row in board} == {0: "fail", 1: "complete", 2: "complete"}
    assert len(fits) == 1 and "trial002" in fits[0]
    assert [row["val_bleu"] for row in board] == [30.0, 12.5, None]  # best first, the failed one last


def test_the_sampler_is_seeded_from_the_sweep_file(tmp_path):
    """A fresh study of the same sweep file proposes the same values in the same order; another
    seed proposes others."""
    from dataclasses import replace

    from pipeline.sweep import open_study, read_sweep, suggest

    config = read_sweep(ROOT / "configs/sweeps/smoke.yaml")
    assert config.seed == 0

    def proposals(seed: int, folder: str) -> list[dict]:
        (tmp_path / folder).mkdir()
        study = open_study(replace(config, seed=seed), tmp_path / folder)
        trials = [study.ask() for _ in range(4)]
        return [{key: suggest(t, key, spec) for key, spec in config.space.items()} for t in trials]

    first = proposals(0, "a")
    assert proposals(0, "b") == first
    assert proposals(1, "c") != first
    assert len({round(p["train.lr"], 12) for p in first}) == 4  # sampled, not one value repeated
