"""Attention heatmaps as matplotlib figures and PNG files, with Hangul that renders.

Fonts: Hangul needs a font that has it. `hangul_font_path` looks for one among the system
fonts (Debian's fonts-nanum, Noto CJK, ...), then for the NanumGothic file that the
koreanize-matplotlib package ships (read as a file, never imported: its import restyles
matplotlib globally and needs distutils, gone in Python 3.12). With neither, plots still
render (Latin text in DejaVu Sans) and one warning says how to get Korean labels.
DejaVu Sans is the per-glyph fallback either way (for the "▁" word-boundary mark).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
from torch import Tensor

from pipeline.attention_maps import KINDS, AttentionMaps

FALLBACK_FAMILY = "DejaVu Sans"  # ships with matplotlib; has "▁" and the minus sign
# System font families with Hangul, preferred first.
HANGUL_FAMILIES = ("NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Noto Sans CJK JP", "UnDotum",
                   "Baekmuk Gulim", "Malgun Gothic", "AppleGothic")


# -- fonts ---------------------------------------------------------------------------------
@cache
def hangul_font_path() -> Path | None:
    """A font file with Hangul: a system font, else koreanize-matplotlib's NanumGothic.ttf,
    else None (with one warning on stderr)."""
    from matplotlib import font_manager

    by_family = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    for family in HANGUL_FAMILIES:
        if family in by_family:
            return Path(by_family[family])
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "NanumGothic.ttf"
        if path.is_file():
            return path
    print("warning: no font with Hangul found (apt-get install fonts-nanum, or pip install "
          "koreanize-matplotlib): Korean labels will show as empty boxes", file=sys.stderr)
    return None


@cache
def font_families() -> tuple[str, ...]:
    """Register the Hangul font with matplotlib once; the family list to plot with."""
    from matplotlib import font_manager

    path = hangul_font_path()
    if path is None:
        return (FALLBACK_FAMILY,)
    if not any(f.fname == str(path) for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(path))
    family = font_manager.FontProperties(fname=str(path)).get_name()
    return (family, FALLBACK_FAMILY)


@contextmanager
def plot_style():
    """matplotlib settings for every figure here, restored on exit (no global side effects)."""
    import matplotlib

    with matplotlib.rc_context({"font.family": list(font_families()), "axes.unicode_minus": False}):
        yield


# -- drawing -------------------------------------------------------------------------------
TITLES = {"encoder_self": "encoder self-attention", "decoder_self": "decoder self-attention (causal)",
          "cross": "cross-attention (decoder queries, encoder keys)"}


def _masked(kind: str, weights: Tensor) -> np.ma.MaskedArray:
    """Weights as an array with the causally masked cells (decoder self-attention) hidden."""
    array = weights.numpy()
    if kind == "decoder_self":
        hidden = ~np.tril(np.ones(array.shape[-2:], dtype=bool))
        return np.ma.masked_array(array, np.broadcast_to(hidden, array.shape))
    return np.ma.masked_array(array)


def _draw(ax, kind: str, weights: Tensor, rows: list[str], cols: list[str], title: str, vmax: float = 1.0):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")  # grey = causally masked
    image = ax.imshow(_masked(kind, weights), cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    size = 9 if max(len(rows), len(cols)) <= 30 else 6
    # Upright labels when the tokens are short (Hangul syllables read badly turned on their side).
    short = max((len(c) for c in cols if not (c.startswith("<") and c.endswith(">"))), default=0) <= 3
    ax.set_xticks(range(len(cols)), cols, fontsize=size, rotation=0 if short else 60,
                  ha="center" if short else "right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows, fontsize=size)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel({"cross": "source (encoder output)", "encoder_self": "source key",
                   "decoder_self": "target key (earlier position)"}[kind], fontsize=8)
    ax.set_ylabel({"cross": "predicted target token", "encoder_self": "source query",
                   "decoder_self": "target query"}[kind], fontsize=8)
    return image


def _panel_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches for one heatmap: about a quarter inch a token, within [3.5, 9]."""
    return (float(np.clip(1.6 + 0.25 * n_cols, 3.5, 9.0)), float(np.clip(1.4 + 0.25 * n_rows, 3.0, 9.0)))


def panels_figure(maps: AttentionMaps, kind: str, panels: list[tuple[Tensor, str]], title: str,
                  ncols: int | None = None):
    """A matplotlib Figure (not attached to pyplot) of (weights (Tq, Tk), label) panels on one
    colour scale, in a grid `ncols` wide (default: square-ish). Call inside `plot_style()`."""
    from matplotlib.figure import Figure

    rows, cols = maps.axes(kind)
    n = len(panels)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = (n + ncols - 1) // ncols
    w, h = _panel_size(len(rows), len(cols))
    fig = Figure(figsize=(w * ncols + 1.0, h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    vmax = max(float(panel.max()) for panel, _ in panels) or 1.0
    for ax, (panel, label) in zip(axes.flat, panels):
        image = _draw(ax, kind, panel, rows, cols, label, vmax)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title, fontsize=11)
    return fig


def figure(maps: AttentionMaps, kind: str, layer: int, head: int | None = None, mean: bool = False):
    """All heads of `layer` in a grid, one head, or (mean=True) the head average."""
    weights = maps.maps(kind)[layer]  # (h, Tq, Tk)
    panels = [(weights.mean(0), "mean over heads")] if mean else \
        [(weights[h], f"head {h}") for h in ([head] if head is not None else range(weights.size(0)))]
    return panels_figure(maps, kind, panels, f"{TITLES[kind]}, layer {layer + 1}")


def layers_figure(maps: AttentionMaps, kind: str = "cross"):
    """The head-averaged map of every layer side by side (what W&B shows at each validation)."""
    panels = [(weights.mean(0), f"layer {i + 1}") for i, weights in enumerate(maps.maps(kind))]
    return panels_figure(maps, kind, panels, f"{TITLES[kind]}, mean over heads", ncols=len(panels))


def figure_to_array(fig) -> np.ndarray:
    """Render a Figure with Agg to an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_heatmaps(maps: AttentionMaps, out: str | Path, dpi: int = 100) -> list[Path]:
    """Write every (kind, layer) heads grid and head-averaged map as PNG, plus tokens.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with plot_style():
        for kind in KINDS:
            for layer in range(len(maps.maps(kind))):
                for suffix, mean in (("heads", False), ("mean", True)):
                    path = out / f"{kind}_layer{layer + 1}_{suffix}.png"
                    figure(maps, kind, layer, mean=mean).savefig(path, dpi=dpi)
                    written.append(path)
    info = {"source": maps.source, "target": maps.target, "src_tokens": maps.src_tokens,
            "tgt_in_tokens": maps.tgt_in_tokens, "tgt_out_tokens": maps.tgt_out_tokens,
            "files": [p.name for p in written]}
    (out / "tokens.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written
