"""`python -m pipeline attention`: the weights it collects, the PNGs it writes, Hangul glyphs,
and the W&B callback, on a tiny model overfitted in a few seconds on Korean-English pairs."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import SEED, tiny_checkpoint
from pipeline.attention_maps import (KINDS, AttentionImageCallback, compute_attention, figure, font_families,
                                     hangul_font_path, plot_style)
from pipeline.batching import collate
from pipeline.cli import main as cli_main
from pipeline.tokenizer import encode
from pipeline.translator import Translator, load_module

HANGUL = re.compile("[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("attention") / "tiny.ckpt"
    tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def module(ckpt):
    return load_module(str(ckpt))


def missing_glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_weights_are_distributions_with_causal_decoder(module):
    maps = compute_attention(module, SEED[0])
    assert maps.target == Translator(module).translate([SEED[0]])[0]  # the model's own greedy output
    assert maps.target == SEED[1]  # the overfitted model has learnt the pair
    S, T = len(maps.src_tokens), len(maps.tgt_in_tokens)
    assert maps.src_tokens[-1] == "</s>" and maps.tgt_in_tokens[0] == "<s>" and maps.tgt_out_tokens[-1] == "</s>"
    assert maps.tgt_out_tokens[:-1] == maps.tgt_in_tokens[1:]
    assert any(HANGUL.search(t) for t in maps.src_tokens)
    assert len(maps.encoder_self) == len(maps.decoder_self) == len(maps.cross) == 2
    for enc, dec, cross in zip(maps.encoder_self, maps.decoder_self, maps.cross):
        assert enc.shape == (4, S, S) and dec.shape == (4, T, T) and cross.shape == (4, T, S)
        for w in (enc, dec, cross):
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        assert torch.all(dec.triu(1) == 0)  # no position sees a later one
        seen = torch.ones(T, T, dtype=torch.bool).tril()
        assert torch.all(dec[:, seen] > 0)  # ...and every earlier one gets some weight
    assert not torch.allclose(maps.cross[0][0], maps.cross[0][1])  # heads differ
    for layer in module.model.decoder_layers:  # nothing left behind in the modules
        assert layer.self_attn.weights is None and layer.cross_attn.weights is None


def test_forced_target(module):
    maps = compute_attention(module, SEED[0], target="good day")
    assert maps.target == "good day"
    ids = encode(module.tokenizer, ["good day"])[0]
    assert maps.tgt_out_tokens == [module.tokenizer.id_to_token(i) for i in ids] + ["</s>"]
    assert maps.cross[0].shape[1] == len(ids) + 1


def test_cli_writes_every_map(ckpt, tmp_path):
    out = tmp_path / "maps"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(["attention", "--ckpt", str(ckpt), "--text", SEED[0], "--out", str(out)])
    assert missing_glyph_warnings(caught) == []
    expected = {f"{kind}_layer{layer}_{view}.png" for kind in KINDS for layer in (1, 2) for view in ("heads", "mean")}
    assert {p.name for p in out.glob("*.png")} == expected
    import matplotlib.image

    for name in expected:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # a drawn heatmap, not a blank canvas
    info = json.loads((out / "tokens.json").read_text(encoding="utf-8"))
    assert info["target"] == SEED[1] and any(HANGUL.search(t) for t in info["src_tokens"])


@pytest.mark.parametrize("argv, message", [
    (["--text", "   "], "--text is empty"),
    (["--text", "hi", "--target", " "], "--target is empty"),
])
def test_cli_rejects_bad_input(ckpt, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["attention", "--ckpt", str(ckpt), "--out", str(tmp_path / "x"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["attention", "--ckpt", str(tmp_path / "nope.ckpt"), "--text", "hi", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_hangul_font_has_the_glyphs():
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager, rcParams

    path = hangul_font_path()
    cmap = TTFont(path).getBestCmap()
    hangul = set(HANGUL.findall(SEED[0]))
    assert hangul and all(ord(c) in cmap for c in hangul)
    with plot_style():
        assert rcParams["font.family"] == font_families()
        found = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]),
                                      fallback_to_default=False)
    assert Path(found).resolve() == path.resolve()


def test_hangul_renders_without_missing_glyphs(module, tmp_path):
    from matplotlib.figure import Figure

    def render(style):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with style:
                fig = Figure()
                fig.subplots().set_title(SEED[0] + " ▁good")
                fig.savefig(tmp_path / "title.png")
        return missing_glyph_warnings(caught)

    import matplotlib

    # The check can fail: matplotlib's default font has no Hangul and says so.
    assert any("HANGUL" in m for m in render(matplotlib.rc_context({"font.family": ["DejaVu Sans"]})))
    assert render(plot_style()) == []
    maps = compute_attention(module, SEED[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with plot_style():
            figure(maps, "cross", 0, mean=True).savefig(tmp_path / "cross.png")
    assert missing_glyph_warnings(caught) == []


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
