"""Attention weights of a trained model on one sentence pair (drawn by plotting.py).

The model runs once over the source and a target (the model's own greedy translation, or a
given one) with `need_weights=True`, and every MultiHeadAttention keeps its weights
(B, h, Tq, Tk). Three kinds of map come out, per layer:

  encoder_self   source token attends to source tokens
  decoder_self   target prefix attends to earlier target tokens (causal: the upper
                 triangle is never seen)
  cross          decoder position attends to the encoder output, one row per generated
                 token (the query sits at the position *before* the token it predicts)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from pipeline.decoding import DecodingConfig, generate
from pipeline.errors import UserError
from pipeline.tokenizer import BOS, EOS, MAX_SOURCE_TOKENS, PAD, decode, encode, encode_sources

KINDS = ("encoder_self", "decoder_self", "cross")


@dataclass
class AttentionMaps:
    """Attention weights of one sentence pair, per layer, each (heads, queries, keys)."""

    source: str
    target: str  # the text the decoder was fed (greedy translation or the given target)
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
def compute_attention(model, tokenizer, text: str, target: str | None = None,
                      decoding: DecodingConfig | None = None) -> AttentionMaps:
    """Run `model` (a Transformer) on `text` and `target` (default: its own greedy
    translation under `decoding`'s length limit) and collect the attention weights of every
    layer (a batch of one, so no padding)."""
    if not text.strip():
        raise UserError("--text is empty: pass the sentence to look at, e.g. --text \"Ein Hund rennt.\"")
    (src_ids,), _ = encode_sources(tokenizer, [text], min(MAX_SOURCE_TOKENS, model.cfg.max_positions))
    device = next(model.parameters()).device
    src = torch.tensor([src_ids], device=device)
    was_training = model.training
    model.eval()
    try:
        ends = True  # the last row is the step that predicts EOS
        if target is None:
            hyp = generate(model, src, decoding or DecodingConfig(), beam=1).tokens[0, 0].tolist()
            hyp = [t for t in hyp if t != PAD]
            ends = EOS in hyp  # cut at the length limit: no step predicted EOS, so there is no such row
            hyp = hyp[: hyp.index(EOS)] if ends else hyp
            target = decode(tokenizer, [hyp])[0]
        else:
            hyp = [t for t in encode(tokenizer, [target])[0][: model.cfg.max_positions - 2] if t != PAD]
        inputs, outputs = ([BOS] + hyp, hyp + [EOS]) if ends else ([BOS] + hyp[:-1], hyp)
        tgt_in = torch.tensor([inputs], device=device)
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
    return AttentionMaps(source=text, target=target, src_tokens=_tokens(tokenizer, src_ids),
                         tgt_in_tokens=_tokens(tokenizer, inputs), tgt_out_tokens=_tokens(tokenizer, outputs),
                         encoder_self=encoder_self, decoder_self=decoder_self, cross=cross)
