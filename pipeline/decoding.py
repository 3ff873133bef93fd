"""Batched greedy decoding and beam search with a key/value cache, behind one `generate()`.

Every caller (validation, `evaluate`, `translate`, attention maps, the server) decodes
through `generate`, which owns the length limit and the choice of greedy or beam search.

Both start every hypothesis from BOS, stop a row at EOS and never run past its `max_len`
new tokens (one bound for all rows, or one per row so that a sentence's translation does
not depend on what else is in its batch). PAD and BOS are never generated. The searches
(`greedy_decode`, `beam_search`) only need a model's `encode`, `decode(tgt, memory, src_mask,
cache)` and `new_cache(reuse_logits)` (logits may then live in one buffer that the next step
overwrites), so they can be tested on a hand-made model; `generate` also reads
`model.cfg.max_positions` for its length limit; greedy decoding uses the model's `argmax_head` and `decode(..., project=False)`
where it has a head set (see next_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from pipeline.tokenizer import BOS, EOS, PAD


@dataclass
class DecodingConfig:
    """How a trained model translates; saved in every checkpoint.

    Args:
        beam: beam size for validation BLEU and the default of `evaluate`/`translate` (1 = greedy).
        length_penalty: beam score = log p / length^length_penalty (0: raw log-probability).
        max_len_ratio: a translation stops after max_len_ratio × source length + max_len_extra tokens.
        max_len_extra: see max_len_ratio.
    """

    beam: int = 1
    length_penalty: float = 1.0
    max_len_ratio: float = 1.5
    max_len_extra: int = 10

    def __post_init__(self):
        if self.beam < 1:
            raise ValueError(f"decoding.beam must be >= 1, got {self.beam}")
        if self.length_penalty < 0:  # would favour short hypotheses ever more the longer they get
            raise ValueError(f"decoding.length_penalty must be >= 0, got {self.length_penalty}")
        if self.max_len_ratio < 0 or self.max_len_extra < 1:
            raise ValueError(f"decoding.max_len_ratio must be >= 0 and decoding.max_len_extra >= 1, got "
                             f"{self.max_len_ratio} and {self.max_len_extra}")


class Generated(NamedTuple):
    """tokens: (B, nbest, T) ids without BOS, EOS then PAD; scores: (B, nbest) beam scores
    (log p / length^length_penalty), or None for greedy decoding without scores."""

    tokens: Tensor
    scores: Tensor | None


def generate(model, src: Tensor, config: DecodingConfig, beam: int | None = None, nbest: int = 1,
             return_scores: bool = False) -> Generated:
    """Translate a batch of sources: the one decoding entry point.

    src: (B, S) ids + EOS, right-padded. `beam` overrides config.beam; `nbest` ≤ beam
    hypotheses come back per sentence, best first. Each row stops after
    max_len_ratio × its length + max_len_extra new tokens, and never past the model's
    positional table. Greedy when the beam is 1 (beam search of width 1 gives the same tokens,
    tested; it runs instead when scores are asked for).
    """
    beam = config.beam if beam is None else beam
    if beam < 1 or not 1 <= nbest <= beam:
        raise ValueError(f"need beam >= 1 and 1 <= nbest <= beam, got beam={beam}, nbest={nbest}")
    max_len = max_new_tokens(src, config.max_len_ratio, config.max_len_extra).clamp(
        max=model.cfg.max_positions - 1)
    if beam == 1 and not return_scores:
        return Generated(greedy_decode(model, src, max_len)[:, None], None)
    tokens, scores = beam_search(model, src, beam, max_len, config.length_penalty)
    return Generated(tokens[:, :nbest], scores[:, :nbest])


def max_new_tokens(src: Tensor, ratio: float, extra: int) -> Tensor:
    """(B, S) source ids -> (B,) bound on each row's new tokens: ratio * source length + extra."""
    return ((src != PAD).sum(1) * ratio).long() + extra


def row_limits(max_len: int | Tensor, B: int, device) -> Tensor:
    """max_len as a (B,) tensor of per-row bounds."""
    return torch.as_tensor(max_len, device=device).long().expand(B).clone()


def next_logits(model, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache) -> Tensor:
    """Logits (b, V) of the next token, with PAD and BOS ruled out (with tied embeddings PAD's
    logit is exactly 0, which an undertrained model would otherwise pick)."""
    logits = model.decode(tgt, memory, src_mask, cache)[:, -1]
    logits[:, PAD] = float("-inf")  # two slice fills: cheaper than indexing with a list per step
    logits[:, BOS] = float("-inf")
    return logits


def next_tokens(model, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache) -> Tensor:
    """(b,) each row's most likely next token, PAD and BOS ruled out: the first maximum of
    next_logits, or where the model has an `argmax_head` (model.Transformer), that head's pick
    from the final decoder states (translator.ArgmaxHead: the same token, found without every
    logit in fp32)."""
    head = getattr(model, "argmax_head", None)
    if head is None:
        # max(-1).indices: the same first-maximum index as argmax, 3x faster on CPU (torch 2.13)
        return next_logits(model, tgt, memory, src_mask, cache).max(-1).indices
    return head(model.decode(tgt, memory, src_mask, cache, project=False)[:, -1], (PAD, BOS))


def drop_rows(keep: Tensor, cache, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Keep batch rows `keep` of every cache (self- and cross-attention) and of `tensors`."""
    for layer in cache or ():
        for layer_cache in layer:
            layer_cache.reorder(keep)
    return tuple(x.index_select(0, keep) for x in tensors)


@torch.inference_mode()  # no autograd bookkeeping: 2-3% faster than no_grad (bench/results/*-inference-mode.json)
def greedy_decode(model, src: Tensor, max_len: int | Tensor, use_cache: bool = True) -> Tensor:
    """(B, S) source ids -> (B, ≤max(max_len)) token ids (no BOS), EOS then PAD after it ends.

    Rows that have ended keep being fed PAD until they are a quarter of the batch; then they
    leave it (their memory, mask and cache rows are dropped), so the remaining steps compute
    only the sentences still going, at the price of one copy of the caches now and then.
    """
    memory, src_mask = model.encode(src)
    B, device = src.size(0), src.device
    limit = row_limits(max_len, B, device)
    max_len = int(limit.max())
    out = torch.full((B, max_len + 1), PAD, dtype=torch.long, device=device)
    out[:, 0] = BOS
    rows = torch.arange(B, device=device)  # the rows of `out` still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = model.new_cache(reuse_logits=True) if use_cache else None
    step_input, steps = out[:, :1], 0
    for t in range(1, max_len + 1):
        token = next_tokens(model, step_input, memory, src_mask, cache).masked_fill(done, PAD)  # (b,)
        out[rows, t] = token
        steps = t
        done |= (token == EOS) | (t >= limit)
        if bool(done.all()):
            break
        if 4 * int(done.sum()) >= done.numel():
            keep = (~done).nonzero().squeeze(1)
            rows, token, done, limit, memory, src_mask = drop_rows(keep, cache, rows, token, done, limit, memory,
                                                                   src_mask)
        step_input = token[:, None] if use_cache else out[rows, : t + 1]
    return out[:, 1: steps + 1]


def topk_wide(scores: Tensor, count: int, chunk: int = 128) -> tuple[Tensor, Tensor]:
    """`scores.topk(count, dim=1)` for wide rows: values and column indices (b, count), best first.

    scores: (b, n), n in the tens of thousands (beam search: k hypotheses × the vocabulary).
    Each row is cut into chunks of `chunk` columns; the best `count` values lie in the `count`
    chunks with the largest maxima (a chunk outside those has a maximum no larger than each of
    theirs, so none of its values can beat `count` others), so the exact top values come from a
    vectorised max per chunk, a topk over the maxima and one over count × chunk columns. torch's
    CPU topk walks each long row once per call: at 64 × 32,000 this took 1.26 ms where topk
    took 2.06 ms with the log-softmax before it (bench/results/2026-11-27-beam-topk.json).
    Equal values may come back in another order than topk's. Rows too narrow to gain, or whose
    width no chunk size near `chunk` divides, use topk itself.
    """
    b, n = scores.shape
    size = next((c for c in range(chunk, chunk // 2, -1) if n % c == 0), None)
    if size is None or n // size < 4 * count:
        return scores.topk(count, dim=1)
    maxima = scores.view(b, n // size, size).amax(-1)  # (b, n / size)
    best_chunks = maxima.topk(count, dim=1).indices  # (b, count)
    columns = (best_chunks[..., None] * size + torch.arange(size, device=scores.device)).view(b, count * size)
    values, pick = scores.gather(1, columns).topk(count, dim=1)
    return values, columns.gather(1, pick)


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """Score divisor length^alpha (alpha=0: raw log-probability, 1: per-token average)."""
    return length.float() ** alpha


@torch.inference_mode()
def beam_search(model, src: Tensor, beam: int, max_len: int | Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """Batched beam search.

    Each step extends every alive hypothesis, keeps the 2·beam best continuations, moves
    those ending in EOS to the finished pool (scored log p / length^alpha, EOS counted) and
    keeps the best `beam` others alive. A sentence is done when it has `beam` finished
    hypotheses; at its max_len the alive ones count as finished. Once the done sentences are a
    quarter of those still in the batch, they leave it (as in greedy_decode).

    src: (B, S). Returns each sentence's `beam` finished hypotheses, best first: tokens
    (B, beam, T) (no BOS; EOS then PAD) and scores (B, beam).
    """
    B, k, device = src.size(0), beam, src.device
    limit = row_limits(max_len, B, device)  # (b,) for the sentences still searched
    max_len = int(limit.max())
    # One row of memory (and of each cross-attention cache) per sentence, not per hypothesis:
    # the decoder folds a sentence's k hypotheses into its cross-attention queries.
    memory, src_mask = model.encode(src)  # (B, S, d), (B, 1, 1, S)
    cache = model.new_cache(reuse_logits=True)
    out_tokens = torch.full((B, k, max_len + 1), PAD, dtype=torch.long, device=device)
    out_score = torch.full((B, k), float("-inf"), device=device)
    # The working tensors cover the b sentences still searched: rows `sent` of the outputs.
    sent = torch.arange(B, device=device)
    alive = torch.full((B, k, 1), BOS, dtype=torch.long, device=device)  # (b, k, t)
    alive_logp = torch.full((B, k), float("-inf"), device=device)
    alive_logp[:, 0] = 0.0  # all beams start identical: only the first may expand
    fin_tokens, fin_score = out_tokens.clone(), out_score.clone()
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rank = torch.arange(2 * k, device=device)[None]  # (1, 2k): candidates come sorted
    scores = None  # one buffer for every step's (b·k, V) scores (see model.DecoderCache on why)
    # The first step decodes one row per sentence (all k beams are the same BOS then; only the
    # first may expand) where its V tokens hold the 2k candidates; the caches grow to k rows
    # per sentence at the first reorder.
    first_width = 1 if 2 * k <= getattr(getattr(model, "cfg", None), "vocab_size", 0) else k
    for t in range(1, max_len + 1):
        b = alive.size(0)
        width = first_width if t == 1 else k
        logits = next_logits(model, alive[:, :width, -1].reshape(b * width, 1), memory, src_mask,
                             cache).float()  # (b·width, V)
        V = logits.size(-1)
        if scores is None:
            scores = logits.new_empty(B * k * V)
        # log p(hypothesis + token) = its log p + log-softmax(logits): torch's fused log_softmax
        # kernel and an in-place addition beat logsumexp and a subtraction by 0.5 ms a step at
        # b·k = 256 rows (torch 2.13, CPU)
        total = torch.log_softmax(logits, -1, out=scores[: logits.numel()].view_as(logits))
        total.add_(alive_logp[:, :width].reshape(-1, 1))
        cand_logp, cand = topk_wide(total.view(b, width * V), 2 * k)  # (b, 2k)
        cand_beam, cand_token = cand // V, cand % V
        cand_seq = torch.cat([alive.gather(1, cand_beam[..., None].expand(-1, -1, t)), cand_token[..., None]], 2)
        is_eos = cand_token == EOS
        # Only the top k candidates may finish (otherwise beam 1 could stop on a runner-up
        # EOS), and a sentence that is done keeps its pool, whatever else is in the batch.
        ends = (is_eos | (t >= limit)[:, None]) & (rank < k) & ~done[:, None]
        if bool(ends.any()):  # the finished pool changes only when a hypothesis ends
            end_score = torch.where(ends, cand_logp / length_penalty(torch.tensor(t, device=device), alpha),
                                    torch.full_like(cand_logp, float("-inf")))
            padded = torch.full((b, 2 * k, max_len + 1), PAD, dtype=torch.long, device=device)
            padded[:, :, :t + 1] = cand_seq
            fin_score, pick = torch.cat([fin_score, end_score], 1).topk(k, dim=1)
            fin_tokens = torch.cat([fin_tokens, padded], 1).gather(1, pick[..., None].expand(-1, -1, max_len + 1))
            done = fin_score[:, -1] > float("-inf")
        if bool(done.all()):
            break
        # Alive: the best k continuations that are not EOS (each beam adds at most one EOS,
        # so at least k of the 2k candidates remain).
        alive_logp, pick = cand_logp.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        alive = cand_seq.gather(1, pick[..., None].expand(-1, -1, t + 1))
        # Each hypothesis's parent: its row in this step's (b·width)-row caches.
        parent = torch.arange(b, device=device)[:, None] * width + cand_beam.gather(1, pick)  # (b, k)
        dropped = 4 * int(done.sum()) >= b
        if dropped:  # done sentences leave: keep their results, drop their rows
            out_tokens[sent[done]], out_score[sent[done]] = fin_tokens[done], fin_score[done]
            keep = (~done).nonzero().squeeze(1)
            parent, sent, alive, alive_logp, fin_tokens, fin_score, done, limit = (
                x.index_select(0, keep) for x in (parent, sent, alive, alive_logp, fin_tokens, fin_score, done,
                                                  limit))
            for _, cross_cache in cache:
                cross_cache.reorder(keep)
            memory, src_mask = memory.index_select(0, keep), src_mask.index_select(0, keep)
        parent = parent.view(-1)
        if dropped or width != k:  # the row count changes: new self-attention caches
            for self_cache, _ in cache:  # (cross-attention keys are the same for every beam)
                self_cache.reorder(parent)
        else:  # the same rows: in place, only the hypotheses whose parent is another row
            moved = (parent != torch.arange(parent.numel(), device=device)).nonzero().squeeze(1)
            if moved.numel():  # (found once for all layers: one host sync per step on a GPU)
                source = parent.index_select(0, moved)
                for self_cache, _ in cache:
                    self_cache.move_rows(moved, source)
    out_tokens[sent], out_score[sent] = fin_tokens, fin_score
    tokens = out_tokens[:, :, 1:]  # (B, k, max_len)
    length = int((tokens != PAD).sum(-1).max().item())
    return tokens[:, :, :max(length, 1)], out_score
