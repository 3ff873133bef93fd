"""The Python API: Translator.from_checkpoint, translate, nbest."""

import pytest
import torch

from helpers import SEED
from pipeline.errors import UserError
from pipeline.translator import Translator


def test_package_level_import_and_translation(seed_run):
    import pipeline

    path, pairs = seed_run
    translator = pipeline.Translator.from_checkpoint(path, device="auto")
    assert translator.languages == ("ko", "en") and translator.decoding.beam == 1
    assert translator.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert translator.translate([p[0] for p in pairs]) == [p[1] for p in pairs]  # what it was trained on


def test_order_empty_lines_and_batching_do_not_change_results(seed_run):
    path, pairs = seed_run
    sources = [pairs[3][0], "", SEED[0], "   ", pairs[1][0]]
    batched = Translator.from_checkpoint(path, max_tokens=8).translate(sources)
    assert batched[1] == "" and batched[3] == ""
    one_by_one = Translator.from_checkpoint(path, batch_size=1)
    assert [one_by_one.translate([s])[0] for s in sources] == batched
    assert batched[2] == SEED[1]


def test_wrong_inputs_are_named_not_translated_character_by_character(seed_run):
    path, pairs = seed_run
    translator = Translator.from_checkpoint(path)
    with pytest.raises(TypeError, match=r"got one string: use translate\(\[text\]\)"):
        translator.translate(SEED[0])
    with pytest.raises(TypeError, match="sentence 1 is NoneType, not str"):
        translator.translate([SEED[0], None])
    with pytest.raises(TypeError, match="sentence 0 is int"):
        translator.translate([5])
    with pytest.raises(TypeError, match="got NoneType"):
        translator.translate(None)
    with pytest.raises(ValueError, match="sentence 0 is not valid Unicode"):
        translator.translate(["\ud800"])
    with pytest.raises(TypeError, match="the sentence is NoneType"):
        translator.nbest(None)
    with pytest.raises(TypeError, match="the sentence is list"):
        translator.attention([SEED[0]])
    assert translator.translate(p[0] for p in pairs[:2]) == [p[1] for p in pairs[:2]]  # any iterable


def test_nbest_is_sorted_and_widens_the_beam(seed_run):
    path, _ = seed_run
    translator = Translator.from_checkpoint(path, beam=2)
    hyps = translator.nbest(SEED[0], k=4)
    assert len(hyps) == 4
    scores = [score for _, score in hyps]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert hyps[0][0] == SEED[1] == translator.translate([SEED[0]])[0]
    assert translator.nbest("  ") == [("", 0.0)]


def test_long_input_is_cut_and_counted(seed_run):
    path, _ = seed_run
    translator = Translator.from_checkpoint(path)
    translator.translate(["만나서 " * 400, SEED[0]])
    assert translator.truncated == 1


@pytest.mark.parametrize("kwargs", [{"beam": 0}, {"batch_size": 0}, {"max_tokens": -1}])
def test_bad_options_are_user_errors(seed_run, kwargs):
    path, _ = seed_run
    with pytest.raises(UserError, match=next(iter(kwargs))):
        Translator.from_checkpoint(path, **kwargs)


def test_attention_follows_the_greedy_translation(seed_run):
    path, _ = seed_run
    maps = Translator.from_checkpoint(path, beam=3).attention(SEED[0])
    assert maps.target == SEED[1]  # greedy, whatever the beam
    assert len(maps.cross) == 2 and maps.cross[0].shape == (4, len(maps.tgt_out_tokens), len(maps.src_tokens))


def test_inference_model_merges_projections_without_changing_outputs(seed_run):
    from pipeline.checkpoints import load_checkpoint
    from pipeline.decoding import DecodingConfig, generate
    from pipeline.translator import inference_model

    checkpoint = load_checkpoint(seed_run[0], "cpu")
    merged = inference_model(checkpoint.model)
    assert isinstance(checkpoint.model.lm_head, torch.nn.Linear)  # the checkpoint's model is left alone
    assert merged.decoder_layers[0].self_attn.w_qkv.out_features == 3 * checkpoint.config.d_model
    assert merged.decoder_layers[0].cross_attn.w_kv.out_features == 2 * checkpoint.config.d_model
    assert checkpoint.model.decoder_layers[0].self_attn.w_qkv is None  # the checkpoint's model is left alone
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12], [2, 13, 14]])
    with torch.no_grad():
        torch.testing.assert_close(merged(src, tgt), checkpoint.model.eval()(src, tgt), rtol=1e-5, atol=1e-5)
    config = DecodingConfig()
    for beam in (1, 3):  # the cached decoding path (self-attention appends Q/K/V of one step)
        assert torch.equal(generate(merged, src, config, beam=beam).tokens,
                           generate(checkpoint.model, src, config, beam=beam).tokens)


def test_int8_translator_keeps_what_the_model_learnt(seed_run):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    path, pairs = seed_run
    translator = Translator.from_checkpoint(path, device="cpu", quantize="int8")
    layers = [m for m in translator.model.modules() if isinstance(m, DynamicQuantizedLinear)]
    assert translator.model.lm_head in layers and translator.model.decoder_layers[0].self_attn.w_qkv in layers
    assert translator.translate([p[0] for p in pairs]) == [p[1] for p in pairs]
    assert translator.with_beam(3).translate([SEED[0]]) == [SEED[1]]


def test_unknown_quantization_is_a_user_error(seed_run):
    with pytest.raises(UserError, match="--quantize must be one of int8"):
        Translator.from_checkpoint(seed_run[0], quantize="int4")


def test_bf16_translator_keeps_what_the_model_learnt(seed_run):
    path, pairs = seed_run
    translator = Translator.from_checkpoint(path, device="cpu", quantize="bf16")
    assert {p.dtype for p in translator.model.parameters()} == {torch.bfloat16}
    assert next(translator.checkpoint.model.parameters()).dtype == torch.float32  # the checkpoint's stays fp32
    assert translator.translate([p[0] for p in pairs]) == [p[1] for p in pairs]
    assert translator.with_beam(3).translate([SEED[0]]) == [SEED[1]]


def require_mkl_packing():
    """Skip where torch has no MKL (not an x86 build); where it has, the packing self-check must
    pass (a check broken on this machine would otherwise switch packing off unseen)."""
    from pipeline.translator import packing_works

    if not torch.backends.mkl.is_available():
        pytest.skip("torch here is built without MKL (e.g. an ARM build): inference_model packs no weights on it, "
                    "so there is no packed path to test")
    assert packing_works(torch.float32) and packing_works(torch.bfloat16) == torch.backends.mkldnn.is_available()


PRODUCTS = {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul"}  # torch's own product


def ops_run(layer, x) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        layer(x)
    return {event.name for event in prof.events()}


def test_packed_linear_layers_give_the_linear_results():
    from pipeline.translator import PackedLinear

    require_mkl_packing()
    generator = torch.Generator().manual_seed(0)
    for n_in, n_out, bias in ((256, 768, True), (1024, 256, True), (256, 8000, False), (7, 5, True)):
        linear = torch.nn.Linear(n_in, n_out, bias=bias)
        packed = PackedLinear(linear)
        assert packed.weight is linear.weight  # shared: no second copy of the fp32 weights
        for shape in ((1, n_in), (64, n_in), (4, 64, n_in), (3, 1, n_in), (0, n_in), (300, n_in), (2, 200, n_in)):
            x = torch.randn(*shape, generator=generator)
            with torch.inference_mode():
                torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
        # bf16 (--quantize bf16, ArgmaxHead): oneDNN's packed product, bit for bit the unpacked one's
        linear = linear.to(torch.bfloat16)
        packed = PackedLinear(linear)
        for shape in ((1, n_in), (64, n_in), (4, 64, n_in), (0, n_in), (600, n_in)):
            x = torch.randn(*shape, generator=generator).to(torch.bfloat16)
            with torch.inference_mode():
                assert torch.equal(packed(x), linear(x)), shape
                assert "mkldnn::_linear_pointwise" in ops_run(packed, x) and not ops_run(packed, x) & PRODUCTS


def test_fp32_cpu_inference_packs_every_linear_layer(seed_run):
    from pipeline.checkpoints import load_checkpoint
    from pipeline.translator import PackedLinear, inference_model

    require_mkl_packing()
    model = load_checkpoint(seed_run[0], "cpu").model
    layers = [m for m in inference_model(model).modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert layers and all(isinstance(m, PackedLinear) for m in layers)
    bf16 = [m for m in inference_model(model, "bf16").modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]
    assert bf16 and all(isinstance(m, PackedLinear) and m.weight.dtype == torch.bfloat16 for m in bf16)
    int8 = inference_model(model, "int8")  # torch's dynamically quantized layers, not packed here
    assert not any(isinstance(m, PackedLinear) for m in int8.modules())


def test_packed_linear_runs_the_packed_kernel_only_where_it_is_right():
    from pipeline.translator import PackedLinear

    require_mkl_packing()
    linear = torch.nn.Linear(32, 48)
    packed = PackedLinear(linear)
    with torch.inference_mode():
        ran = ops_run(packed, torch.randn(PackedLinear.MAX_ROWS, 32))
        assert "mkl::_mkl_linear" in ran and not ran & PRODUCTS  # the packed kernel, not its fallback inside
        assert ops_run(packed, torch.randn(PackedLinear.MAX_ROWS + 1, 32)) & PRODUCTS  # torch's above the limit
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: torch's product, in bf16
            assert packed(torch.randn(5, 32)).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # a wrong width fails as F.linear does
        packed(torch.randn(5, 40))
    # Gradients, for the weights or for the input only: torch's product, so they flow.
    packed(torch.randn(5, 32)).sum().backward()
    assert linear.weight.grad is not None
    frozen, x = PackedLinear(torch.nn.Linear(32, 48).requires_grad_(False)), torch.randn(5, 32, requires_grad=True)
    frozen(x).sum().backward()
    assert x.grad is not None
    # A weight changed in place after packing: packed again, not the stale copy.
    with torch.no_grad():
        linear.weight.mul_(-2.0)
    x = torch.randn(5, 32)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), linear(x))
        assert "mkl::_mkl_linear" in ops_run(packed, x)
    # Replaced without an in-place change (the version stays): a dtype round trip, an assigning load.
    packed.to(torch.bfloat16).to(torch.float32)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), torch.nn.functional.linear(x, packed.weight, packed.bias))
    fresh = torch.nn.Linear(32, 48)
    packed.load_state_dict(fresh.state_dict(), assign=True)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), fresh(x))


def test_weights_are_packed_only_where_a_packed_product_runs():
    from helpers import make_model
    from pipeline.decoding import DecodingConfig, generate
    from pipeline.translator import PackedLinear, inference_model

    require_mkl_packing()
    layer = PackedLinear(torch.nn.Linear(32, 48))
    with torch.inference_mode():
        layer(torch.randn(PackedLinear.MAX_ROWS + 1, 32))
        assert layer.packed is None  # torch's product ran: nothing packed
        layer(torch.randn(3, 32))
        assert layer.packed is not None
    model = inference_model(make_model())
    generate(model, torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]]), DecodingConfig(), beam=1)
    attention = model.decoder_layers[0].self_attn
    assert attention.w_qkv.packed is not None and model.lm_head.packed is not None
    assert attention.w_k.packed is None  # replaced by the merged W_Q|W_K|W_V: never packed


def test_packed_linear_survives_copies_and_pickles():
    import copy
    import pickle

    from pipeline.translator import PackedLinear

    require_mkl_packing()
    linear = torch.nn.Linear(32, 48)
    x = torch.randn(7, 32)
    packed = PackedLinear(linear)
    with torch.inference_mode():
        packed(x)  # packed now: an opaque oneDNN tensor, which neither copies nor pickles
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        with torch.inference_mode():
            assert "mkl::_mkl_linear" in ops_run(clone, x)  # packed again
            torch.testing.assert_close(clone(x), linear(x))


def test_a_packed_lm_head_writes_large_steps_into_the_reused_logits_buffer():
    from helpers import make_model
    from pipeline.translator import PackedLinear, inference_model

    require_mkl_packing()
    model = inference_model(make_model())
    assert isinstance(model.lm_head, PackedLinear)
    for sentences in (3, PackedLinear.MAX_ROWS + 4):
        src = torch.randint(4, model.cfg.vocab_size, (sentences, 5))
        with torch.inference_mode():
            memory, src_mask = model.encode(src)
            cache = model.new_cache(reuse_logits=True)
            logits = model.decode(torch.full((sentences, 1), 2), memory, src_mask, cache)
            uncached = model.decode(torch.full((sentences, 1), 2), memory, src_mask)
        torch.testing.assert_close(logits, uncached, rtol=1e-4, atol=1e-4)
        # Above the limit torch's product writes into the run's buffer; below it, the packed kernel's own result.
        assert (logits.data_ptr() == cache._logits.data_ptr()) == (sentences > PackedLinear.MAX_ROWS)


ALLOCATOR_PROBE = """
import ctypes, json, sys, torch
from pipeline.translator import keep_freed_memory


FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
libc = ctypes.CDLL("libc.so.6")
# mallinfo2 (glibc >= 2.33) has size_t fields; older glibc has mallinfo, whose int fields are
# enough for the tens of MB measured here.
name, field_type = ("mallinfo2", ctypes.c_size_t) if hasattr(libc, "mallinfo2") else ("mallinfo", ctypes.c_int)
heap_state = getattr(libc, name)
heap_state.restype = type("MallInfo", (ctypes.Structure,), {"_fields_": [(f, field_type) for f in FIELDS]})
kept = keep_freed_memory() if sys.argv[1] == "kept" else None
before = heap_state()
block = torch.empty(4 << 20).fill_(1.0)  # 16 MB: within what any glibc lets keep_freed_memory keep
during = heap_state()
del block
after = heap_state()
print(json.dumps({"kept": kept, "mapped_mb": (during.hblkhd - before.hblkhd) / 2**20,
                  "free_in_heap_mb": (after.fordblks - before.fordblks) / 2**20}))
"""
ALLOCATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def allocator_probe(variant: str, env: dict | None = None) -> dict:
    """In a fresh process with glibc's default malloc settings (plus `env`): whether
    keep_freed_memory() set them ("kept"; None for "default"), how much of a 16 MB tensor glibc
    mapped on its own (mallinfo's hblkhd) and how much heap it kept free once the tensor was gone."""
    import json
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_SETTINGS}
    out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, variant], capture_output=True, text=True,
                         check=True, env={**base, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def argmax_case(vocab: int = 4096, d: int = 64, rows: int = 48, seed: int = 0):
    """A random LM head weight (vocab, d) as the model initialises its embeddings, and states
    (rows, d) as a final LayerNorm leaves them (about unit variance per feature)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, d, generator=generator) * d ** -0.5, torch.randn(rows, d, generator=generator)


def lm_head(weight):
    head = torch.nn.Linear(weight.size(1), weight.size(0), bias=False)
    head.weight.data = weight
    return head


def fp32_tokens(weight, states, banned):
    logits = states @ weight.t()
    logits[:, list(banned)] = float("-inf")
    return logits.max(-1).indices


def test_bf16_logits_stay_within_the_argmax_heads_error_bound():
    from pipeline.translator import ArgmaxHead

    weight, states = argmax_case()
    weight *= 0.7  # every row shorter than the worst-case row below, so that its norm is the bound's
    # The worst case for the bound: a token and a state whose every value bf16 rounds down by
    # nearly its unit roundoff 2⁻⁸, all terms of the sum of one sign, |y| ∝ |w| (Cauchy–Schwarz
    # then holds with equality): the error is nearly 2·2⁻⁸·‖y‖·‖w‖, beyond a bound of 1.5·2⁻⁸.
    signs = torch.randn(weight.size(1), generator=torch.Generator().manual_seed(1)).sign()
    nearly_down = 1 + 0.99 * 2.0 ** -8
    weight[7] = signs * nearly_down * weight.size(1) ** -0.5
    worst = signs * nearly_down
    head = ArgmaxHead(lm_head(weight))
    for y in (states, states * 30.0, states * 1e-3, worst[None]):
        approx = (y.to(torch.bfloat16) @ head.weight_bf16[:head.vocab].t()).double()
        exact = y.double() @ weight.double().t()
        bound = head.error_per_norm * torch.linalg.vector_norm(y.double(), dim=1)
        error = (approx - exact).abs().amax(1)
        assert (error <= bound).all(), float((error / bound).max())
        assert (error > bound / 100).any()  # a bound, not a wild over-estimate: bf16 does err


def test_argmax_head_picks_the_fp32_heads_tokens_near_ties_and_bans_included():
    from pipeline.translator import ArgmaxHead

    weight, states = argmax_case(vocab=2000)  # not a whole number of 128-token chunks
    banned = (0, 2)
    weight[2] = states[0] * 0.5  # a banned token that would win row 0 by far
    weight[1990] = states[4] * 0.5  # row 4's winner in the last, partial chunk
    # Rows 1-3: twelve tokens whose logits differ by less than bf16 resolves, so the pick
    # needs the fp32 recheck, and the candidates' bf16 scores cannot settle it.
    tied = torch.arange(100, 112)
    for row in (1, 2, 3):
        weight[tied + 20 * row] = states[row] * 0.3 + 1e-4 * torch.randn(12, states.size(1))
    head = ArgmaxHead(lm_head(weight))
    expected = fp32_tokens(weight, states, banned)
    picked = head(states, banned)
    assert torch.equal(picked, expected)
    assert picked[0] != 2 and picked[4] == 1990
    assert all(int(picked[r]) in (tied + 20 * r).tolist() for r in (1, 2, 3))
    assert torch.equal(head(states[:0], banned), expected[:0])  # no rows


def test_argmax_head_looks_past_the_chunks_it_searched():
    """Eight tokens of equal bf16 logits in eight chunks, for each row: the three chunks searched
    hold three of them, and the best (by 1e-4 relative, invisible to bf16) is often elsewhere;
    only the next chunk's maximum in the bound sends those rows to the second stage."""
    from pipeline.translator import ArgmaxHead

    weight, states = argmax_case(vocab=2048, rows=64, seed=2)
    generator = torch.Generator().manual_seed(3)
    for row in range(64):
        tokens = torch.arange(8) * 256 + row  # one per chunk of 128, eight chunks apart
        direction = states[row] / states[row].norm() ** 2
        weight[tokens] = 10 * direction * (1 + 1e-4 * torch.rand(8, 1, generator=generator))
    head = ArgmaxHead(lm_head(weight))
    assert torch.equal(head(states), fp32_tokens(weight, states, ()))


def test_argmax_head_breaks_exact_ties_as_max_does():
    from pipeline.translator import ArgmaxHead

    weight, states = argmax_case(vocab=2000)
    for row, (low, high) in enumerate(((300, 301), (100, 1999), (1500, 1501))):
        weight[low] = weight[high] = states[row] * 0.5  # two tokens with the very same logits
    head = ArgmaxHead(lm_head(weight))
    picked = head(states)
    assert picked[:3].tolist() == [300, 100, 1500]
    assert torch.equal(picked, fp32_tokens(weight, states, ()))


def test_argmax_head_finds_the_fp32_tokens_when_bf16_cannot_rank_the_candidates():
    """Force the second stage for every row (the candidates' bound never clears): every token
    is rescored in fp32, banned ones excluded, and the same tokens come out."""
    from pipeline.translator import ArgmaxHead, WeightStamp

    weight, states = argmax_case(seed=1)
    weight[1] = states[5]  # a banned token that would win row 5
    head = ArgmaxHead(lm_head(weight))
    head.error_per_norm = float("inf")
    head.prepared_for = WeightStamp(head.head.weight)
    assert torch.equal(head(states, (0, 1)), fp32_tokens(weight, states, (0, 1)))


def test_argmax_head_follows_changes_to_the_heads_weight():
    from pipeline.translator import ArgmaxHead

    weight, states = argmax_case(seed=4)
    head_layer = lm_head(weight)
    head = ArgmaxHead(head_layer)
    before = head(states)
    with torch.no_grad():
        head_layer.weight.copy_(argmax_case(seed=5)[0])  # in place, as load_state_dict does
    after = head(states)
    assert not torch.equal(after, before) and torch.equal(after, fp32_tokens(head_layer.weight, states, ()))
    head_layer.weight = torch.nn.Parameter(argmax_case(seed=6)[0])  # replaced, as .to() may do
    assert torch.equal(head(states), fp32_tokens(head_layer.weight, states, ()))
    with pytest.raises(ValueError, match="vocabulary of at least"):
        ArgmaxHead(lm_head(weight[:300]))


def test_greedy_decoding_through_the_argmax_head_gives_the_same_translations():
    from pipeline.decoding import DecodingConfig, generate
    from pipeline.model import Transformer, TransformerConfig
    from pipeline.translator import ArgmaxHead, inference_model

    torch.manual_seed(0)
    model = inference_model(Transformer(TransformerConfig(vocab_size=2048, d_model=64, n_heads=4, encoder_layers=2,
                                                          decoder_layers=2, d_ff=128)))
    model.argmax_head = None
    src = torch.randint(4, 2048, (16, 12))
    src[8:, 9:] = 0  # padding
    config = DecodingConfig(max_len_ratio=1.0, max_len_extra=8)
    plain = generate(model, src, config).tokens
    model.argmax_head = ArgmaxHead(model.lm_head)
    assert torch.equal(generate(model, src, config).tokens, plain)


def test_inference_model_sets_the_argmax_head_only_where_it_pays(monkeypatch):
    from pipeline import translator
    from pipeline.model import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=2048, d_model=32, n_heads=2, encoder_layers=1,
                                          decoder_layers=1, d_ff=64))
    for native in (True, False):
        monkeypatch.setattr(translator, "native_bf16_products", lambda native=native: native)
        assert isinstance(translator.inference_model(model).argmax_head, translator.ArgmaxHead) == native
    assert translator.inference_model(model, "bf16").argmax_head is None  # already a bf16 head
    assert translator.inference_model(model, "int8").argmax_head is None
    assert model.argmax_head is None  # the model itself is left as it was
    monkeypatch.setattr(translator, "native_bf16_products", lambda: True)
    assert translator.ArgmaxHead.where_it_pays(torch.nn.Linear(32, 2048)) is None  # a bias: not a head it handles
    assert translator.ArgmaxHead.where_it_pays(torch.nn.Linear(32, 1000, bias=False)) is None  # too narrow to gain


def test_native_bf16_products_reads_the_cpu_features(monkeypatch):
    from pipeline.translator import native_bf16_products

    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert native_bf16_products() is expected


def test_keep_freed_memory_keeps_large_blocks_in_the_heap():
    """Decoding's large buffers come back batch after batch. By default glibc maps a 16 MB block
    on its own and unmaps it when freed (the next one is page-faulted in afresh); once
    keep_freed_memory() has run, the block comes from the heap and stays there, free for reuse.
    A MALLOC_* setting of the user's wins; off glibc it changes nothing and says so."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        out = subprocess.run([sys.executable, "-c", "from pipeline.translator import keep_freed_memory as k; print(k())"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"
        return
    default = allocator_probe("default")
    # "Most of the block": small allocations of the interpreter may take a few bytes of it once freed.
    assert default["mapped_mb"] >= 16 and default["free_in_heap_mb"] < 4
    kept = allocator_probe("kept")
    assert kept["kept"] is True and kept["mapped_mb"] < 4 and kept["free_in_heap_mb"] > 12
    users = allocator_probe("kept", {"MALLOC_TRIM_THRESHOLD_": "131072"})  # the user's own setting stays
    assert users["kept"] is False and users["mapped_mb"] >= 16


def test_an_inference_copy_loads_plain_weights_strictly_and_decodes_with_them():
    # The merged W_Q|W_K|W_V and W_K|W_V layers are copies: not in state_dict, made again on load.
    from helpers import make_model
    from pipeline.decoding import DecodingConfig, generate
    from pipeline.translator import inference_model

    model, other = make_model(), make_model(seed=1)
    prepared = inference_model(model)
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    with torch.inference_mode():
        generate(prepared, src, DecodingConfig(), beam=2)  # packed by now
    assert not [k for k in prepared.state_dict() if ".w_qkv." in k or ".w_kv." in k]
    prepared.load_state_dict(other.state_dict())  # strict
    model.load_state_dict(prepared.state_dict())  # and back, strict
    with torch.inference_mode():
        for beam in (1, 2):
            assert torch.equal(generate(prepared, src, DecodingConfig(), beam=beam).tokens,
                               generate(inference_model(other), src, DecodingConfig(), beam=beam).tokens)
