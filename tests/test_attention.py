"""Masks, scaled dot-product attention, multi-head attention (fused and plain) and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.attention import (KVCache, MultiHeadAttention, Packing, causal_mask, padding_mask,
                                scaled_dot_product_attention)

PAD = 0


def test_padding_mask_shape_and_values():
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [9, 9, 9, 9]])
    mask = padding_mask(ids, PAD)
    assert mask.shape == (3, 1, 1, 4)
    assert mask.dtype == torch.bool
    expected = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[:, 0, 0], expected)
    # Another pad id masks that id instead.
    assert torch.equal(padding_mask(ids, 9)[2, 0, 0], torch.zeros(4, dtype=torch.bool))


def test_causal_mask_shape_and_values():
    mask = causal_mask(5)
    assert mask.shape == (1, 1, 5, 5)
    assert mask.dtype == torch.bool
    for i in range(5):
        for j in range(5):
            assert bool(mask[0, 0, i, j]) == (j <= i)
    assert causal_mask(3, torch.device("cpu")).device.type == "cpu"


def random_qkv(B=3, h=2, Tq=5, Tk=5, d=8):
    return torch.randn(B, h, Tq, d), torch.randn(B, h, Tk, d), torch.randn(B, h, Tk, d)


def masks(B=3, T=5):
    """None, padding, causal and both; every query keeps at least one key."""
    ids = torch.tensor([[4, 4, 4, 4, 4], [4, 4, 4, 0, 0], [4, 0, 0, 0, 0]])[:B, :T]
    pad = padding_mask(ids, PAD)
    causal = causal_mask(T)
    return {"none": None, "padding": pad, "causal": causal, "padding+causal": pad & causal}


@pytest.mark.parametrize("name", ["padding", "causal", "padding+causal"])
def test_attention_weights_sum_to_one_and_are_zero_on_masked_keys(name):
    q, k, v = random_qkv()
    mask = masks()[name]
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (3, 2, 5, 8) and weights.shape == (3, 2, 5, 5)
    full = mask.expand_as(weights)
    assert torch.all(weights[~full] == 0)
    assert torch.all(weights[full] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5))
    torch.testing.assert_close(out, weights @ v)


def test_scaled_dot_product_attention_matches_the_formula():
    q, k, v = random_qkv(B=1, h=1, Tq=2, Tk=3, d=4)
    _, weights = scaled_dot_product_attention(q, k, v)
    for i in range(2):
        scores = [float(q[0, 0, i] @ k[0, 0, j]) / math.sqrt(4) for j in range(3)]
        z = sum(math.exp(s) for s in scores)
        for j in range(3):
            assert weights[0, 0, i, j].item() == pytest.approx(math.exp(scores[j]) / z, rel=1e-5)


@pytest.mark.parametrize("name", ["none", "padding", "causal", "padding+causal"])
def test_plain_attention_equals_torch_sdpa(name):
    q, k, v = random_qkv()
    mask = masks()[name]
    out, _ = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)


def test_cross_attention_shapes_with_different_lengths():
    q, k, v = random_qkv(Tq=2, Tk=7)
    src = torch.tensor([[4] * 7, [4] * 4 + [0] * 3, [4] * 1 + [0] * 6])
    mask = padding_mask(src, PAD)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert out.shape == (3, 2, 2, 8) and weights.shape == (3, 2, 2, 7)
    assert torch.all(weights[2, :, :, 1:] == 0)
    torch.testing.assert_close(weights[2, :, :, 0], torch.ones(2, 2))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["none", "padding", "causal", "padding+causal"])
def test_multi_head_attention_fused_equals_plain(name):
    mha = MultiHeadAttention(d_model=16, n_heads=4, dropout=0.1, fused=True).eval()
    x = torch.randn(3, 5, 16)
    mask = masks()[name]
    fused = mha(x, mask=mask)
    assert mha.weights is None
    mha.fused = False
    plain = mha(x, mask=mask)
    assert fused.shape == plain.shape == (3, 5, 16)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5)
    # need_weights takes the plain path on a fused module and keeps the weights.
    mha.fused = True
    with_weights = mha(x, mask=mask, need_weights=True)
    torch.testing.assert_close(with_weights, plain)
    assert mha.weights.shape == (3, 4, 5, 5)
    torch.testing.assert_close(mha.weights.sum(-1), torch.ones(3, 4, 5))


def test_multi_head_cross_attention_fused_equals_plain():
    mha = MultiHeadAttention(d_model=16, n_heads=2, fused=True).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    mask = padding_mask(torch.tensor([[4] * 6, [4, 4, 0, 0, 0, 0]]), PAD)
    fused = mha(x, memory, mask)
    mha.fused = False
    torch.testing.assert_close(fused, mha(x, memory, mask), atol=1e-6, rtol=1e-5)
    # Keys beyond the padding of row 1 do not matter.
    memory2 = memory.clone()
    memory2[1, 2:] = torch.randn(4, 16)
    torch.testing.assert_close(mha(x, memory2, mask)[1], fused[1], atol=1e-6, rtol=1e-5)


def test_multi_head_attention_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(d_model=10, n_heads=4)


@pytest.mark.parametrize("fused", [True, False])
def test_incremental_self_attention_with_cache_equals_causal_forward(fused):
    mha = MultiHeadAttention(d_model=16, n_heads=4, fused=fused).eval()
    x = torch.randn(2, 6, 16)
    full = mha(x, mask=causal_mask(6))
    cache = KVCache()
    steps = [mha(x[:, t:t + 1], cache=cache) for t in range(6)]
    assert len(cache) == 6
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=1e-5)


def test_static_kv_cache_projects_context_once():
    mha = MultiHeadAttention(d_model=8, n_heads=2).eval()
    x, memory = torch.randn(2, 1, 8), torch.randn(2, 4, 8)
    cache = KVCache()
    first = mha(x, memory, cache=cache, static_kv=True)
    assert len(cache) == 4
    k = cache.k
    # A second step reuses the cached keys, whatever context is passed.
    second = mha(x, torch.zeros_like(memory), cache=cache, static_kv=True)
    assert cache.k is k and len(cache) == 4
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first, mha(x, memory))


def test_kv_cache_append_and_reorder():
    cache = KVCache()
    assert len(cache) == 0
    cache.reorder(torch.tensor([0]))  # no-op on an empty cache
    assert cache.k is None
    k1, v1 = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    k2, v2 = torch.randn(3, 2, 2, 4), torch.randn(3, 2, 2, 4)
    cache.append(k1, v1)
    k, v = cache.append(k2, v2)
    assert len(cache) == 3 and k.shape == (3, 2, 3, 4)
    torch.testing.assert_close(k, torch.cat([k1, k2], 2))
    torch.testing.assert_close(v, torch.cat([v1, v2], 2))
    k, v = k.clone(), v.clone()  # the reorder below keeps the row count: it works in place
    index = torch.tensor([2, 2, 0])
    cache.reorder(index)
    torch.testing.assert_close(cache.k, k[index])
    torch.testing.assert_close(cache.v, v[index])
    assert len(cache) == 3
    # Appending after a reorder continues the reordered rows.
    k3, v3 = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    cache.append(k3, v3)
    torch.testing.assert_close(cache.k, torch.cat([k[index], k3], 2))


def test_kv_cache_reorder_in_place_moves_only_changed_rows():
    """A beam-search reorder (same row count) rewrites the buffers in place, row sources read
    before any row is overwritten (row 0 <- 1 and row 1 <- 0 swap); dropping rows makes new ones."""
    cache = KVCache()
    cache.append(torch.randn(4, 2, 1, 3), torch.randn(4, 2, 1, 3))
    k, v = cache.append(torch.randn(4, 2, 1, 3), torch.randn(4, 2, 1, 3))  # now in buffers
    before_k, before_v, pointer = k.clone(), v.clone(), k.data_ptr()
    index = torch.tensor([1, 0, 2, 2])
    cache.reorder(index)
    assert cache.k.data_ptr() == pointer
    assert torch.equal(cache.k, before_k[index]) and torch.equal(cache.v, before_v[index])
    cache.reorder(torch.arange(4))  # nothing moves
    assert torch.equal(cache.k, before_k[index])
    keep = torch.tensor([3, 0])
    cache.reorder(keep)
    assert cache.k.data_ptr() != pointer and torch.equal(cache.k, before_k[index][keep])
    k3 = torch.randn(2, 2, 1, 3)
    cache.append(k3, torch.randn(2, 2, 1, 3))
    assert torch.equal(cache.k, torch.cat([before_k[index][keep], k3], 2))


def test_kv_cache_move_rows_reads_every_source_before_writing():
    """Beam search finds the moved rows once per step and moves them in every layer's cache:
    rows 0 and 1 swap and row 3 copies row 0's old content, on buffers and on a first fill."""
    before = torch.randn(4, 2, 3, 5)
    for steps in ((3,), (1, 2)):  # one fill (no buffers yet), then a fill and an append (buffers)
        cache, start = KVCache(), 0
        for n in steps:
            cache.append(before[:, :, start:start + n], -before[:, :, start:start + n])
            start += n
        cache.move_rows(torch.tensor([0, 1, 3]), torch.tensor([1, 0, 0]))
        want = before[torch.tensor([1, 0, 2, 0])]
        assert torch.equal(cache.k, want) and torch.equal(cache.v, -want)


def test_kv_cache_long_runs_match_concatenation():
    """Many steps with reorders (keeping or dropping rows) agree with plain cat/index_select."""
    g = torch.Generator().manual_seed(0)
    cache, ref_k, ref_v = KVCache(), None, None
    rows = 6
    for step in range(50):
        k, v = torch.randn(rows, 2, 1, 3, generator=g), torch.randn(rows, 2, 1, 3, generator=g)
        out_k, out_v = cache.append(k, v)
        ref_k = k if ref_k is None else torch.cat([ref_k, k], 2)
        ref_v = v if ref_v is None else torch.cat([ref_v, v], 2)
        assert torch.equal(out_k, ref_k) and torch.equal(out_v, ref_v) and len(cache) == step + 1
        if step % 7 == 3 or step % 5 == 1:  # some keep the row count (in place), some drop rows
            keep = max(rows - 1, 1) if step % 7 == 3 else rows
            index = torch.randint(0, rows, (keep,), generator=g)
            cache.reorder(index)
            ref_k, ref_v = ref_k.index_select(0, index), ref_v.index_select(0, index)
            rows = keep
            assert torch.equal(cache.k, ref_k) and torch.equal(cache.v, ref_v)


@pytest.mark.parametrize("fused, need_weights", [(True, False), (False, True)])
def test_cross_attention_folds_hypotheses_onto_one_row_per_sentence(fused, need_weights):
    """Beam search keeps one memory row per sentence; k hypotheses per sentence give the same
    result as k copies of that row."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, fused=fused).eval()
    B, k, S = 3, 4, 5
    memory = torch.randn(B, S, 16)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[1, ..., 3:] = False
    queries = torch.randn(B * k, 2, 16)
    folded_cache, copied_cache = KVCache(), KVCache()
    folded = attn(queries, memory, mask, cache=folded_cache, static_kv=True, need_weights=need_weights)
    folded_weights = attn.weights
    copied = attn(queries, memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), cache=copied_cache,
                  static_kv=True, need_weights=need_weights)
    assert folded_cache.k.size(0) == B and copied_cache.k.size(0) == B * k
    torch.testing.assert_close(folded, copied)
    if need_weights:
        torch.testing.assert_close(folded_weights, attn.weights)
        assert torch.all(folded_weights[k: 2 * k, ..., 3:] == 0)  # sentence 1's padding, for all its hypotheses


@pytest.mark.parametrize("fold", [1, 4])
def test_cpu_cached_cross_attention_runs_products_and_equals_the_fused_kernel(fold, monkeypatch):
    """A CPU decoding step's cross-attention reads its cache through plain batched products (the
    cache made contiguous per (row, head) once), not the fused kernel, with the fused kernel's
    results, also with k hypotheses folded onto each sentence and after rows are dropped."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    B, S = 3, 7
    memory = torch.randn(B, S, 16)
    mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
    mask[0, ..., 4:] = False
    queries = [torch.randn(B * fold, 1, 16) for _ in range(3)]

    def steps(products: bool):
        monkeypatch.setattr(MultiHeadAttention, "CPU_CROSS_PRODUCTS", products)
        cache, outs = KVCache(), []
        for q in queries:
            outs.append(attn(q, memory, mask, cache=cache, static_kv=True))
        keep = torch.tensor([0, 2])  # a sentence leaves the batch
        cache.reorder(keep)
        rows = (keep[:, None] * fold + torch.arange(fold)).reshape(-1)
        outs.append(attn(queries[0][rows], memory[keep], mask[keep], cache=cache, static_kv=True))
        return outs, cache

    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real_sdpa(*a, **kw))
    fused, _ = steps(products=False)
    assert len(calls) == 4
    calls.clear()
    by_products, cache = steps(products=True)
    assert not calls and cache.k.is_contiguous() and cache.v.is_contiguous()
    for got, expected in zip(by_products, fused):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cached_self_attention_runs_products_in_bf16_only(dtype, monkeypatch):
    """A CPU decoding step's self-attention keeps the fused kernel in fp32 (faster there) and runs
    plain products in bf16 (the fused kernel's bf16 path is the slower one), with its results."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval().to(dtype)
    steps = [torch.randn(3, 1, 16).to(dtype) for _ in range(4)]
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real_sdpa(*a, **kw))

    def decode(products: bool):
        monkeypatch.setattr(MultiHeadAttention, "CPU_BF16_SELF_PRODUCTS", products)
        cache = KVCache()
        return [attn(x, cache=cache) for x in steps]

    fused = decode(products=False)
    assert len(calls) == len(steps)
    calls.clear()
    by_products = decode(products=True)
    assert len(calls) == (len(steps) if dtype == torch.float32 else 0)
    for got, expected in zip(by_products, fused):
        torch.testing.assert_close(got, expected, atol=2e-2 if dtype == torch.bfloat16 else 1e-6, rtol=2e-2)


def test_causal_flag_equals_an_explicit_causal_mask():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    fused, plain = MultiHeadAttention(16, 4, fused=True).eval(), MultiHeadAttention(16, 4, fused=False).eval()
    plain.load_state_dict(fused.state_dict())
    expected = plain(x, mask=causal_mask(6))
    torch.testing.assert_close(fused(x, causal=True), expected)
    torch.testing.assert_close(plain(x, causal=True), expected)
    torch.testing.assert_close(fused(x, mask=causal_mask(6)), expected)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_training_attention_dropout_path_follows_the_device(device, monkeypatch):
    """With attention dropout in training, CPU runs the plain path (our cheap masks); other
    devices (CUDA; here the meta device, which has no CPU kernels) hand the dropout to the fused
    kernel, so flash attention still runs during GPU training."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    mha = MultiHeadAttention(16, 2, dropout=0.25).to(device).train()
    x = torch.randn(2, 5, 16, device=device)
    out = mha(x, causal=True)
    assert out.shape == (2, 5, 16)
    assert calls == ([] if device == "cpu" else [0.25])
    mha.eval()
    mha(x, causal=True)
    assert calls[-1] == 0.0  # no dropout outside training, on every device


@pytest.mark.parametrize("fused", [True, False])
def test_causal_flag_with_a_padding_mask_combines_both(fused):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, fused=fused).eval()
    x = torch.randn(2, 5, 16)
    keys = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    pad = keys[:, None, None, :]  # (B, 1, 1, Tk)
    both = mha(x, mask=pad, causal=True)
    explicit = mha(x, mask=pad & causal_mask(5))
    torch.testing.assert_close(both, explicit)
    assert not torch.allclose(both, mha(x, mask=pad))  # the causal part was not dropped


def test_packing_round_trip_keeps_real_rows_and_zeroes_padding():
    real = torch.tensor([[True, True, False], [True, False, False]])
    packing = Packing(real)
    x = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    packed = packing.pack(x)
    assert packed.shape == (3, 2) and torch.equal(packed, x[real])
    back = packing.unpack(packed)
    assert torch.equal(back[real], x[real]) and torch.all(back[~real] == 0)


def test_no_packing_under_torch_compile(monkeypatch):
    """Packing's row count and positions depend on the data, which would break a compiled graph:
    under torch.compile the layers run on the padded batch (the same results: test_model.py)."""
    real = torch.tensor([[True, True, False, False], [True, False, False, False]])
    assert Packing.if_worthwhile(real) is not None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert Packing.if_worthwhile(real) is None
