"""Greedy decoding and beam search, on real tiny models and on a hand-made stub model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from helpers import make_model
from pipeline.attention import KVCache, padding_mask
from pipeline.decoding import (DecodingConfig, beam_search, generate, greedy_decode, length_penalty,
                               max_new_tokens, topk_wide)
from pipeline.tokenizer import BOS, EOS, PAD, UNK

A, B = 4, 5  # the stub's two word tokens


class StubModel:
    """A 'model' whose next-token distribution is a fixed function of (source row, prefix).

    It keeps the prefix of each row in the self-attention cache of its only layer (as keys),
    so beam search's cache reordering decides what prefix it sees, exactly as for the
    real model. `table(src_row, prefix)` returns {token: probability}; tokens it leaves out
    get a tiny probability. Like the real model, it accepts one memory row per sentence for
    k hypotheses each (rows sentence-major), as beam search passes them.
    """

    def __init__(self, table, vocab: int = 6):
        self.table, self.vocab = table, vocab
        self.step_widths = []  # how many new tokens each decode call got

    def log_probs(self, src_row: tuple, prefix: tuple) -> list[float]:
        probs = [1e-6] * self.vocab
        for token, p in self.table(src_row, prefix).items():
            probs[token] = p
        total = sum(probs)
        return [math.log(p / total) for p in probs]

    def encode(self, src):
        return src.float()[..., None], padding_mask(src, PAD)

    def new_cache(self, reuse_logits=False):
        return [(KVCache(), KVCache())]

    def decode(self, tgt, memory, src_mask, cache=None):
        self.step_widths.append(tgt.size(1))
        if cache is None:
            history = tgt
        else:
            self_cache, _ = cache[0]
            k = tgt.float()[:, None, :, None]  # (B, h=1, T, d=1)
            history = self_cache.append(k, k)[0][:, 0, :, 0].long()
        T_new, T = tgt.size(1), history.size(1)
        logits = torch.empty(tgt.size(0), T_new, self.vocab)
        fold = tgt.size(0) // memory.size(0)
        for b in range(tgt.size(0)):
            src_row = tuple(t for t in memory[b // fold, :, 0].long().tolist() if t != PAD)
            for j in range(T_new):
                prefix = tuple(history[b, 1: T - T_new + j + 1].tolist())  # after BOS
                logits[b, j] = torch.tensor(self.log_probs(src_row, prefix))
        return logits


def trap_table(src_row, prefix):
    """Greedy takes A (0.55) but A's continuations are flat; B (0.45) then EOS (0.9) is better."""
    if prefix == ():
        return {A: 0.55, B: 0.45}
    if prefix == (A,):
        return {EOS: 0.35, A: 0.33, B: 0.32}
    if prefix == (B,):
        return {EOS: 0.9, A: 0.05, B: 0.05}
    return {EOS: 0.8, A: 0.1, B: 0.1}


def sequence_logp(stub: StubModel, src_row: tuple, seq: tuple) -> float:
    return sum(stub.log_probs(src_row, seq[:i])[tok] for i, tok in enumerate(seq))


def brute_force_best(stub: StubModel, src_row: tuple, max_len: int, alpha: float):
    """Best finished hypothesis over all sequences: ended by EOS, or cut at max_len."""
    best = (float("-inf"), None)
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(stub.vocab), repeat=n):
            if EOS in seq[:-1] or (seq[-1] != EOS and n < max_len):
                continue
            score = sequence_logp(stub, src_row, seq) / n ** alpha
            best = max(best, (score, seq))
    return best


def strip(row: list[int]) -> tuple:
    """Hypothesis tokens up to and including EOS (or all non-PAD ones if it never ended)."""
    return tuple(row[: row.index(EOS) + 1] if EOS in row else [t for t in row if t != PAD])


def biased_model(seed: int = 0, eos_bias: float = 1.5, **overrides):
    """A random tiny model that never predicts PAD/BOS/UNK and ends sentences now and then."""
    model = make_model(seed, tie_embeddings=False, **overrides)
    head = nn.Linear(model.cfg.d_model, model.cfg.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 3)  # sharper distributions: fewer near-ties
        head.bias.zero_()
        head.bias[[PAD, BOS, UNK]] = -1e4
        head.bias[EOS] = eos_bias
    model.lm_head = head
    return model.eval()


def sources(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 3 + (i * 5) % 7
        rows.append(torch.randint(4, 24, (length,), generator=g).tolist() + [EOS])
    out = torch.full((n, max(map(len, rows))), PAD)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def model_logp(model, src: torch.Tensor, hyp: tuple) -> float:
    """log p(hyp | src) under the model, by teacher forcing."""
    tgt_in = torch.tensor([[BOS, *hyp[:-1]]])
    with torch.no_grad():
        logp = model(src[None], tgt_in).log_softmax(-1)[0]
    return float(logp[torch.arange(len(hyp)), torch.tensor(hyp)].sum())


# --- greedy -------------------------------------------------------------------------------

def countdown_table(src_row, prefix):
    """Row with source (n,) emits A n times, then EOS, then keeps emitting B (a bad model)."""
    n = src_row[0] - 10
    if EOS in prefix:
        return {B: 1.0}
    return {EOS: 1.0} if len(prefix) == n else {A: 1.0}


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_stops_at_eos_then_pads(use_cache):
    stub = StubModel(countdown_table)
    src = torch.tensor([[12, EOS], [10, EOS], [14, EOS]])  # 2, 0 and 4 A's
    out = greedy_decode(stub, src, max_len=20, use_cache=use_cache)
    expected = [[A, A, EOS, PAD, PAD], [EOS, PAD, PAD, PAD, PAD], [A, A, A, A, EOS]]
    assert out.tolist() == expected  # stops as soon as every row has ended
    if use_cache:
        assert set(stub.step_widths) == {1}
    else:
        assert stub.step_widths == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_respects_max_len(use_cache):
    stub = StubModel(countdown_table)
    src = torch.tensor([[19, EOS], [11, EOS]])  # 9 A's and 1 A
    out = greedy_decode(stub, src, max_len=4, use_cache=use_cache)
    assert out.tolist() == [[A, A, A, A], [A, EOS, PAD, PAD]]


def test_greedy_on_a_real_model_ends_rows_with_eos_then_pad():
    model = biased_model()
    out = greedy_decode(model, sources(), max_len=12)
    assert out.size(1) <= 12
    assert BOS not in out.tolist()[0]
    for row in out.tolist():
        if EOS in row:
            assert all(t == PAD for t in row[row.index(EOS) + 1:])
        assert PAD not in row[: row.index(EOS) if EOS in row else len(row)]
    assert (out == EOS).any(), "the case needs rows that end"


@pytest.mark.parametrize("overrides", [dict(), dict(pre_norm=False), dict(fused_attention=False)])
def test_cached_greedy_equals_uncached(overrides):
    model = biased_model(**overrides)
    src = sources()
    cached = greedy_decode(model, src, max_len=15, use_cache=True)
    uncached = greedy_decode(model, src, max_len=15, use_cache=False)
    assert torch.equal(cached, uncached)
    # And on a model without the decoding-friendly head.
    plain = make_model(3, **overrides)
    assert torch.equal(greedy_decode(plain, src, 10, True), greedy_decode(plain, src, 10, False))


def test_max_new_tokens_is_per_row():
    src = torch.tensor([[5, 6, 7, EOS, PAD, PAD], [5, 6, 7, 8, 9, EOS]])
    assert max_new_tokens(src, 1.5, 10).tolist() == [int(4 * 1.5) + 10, int(6 * 1.5) + 10]
    assert max_new_tokens(src[:1], 2.0, 0).tolist() == [8]


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_respects_per_row_limits(use_cache):
    model = make_model(5).eval()
    src = sources()
    limits = torch.arange(1, src.size(0) + 1)
    out = greedy_decode(model, src, limits, use_cache=use_cache)
    for row, limit in zip(out.tolist(), limits.tolist()):
        assert sum(t != PAD for t in row) <= limit
    tokens, _ = beam_search(model, src, beam=3, max_len=limits)
    assert ((tokens != PAD).sum(-1) <= limits[:, None]).all()


def test_pad_and_bos_are_never_generated():
    model = make_model(6).eval()
    with torch.no_grad():
        model.lm_head.weight[PAD].fill_(10.0)  # make PAD and BOS the model's favourites
        model.lm_head.weight[BOS].fill_(10.0)
    out = greedy_decode(model, sources(), 8)
    tokens, _ = beam_search(model, sources(), beam=2, max_len=8)
    for hyp in [*out.tolist(), *tokens.flatten(0, 1).tolist()]:
        body = hyp[: hyp.index(EOS)] if EOS in hyp else hyp
        while body and body[-1] == PAD:  # a row cut at max_len is padded to the batch width
            body.pop()
        assert body and BOS not in body and PAD not in body


# --- beam search --------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_finds_the_better_sequence_greedy_misses(alpha):
    stub = StubModel(trap_table)
    src = torch.tensor([[7, EOS]])
    max_len = 4
    greedy = strip(greedy_decode(stub, src, max_len)[0].tolist())
    best_score, best_seq = brute_force_best(stub, (7, EOS), max_len, alpha)
    tokens, scores = beam_search(stub, src, beam=2, max_len=max_len, alpha=alpha)
    assert tokens.shape[:2] == (1, 2) and scores.shape == (1, 2)
    assert strip(tokens[0, 0].tolist()) == best_seq
    assert scores[0, 0].item() == pytest.approx(best_score, abs=1e-5)
    assert greedy != best_seq
    assert sequence_logp(stub, (7, EOS), greedy) / len(greedy) ** alpha < best_score - 0.1
    # Every returned hypothesis is scored log p / length^alpha (EOS counted), best first.
    for hyp, score in zip(tokens[0].tolist(), scores[0].tolist()):
        seq = strip(hyp)
        assert score == pytest.approx(sequence_logp(stub, (7, EOS), seq) / len(seq) ** alpha, abs=1e-5)
    assert scores[0, 0] >= scores[0, 1]


def test_beam_one_on_the_stub_is_greedy():
    stub = StubModel(trap_table)
    src = torch.tensor([[7, EOS]])
    tokens, _ = beam_search(stub, src, beam=1, max_len=4)
    assert tokens[:, 0].tolist() == greedy_decode(stub, src, 4).tolist()


def test_beam_cuts_at_max_len():
    stub = StubModel(lambda src_row, prefix: {A: 0.6, B: 0.4})  # never ends
    tokens, scores = beam_search(stub, torch.tensor([[7, EOS]]), beam=3, max_len=5, alpha=0.0)
    assert tokens.shape == (1, 3, 5)
    assert EOS not in tokens.flatten().tolist()
    assert tokens[0, 0].tolist() == [A] * 5
    assert scores[0, 0].item() == pytest.approx(5 * math.log(0.6 / (1 + 4e-6)), abs=1e-4)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("overrides", [dict(), dict(pre_norm=False)])
def test_beam_one_equals_greedy(overrides):
    model = biased_model(**overrides)
    src = sources()
    greedy = greedy_decode(model, src, max_len=15)
    tokens, scores = beam_search(model, src, beam=1, max_len=15, alpha=0.0)
    assert tokens.shape == (src.size(0), 1, greedy.size(1))
    assert torch.equal(tokens[:, 0], greedy)
    for i in range(src.size(0)):
        hyp = strip(greedy[i].tolist())
        assert scores[i, 0].item() == pytest.approx(model_logp(model, src[i], hyp), abs=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_scores_are_the_model_log_probs(alpha):
    """Scores recomputed by teacher forcing agree: the cache followed every beam reorder."""
    model = biased_model(eos_bias=0.5)
    src = sources(4)
    tokens, scores = beam_search(model, src, beam=4, max_len=10, alpha=alpha)
    assert tokens.shape[:2] == (4, 4) and tokens.size(2) <= 10
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    for i in range(4):
        hyps = [strip(h) for h in tokens[i].tolist()]
        assert len(set(hyps)) == 4, "the beam hypotheses are distinct"
        for hyp, score in zip(hyps, scores[i].tolist()):
            assert score == pytest.approx(model_logp(model, src[i], hyp) / len(hyp) ** alpha, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 3])
def test_beam_results_do_not_depend_on_the_batch(beam):
    model = biased_model(eos_bias=0.8)
    src = sources(6)
    tokens, scores = beam_search(model, src, beam=beam, max_len=12)
    for i in range(src.size(0)):
        alone = src[i: i + 1, : int((src[i] != PAD).sum())]
        tokens_1, scores_1 = beam_search(model, alone, beam=beam, max_len=12)
        for j in range(beam):
            assert strip(tokens_1[0, j].tolist()) == strip(tokens[i, j].tolist())
        torch.testing.assert_close(scores_1[0], scores[i], atol=1e-4, rtol=1e-4)


def test_length_penalty():
    lengths = torch.tensor([1, 4, 9])
    torch.testing.assert_close(length_penalty(lengths, 0.0), torch.ones(3))
    torch.testing.assert_close(length_penalty(lengths, 1.0), lengths.float())
    torch.testing.assert_close(length_penalty(lengths, 0.5), torch.tensor([1.0, 2.0, 3.0]))


# --- generate(): the one entry point -------------------------------------------------------

def test_generate_picks_greedy_or_beam_and_returns_one_shape():
    model, src = biased_model(), sources()
    config = DecodingConfig(max_len_ratio=1.0, max_len_extra=3)
    limit = max_new_tokens(src, 1.0, 3)
    greedy = generate(model, src, config)
    assert greedy.scores is None and greedy.tokens.shape[:2] == (src.size(0), 1)
    assert torch.equal(greedy.tokens[:, 0], greedy_decode(model, src, limit))
    scored = generate(model, src, config, return_scores=True)  # beam 1 with scores: the same tokens
    assert torch.equal(scored.tokens[:, 0, : greedy.tokens.size(2)], greedy.tokens[:, 0])
    beam = generate(model, src, config, beam=3, nbest=2)
    tokens, scores = beam_search(model, src, 3, limit, config.length_penalty)
    assert torch.equal(beam.tokens, tokens[:, :2]) and torch.equal(beam.scores, scores[:, :2])
    assert torch.equal(generate(model, src, DecodingConfig(beam=3, max_len_ratio=1.0, max_len_extra=3)).tokens,
                       tokens[:, :1])


def test_generate_never_runs_past_the_positional_table():
    model = biased_model(max_positions=8, eos_bias=-50.0)  # never ends on its own
    src = sources()[:, :6]
    for beam in (1, 2):
        out = generate(model, src, DecodingConfig(beam=beam, max_len_ratio=10.0, max_len_extra=50))
        assert out.tokens.size(-1) == 7  # max_positions - 1 new tokens (BOS takes the first position)


@pytest.mark.parametrize("beam, nbest", [(0, 1), (2, 3), (2, 0)])
def test_generate_rejects_impossible_requests(beam, nbest):
    with pytest.raises(ValueError, match="nbest"):
        generate(biased_model(), sources(), DecodingConfig(), beam=beam, nbest=nbest)


def test_beam_search_decodes_one_row_per_sentence_at_the_first_step():
    """All beams start as the same BOS, so step 1 runs B rows, later steps B·k; the results are
    those of the plain search (the score and brute-force tests above hold them to it)."""
    model = biased_model(eos_bias=0.5)
    src = sources(3)
    rows = []
    decode = model.decode

    def counting(tgt, *args, **kwargs):
        rows.append(tgt.size(0))
        return decode(tgt, *args, **kwargs)

    model.decode = counting
    tokens, scores = beam_search(model, src, beam=4, max_len=6, alpha=1.0)
    assert rows[0] == 3 and rows[1] == 3 * 4
    for i in range(3):
        for hyp, score in zip((strip(h) for h in tokens[i].tolist()), scores[i].tolist()):
            assert score == pytest.approx(model_logp(model, src[i], hyp) / len(hyp), abs=1e-4)


@pytest.mark.parametrize("width", [32000, 40000, 32003, 500])
def test_topk_wide_equals_topk(width):
    """The chunked top-k gives torch.topk's values and columns: on random rows, on a row whose
    8 best values share one chunk, on one where they sit in 8 chunks, with -inf columns (PAD and
    BOS), for widths that 128 divides, that 125 divides (a 10k vocabulary × 4 beams), that
    nothing near 128 divides (prime: plain topk) and too narrow to chunk."""
    g = torch.Generator().manual_seed(width)
    scores = torch.randn(6, width, generator=g)
    scores[:, ::4000] = float("-inf")
    scores[1, 300:308] = 10 + torch.arange(8.0)  # one chunk holds all the best
    scores[2, torch.arange(8) * (width // 8)] = 10 + torch.arange(8.0)  # eight chunks, one each
    scores[3] = scores[3].abs().neg()  # all negative: chunk maxima below zero
    values, columns = topk_wide(scores, 8)
    want_values, want_columns = scores.topk(8, dim=1)
    assert torch.equal(values, want_values) and torch.equal(columns, want_columns)
    assert torch.equal(scores.gather(1, columns), values)
