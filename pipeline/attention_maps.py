"""Attention heatmaps of a trained checkpoint on one sentence: `python -m pipeline attention`.

The model runs once over the source and a target (the model's own greedy translation, or
--target) with `need_weights=True`, and every MultiHeadAttention keeps its weights
(B, h, Tq, Tk). Three kinds of map come out, per layer:

  encoder_self   source token attends to source tokens
  decoder_self   target prefix attends to earlier target tokens (the causal mask greys out
                 the upper triangle: those keys are never seen)
  cross          decoder position attends to the encoder output, one row per generated
                 token (the query sits at the position *before* the token it predicts)

Each (kind, layer) gives `<kind>_layer<L>_heads.png` (one panel per head) and
`<kind>_layer<L>_mean.png` (head-averaged). Hangul is drawn with NanumGothic from the
koreanize-matplotlib package, with DejaVu Sans as the per-glyph fallback (for the "▁"
word-boundary mark, which NanumGothic lacks).

`AttentionImageCallback` logs the head-averaged cross-attention of a fixed sentence to
W&B after every validation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from pipeline.errors import UserError
from pipeline.tokenizer import BOS, EOS, PAD, decode, encode

KINDS = ("encoder_self", "decoder_self", "cross")
HANGUL_FAMILY = "NanumGothic"
FALLBACK_FAMILY = "DejaVu Sans"  # ships with matplotlib; has "▁" and the minus sign


# -- fonts ---------------------------------------------------------------------------------
def hangul_font_path() -> Path:
    """NanumGothic.ttf as shipped by koreanize-matplotlib, found without importing that
    package (its import restyles matplotlib globally and needs distutils, gone in 3.12)."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("koreanize-matplotlib is not installed (it provides the Hangul font): "
                        "pip install koreanize-matplotlib")
    path = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "NanumGothic.ttf"
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall koreanize-matplotlib")
    return path


def font_families() -> list[str]:
    """Register NanumGothic with matplotlib once; return the family list to plot with."""
    from matplotlib import font_manager

    path = str(hangul_font_path())
    if not any(f.fname == path for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(path)
    return [HANGUL_FAMILY, FALLBACK_FAMILY]


@contextmanager
def plot_style():
    """matplotlib settings for every figure here, restored on exit (no global side effects)."""
    import matplotlib

    with matplotlib.rc_context({"font.family": font_families(), "axes.unicode_minus": False}):
        yield


# -- the weights ---------------------------------------------------------------------------
@dataclass
class AttentionMaps:
    """Attention weights of one sentence pair, per layer, each (heads, queries, keys)."""

    source: str
    target: str  # the text the decoder was fed (greedy translation or --target)
    src_tokens: list[str]  # encoder positions: subwords + </s>
    tgt_in_tokens: list[str]  # decoder positions: <s> + subwords
    tgt_out_tokens: list[str]  # what each decoder position predicts: subwords + </s>
    encoder_self: list[Tensor] = field(default_factory=list)  # (h, S, S)
    decoder_self: list[Tensor] = field(default_factory=list)  # (h, T, T)
    cross: list[Tensor] = field(default_factory=list)  # (h, T, S)

    def maps(self, kind: str) -> list[Tensor]:
        return getattr(self, kind)

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """(query labels, key labels) for the rows and columns of a map."""
        return {"encoder_self": (self.src_tokens, self.src_tokens),
                "decoder_self": (self.tgt_in_tokens, self.tgt_in_tokens),
                "cross": (self.tgt_out_tokens, self.src_tokens)}[kind]


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.id_to_token(i) or f"<{i}>" for i in ids]


@torch.no_grad()
def compute_attention(module, text: str, target: str | None = None, max_src_tokens: int | None = None) -> AttentionMaps:
    """Run `module.model` on `text` and `target` (default: its own greedy translation) and
    collect the attention weights of every layer (batch of one, so no padding)."""
    model, tokenizer = module.model, module.tokenizer
    if not text.strip():
        raise UserError("--text is empty: pass the sentence to look at, e.g. --text \"Ein Hund rennt.\"")
    limit = max_src_tokens or min(256, module.config.max_positions // 2)  # as Translator truncates
    ids = encode(tokenizer, [text])[0][: limit - 1]
    device = next(model.parameters()).device
    src = torch.tensor([ids + [EOS]], device=device)
    was_training = model.training
    model.eval()
    try:
        if target is None:
            hyp = module.generate(src)[0].tolist()
            hyp = hyp[: hyp.index(EOS)] if EOS in hyp else hyp
            target = decode(tokenizer, [hyp])[0]
        else:
            hyp = encode(tokenizer, [target])[0][: module.config.max_positions - 2]
        hyp = [t for t in hyp if t != PAD]
        tgt_in = torch.tensor([[BOS] + hyp], device=device)
        memory, src_mask = model.encode(src, need_weights=True)
        encoder_self = [layer.self_attn.weights[0].float().cpu() for layer in model.encoder_layers]
        model.decode(tgt_in, memory, src_mask, need_weights=True)
        decoder_self = [layer.self_attn.weights[0].float().cpu() for layer in model.decoder_layers]
        cross = [layer.cross_attn.weights[0].float().cpu() for layer in model.decoder_layers]
    finally:
        for layer in [*model.encoder_layers, *model.decoder_layers]:
            for attn in (getattr(layer, "self_attn", None), getattr(layer, "cross_attn", None)):
                if attn is not None:
                    attn.weights = None  # do not keep tensors alive in the module
        model.train(was_training)
    return AttentionMaps(source=text, target=target, src_tokens=_tokens(tokenizer, ids + [EOS]),
                         tgt_in_tokens=_tokens(tokenizer, [BOS] + hyp), tgt_out_tokens=_tokens(tokenizer, hyp + [EOS]),
                         encoder_self=encoder_self, decoder_self=decoder_self, cross=cross)


# -- drawing -------------------------------------------------------------------------------
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


TITLES = {"encoder_self": "encoder self-attention", "decoder_self": "decoder self-attention (causal)",
          "cross": "cross-attention (decoder queries, encoder keys)"}


def _panel_size(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Inches for one heatmap: about a quarter inch a token, within [3.5, 9]."""
    return (float(np.clip(1.6 + 0.25 * n_cols, 3.5, 9.0)), float(np.clip(1.4 + 0.25 * n_rows, 3.0, 9.0)))


def figure(maps: AttentionMaps, kind: str, layer: int, head: int | None = None, mean: bool = False):
    """One matplotlib Figure (not attached to pyplot): all heads of `layer` in a grid, one
    head, or (mean=True) the head average. Call inside `plot_style()`."""
    from matplotlib.figure import Figure

    weights = maps.maps(kind)[layer]  # (h, Tq, Tk)
    rows, cols = maps.axes(kind)
    panels = [(weights.mean(0), "mean over heads")] if mean else \
        [(weights[h], f"head {h}") for h in ([head] if head is not None else range(weights.size(0)))]
    n = len(panels)
    ncols = int(np.ceil(np.sqrt(n)))
    nrows = (n + ncols - 1) // ncols
    w, h = _panel_size(len(rows), len(cols))
    fig = Figure(figsize=(w * ncols + 1.0, h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    vmax = max(float(panel.max()) for panel, _ in panels) or 1.0  # one colour scale for all panels
    for ax, (panel, label) in zip(axes.flat, panels):
        image = _draw(ax, kind, panel, rows, cols, label, vmax)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(f"{TITLES[kind]}, layer {layer + 1}", fontsize=11)
    return fig


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


# -- the command ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m pipeline attention",
        description="Draw the attention weights of a checkpoint on one sentence as PNG heatmaps: encoder "
                    "self-attention, decoder (causal) self-attention and cross-attention, per layer with every "
                    "head and the head average.")
    p.add_argument("--ckpt", required=True, help="checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt")
    p.add_argument("--text", required=True, help="source sentence")
    p.add_argument("--target", default=None,
                   help="target sentence to feed the decoder (default: the model's own greedy translation)")
    p.add_argument("--out", required=True, help="output directory for the PNG files and tokens.json")
    p.add_argument("--dpi", type=int, default=100, help="PNG resolution")
    args = p.parse_args(argv)
    if args.target is not None and not args.target.strip():
        raise UserError("--target is empty: pass a target sentence or leave --target out to use the translation")
    if args.dpi < 10:
        raise UserError(f"--dpi must be >= 10, got {args.dpi}")
    from pipeline.translator import load_module

    module = load_module(args.ckpt)
    maps = compute_attention(module, args.text, args.target)
    written = write_heatmaps(maps, args.out, args.dpi)
    print(f"source: {' '.join(maps.src_tokens)}")
    print(f"target: {maps.target}" + ("" if args.target is not None else "  (greedy translation)"))
    print(f"wrote {len(written)} PNG files and tokens.json to {args.out}")


# -- training-time logging -----------------------------------------------------------------
class AttentionImageCallback(L.Callback):
    """After each validation (rank zero, not the sanity check), translate `text` greedily,
    draw the head-averaged cross-attention of every decoder layer and log the image to each
    WandbLogger under `key` (one panel per layer; the caption is the translation).

    Args:
        text: source sentence to watch; None takes a median-length source sentence of the
            first validation batch (so any dataset works without configuration).
        key: W&B media key.
        every_n_validations: log on every n-th validation only.
    """

    def __init__(self, text: str | None = None, key: str = "val/attention", every_n_validations: int = 1):
        if every_n_validations < 1:
            raise UserError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.text, self.key, self.every = text, key, every_n_validations
        self._count = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.text is None and batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking \
                and pl_module.tokenizer is not None and hasattr(batch, "src"):
            lengths = (batch.src != PAD).sum(1)
            row = batch.src[int(lengths.argsort()[len(lengths) // 2])].tolist()
            self.text = decode(pl_module.tokenizer, [row])[0] or None

    def on_validation_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._count += 1
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.text is None or pl_module.tokenizer is None or (self._count - 1) % self.every:
            return
        image, caption = self.render(pl_module)
        for logger in loggers:
            logger.log_image(key=self.key, images=[image], caption=[caption], step=trainer.global_step)

    def render(self, pl_module) -> tuple[np.ndarray, str]:
        """(H, W, 3) image of the head-averaged cross-attention per decoder layer, caption."""
        from matplotlib.figure import Figure

        maps = compute_attention(pl_module, self.text)
        rows, cols = maps.axes("cross")
        n = len(maps.cross)
        w, h = _panel_size(len(rows), len(cols))
        with plot_style():
            fig = Figure(figsize=(w * n + 1.0, h + 0.6), layout="constrained")
            axes = fig.subplots(1, n, squeeze=False)[0]
            means = [weights.mean(0) for weights in maps.cross]
            vmax = max(float(m.max()) for m in means) or 1.0
            for layer, ax in enumerate(axes):
                image = _draw(ax, "cross", means[layer], rows, cols, f"layer {layer + 1}", vmax)
            fig.colorbar(image, ax=list(axes), shrink=0.8)
            fig.suptitle("cross-attention, mean over heads", fontsize=11)
            array = figure_to_array(fig)
        return array, f"{maps.source} → {maps.target}"
