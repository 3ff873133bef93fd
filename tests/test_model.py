"""The Transformer: config checks, positions, shapes, causality, padding, tying, and learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import make_model, tiny_config
from pipeline.batching import pad
from pipeline.decoding import greedy_decode
from pipeline.model import Transformer, TransformerConfig, sinusoidal_positions
from pipeline.tokenizer import BOS, EOS, PAD

VARIANTS = [dict(pre_norm=True), dict(pre_norm=False), dict(fused_attention=False),
            dict(pre_norm=False, tie_embeddings=False)]


def random_ids(B, T, vocab=24, generator=None):
    return torch.randint(4, vocab, (B, T), generator=generator)


# --- config -------------------------------------------------------------------------------

def test_config_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)


@pytest.mark.parametrize("name", ["vocab_size", "d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff",
                                  "max_positions"])
@pytest.mark.parametrize("value", [0, -4])
def test_config_rejects_non_positive_sizes(name, value):
    kwargs = {name: value}
    if name == "d_model":
        kwargs["n_heads"] = 1
    with pytest.raises(ValueError, match=name):
        TransformerConfig(**kwargs)


@pytest.mark.parametrize("name", ["dropout", "attention_dropout", "activation_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_config_rejects_bad_dropout(name, value):
    with pytest.raises(ValueError, match=name):
        TransformerConfig(**{name: value})


def test_config_to_dict_round_trips():
    cfg = tiny_config(pre_norm=False)
    assert TransformerConfig(**cfg.to_dict()) == cfg


# --- positions ----------------------------------------------------------------------------

@pytest.mark.parametrize("d_model", [8, 16, 64])
def test_sinusoidal_positions_match_the_formula(d_model):
    P = 60
    table = sinusoidal_positions(P, d_model)
    assert table.shape == (P, d_model)
    half = d_model // 2
    expected = torch.zeros(P, d_model, dtype=torch.float64)
    for pos in range(P):
        for i in range(half):
            angle = pos / 10000 ** (2 * i / d_model)
            expected[pos, i] = math.sin(angle)
            expected[pos, half + i] = math.cos(angle)
    torch.testing.assert_close(table.double(), expected, atol=2e-5, rtol=0)


def test_embeddings_add_scaled_tokens_and_positions():
    model = make_model()
    ids = random_ids(2, 5)
    emb = model.src_embed
    expected = emb.embedding(ids) * math.sqrt(32) + sinusoidal_positions(64, 32)[3:8]
    torch.testing.assert_close(emb(ids, offset=3), expected)
    with pytest.raises(ValueError, match="max_positions"):
        emb(random_ids(1, 65))


# --- shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(variant):
    model = make_model(**variant)
    src, tgt = random_ids(3, 7), random_ids(3, 5)
    memory, src_mask = model.encode(src)
    assert memory.shape == (3, 7, 32)
    assert src_mask.shape == (3, 1, 1, 7)
    assert model.decode(tgt, memory, src_mask).shape == (3, 5, 24)
    logits = model(src, tgt)
    assert logits.shape == (3, 5, 24)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pre_norm", [True, False])
def test_pre_and_post_norm_both_train(pre_norm):
    model = make_model(pre_norm=pre_norm).train()
    src, tgt = random_ids(4, 6), random_ids(4, 5)
    loss = F.cross_entropy(model(src, tgt).flatten(0, 1), tgt.flatten())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert isinstance(model.encoder_norm, torch.nn.LayerNorm) == pre_norm
    if not pre_norm:
        # Post-norm: every layer's output is layer-normalised (zero mean, unit variance).
        x = model.src_embed(src)
        out = model.encoder_layers[0](x, model.encode(src)[1])
        torch.testing.assert_close(out.mean(-1), torch.zeros(4, 6), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(4, 6), atol=1e-3, rtol=0)


# --- causality and padding ---------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_decoder_is_causal(variant):
    model = make_model(**variant)
    src, tgt = random_ids(2, 6), random_ids(2, 7)
    before = model(src, tgt)
    for j in (1, 4, 6):
        changed = tgt.clone()
        changed[:, j] = torch.where(tgt[:, j] == 5, 6, 5)
        after = model(src, changed)
        torch.testing.assert_close(after[:, :j], before[:, :j], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(after[:, j], before[:, j], atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_packed_encoder_gradients_equal_each_sentence_alone(variant):
    """A batch that is mostly padding runs the encoder's position-wise layers on its real tokens
    only (attention.Packing): the memory is zero at padding, and training through it gives the
    gradients of the sentences run one by one (no padding, no packing), summed."""
    model = make_model(**variant).train()  # dropout 0: deterministic
    src, tgt = random_ids(3, 8), random_ids(3, 4)
    src[0, 3:] = PAD
    src[2, 5:] = PAD  # 8 of 24 positions are padding: the encoder packs
    memory, _ = model.encode(src)
    assert torch.all(memory[0, 3:] == 0) and torch.all(memory[2, 5:] == 0)
    model(src, tgt).square().sum().backward()
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for i, length in enumerate((3, 8, 5)):
        model(src[i:i + 1, :length], tgt[i:i + 1]).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(batched[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_cross_attention_keys_come_from_the_real_source_positions_only():
    """fill_cross_caches projects every layer's keys and values from the memory's real rows
    (attention.Packing): the same values as projecting the padded memory at real positions,
    zero at padding (where the padded projection would give the bias), and one fill per run."""
    model = make_model().eval()
    with torch.no_grad():
        for layer in model.decoder_layers:
            layer.cross_attn.w_k.bias.normal_()
            layer.cross_attn.w_v.bias.normal_()
    src = random_ids(3, 8)
    src[0, 3:] = PAD
    src[2, 5:] = PAD  # a third is padding: the fill packs
    real = src != PAD
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        cache = model.new_cache()
        model.decode(torch.full((3, 1), BOS), memory, src_mask, cache)
        for layer, (_, cross) in zip(model.decoder_layers, cache):
            k, v = layer.cross_attn.project_kv(memory)  # (B, h, S, d_k), the padded way
            for got, want in ((cross.k, k), (cross.v, v)):
                torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real])
                assert torch.all(got.transpose(1, 2)[~real] == 0)
                assert not torch.all(want.transpose(1, 2)[~real] == 0)  # the padded way gives the bias
        keys = [cross.k for _, cross in cache]
        model.decode(torch.full((3, 1), BOS), memory, src_mask, cache)
        assert all(cross.k is k for (_, cross), k in zip(cache, keys))  # filled once per run


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_real_positions(variant):
    model = make_model(**variant)
    src = random_ids(3, 6)
    src[1, 4:] = PAD  # a shorter sentence inside the batch
    tgt = random_ids(3, 5)
    base = model(src, tgt)
    padded_src = torch.cat([src, torch.full((3, 4), PAD)], 1)
    torch.testing.assert_close(model(padded_src, tgt), base, atol=1e-5, rtol=1e-5)
    padded_tgt = torch.cat([tgt, torch.full((3, 3), PAD)], 1)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :5], base, atol=1e-5, rtol=1e-5)
    # The shorter row equals the same sentence decoded alone, without any padding.
    alone = model(src[1:2, :4], tgt[1:2])
    torch.testing.assert_close(base[1:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_cached_decoding_steps_equal_full_decode(variant):
    model = make_model(**variant)
    src, tgt = random_ids(2, 6), random_ids(2, 5)
    src[0, 4:] = PAD
    memory, src_mask = model.encode(src)
    full = model.decode(tgt, memory, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t:t + 1], memory, src_mask, cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert all(len(self_cache) == 5 and len(cross) == 6 for self_cache, cross in cache)


def test_cache_with_reuse_logits_writes_every_step_into_one_buffer():
    """generate() asks for one logits buffer per run (no fresh 8 MB tensor per step): each step's
    logits are right when returned and live in the same storage as the step before."""
    model = make_model().eval()
    src, tgt = random_ids(3, 6), random_ids(3, 4)
    with torch.no_grad():  # decoding; with autograd on, every step gets its own tensor
        memory, src_mask = model.encode(src)
        full = model.decode(tgt, memory, src_mask)
        cache = model.new_cache(reuse_logits=True)
        pointers = set()
        for t in range(4):
            logits = model.decode(tgt[:, t:t + 1], memory, src_mask, cache)
            torch.testing.assert_close(logits, full[:, t:t + 1], atol=1e-5, rtol=1e-5)
            pointers.add(logits.data_ptr())
    assert len(pointers) == 1


# --- embeddings ---------------------------------------------------------------------------

def test_tied_embeddings_share_storage():
    model = make_model(tie_embeddings=True)
    shared = model.src_embed.embedding.weight
    assert model.tgt_embed.embedding.weight is shared
    assert model.lm_head.weight is shared
    assert model.lm_head.weight.data_ptr() == shared.data_ptr()
    # One tensor in the parameter list, and an update through one is seen by all.
    assert sum(p is shared for p in model.parameters()) == 1
    with torch.no_grad():
        model.lm_head.weight[7, 0] = 123.0
    assert model.src_embed.embedding.weight[7, 0] == 123.0


def test_untied_embeddings_are_separate():
    model = make_model(tie_embeddings=False)
    ptrs = {model.src_embed.embedding.weight.data_ptr(), model.tgt_embed.embedding.weight.data_ptr(),
            model.lm_head.weight.data_ptr()}
    assert len(ptrs) == 3


@pytest.mark.parametrize("tie", [True, False])
def test_pad_embedding_is_zero(tie):
    model = make_model(tie_embeddings=tie)
    assert torch.all(model.src_embed.embedding.weight[PAD] == 0)
    assert torch.all(model.tgt_embed.embedding.weight[PAD] == 0)


# --- learning -----------------------------------------------------------------------------

def copy_batch(n: int, generator: torch.Generator, vocab: int = 20):
    """Random sequences of 5-10 symbols: source ids+EOS, target BOS+ids -> ids+EOS."""
    lengths = torch.randint(5, 11, (n,), generator=generator).tolist()
    seqs = [torch.randint(4, vocab, (n_,), generator=generator).tolist() for n_ in lengths]
    return pad([s + [EOS] for s in seqs]), pad([[BOS] + s for s in seqs]), pad([s + [EOS] for s in seqs])


def test_learns_copy_task():
    torch.manual_seed(0)
    steps = 500
    cfg = TransformerConfig(vocab_size=20, d_model=64, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=128,
                            dropout=0.0, max_positions=32)
    model = Transformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 50, max(0.05, 1 - s / steps)))
    train_gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        src, tgt_in, tgt_out = copy_batch(32, train_gen)
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()

    model.eval()
    src, tgt_in, tgt_out = copy_batch(200, torch.Generator().manual_seed(12345))  # held out
    real = tgt_out != PAD
    with torch.no_grad():
        teacher_forced = model(src, tgt_in).argmax(-1)
    assert (teacher_forced[real] == tgt_out[real]).float().mean() >= 0.99

    out = greedy_decode(model, src, max_len=tgt_out.size(1) + 2)
    hyp = torch.full_like(tgt_out, PAD)
    n = min(out.size(1), hyp.size(1))
    hyp[:, :n] = out[:, :n]
    assert (hyp[real] == tgt_out[real]).float().mean() >= 0.99
    assert (out[:, tgt_out.size(1):] == PAD).all(), "every copy ends (EOS) within the target length"
