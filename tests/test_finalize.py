"""After fit: checkpoint and decoding are chosen on validation only; test is read once."""

import json
import shutil

import datasets
import torch

from pipeline.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from pipeline.finalize import FinalConfig, finalize


def make_run(tmp_path, ckpt):
    """A run directory: best.ckpt is the trained seed model; three epoch checkpoints are it
    with noise added (more for older epochs), so averaging them is worth trying."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(ckpt, ckpt_dir / "best.ckpt")
    raw = read_checkpoint(ckpt)
    loaded = load_checkpoint(ckpt)
    torch.manual_seed(0)
    for epoch, noise in enumerate([0.3, 0.2, 0.1]):
        state = {k: v + noise * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in raw["state_dict"].items()}
        save_checkpoint(ckpt_dir / f"epoch{epoch:03d}.ckpt", state, raw["hyper_parameters"], loaded.tokenizer,
                        loaded.languages)
    return tmp_path / "run"


def pairs(rows):
    return datasets.Dataset.from_dict({"src": [r[0] for r in rows], "tgt": [r[1] for r in rows]})


def test_choice_is_made_on_validation_and_written_once(seed_run, tmp_path):
    ckpt, train_pairs = seed_run
    run = make_run(tmp_path, ckpt)
    validation = pairs(train_pairs)
    config = FinalConfig(beams=[1, 2], length_penalties=[0.6, 1.0])
    results = finalize(run, validation, pairs(train_pairs[:3]), config, log=lambda m: None, epochs=3)
    assert list(results["candidates"]) == ["best", "average of the last 2 epochs", "average of the last 3 epochs"]
    best_val = max(c["bleu"] for c in results["candidates"].values())
    assert results["candidates"][results["chosen_from"]]["bleu"] == best_val
    assert [(g["beam"], g["length_penalty"]) for g in results["grid"]] == [(1, 1.0), (2, 0.6), (2, 1.0)]
    assert results["validation"]["bleu"] == max(g["bleu"] for g in results["grid"])
    assert results["epochs"] == 3 and results["test"]["bleu"] > 0
    assert json.loads((run / "results.json").read_text()) == results
    final = load_checkpoint(results["checkpoint"])
    assert (final.decoding.beam, final.decoding.length_penalty) == (results["beam"], results["length_penalty"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt", "epoch000.ckpt", "epoch001.ckpt", "epoch002.ckpt", "final.ckpt"]
    # Whatever the test split says, the choice stays: test is scored after it.
    other = finalize(run, validation, pairs([(s, "something else entirely") for s, _ in train_pairs[:3]]), config,
                     log=lambda m: None)
    assert (other["chosen_from"], other["beam"], other["length_penalty"]) == \
        (results["chosen_from"], results["beam"], results["length_penalty"])
    assert other["test"]["bleu"] < results["test"]["bleu"]


def test_finalize_command_names_a_bad_run_config(tmp_path, capsys):
    import pytest

    from pipeline.cli import main as cli_main

    for text, words in (("", "no data: section"), ("final: {}\n", "no data: section"),
                        ("data: {path: x}\nfinal: {beams: [1], nope: 2}\n", "nope")):
        (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["finalize", "--run", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and err.count("\n") == 1


def test_final_config_rejects_values_that_would_fail_after_training():
    import pytest

    for kwargs in ({"beams": [0, 4]}, {"beams": []}, {"length_penalties": [-0.2]}, {"max_average": -1}):
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            FinalConfig(**kwargs)


def test_a_fit_stopped_before_its_first_validation_skips_the_final_step(tmp_path):
    """max_steps reached inside the first epoch: the run trained fine, so fit exits 0 and says
    why there is no results.json instead of failing on the missing best.ckpt."""
    from helpers import run_cli

    proc = run_cli("fit", "--config", "configs/smoke.yaml", "--data.train_limit", "600", "--trainer.max_steps", "2",
                   "--trainer.enable_progress_bar", "false", "--run.root", tmp_path, "--run.name", "short")
    assert "final: skipped, the run never validated" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "short/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "short/results.json").exists()
