"""Token-bucket batching (single and multi-rank), collation and padding efficiency."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pipeline.batching import Batch, TokenBucketSampler, collate, pad, padding_efficiency
from pipeline.tokenizer import BOS, EOS, PAD


def random_lengths(n: int, seed: int = 0, low: int = 2, high: int = 60) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def flat(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("n, max_tokens", [(1, 100), (37, 64), (500, 256), (1000, 1000)])
def test_every_index_once_per_epoch_and_budget_respected(n, max_tokens):
    lengths = random_lengths(n, seed=n)
    sampler = TokenBucketSampler(lengths, max_tokens, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(flat(batches)) == list(range(n))
        assert len(batches) == len(sampler)
        for b in batches:
            assert b, "no empty batch"
            assert len(b) * max(lengths[i] for i in b) <= max_tokens


def test_batches_group_similar_lengths():
    lengths = random_lengths(2000, seed=1)
    batches = TokenBucketSampler(lengths, 400, seed=0).batches()
    # Sorted by length before cutting: batches overlap in length by at most their edges.
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2
    src_lens = tgt_lens = lengths
    assert padding_efficiency(batches, src_lens, tgt_lens) > 0.95


def test_shuffling_is_deterministic_per_seed_and_epoch():
    lengths = random_lengths(300, seed=2)
    a, b = TokenBucketSampler(lengths, 128, seed=7), TokenBucketSampler(lengths, 128, seed=7)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(5)
    assert list(a) != first
    assert sorted(flat(list(a))) == sorted(flat(first))
    other_seed = TokenBucketSampler(lengths, 128, seed=8)
    other_seed.set_epoch(4)
    assert list(other_seed) != first


def test_without_shuffle_the_order_is_fixed_and_sorted():
    lengths = random_lengths(200, seed=3)
    sampler = TokenBucketSampler(lengths, 128, shuffle=False)
    first = list(sampler)
    sampler.set_epoch(9)
    assert list(sampler) == first
    order = flat(first)
    assert [lengths[i] for i in order] == sorted(lengths)


def test_rejects_budget_below_longest_pair():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="max_tokens"):
        TokenBucketSampler([5, 80, 7], max_tokens=64)


def rank_batches(lengths, max_tokens, replicas, seed=0, epoch=0):
    per_rank = []
    for rank in range(replicas):
        sampler = TokenBucketSampler(lengths, max_tokens, seed=seed, num_replicas=replicas, rank=rank)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        per_rank.append(batches)
    return per_rank


def check_ranks(lengths, max_tokens, replicas, epoch=0):
    per_rank = rank_batches(lengths, max_tokens, replicas, epoch=epoch)
    indices = [flat(batches) for batches in per_rank]
    assert sorted(i for rank in indices for i in rank) == list(range(len(lengths)))  # cover, no duplicate
    assert len({len(batches) for batches in per_rank}) == 1, "every rank runs the same number of steps"
    for batches in per_rank:
        for b in batches:
            assert b and len(b) * max(lengths[i] for i in b) <= max_tokens


def test_two_ranks_hand_made_odd_case():
    # Sorted: [5, 5] fits 10 tokens, then [10] and [10]: 3 batches, so [5, 5] is split in two.
    lengths = [10, 5, 10, 5]
    assert len(TokenBucketSampler(lengths, 10).batches()) == 3
    per_rank = rank_batches(lengths, 10, 2)
    assert [len(b) for b in per_rank] == [2, 2]
    assert sorted(flat(per_rank[0]) + flat(per_rank[1])) == [0, 1, 2, 3]
    assert all(len(b) == 1 for batches in per_rank for b in batches)


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_are_disjoint_cover_everything_and_have_equal_counts(replicas):
    n_uneven = 0
    for n in range(replicas, 60, 7):
        lengths = random_lengths(n, seed=n)
        n_uneven += len(TokenBucketSampler(lengths, 100).batches()) % replicas != 0
        for epoch in range(2):
            check_ranks(lengths, 100, replicas, epoch)
    assert n_uneven > 0, "some cases must need splitting"


def test_too_few_sentences_for_the_ranks():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="ranks"):
        rank_batches([10], 10, 2)


def test_resume_skips_trained_batches_of_that_epoch_only():
    lengths = random_lengths(100, seed=4)
    sampler = TokenBucketSampler(lengths, 80, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume(epoch=2, batches_done=3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full[3:]  # iterating twice (Lightning may) skips the same batches
    sampler.set_epoch(3)
    assert len(list(sampler)) == len(sampler)  # later epochs are whole


def test_loader_resumed_after_an_epochs_last_batch_starts_the_next_epoch():
    # A checkpoint written after the last batch of epoch 1 (every_n_train_steps landing there)
    # but before the epoch ended: the next iterator is epoch 2's, whole, not an empty epoch 1.
    from pipeline.datamodule import ResumableLoader

    lengths = random_lengths(100, seed=4)
    sampler = TokenBucketSampler(lengths, 80, seed=1)
    loader = ResumableLoader(list(range(100)), batch_sampler=sampler, collate_fn=list)
    sampler.set_epoch(1)
    done = len(sampler)
    loader.load_state_dict({"epoch": 1, "batches_done": done})
    sampler_next = TokenBucketSampler(lengths, 80, seed=1)
    sampler_next.set_epoch(2)
    assert list(loader) == list(sampler_next)
    loader.load_state_dict({"epoch": 1, "batches_done": 2})  # mid-epoch: the rest of epoch 1
    sampler_next.set_epoch(1)
    assert list(loader) == list(sampler_next)[2:]
    # An epoch cut short by trainer.limit_train_batches is over after its 2 batches.
    loader.load_state_dict({"epoch": 1, "batches_done": 2, "epoch_over": True})
    sampler_next.set_epoch(2)
    assert list(loader) == list(sampler_next)


def test_loader_iteration_draws_nothing_from_the_global_generator():
    # The random states a checkpoint restores must be the ones the next step uses: a resumed
    # run makes its iterator before they are restored, an uninterrupted one after.
    from pipeline.datamodule import ResumableLoader

    loader = ResumableLoader(list(range(10)), batch_sampler=TokenBucketSampler([3] * 10, 9, seed=0),
                             collate_fn=list)
    state = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), state)


# --- collate ------------------------------------------------------------------------------

def test_collate_places_specials_and_pads():
    examples = [
        {"src_ids": [10, 11, 12], "tgt_ids": [20], "index": 7},
        {"src_ids": [13], "tgt_ids": [21, 22, 23, 24], "index": 2},
    ]
    batch = collate(examples)
    assert isinstance(batch, Batch)
    assert batch.src.tolist() == [[10, 11, 12, EOS], [13, EOS, PAD, PAD]]
    assert batch.tgt_in.tolist() == [[BOS, 20, PAD, PAD, PAD], [BOS, 21, 22, 23, 24]]
    assert batch.tgt_out.tolist() == [[20, EOS, PAD, PAD, PAD], [21, 22, 23, 24, EOS]]
    assert batch.index.tolist() == [7, 2]
    assert all(t.dtype == torch.long for t in (batch.src, batch.tgt_in, batch.tgt_out, batch.index))
    assert batch.n_tokens == 2 + 5
    # tgt_out is tgt_in shifted left by one: the model predicts the next token.
    for row_in, row_out, ex in zip(batch.tgt_in.tolist(), batch.tgt_out.tolist(), examples):
        n = len(ex["tgt_ids"]) + 1
        assert row_in[1:n] == row_out[: n - 1]
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.src, batch.src)


def test_collate_random_rows():
    rng = random.Random(0)
    examples = [{"src_ids": [rng.randint(4, 99) for _ in range(rng.randint(0, 9))],
                 "tgt_ids": [rng.randint(4, 99) for _ in range(rng.randint(0, 9))], "index": i} for i in range(16)]
    batch = collate(examples)
    assert batch.src.shape == (16, max(len(e["src_ids"]) for e in examples) + 1)
    assert batch.tgt_in.shape == batch.tgt_out.shape == (16, max(len(e["tgt_ids"]) for e in examples) + 1)
    for i, e in enumerate(examples):
        s, t = len(e["src_ids"]), len(e["tgt_ids"])
        assert batch.src[i, :s].tolist() == e["src_ids"] and batch.src[i, s] == EOS
        assert (batch.src[i, s + 1:] == PAD).all()
        assert batch.tgt_in[i, 0] == BOS and (batch.tgt_in[i, t + 1:] == PAD).all()
        assert batch.tgt_out[i, t] == EOS and (batch.tgt_out[i, t + 1:] == PAD).all()
    assert batch.n_tokens == sum(len(e["tgt_ids"]) + 1 for e in examples)


def test_pad():
    assert pad([[1, 2, 3], [4]]).tolist() == [[1, 2, 3], [4, PAD, PAD]]


# --- padding efficiency -------------------------------------------------------------------

def test_padding_efficiency_by_hand():
    # src: 2 and 4 -> 6 real of 8 padded; tgt: 3 and 3 -> 6 of 6.
    assert padding_efficiency([[0, 1]], [2, 4], [3, 3]) == pytest.approx(12 / 14)
    assert padding_efficiency([[0], [1]], [2, 4], [3, 3]) == 1.0


def test_padding_efficiency_range():
    lengths = random_lengths(300, seed=5)
    tgt = random_lengths(300, seed=6)
    for shuffle in (True, False):
        batches = TokenBucketSampler(lengths, 200, shuffle=shuffle).batches()
        eff = padding_efficiency(batches, lengths, tgt)
        assert 0 < eff <= 1
    assert padding_efficiency(TokenBucketSampler([7] * 50, 70).batches(), [7] * 50, [5] * 50) == 1.0
    # Random batches pad more than length-sorted ones.
    rng = random.Random(0)
    order = list(range(300))
    rng.shuffle(order)
    random_batches = [order[i: i + 8] for i in range(0, 300, 8)]
    sorted_batches = TokenBucketSampler(lengths, 8 * 60, shuffle=False).batches()
    assert padding_efficiency(random_batches, lengths, lengths) < padding_efficiency(sorted_batches, lengths, lengths)


def test_sort_keys_order_pairs_of_equal_length():
    lengths = [10] * 40
    keys = [(i % 7, i % 3) for i in range(40)]
    sampler = TokenBucketSampler(lengths, 100, shuffle=False, sort_keys=keys)
    flat = [i for batch in sampler for i in batch]
    assert [keys[i] for i in flat] == sorted(keys)


# --- numpy arrays, and the batches of before ---------------------------------------------------

def reference_batches(lengths, max_tokens, shuffle=True, seed=0, num_replicas=1, epoch=0, sort_keys=None):
    """The sampler's algorithm as it was written on Python lists (before numpy): the batches
    must stay exactly these, so that runs compare with earlier ones batch for batch."""
    sort_keys = sort_keys if sort_keys is not None else lengths
    rng = random.Random(seed + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: (lengths[i], sort_keys[i]))
    batches, current, longest = [], [], 0
    for i in order:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        batches.append(current)
    while len(batches) % num_replicas:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        big = batches.pop(largest)
        batches += [big[: len(big) // 2], big[len(big) // 2:]]
    if shuffle:
        rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_numpy_arrays_give_the_batches_of_the_list_algorithm(shuffle, replicas):
    rng = random.Random(replicas)
    for trial in range(8):
        n = rng.randint(replicas, 1500)
        src, tgt = random_lengths(n, seed=trial, high=40), random_lengths(n, seed=trial + 100, high=40)
        lengths, keys = [max(s, t) for s, t in zip(src, tgt)], list(zip(tgt, src))
        max_tokens = rng.choice([64, 200, 2500])
        for epoch in range(2):
            expected = reference_batches(lengths, max_tokens, shuffle, 7, replicas, epoch, keys)
            for arrays in ((lengths, keys), (np.array(lengths, np.int32), np.column_stack([tgt, src]).astype(np.int32)),
                           (np.array(lengths), np.array(keys, dtype=np.int64))):
                sampler = TokenBucketSampler(arrays[0], max_tokens, shuffle, 7, replicas, 0, sort_keys=arrays[1])
                sampler.set_epoch(epoch)
                assert sampler.batches() == expected
    # without sort keys, and with keys that are not small integers (the lexsort path)
    lengths = random_lengths(400, seed=9)
    assert TokenBucketSampler(np.array(lengths), 100, seed=2).batches() == reference_batches(lengths, 100, seed=2)
    keys = [random.Random(i).random() for i in range(400)]
    assert TokenBucketSampler(np.array(lengths), 100, seed=2, sort_keys=np.array(keys)).batches() == \
        reference_batches(lengths, 100, seed=2, sort_keys=keys)


def test_numpy_sampler_ranks_resume_and_padding():
    n = 5000
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(2, 50, n).astype(np.int32), rng.integers(2, 50, n).astype(np.int32)
    lengths, keys = np.maximum(src, tgt), np.column_stack([tgt, src])
    per_rank = []
    for rank in range(2):
        sampler = TokenBucketSampler(lengths, 300, seed=1, num_replicas=2, rank=rank, sort_keys=keys)
        sampler.set_epoch(3)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(isinstance(i, int) for i in batches[0])
        assert all(len(b) * int(lengths[b].max()) <= 300 for b in batches)
        sampler.resume(epoch=3, batches_done=4)
        assert list(sampler) == batches[4:]
        per_rank.append(flat(batches))
    assert sorted(per_rank[0] + per_rank[1]) == list(range(n))
    sampler = TokenBucketSampler(lengths, 300, seed=1, sort_keys=keys)
    order, slices = sampler.plan()
    assert isinstance(order, np.ndarray) and isinstance(slices, np.ndarray)  # no Python object per pair
    assert sampler.plan() is sampler.plan()  # computed once per epoch
    assert sampler.padding_efficiency(src + 1, tgt + 1) == pytest.approx(
        padding_efficiency(sampler.batches(), src + 1, tgt + 1))


def test_empty_and_rejected_inputs():
    from pipeline.errors import UserError

    assert list(TokenBucketSampler(np.array([], dtype=np.int32), 10)) == []
    with pytest.raises(UserError, match="max_tokens"):
        TokenBucketSampler(np.array([5, 80, 7]), max_tokens=64)
    with pytest.raises(ValueError, match="sort keys"):
        TokenBucketSampler([5, 6], 64, sort_keys=[1, 2, 3])
