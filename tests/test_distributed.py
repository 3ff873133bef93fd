"""DDP on 2 CPU processes (gloo): the tokenized cache built once (by rank 0) and mapped by both
ranks, identical weights on both ranks, each sentence on exactly one rank per epoch, and
validation BLEU equal to the single-process value."""

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

pytestmark = pytest.mark.slow

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
SMALL = ["--config", "configs/smoke.yaml", "--data.train_limit", "300", "--data.val_limit", "40",
         "--trainer.enable_progress_bar", "false"]


def probe_config(path, out_dir):
    path.write_text(f"trainer:\n  callbacks:\n    - class_path: tests.ddp_probe.RankProbe\n"
                    f"      init_args:\n        out_dir: {out_dir}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    probe = probe_config(root / "probe.yaml", root / "probe")
    proc = run_cli("fit", *SMALL, "--config", probe, *DDP, "--trainer.max_epochs", "2", "--run.root", root,
                   "--run.name", "ddp")
    (root / "fit.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return root


def test_cache_built_once_and_mapped_by_every_rank(ddp_run):
    log = (ddp_run / "fit.log").read_text(encoding="utf-8")
    # Every process that tokenizes says so (not only rank 0): rank 0 did, in prepare_data, once.
    builds = [line for line in log.splitlines() if ": tokenizing " in line]
    assert [line.split(":")[0] for line in builds] == ["train", "validation"], log
    assert all("(rank 0" in line for line in builds)
    cache = ddp_run / "ddp" / "data-cache"
    files = [json.loads((ddp_run / f"probe/cache-rank{r}.json").read_text()) for r in (0, 1)]
    assert files[0] == files[1] and files[0], "both ranks map the same cache files"
    assert all(Path(f).parent == cache for f in files[0])
    assert len(list(cache.glob("train-*.arrow"))) == len(files[0])


def test_ranks_hold_identical_weights(ddp_run):
    w0 = torch.load(ddp_run / "probe/weights-rank0.pt", weights_only=True)
    w1 = torch.load(ddp_run / "probe/weights-rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), name


def test_each_sentence_seen_by_exactly_one_rank_per_epoch(ddp_run):
    seen = [json.loads((ddp_run / f"probe/seen-rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0].keys() == seen[1].keys() == {"0", "1"}
    for epoch in ("0", "1"):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(set(a)) and len(b) == len(set(b))
        assert not set(a) & set(b)
        assert len(a) + len(b) >= 290  # all kept pairs of the 300 (a few are over max_len)
    assert seen[0]["0"] != seen[0]["1"]  # reshuffled between epochs


def test_two_process_validation_bleu_equals_one_process(ddp_run, tmp_path):
    ckpt = ddp_run / "ddp/checkpoints/last.ckpt"
    common = [*SMALL, "--run.root", ddp_run, "--run.name", "ddp", "--ckpt_path", ckpt]
    one = probe_config(tmp_path / "one.yaml", tmp_path / "one")
    two = probe_config(tmp_path / "two.yaml", tmp_path / "two")
    run_cli("validate", *common, "--config", one)
    run_cli("validate", *common, "--config", two, *DDP)
    single = json.loads((tmp_path / "one/val-rank0.json").read_text())
    for rank in (0, 1):
        double = json.loads((tmp_path / f"two/val-rank{rank}.json").read_text())
        assert double["val/bleu"] == pytest.approx(single["val/bleu"], abs=1e-9)
        assert double["val/chrf"] == pytest.approx(single["val/chrf"], abs=1e-9)
        assert double["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)
