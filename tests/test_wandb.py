"""A tiny `fit` through the real command line with the W&B logger (offline): the run
directory holds the sample-translation table and the attention image of each validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(runs),
           "WANDB_CACHE_DIR": str(runs / "cache"), "WANDB_CONFIG_DIR": str(runs / "config"),
           "OMP_NUM_THREADS": "1"}  # a tiny model: one thread is as fast, and far faster on a busy CPU
    cmd = [sys.executable, "-m", "pipeline", "fit", "--config", "configs/smoke.yaml", "--run.root", str(runs),
           "--run.logger", "wandb", "--trainer.max_epochs", "1", "--data.train_limit", "300",
           "--data.val_limit", "20"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs_found = list((runs / "smoke" / "wandb").glob("offline-run-*"))
    assert len(runs_found) == 1, f"expected one offline run under {runs / 'smoke' / 'wandb'}: {runs_found}"
    return runs_found[0] / "files"


def test_sample_translation_table(wandb_run):
    tables = list((wandb_run / "media" / "table").rglob("*.table.json"))
    assert tables, "no W&B table was logged"
    table = json.loads(tables[0].read_text(encoding="utf-8"))
    assert table["columns"] == ["source", "reference", "hypothesis"]
    assert 0 < len(table["data"]) <= 8  # model.n_samples rows
    assert all(len(row) == 3 and row[0] and row[1] for row in table["data"])  # German source, English reference


def test_attention_image(wandb_run):
    """Needs AttentionImageCallback registered in pipeline/cli.py for W&B runs."""
    images = list((wandb_run / "media" / "images").rglob("*.png"))
    assert images, "no attention image in the W&B run (is AttentionImageCallback registered in cli.py?)"
    import matplotlib.image

    image = matplotlib.image.imread(images[0])
    assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05
    assert any("attention" in p.name for p in images)
