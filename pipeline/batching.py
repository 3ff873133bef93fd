"""Token-bucket batches: sentences of similar length grouped under a token budget.

A batch costs its padded size, n_sentences × longest sentence, so sorting by length and
cutting at `max_tokens` keeps padding low and the memory per step flat.
"""

from __future__ import annotations

import array
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from pipeline.errors import UserError
from pipeline.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    """One padded batch. src: (B, S) ids + EOS; tgt_in: (B, T) BOS + ids; tgt_out: (B, T) ids + EOS;
    index: (B,) row numbers in the dataset, to restore order and de-duplicate across ranks."""

    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    index: Tensor

    @property
    def n_tokens(self) -> int:
        """Real target tokens: the loss is averaged over these."""
        return int((self.tgt_out != PAD).sum())

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.src, self.tgt_in, self.tgt_out, self.index)))


def pad(rows: list[list[int]]) -> Tensor:
    """Right-pad lists of ids to (len(rows), longest)."""
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(examples: list[dict]) -> Batch:
    """Dataset rows with `src_ids`, `tgt_ids` (no specials) and `index` -> Batch."""
    return Batch(
        src=pad([e["src_ids"] + [EOS] for e in examples]),
        tgt_in=pad([[BOS] + e["tgt_ids"] for e in examples]),
        tgt_out=pad([e["tgt_ids"] + [EOS] for e in examples]),
        index=torch.tensor([e["index"] for e in examples], dtype=torch.long),
    )


class TokenBucketSampler(Sampler[list[int]]):
    """Batch sampler capping each batch at `max_tokens` padded slots.

    lengths[i] is the padded length sentence pair i needs; sort_keys[i], if given, orders
    pairs of equal length (e.g. (target length, source length), so that each side pads
    less): a sequence of numbers or tuples, or an (n,) or (n, k) numpy array. Both may be
    Python lists or numpy arrays; with arrays nothing per pair is a Python object, so
    millions of pairs cost a few bytes each. Shuffled per epoch (`set_epoch`) and
    deterministic given the seed. Under DDP every rank builds the same batch list and
    takes every `num_replicas`-th batch; the list is made a multiple of `num_replicas` by
    splitting its largest batches, so each sentence goes to exactly one rank and all ranks
    run the same number of steps. `resume` skips batches already trained (mid-epoch restart).

    An epoch's plan is one permutation of the pairs (sorted by length, ties in a seeded
    random order) and the [start, end) slices of it that form the batches, in the order they
    are trained; it is computed once per epoch.
    """

    def __init__(self, lengths, max_tokens: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, sort_keys=None):
        self.lengths = np.asarray(lengths)
        if self.lengths.dtype == object or (len(self.lengths) and not np.issubdtype(self.lengths.dtype, np.integer)):
            raise ValueError("lengths must be integers")
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        if max_tokens < longest:
            raise UserError(f"data.max_tokens={max_tokens} is smaller than the longest pair "
                            f"({longest} tokens): raise it or lower data.max_len")
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.sort_keys = None if sort_keys is None else np.asarray(sort_keys)
        if self.sort_keys is not None and len(self.sort_keys) != len(self.lengths):
            raise ValueError(f"{len(self.sort_keys)} sort keys for {len(self.lengths)} lengths")
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, (-1, 0)
        self._plan_cache = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _sorted_order(self, rng: random.Random) -> np.ndarray:
        """Indices sorted by (length, sort key), ties in the order `rng` shuffles them to."""
        n = len(self.lengths)
        index_type = "i" if n < 2 ** 31 and array.array("i").itemsize == 4 else "q"
        order = array.array(index_type, np.arange(n, dtype=np.int32 if index_type == "i" else np.int64).tobytes())
        if self.shuffle:
            rng.shuffle(order)  # random tie-break among equal keys (the same draws as shuffling a list)
        order = np.frombuffer(order, dtype=np.int32 if index_type == "i" else np.int64)
        keys = [self.lengths]
        if self.sort_keys is not None:
            keys += [self.sort_keys] if self.sort_keys.ndim == 1 else list(self.sort_keys.T)
        composite = _composite_key([k[order] for k in keys])
        if composite is not None:
            return order[np.argsort(composite, kind="stable")]
        return order[np.lexsort([k[order] for k in reversed(keys)])]  # stable; the last key is the primary one

    def _cut(self, sorted_lengths: np.ndarray) -> list[tuple[int, int]]:
        """[start, end) slices of the sorted pairs: each batch grows while the next pair (the
        longest so far) times the batch size fits `max_tokens`."""
        n, slices, start = len(sorted_lengths), [], 0
        while start < n:
            width = min(n - start, max(1, self.max_tokens // max(1, int(sorted_lengths[start]))))
            cost = sorted_lengths[start: start + width].astype(np.int64) * np.arange(1, width + 1)
            over = np.flatnonzero(cost > self.max_tokens)
            size = int(over[0]) if len(over) else width
            slices.append((start, start + max(size, 1)))
            start += max(size, 1)
        return slices

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, slices) of this epoch: batch b is order[slices[b, 0]:slices[b, 1]], for all ranks."""
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1]
        rng = random.Random(self.seed + self.epoch)
        order = self._sorted_order(rng)
        slices = self._cut(self.lengths[order])
        while len(slices) % self.num_replicas:  # split the (first) largest batch in two
            largest = max(range(len(slices)), key=lambda b: slices[b][1] - slices[b][0])
            start, end = slices.pop(largest)
            if end - start < 2:
                raise UserError(f"{len(self.lengths)} sentences cannot fill {self.num_replicas} ranks: use more "
                                "data for that split or fewer devices")
            middle = start + (end - start) // 2
            slices += [(start, middle), (middle, end)]
        if self.shuffle:
            positions = list(range(len(slices)))
            rng.shuffle(positions)
            slices = [slices[p] for p in positions]
        plan = (order, np.array(slices, dtype=np.int64).reshape(-1, 2))
        self._plan_cache = (self.epoch, plan)
        return plan

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, for all ranks (Python lists: for small data and tests)."""
        order, slices = self.plan()
        return [order[start:end].tolist() for start, end in slices]

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches of `epoch` (they were trained before a restart)."""
        self.skip = (epoch, batches_done)

    def __iter__(self):
        skip = self.skip[1] if self.skip[0] == self.epoch else 0
        order, slices = self.plan()
        for start, end in slices[self.rank:: self.num_replicas][skip:]:
            yield order[start:end].tolist()

    def __len__(self) -> int:
        return len(self.plan()[1]) // self.num_replicas

    def padding_efficiency(self, src_lens, tgt_lens) -> float:
        """`padding_efficiency` of this epoch's batches, computed on arrays (any size)."""
        order, slices = self.plan()
        if not len(slices):
            return 1.0
        starts = np.sort(slices[:, 0])  # the batches tile the sorted order
        sizes = np.diff(np.append(starts, len(order)))
        real = padded = 0
        for lens in (np.asarray(src_lens), np.asarray(tgt_lens)):
            row = lens[order].astype(np.int64)
            real += int(row.sum())
            padded += int((np.maximum.reduceat(row, starts) * sizes).sum())
        return real / padded


def _composite_key(columns: list[np.ndarray]) -> np.ndarray | None:
    """One int64 key ordering like the tuple of `columns` (non-negative integers that fit in
    63 bits together), else None: one stable argsort instead of a lexsort of several keys."""
    key, bits_used = None, 0
    for column in columns:
        if not np.issubdtype(column.dtype, np.integer) or (len(column) and column.min() < 0):
            return None
        bits = int(column.max()).bit_length() if len(column) else 0
        bits_used += bits
        if bits_used > 63:
            return None
        key = column.astype(np.int64) if key is None else (key << bits) | column.astype(np.int64)
    return key


def padding_efficiency(batches: list[list[int]], src_lens, tgt_lens) -> float:
    """Real tokens / padded slots, source and target together (1.0 means no padding)."""
    real = padded = 0
    for lens in (np.asarray(src_lens), np.asarray(tgt_lens)):
        for b in batches:
            row = lens[np.asarray(b, dtype=np.int64)]
            real, padded = real + int(row.sum()), padded + int(row.max()) * len(row)
    return real / padded
