"""The checkpoint schema: atomic writes, one reader with one set of errors, the loader, the
shim for checkpoints written before the schema was versioned, and averaging."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from helpers import SEED
from pipeline.checkpoints import (FORMAT, average_checkpoints, load_checkpoint, read_checkpoint, save_atomically,
                                  save_checkpoint, upgrade_hparams)
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
