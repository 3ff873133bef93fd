"""The Transformer encoder-decoder (Vaswani et al., 2017), written out layer by layer.

Reads top to bottom: config -> embeddings and positions -> feed-forward -> encoder layer ->
decoder layer -> the model with `encode()` / `decode()`. Pre-norm is the default (stabler
on small data); `pre_norm=False` gives the paper's post-norm, which is what Marian uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from pipeline.attention import KVCache, MultiHeadAttention, Packing, causal_mask, padding_mask
from pipeline.dropout import Dropout
from pipeline.tokenizer import PAD


@dataclass
class TransformerConfig:
    """Everything that fixes the architecture: the `model:` section of a config, saved in
    every checkpoint and read back into this class by the one loader (checkpoints.py).

    Args:
        vocab_size: joint source/target BPE vocabulary (linked to data.vocab_size by `fit`).
        d_model: width of the residual stream.
        n_heads: attention heads; d_model must divide by it.
        encoder_layers: encoder depth.
        decoder_layers: decoder depth.
        d_ff: inner width of the position-wise feed-forward network.
        dropout: dropout on embeddings and every residual branch.
        attention_dropout: dropout on attention weights.
        activation_dropout: dropout inside the feed-forward network.
        pre_norm: LayerNorm before each sub-layer (False: after it, as in the paper and Marian).
        tie_embeddings: share source, target and output embeddings.
        max_positions: longest sequence the positional table covers.
        fused_attention: use F.scaled_dot_product_attention where the weights are not needed.
    """

    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_norm: bool = True
    tie_embeddings: bool = True
    max_positions: int = 1024
    fused_attention: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_heads={self.n_heads}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(max_positions: int, d_model: int) -> Tensor:
    """(max_positions, d_model) table: sin(pos / 10000^(2i/d)) in the first half of the
    features and cos(...) of the same frequencies in the second half (the tensor2tensor and
    Marian layout of the paper's interleaved formula, so weights export to Marian as-is)."""
    half = d_model // 2
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) * 2 / d_model)
    angles = position * inv_freq  # (P, d/2)
    table = torch.zeros(max_positions, d_model)
    table[:, :half] = torch.sin(angles)
    table[:, half: 2 * half] = torch.cos(angles)
    return table


class Embeddings(nn.Module):
    """Token embedding scaled by √d_model plus the fixed sinusoidal position signal."""

    def __init__(self, embedding: nn.Embedding, max_positions: int, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.scale = math.sqrt(embedding.embedding_dim)
        self.register_buffer("positions", sinusoidal_positions(max_positions, embedding.embedding_dim),
                             persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """(B, T) ids, first at position `offset` -> (B, T, d_model)"""
        T = ids.size(1)
        if offset + T > self.positions.size(0):
            raise ValueError(f"sequence of {offset + T} tokens exceeds model.max_positions={self.positions.size(0)}")
        return self.dropout(self.embedding(ids) * self.scale + self.positions[offset: offset + T])


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(d, d_ff) -> ReLU -> dropout -> Linear(d_ff, d)."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


class Residual(nn.Module):
    """x + dropout(sublayer(norm(x))) in pre-norm, norm(x + dropout(sublayer(x))) in post-norm."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(d_model), Dropout(dropout), pre_norm

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention over the source, then the feed-forward network."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cfg.fused_attention)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.res_attn = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, src_mask: Tensor, need_weights: bool = False, packing: Packing | None = None) -> Tensor:
        """x: (B, S, d_model), src_mask: (B, 1, 1, S) -> (B, S, d_model); with `packing`, x and
        the result are the (N, d_model) real rows (see attention.Packing)."""
        x = self.res_attn(x, lambda h: self.self_attn(h, mask=src_mask, need_weights=need_weights, packing=packing))
        return self.res_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, feed-forward."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        attn = lambda: MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout, cfg.fused_attention)  # noqa: E731
        self.self_attn, self.cross_attn = attn(), attn()
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation_dropout)
        self.res_self = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res_cross = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, y: Tensor, memory: Tensor, tgt_mask: Tensor | None, src_mask: Tensor,
                cache: tuple[KVCache, KVCache] | None = None, need_weights: bool = False,
                causal: bool = False) -> Tensor:
        """y: (B, T, d_model), memory: (B|B/k, S, d_model), tgt_mask: (1, 1, T, T_total) or None,
        src_mask: (B|B/k, 1, 1, S); causal: the self-attention is over the whole prefix;
        cache: (self-attention, cross-attention) -> (B, T, d_model)"""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        y = self.res_self(y, lambda h: self.self_attn(h, mask=tgt_mask, cache=self_cache, need_weights=need_weights,
                                                      causal=causal))
        y = self.res_cross(y, lambda h: self.cross_attn(h, memory, src_mask, cache=cross_cache, static_kv=True,
                                                        need_weights=need_weights))
        return self.res_ffn(y, self.ffn)


class DecoderCache(list):
    """One decoding run's state: a (self-attention, cross-attention) KVCache pair per decoder
    layer, and, when asked for, one logits buffer that every step writes into. A fresh
    (rows, vocab) tensor per step (8 MB at beam 4 × 64 sentences) goes back to the operating
    system when freed and is page-faulted in again on the next step: about 1 ms a step on CPU,
    10% of a beam-4 decode. With `reuse_logits` the logits of a step are only valid until the
    next step decodes with this cache (generate() reads them before that)."""

    def __init__(self, layers: list[tuple[KVCache, KVCache]], reuse_logits: bool = False):
        super().__init__(layers)
        self.reuse_logits = reuse_logits
        self._logits: Tensor | None = None

    def logits_out(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """Uninitialised storage of `shape` (dtype and device of `like`) for this step's logits,
        or None without reuse_logits."""
        if not self.reuse_logits:
            return None
        n = math.prod(shape)
        buf = self._logits
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._logits = like.new_empty(n)
        return buf[:n].view(shape)


class Transformer(nn.Module):
    """Encoder-decoder Transformer with an LM head over the joint vocabulary."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        src_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        tgt_embedding = src_embedding if cfg.tie_embeddings else nn.Embedding(cfg.vocab_size, cfg.d_model,
                                                                              padding_idx=PAD)
        self.src_embed = Embeddings(src_embedding, cfg.max_positions, cfg.dropout)
        self.tgt_embed = Embeddings(tgt_embedding, cfg.max_positions, cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        # Pre-norm leaves the residual stream un-normalised, so each stack ends with a norm.
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = tgt_embedding.weight
        # Greedy decoding's pick of each row's best token from the final states, where set
        # (translator.inference_model sets an ArgmaxHead on CPUs with bf16 matrix instructions,
        # where it beats the LM head's fp32 product; the same tokens). None: the logits' max.
        self.argmax_head = None

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        for embed in (self.src_embed.embedding, self.tgt_embed.embedding):
            nn.init.normal_(embed.weight, std=self.cfg.d_model ** -0.5)
            nn.init.zeros_(embed.weight[PAD])

    def encode(self, src: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor]:
        """(B, S) source ids -> memory (B, S, d_model) and its padding mask (B, 1, 1, S).

        Where a tenth or more of the batch is padding, the position-wise layers run on the real
        tokens only (attention.Packing; memory is then zero at padding, which every reader
        masks): decoding batches of unsorted sentences are often half padding, while training
        batches from token buckets are not (below a tenth, packing would cost more than it saves).
        Never under torch.compile (the packed row count depends on the data).
        """
        src_mask = padding_mask(src, PAD)
        x = self.src_embed(src)
        real = src != PAD
        packing = Packing.if_worthwhile(real)
        if packing is not None:
            x = packing.pack(x)
        for layer in self.encoder_layers:
            x = layer(x, src_mask, need_weights, packing)
        x = self.encoder_norm(x)
        return (x if packing is None else packing.unpack(x)), src_mask

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor,
               cache: list[tuple[KVCache, KVCache]] | None = None, need_weights: bool = False,
               project: bool = True) -> Tensor:
        """(B, T) target ids -> logits (B, T, vocab), or the final states (B, T, d_model) that
        the LM head projects when project=False.

        Without a cache, tgt is the whole prefix and causal attention hides the future. Targets
        are right-padded, so causality alone keeps every real position off the padding (a
        padded position's output is never used), and no mask is built. With a cache (see
        `new_cache`), tgt holds only the new step(s) after the cached ones: one new step may
        see every cached key, so it needs no mask either. memory and src_mask may have one row
        per sentence for k hypotheses each (beam search; see MultiHeadAttention).
        """
        if cache and cache[0][1].k is None:
            self.fill_cross_caches(memory, src_mask, cache)
        offset = len(cache[0][0]) if cache else 0
        T = tgt.size(1)
        causal = cache is None
        tgt_mask = None if causal or T == 1 else causal_mask(offset + T, tgt.device)[:, :, offset:]
        y = self.tgt_embed(tgt, offset)
        for i, layer in enumerate(self.decoder_layers):
            y = layer(y, memory, tgt_mask, src_mask, cache[i] if cache else None, need_weights, causal)
        y = self.decoder_norm(y)
        if not project:
            return y
        head = self.lm_head
        # Into the cache's logits buffer where there is one: a plain Linear head (not the int8
        # one of quantized inference), no autograd (out= has none); a head with `forward_into`
        # (translator.PackedLinear) decides itself whether the buffer or its own kernel is faster.
        into = getattr(head, "forward_into", None)
        if isinstance(cache, DecoderCache) and (into or isinstance(head, nn.Linear)) and not torch.is_grad_enabled():
            out = cache.logits_out((*y.shape[:-1], self.cfg.vocab_size), y)
            if out is not None:
                if into is not None:
                    return into(y, out)
                torch.matmul(y, head.weight.t(), out=out)
                return out if head.bias is None else out.add_(head.bias)
        return head(y)

    def fill_cross_caches(self, memory: Tensor, src_mask: Tensor, cache: list[tuple[KVCache, KVCache]]) -> None:
        """Every decoder layer's cross-attention keys and values, projected once per decoding run
        from the real source positions only (attention.Packing, as the encoder does): with
        unsorted sentences a decoding batch's memory is often more than half padding.
        memory: (B, S, d_model), src_mask: (B, 1, 1, S)."""
        packing = Packing.if_worthwhile(src_mask[:, 0, 0, :])
        rows = memory if packing is None else packing.pack(memory)  # (B, S, d) or (N, d)
        for layer, (_, cross_cache) in zip(self.decoder_layers, cache):
            cross_cache.append(*layer.cross_attn.project_kv(rows, packing))

    def merge_projections(self) -> "Transformer":
        """For inference only: eval mode, and each attention's projections merged into one
        product (MultiHeadAttention.merge_projections). In place; returns the model."""
        self.eval()
        for layer in self.encoder_layers:
            layer.self_attn.merge_projections(self_attention=True)
        for layer in self.decoder_layers:
            layer.self_attn.merge_projections(self_attention=True)
            layer.cross_attn.merge_projections(self_attention=False)
        return self

    def new_cache(self, reuse_logits: bool = False) -> DecoderCache:
        """Empty (self-attention, cross-attention) caches, one pair per decoder layer; with
        reuse_logits, every decode() step with this cache writes its logits into one buffer
        (see DecoderCache)."""
        return DecoderCache([(KVCache(), KVCache()) for _ in self.decoder_layers], reuse_logits)

    def forward(self, src: Tensor, tgt: Tensor, project: bool = True) -> Tensor:
        """Teacher forcing: (B, S) source, (B, T) shifted target -> logits (B, T, vocab), or the
        final decoder states (B, T, d_model) when project=False (the training loss projects
        them itself, see loss.linear_cross_entropy)."""
        memory, src_mask = self.encode(src)
        return self.decode(tgt, memory, src_mask, project=project)
