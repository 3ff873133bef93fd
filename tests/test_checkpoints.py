"""The checkpoint schema: atomic writes, one reader with one set of errors, the loader, the
shim for checkpoints written before the schema was versioned, and averaging."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from helpers import SEED
from pipeline.checkpoints import (FORMAT, average_checkpoints, epoch_checkpoints, load_checkpoint, read_checkpoint,
                                  save_atomically, save_checkpoint, upgrade_hparams)
from pipeline.decoding import DecodingConfig
from pipeline.errors import UserError
from pipeline.model import TransformerConfig
from pipeline.module import TrainConfig
from pipeline.translator import Translator


def test_written_schema_loads_back(ckpt):
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert raw["format"] == FORMAT and raw["languages"] == ["ko", "en"]
    assert set(raw["hyper_parameters"]) == {"model", "train", "decoding"}
    loaded = load_checkpoint(ckpt)
    assert loaded.config == TransformerConfig(**raw["hyper_parameters"]["model"])
    assert loaded.languages == ("ko", "en") and loaded.decoding == DecodingConfig()
    assert not loaded.model.training
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, raw["state_dict"]["model." + name]), name


def test_legacy_flat_hyperparameters_still_load(ckpt, tmp_path):
    """Checkpoints written before `format` existed hold the old flat TranslationModule arguments."""
    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    hp = raw["hyper_parameters"]
    flat = {**hp["model"], **hp["train"], "val_beam": 3, "length_penalty": 0.6, "max_len_ratio": 1.5,
            "max_len_extra": 10}
    legacy = {k: v for k, v in raw.items() if k != "format"} | {"hyper_parameters": flat}
    torch.save(legacy, tmp_path / "legacy.ckpt")
    assert upgrade_hparams(flat) == {"model": hp["model"], "train": hp["train"],
                                     "decoding": {"beam": 3, "length_penalty": 0.6, "max_len_ratio": 1.5,
                                                  "max_len_extra": 10}}
    old = load_checkpoint(tmp_path / "legacy.ckpt")
    assert old.decoding == DecodingConfig(beam=3, length_penalty=0.6)
    new = Translator.from_checkpoint(ckpt, beam=3, length_penalty=0.6, device="cpu")
    assert Translator(old).translate([SEED[0]]) == new.translate([SEED[0]])


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    (b"\x80\x02garbage", "not a readable checkpoint (truncated or corrupt"),
    ({"weights": 1}, "not a checkpoint of this project"),
])
def test_bad_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        read_checkpoint(path)


def test_truncated_checkpoint_is_detected(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.ckpt")


def test_atomic_save_keeps_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomically({"step": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # stands in for a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


def test_average_of_checkpoints_is_elementwise_mean(ckpt, tmp_path):
    loaded = load_checkpoint(ckpt)
    hparams = {"model": asdict(loaded.config), "train": asdict(TrainConfig()), "decoding": asdict(loaded.decoding)}
    base = {"model." + k: v for k, v in loaded.model.state_dict().items()}
    paths = []
    for i, scale in enumerate([1.0, 2.0, 6.0]):
        paths.append(save_checkpoint(tmp_path / f"epoch{i:03d}.ckpt", {k: v * scale for k, v in base.items()},
                                     hparams, loaded.tokenizer, loaded.languages))
    average_checkpoints(paths, tmp_path / "avg.ckpt")
    avg = read_checkpoint(tmp_path / "avg.ckpt")
    for k, v in base.items():
        torch.testing.assert_close(avg["state_dict"][k], v * 3.0)
    assert "optimizer_states" not in avg and avg["averaged_from"] == [str(p) for p in paths]
    import lightning  # read from the package metadata without importing it, the same string

    assert avg["pytorch-lightning_version"] == lightning.__version__
    assert load_checkpoint(tmp_path / "avg.ckpt").languages == ("ko", "en")
    other = hparams | {"model": asdict(loaded.config) | {"d_ff": 32}}
    save_checkpoint(tmp_path / "other.ckpt", base, other, loaded.tokenizer, loaded.languages)
    with pytest.raises(UserError, match="different model config"):
        average_checkpoints([paths[0], tmp_path / "other.ckpt"], tmp_path / "bad.ckpt")


def test_atomic_save_leaves_no_temporary_file_when_writing_fails(tmp_path, monkeypatch):
    def crash(obj, f):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_atomically({"step": 2}, tmp_path / "a.ckpt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(UserError, match="is a directory"):
        save_atomically({"step": 2}, tmp_path)


def test_average_refuses_to_replace_a_checkpoint_unasked(ckpt, tmp_path):
    # Written over last.ckpt, an average (weights only) would leave the run unable to resume;
    # written over one of its own inputs, it would lose an epoch.
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    for name in ("epoch000.ckpt", "epoch001.ckpt", "last.ckpt"):
        (run / name).write_bytes(Path(ckpt).read_bytes())
    before = (run / "last.ckpt").read_bytes()
    with pytest.raises(UserError, match="exists.*--overwrite"):
        average_checkpoints([run / "epoch000.ckpt", run / "epoch001.ckpt"], run / "last.ckpt")
    assert (run / "last.ckpt").read_bytes() == before
    with pytest.raises(UserError, match="one of the checkpoints being averaged"):
        average_checkpoints([run / "epoch000.ckpt", run / "epoch001.ckpt"], run / "epoch001.ckpt", overwrite=True)
    average_checkpoints([run / "epoch000.ckpt", run / "epoch001.ckpt"], run / "avg.ckpt")
    average_checkpoints([run / "epoch000.ckpt", run / "epoch001.ckpt"], run / "avg.ckpt", overwrite=True)
    with pytest.raises(UserError, match="--last must be >= 1"):
        epoch_checkpoints(run.parent, 0)
    assert epoch_checkpoints(run.parent, 1) == [run / "epoch001.ckpt"]


def test_average_command_takes_checkpoints_as_the_shell_lists_them(ckpt, tmp_path, capsys):
    from pipeline.cli import main as cli_main

    paths = [tmp_path / "a.ckpt", tmp_path / "b.ckpt"]
    for p in paths:
        p.write_bytes(Path(ckpt).read_bytes())
    cli_main(["average", "--ckpts", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "avg.ckpt")])
    assert read_checkpoint(tmp_path / "avg.ckpt")["averaged_from"] == [str(p) for p in paths]
    cli_main(["average", f"--ckpts={paths[0]}", "--out", str(tmp_path / "one.ckpt")])
    assert read_checkpoint(tmp_path / "one.ckpt")["averaged_from"] == [str(paths[0])]
    for argv in (["--ckpts", "--out", str(tmp_path / "x.ckpt")], ["--ckpts", "[]", "--out", str(tmp_path / "x.ckpt")],
                 ["--ckpts", str(paths[0]), "--out", str(tmp_path / "avg.ckpt")]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["average", *argv])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("change, message", [
    ({"hyper_parameters": None}, "damaged (hyper_parameters"),
    ({"state_dict": [1, 2]}, "damaged (state_dict"),
    ({"tokenizer": "not json"}, "tokenizer that cannot be read"),
    ({"format": "pipeline-nmt/3"}, "checkpoint format 'pipeline-nmt/3'"),
])
def test_damaged_fields_get_one_clear_error(ckpt, tmp_path, change, message):
    damaged = torch.load(ckpt, map_location="cpu", weights_only=False) | change
    torch.save(damaged, tmp_path / "damaged.ckpt")
    with pytest.raises(UserError, match=re.escape(message)):
        load_checkpoint(tmp_path / "damaged.ckpt")
