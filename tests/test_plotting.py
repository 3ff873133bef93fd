"""Drawing attention maps: Hangul glyphs render, and the font is found or falls back cleanly."""

from __future__ import annotations

import re
import warnings
from pathlib import Path


from helpers import SEED, missing_glyph_warnings
from pipeline.attention_maps import compute_attention
from pipeline.plotting import figure, font_families, hangul_font_path, plot_style

HANGUL = re.compile("[\uac00-\ud7a3]")


def test_hangul_font_has_the_glyphs():
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager, rcParams

    path = hangul_font_path()
    cmap = TTFont(path).getBestCmap()
    hangul = set(HANGUL.findall(SEED[0]))
    assert hangul and all(ord(c) in cmap for c in hangul)
    with plot_style():
        assert rcParams["font.family"] == list(font_families())
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
    maps = compute_attention(module.model, module.tokenizer, SEED[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with plot_style():
            figure(maps, "cross", 0, mean=True).savefig(tmp_path / "cross.png")
    assert missing_glyph_warnings(caught) == []


def test_without_a_hangul_font_plots_still_render(module, tmp_path, monkeypatch, capsys):
    import matplotlib.image

    from pipeline import plotting

    plotting.hangul_font_path.cache_clear()
    plotting.font_families.cache_clear()
    monkeypatch.setattr(plotting, "HANGUL_FAMILIES", ())
    monkeypatch.setattr(plotting.importlib.util, "find_spec", lambda name: None)
    try:
        assert plotting.hangul_font_path() is None
        assert "no font with Hangul found" in capsys.readouterr().err
        assert plotting.font_families() == (plotting.FALLBACK_FAMILY,)
        maps = compute_attention(module.model, module.tokenizer, SEED[0])
        with plot_style():
            figure(maps, "cross", 0, mean=True).savefig(tmp_path / "latin.png", dpi=50)
        assert matplotlib.image.imread(tmp_path / "latin.png")[..., :3].std() > 0.05
    finally:
        plotting.hangul_font_path.cache_clear()
        plotting.font_families.cache_clear()
