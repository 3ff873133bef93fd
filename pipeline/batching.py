"""Token-bucket batches: sentences of similar length grouped under a token budget.

A batch costs its padded size, n_sentences × longest sentence, so sorting by length and
cutting at `max_tokens` keeps padding low and the memory per step flat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Sampler

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
    less). Shuffled per epoch (`set_epoch`)
    and deterministic given the seed. Under DDP every rank builds the same batch list and
    takes every `num_replicas`-th batch; the list is made a multiple of `num_replicas` by
    splitting its largest batches, so each sentence goes to exactly one rank and all ranks
    run the same number of steps. `resume` skips batches already trained (mid-epoch restart).
    """

    def __init__(self, lengths: list[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, sort_keys: list | None = None):
        if max_tokens < max(lengths, default=0):
            raise ValueError(f"data.max_tokens={max_tokens} is smaller than the longest pair "
                             f"({max(lengths)} tokens): raise it or lower data.max_len")
        self.lengths, self.max_tokens, self.shuffle, self.seed = lengths, max_tokens, shuffle, seed
        self.sort_keys = sort_keys if sort_keys is not None else lengths
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.skip = 0, (-1, 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, for all ranks."""
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)  # random tie-break among equal lengths
        order.sort(key=lambda i: (self.lengths[i], self.sort_keys[i]))
        batches, current, longest = [], [], 0
        for i in order:
            n = self.lengths[i]
            if current and max(longest, n) * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        if current:
            batches.append(current)
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda b: len(batches[b]))
            if len(batches[largest]) < 2:
                raise ValueError(f"{len(self.lengths)} sentences cannot fill {self.num_replicas} ranks")
            big = batches.pop(largest)
            batches += [big[: len(big) // 2], big[len(big) // 2:]]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches of `epoch` (they were trained before a restart)."""
        self.skip = (epoch, batches_done)

    def __iter__(self):
        skip = self.skip[1] if self.skip[0] == self.epoch else 0
        yield from self.batches()[self.rank:: self.num_replicas][skip:]

    def __len__(self) -> int:
        return len(self.batches()) // self.num_replicas



def padding_efficiency(batches: list[list[int]], src_lens: list[int], tgt_lens: list[int]) -> float:
    """Real tokens / padded slots, source and target together (1.0 means no padding)."""
    real = padded = 0
    for b in batches:
        for lens in (src_lens, tgt_lens):
            row = [lens[i] for i in b]
            real, padded = real + sum(row), padded + max(row) * len(row)
    return real / padded
