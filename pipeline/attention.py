"""Scaled dot-product attention, its masks, and the one multi-head attention module that
serves encoder self-attention, decoder causal self-attention and cross-attention.

Masks are boolean and broadcast against scores of shape (B, h, Tq, Tk): True means
"this query may attend to this key".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.dropout import Dropout


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(B, T) token ids -> (B, 1, 1, T) mask, False at padding keys."""
    return (ids != pad_id)[:, None, None, :]


def causal_mask(size: int, device: torch.device | None = None) -> Tensor:
    """(1, 1, T, T) lower-triangular mask: position i sees keys 0..i only."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()[None, None]


class Packing:
    """The real (non-padding) positions of a (B, S) batch, so that position-wise layers
    (projections, feed-forward, norms) run on those N rows only while attention, which needs
    the (B, S) layout, sees them padded again. Decoding batches of unsorted sentences are
    often more than half padding: encoding them packed does a fraction of the products.
    """

    def __init__(self, real: Tensor):
        """real: (B, S) bool, True at tokens."""
        self.batch, self.length = real.shape
        self.index = real.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the tokens

    @classmethod
    def if_worthwhile(cls, real: Tensor) -> Packing | None:
        """A Packing of `real` (B, S) where a tenth or more of it is padding, else None: below
        that, packing and unpacking cost more than the skipped rows save. None under torch.compile:
        the count and the positions depend on the data, which would break the compiled graph."""
        if torch.compiler.is_compiling():
            return None
        return cls(real) if 10 * int(real.sum()) <= 9 * real.numel() else None

    def pack(self, x: Tensor) -> Tensor:
        """(B, S, f) -> (N, f)"""
        return x.reshape(-1, x.size(-1)).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, f) -> (B, S, f), zeros at padding."""
        out = x.new_zeros(self.batch * self.length, x.size(-1))
        return out.index_copy_(0, self.index, x).view(self.batch, self.length, -1)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 dropout: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d_k) v, the readable reference.

    q: (B, h, Tq, d_k), k and v: (B, h, Tk, d_k), mask: broadcastable to (B, h, Tq, Tk).
    Returns the output (B, h, Tq, d_k) and the attention weights (B, h, Tq, Tk).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v, weights


@dataclass
class KVCache:
    """Keys and values of one attention layer kept between decoding steps.

    Self-attention appends one step at a time; cross-attention fills it once per source.
    k, v: (B, h, T, d_k). Once a cache grows past its first fill, k and v are views of buffers
    with room for up to GROW more steps, so appending a step writes only that step instead
    of copying the whole cache as torch.cat would (O(T) per step, O(T²) per sentence).

    The buffers are laid out (B, capacity, h, d_k), the projection's own order, and k and v
    are their transposed views: a step of all heads is one contiguous h·d_k run per row, so
    an append writes B runs of h·d_k values. In (B, h, capacity, d_k) it wrote B·h runs of d_k,
    each on another page of a buffer that is out of the caches by the next step; at beam 4 ×
    128 sentences that made an append cost about 0.4 ms, most of it waiting on memory.
    """

    # Steps of spare room added when a buffer is full. Spare room costs memory only (reorders
    # copy the filled part), and 32 covers a typical 30-token sentence with one allocation.
    GROW = 32

    k: Tensor | None = None
    v: Tensor | None = None
    _buffers: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:  # first fill: keep as is (a cross-attention cache never grows)
            self.k, self.v, self._buffers = k, v, None
            return self.k, self.v
        n, end = len(self), len(self) + k.size(2)
        if not self._in_buffers() or self._buffers[0].size(1) < end:
            self._buffers = tuple(self._grow(old, end + self.GROW) for old in (self.k, self.v))
        buf_k, buf_v = self._buffers
        buf_k[:, n:end] = k.transpose(1, 2)
        buf_v[:, n:end] = v.transpose(1, 2)
        self.k, self.v = self._filled(buf_k, end), self._filled(buf_v, end)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (beam search moves hypotheses between beams; decoders drop
        finished rows). Where the row count stays, in place (`move_rows`: views handed out
        earlier then see the new order); fewer rows make new buffers."""
        if self.k is None:
            return
        if index.numel() == self.k.size(0) and self._in_buffers():
            moved = (index != torch.arange(index.numel(), device=index.device)).nonzero().squeeze(1)
            self.move_rows(moved, index.index_select(0, moved))
        elif not self._in_buffers():
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
        else:  # fewer rows: new buffers with the same spare room, only the filled part copied
            n = len(self)
            self._buffers = tuple(self._select(buf, index, n) for buf in self._buffers)
            self.k, self.v = self._filled(self._buffers[0], n), self._filled(self._buffers[1], n)

    def move_rows(self, rows: Tensor, source: Tensor) -> None:
        """In place, row rows[i] becomes a copy of row source[i] (all sources are read before
        any row is written). Beam search keeps most hypotheses on their parent's row (about 65%
        at beam 4), so moving only the others copies a third of the cache where a full
        index_select would copy all of it; it finds `rows` once for all layers."""
        if self.k is None or not rows.numel():
            return
        if not self._in_buffers():
            index = torch.arange(self.k.size(0), device=rows.device).index_copy_(0, rows, source)
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            return
        n = len(self)
        for buf in self._buffers:
            filled = buf[:, :n]
            filled.index_copy_(0, rows, filled.index_select(0, source))

    @staticmethod
    def _filled(buf: Tensor, n: int) -> Tensor:
        """The first n steps of a (B, capacity, h, d_k) buffer as a (B, h, n, d_k) view."""
        return buf[:, :n].transpose(1, 2)

    @staticmethod
    def _select(buf: Tensor, index: Tensor, n: int) -> Tensor:
        """A new buffer like `buf` with rows `index`, of which the first n steps are copied."""
        new = buf.new_empty((index.numel(),) + buf.shape[1:])
        torch.index_select(buf[:, :n], 0, index, out=new[:, :n])
        return new

    def _in_buffers(self) -> bool:
        """Whether k and v are still the views of the buffers (nobody assigned them since)."""
        if self._buffers is None:
            return False
        buf = self._buffers[0]  # k must be _filled(buf, n): (B, h, n, d_k), buf's strides transposed
        return (self.k.data_ptr() == buf.data_ptr() and self.v.data_ptr() == self._buffers[1].data_ptr()
                and self.k.size(0) == buf.size(0) and self.k.size(1) == buf.size(2)
                and self.k.stride() == (buf.stride(0), buf.stride(2), buf.stride(1), buf.stride(3)))

    @staticmethod
    def _grow(old: Tensor, capacity: int) -> Tensor:
        """A (B, capacity, h, d_k) buffer holding `old` (B, h, T, d_k) in its first T steps."""
        buf = old.new_empty(old.size(0), capacity, old.size(1), old.size(3))
        buf[:, :old.size(2)] = old.transpose(1, 2)
        return buf

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)


MERGED = ("w_qkv.", "w_kv.")


def _without_merged(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(tuple(prefix + m for m in MERGED))]:
        del state_dict[key]


def _merge_again(module, incompatible_keys) -> None:
    incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys
                                         if not any(f".{m}" in f".{k}" for m in MERGED)]
    for merged, self_attention in ((module.w_qkv, True), (module.w_kv, False)):
        if merged is not None and isinstance(getattr(merged, "weight", None), torch.Tensor):
            parts = (module.w_q, module.w_k, module.w_v) if self_attention else (module.w_k, module.w_v)
            with torch.no_grad():  # in place: a packed layer (translator.PackedLinear) then packs again
                merged.weight.copy_(torch.cat([p.weight for p in parts]))
                merged.bias.copy_(torch.cat([p.bias for p in parts]))


class MultiHeadAttention(nn.Module):
    """h heads of scaled dot-product attention with projections W_Q, W_K, W_V and W_O.

    `fused=True` uses `F.scaled_dot_product_attention` (same maths, fewer copies) unless the
    caller asks for the weights; a test checks both paths agree.
    """

    # Cross-attention of CPU decoding steps through batched products, not the fused kernel (see
    # forward); False: the fused kernel everywhere (the A/B script behind that choice sets it).
    CPU_CROSS_PRODUCTS = True
    # bf16 self-attention of CPU decoding steps through batched products too (see forward).
    CPU_BF16_SELF_PRODUCTS = True

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, fused: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_k, self.fused = n_heads, d_model // n_heads, fused
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)
        self.weights: Tensor | None = None  # (B, h, Tq, Tk), kept only when need_weights
        # Set by merge_projections() for inference: W_Q|W_K|W_V (self-attention) or W_K|W_V
        # (cross-attention) as one Linear layer.
        self.w_qkv: nn.Linear | None = None
        self.w_kv: nn.Linear | None = None
        # The merged layers are copies: left out of the weights a state_dict holds, and made again
        # from W_Q, W_K, W_V after a load (so a plain checkpoint loads strictly into an inference
        # copy, and a load never leaves them stale).
        self.register_state_dict_post_hook(_without_merged)
        self.register_load_state_dict_post_hook(_merge_again)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, h, T, d_k)"""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_k).transpose(1, 2)

    def project_kv(self, x: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """(B, T, d_model), or (N, d_model) real rows with `packing` -> keys and values, each
        (B, h, T, d_k), in one matrix product (zero at padding with `packing`)."""
        if self.w_kv is not None and not self.training:
            kv = self.w_kv(x)
        else:
            w = torch.cat([self.w_k.weight, self.w_v.weight])
            kv = F.linear(x, w, torch.cat([self.w_k.bias, self.w_v.bias]))
        if packing is not None:
            kv = packing.unpack(kv)
        k, v = kv.chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def project_qkv(self, x: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d_model), or (N, d_model) real rows with `packing` -> queries, keys and values
        for self-attention, each (B, h, T, d_k).

        One (d_model -> 3·d_model) product instead of three: the weights stay three Linear
        layers (checkpoints and exports see W_Q, W_K, W_V), concatenated here per call while
        training (so gradients reach all three), once by merge_projections() for inference."""
        if self.w_qkv is not None and not self.training:
            qkv = self.w_qkv(x)
        else:
            w = torch.cat([self.w_q.weight, self.w_k.weight, self.w_v.weight])
            qkv = F.linear(x, w, torch.cat([self.w_q.bias, self.w_k.bias, self.w_v.bias]))
        if packing is not None:
            qkv = packing.unpack(qkv)
        return tuple(self.split_heads(t) for t in qkv.chunk(3, dim=-1))

    @torch.no_grad()
    def merge_projections(self, self_attention: bool) -> None:
        """For inference: hold the projections this module runs together as one Linear layer,
        W_Q|W_K|W_V for self-attention or W_K|W_V for cross-attention, so a decoding step does
        not concatenate weights on every call and int8 quantization (Translator) sees the
        products actually run. A copy, left out of state_dict() and made again by
        load_state_dict(); after other changes to W_Q, W_K or W_V call this again. In training
        mode the merged layers are ignored, so gradients always reach W_Q, W_K and W_V."""
        parts = (self.w_q, self.w_k, self.w_v) if self_attention else (self.w_k, self.w_v)
        merged = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts),
                           device=parts[0].weight.device, dtype=parts[0].weight.dtype)
        merged.weight.copy_(torch.cat([p.weight for p in parts]))
        merged.bias.copy_(torch.cat([p.bias for p in parts]))
        merged.requires_grad_(False)
        if self_attention:
            self.w_qkv = merged
        else:
            self.w_kv = merged

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                cache: KVCache | None = None, static_kv: bool = False,
                need_weights: bool = False, causal: bool = False, packing: Packing | None = None) -> Tensor:
        """Attend from x (B, Tq, d_model) to context (B, Tk, d_model), or to x itself.

        mask: boolean, broadcastable to (B, h, Tq, Tk), or None (every key visible);
        causal: query i sees keys 0..i only (self-attention over a whole prefix, no mask
        materialised for the fused kernel).
        With a cache: self-attention (static_kv=False) appends this step's keys/values;
        cross-attention (static_kv=True) projects the context once and reuses it. A
        cross-attention cache may hold fewer rows than x: beam search keeps one row per
        sentence (B) for its B·k hypotheses (rows sentence-major), and the k queries of a
        sentence are folded into its query dimension, so keys and values are projected and
        read once per sentence instead of once per hypothesis.
        packing (self-attention without a cache): x holds the (N, d_model) real rows of a
        padded batch; the projections run on them, attention on the padded layout, and the
        output comes back as (N, d_model).
        Returns (B, Tq, d_model); the weights (B, h, Tq, Tk) are kept in `self.weights` if need_weights.
        """
        if packing is not None and (context is not None or cache is not None):
            raise ValueError("packing is for self-attention without a cache (the encoder)")
        if context is None:  # self-attention: one product for Q, K and V
            q, k, v = self.project_qkv(x, packing)  # (B, h, T, d_k) each
            if cache is not None:
                k, v = cache.append(k, v)  # (B, h, Tk, d_k): the cached steps and this one
        else:
            q = self.split_heads(self.w_q(x))  # (B, h, Tq, d_k)
            if not static_kv:
                k, v = self.project_kv(context)
                if cache is not None:
                    k, v = cache.append(k, v)
            elif cache is None or cache.k is None:
                k, v = self.project_kv(context)
                if cache is not None:
                    cache.append(k, v)
            else:
                k, v = cache.k, cache.v
        B, h, Tq, d_k = q.shape
        fold = B // k.size(0)  # hypotheses per cached sentence (1 but in beam search)
        if fold > 1:
            q = q.view(-1, fold, h, Tq, d_k).transpose(1, 2).reshape(-1, h, fold * Tq, d_k)
        # Attention dropout: on GPUs the fused kernel draws it itself (Philox, as F.dropout does
        # there). On CPU the fused kernel would fall back to torch's slow per-element draws, so
        # training with attention dropout runs the plain path with our cheaper masks (dropout.py;
        # its weights are small: (B, h, Tq, Tk) against (B, T, d_ff) elsewhere).
        dropping = self.training and self.dropout.p > 0
        if causal and mask is not None:  # both: one boolean mask for either path
            mask = mask & causal_mask(k.size(2), q.device)[:, :, -q.size(2):]
            causal = False
        # Cross-attention of a CPU decoding step: plain batched products (the reference below)
        # over keys and values made contiguous per (row, head) once per decoding run. torch's fused
        # CPU kernel blocks its work per (row, head) and query block, which for a step's one query
        # row (or k folded ones) over a few dozen keys cost about twice as much
        # (bench/results/2026-11-28-cross-attention-products.{py,json}).
        by_products = static_kv and cache is not None and q.device.type == "cpu" and self.CPU_CROSS_PRODUCTS
        if by_products and not k.is_contiguous():
            cache.k, cache.v = k, v = k.contiguous(), v.contiguous()  # (B, h, S, d_k) each
        # A bf16 decoding step's self-attention too: torch's fused CPU kernel is the slower side in
        # bf16 (whole bf16 decodes 1.09x greedy, 1.13x beam 4 with products:
        # bench/results/2026-11-28-bf16-self-attention-products.json); in fp32 the fused kernel is
        # the faster one, so fp32 keeps it.
        by_products = by_products or (not static_kv and cache is not None and q.device.type == "cpu"
                                      and q.dtype == torch.bfloat16 and self.CPU_BF16_SELF_PRODUCTS)
        if self.fused and not need_weights and not (dropping and q.device.type == "cpu") and not by_products:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                 dropout_p=self.dropout.p if dropping else 0.0)
            self.weights = None
        else:
            if causal:
                full = causal_mask(k.size(2), q.device)[:, :, -q.size(2):]
                mask = full if mask is None else mask & full
            out, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout)
            if need_weights and fold > 1:
                weights = weights.view(-1, h, fold, Tq, k.size(2)).transpose(1, 2).reshape(B, h, Tq, k.size(2))
            self.weights = weights.detach() if need_weights else None
        if fold > 1:
            out = out.view(-1, h, fold, Tq, d_k).transpose(1, 2).reshape(B, h, Tq, d_k)
        out = out.transpose(1, 2).reshape(B, Tq, h * d_k)
        return self.w_o(out if packing is None else packing.pack(out))
