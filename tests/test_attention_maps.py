"""Attention capture and `python -m pipeline attention`: the weights it collects and the PNGs
it writes, on a tiny model overfitted in a few seconds on Korean-English pairs."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from helpers import SEED, missing_glyph_warnings
from pipeline.attention_maps import KINDS, compute_attention
from pipeline.cli import main as cli_main
from pipeline.tokenizer import encode
from pipeline.translator import Translator

HANGUL = re.compile("[\uac00-\ud7a3]")


def test_weights_are_distributions_with_causal_decoder(module):
    maps = compute_attention(module.model, module.tokenizer, SEED[0])
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
    maps = compute_attention(module.model, module.tokenizer, SEED[0], target="good day")
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


def test_a_translation_cut_at_the_length_limit_has_no_eos_row(module):
    # Greedy decoding stopped after 2 tokens (the learnt translation is longer) never predicted
    # EOS: the maps end at the last step computed, not with a "</s>" row nobody decoded.
    from pipeline.decoding import DecodingConfig

    full = compute_attention(module.model, module.tokenizer, SEED[0])
    cut = compute_attention(module.model, module.tokenizer, SEED[0], decoding=DecodingConfig(max_len_ratio=0.0,
                                                                                           max_len_extra=2))
    assert len(full.tgt_out_tokens) > 3 and cut.tgt_out_tokens == full.tgt_out_tokens[:2]
    assert cut.tgt_in_tokens == full.tgt_in_tokens[:2] and cut.cross[0].shape[1] == 2
    torch.testing.assert_close(cut.cross[0], full.cross[0][:, :2])
