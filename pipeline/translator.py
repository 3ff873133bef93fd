"""A trained checkpoint as a sentence-in, sentence-out translator: the Python API.

    from pipeline import Translator
    translator = Translator.from_checkpoint("runs/multi30k/checkpoints/best.ckpt", beam=4)
    translator.translate(["Ein Hund rennt durch den Schnee."])   # ['A dog runs through the snow.']
    translator.nbest("Ein Hund rennt durch den Schnee.", k=4)     # [(text, score), ...] best first
    translator.attention("Ein Hund rennt durch den Schnee.")       # tokens and weights per layer and head
    Translator.from_checkpoint(path, quantize="int8")              # int8 linear layers on the CPU (or "bf16")

`evaluate` and `translate` on the command line go through this class.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.batching import pad
from pipeline.checkpoints import Checkpoint, load_checkpoint
from pipeline.decoding import generate
from pipeline.errors import UserError
from pipeline.tokenizer import MAX_SOURCE_TOKENS, decode, encode_sources
from pipeline.workers import can_fork, default_workers, fork_map


QUANTIZE = ("int8", "bf16")  # values of --quantize


class WeightStamp:
    """Which values a copy made from a weight was made from (PackedLinear's packed weight,
    ArgmaxHead's bf16 one): the weight's storage, version (bumped by in-place changes; None for
    tensors made under inference_mode, which keep none), device and dtype. It holds the storage
    it stamped, so that no later tensor can be allocated at the same address and pass for it:
    `.to()` round trips and load_state_dict(assign=True) replace the storage and are seen as
    changes. Changes through `.data` keep both storage and version and are not seen (call
    `inference_model` again after those)."""

    def __init__(self, weight: Tensor):
        self.source = weight.detach()  # shares the storage (and the version counter)
        self.key = self.key_of(weight)

    @staticmethod
    def key_of(weight: Tensor) -> tuple:
        return (weight.data_ptr(), None if weight.is_inference() else weight._version, weight.device, weight.dtype)

    def matches(self, weight: Tensor) -> bool:
        return self.key_of(weight) == self.key


class PackedLinear(nn.Module):
    """A Linear layer for CPU inference whose weight is kept packed in its kernel's GEMM layout:
    MKL's for fp32 weights, oneDNN's for bf16 ones (`--quantize bf16`, and ArgmaxHead's product).

    torch's CPU matrix product re-packs the weight on every call. Packed once, fp32 (MKL sgemm):
    a greedy step's products at 64 rows take 11-20% less time (the LM head 937 -> 765 us at
    64 x 256 x 8000 on this project's CPU machine), beam 4's at 256 rows 3-9% less
    (bench/results/2026-11-27-packed-linear.json); bf16 (oneDNN): each product alone 1.03-2.3x as
    fast at 1 to 256 rows, the same results bit for bit, whole decodes 1.02-1.07x
    (bench/results/2026-11-28-packed-bf16-{1,2}.json). These are the kernels torch.compile's CPU
    freezing pass emits for linear layers (`torch.ops.mkl._mkl_linear`,
    `torch.ops.mkldnn._linear_pointwise`), called directly, for a packed copy of each weight
    beside it. Same weights, same results up to summation order. torch's own product runs
    instead (`rows_if_packed`) for fp32 above MAX_ROWS rows, wherever gradients are wanted (the
    packed kernels have none), for inputs that are not CPU tensors of the weight's dtype and the
    layer's width, under autocast, and where this torch's kernel fails its check (`packing_works`).
    The weight is packed at its first packed call, so layers that never run packed (projections
    that merged ones replace, an encoder fed long batches) keep no packed copy, and packed again
    after it changes in place.
    """

    # Above this many rows torch's own fp32 product is as fast or faster (at 512-2,048 rows the
    # packed one took 0-20% longer: the encoder, and beam search over large batches).
    MAX_ROWS = 256

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # (out, in), (out,) or None: shared, not copied
        self.packed: Tensor | None = None  # MKL's packed copy of the weight, made at the first packed call
        self.packed_for: WeightStamp | None = None  # the weight it was packed from

    def packed_weight(self) -> Tensor:
        """The packed copy of the weight, (re)made if there is none or the weight changed since
        (see `WeightStamp`: in place, replaced, or moved to another dtype and back)."""
        if self.packed is None or not self.packed_for.matches(self.weight):
            weight = self.weight.detach()
            reorder = (torch.ops.mkl._mkl_reorder_linear_weight if weight.dtype == torch.float32
                       else torch.ops.mkldnn._reorder_linear_weight)
            self.packed = reorder(weight, 64)
            self.packed_for = WeightStamp(self.weight)
        return self.packed

    def rows_if_packed(self, x: Tensor) -> int | None:
        """The row count the packed kernel runs x with, or None where torch's product runs."""
        rows = x.numel() // x.size(-1) if x.size(-1) else 0
        if (x.dtype != self.weight.dtype or x.dtype not in PACKED_DTYPES
                or (x.dtype == torch.float32 and rows > self.MAX_ROWS) or not x.is_cpu or not self.weight.is_cpu
                or x.size(-1) != self.in_features
                or torch.is_autocast_enabled("cpu")
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                                 or (self.bias is not None and self.bias.requires_grad)))
                or not packing_works(x.dtype)):
            return None
        return rows

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)"""
        rows = self.rows_if_packed(x)
        if rows is None:
            return F.linear(x, self.weight, self.bias)
        if x.dtype == torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight(), self.bias, "none", [], "")
        # The last argument is the row count the kernel was packed for; MKL's packed layout of
        # the weight does not depend on it (checked once per process: `packing_works`), so
        # passing each call's own row count takes the packed path at every batch size.
        return torch.ops.mkl._mkl_linear(x, self.packed_weight(), self.weight, self.bias, rows)

    def forward_into(self, x: Tensor, out: Tensor) -> Tensor:
        """forward(x), written into `out` (x's shape with out_features last) where torch's own
        product runs; the packed kernel allocates its result. For the LM head, whose logits
        Transformer.decode writes into one reused buffer: a fresh (rows × vocabulary) tensor a
        step costs page faults (model.DecoderCache), which the packed kernel repays at a few
        rows but not above MAX_ROWS. Returns the tensor holding the result."""
        if self.rows_if_packed(x) is not None:
            return self(x)
        torch.matmul(x, self.weight.t(), out=out)
        return out if self.bias is None else out.add_(self.bias)

    # The packed weight is an opaque oneDNN tensor that can be neither copied nor pickled (and
    # MKL's packed buffers must not move): copies and pickles carry the weight and pack again.
    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "packed": None, "packed_for": None}

    def extra_repr(self) -> str:
        kernel = "MKL" if self.weight.dtype == torch.float32 else "oneDNN"
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for {kernel}"


PACKED_DTYPES = (torch.float32, torch.bfloat16)  # MKL's packed sgemm; oneDNN's packed bf16 product


@functools.cache
def packing_works(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch has the packed linear kernel for `dtype` (MKL's for fp32, oneDNN's for
    bf16) and it gives F.linear's results for row counts other than the one it was packed for
    (1 to 2 x MAX_ROWS + 3 rows, a few shapes; bf16 within bf16's rounding). Leaves the global
    random state as it was."""
    if dtype == torch.float32:
        available = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
        rtol = 1e-4
    else:
        available = dtype == torch.bfloat16 and torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_linear_pointwise")
        rtol = 2e-2
    if not available:
        return False
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            for rows, n_in, n_out in ((1, 48, 40), (3, 64, 200), (64, 64, 64), (65, 512, 96), (100, 96, 24),
                                      (PackedLinear.MAX_ROWS - 1, 256, 130), (PackedLinear.MAX_ROWS, 32, 768),
                                      (2 * PackedLinear.MAX_ROWS + 3, 64, 72)):
                linear = nn.Linear(n_in, n_out).to(dtype)
                x = torch.randn(rows, n_in).to(dtype)
                weight = PackedLinear(linear).packed_weight()  # (the kernels called as forward calls them)
                if dtype == torch.bfloat16:
                    packed = torch.ops.mkldnn._linear_pointwise(x, weight, linear.bias, "none", [], "")
                else:
                    packed = torch.ops.mkl._mkl_linear(x, weight, linear.weight, linear.bias, rows)
                expected = linear(x).float()
                tolerance = rtol / 10 * float(expected.abs().max())
                if not torch.allclose(packed.float(), expected, rtol=rtol, atol=tolerance):
                    return False
    except RuntimeError:  # a build without the kernel behind the op
        return False
    return True


def pack_linear_layers(model: nn.Module) -> nn.Module:
    """Every fp32 or bf16 CPU nn.Linear of `model` as a PackedLinear, in place, where this torch's
    kernel for its dtype works (`packing_works`); the other layers as they are."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if (type(child) is nn.Linear and child.weight.dtype in PACKED_DTYPES and child.weight.device.type == "cpu"
                    and packing_works(child.weight.dtype)):
                setattr(module, name, PackedLinear(child))
    return model


class ArgmaxHead:
    """Each row's highest-logit token under the LM head, found with a bf16 product and made exact
    by an fp32 recheck: greedy decoding on CPUs whose bf16 products are faster than fp32 ones
    (AVX-512 bf16, AMX: `where_it_pays`).

    Greedy decoding needs only each row's best token, not its (rows × vocabulary) logits. The
    bf16 product of the final decoder states y with the output embeddings W gives every logit
    within ε of its exact value: bf16 keeps 8 significant bits, so rounding y, W and the result
    errs by at most about 3·2⁻⁸·Σᵢ|yᵢwᵢ| ≤ 3·2⁻⁸·‖y‖·max‖w‖ (Cauchy–Schwarz; the fp32 sums add
    d·2⁻²⁴ of it; `error_per_norm` is that factor with a margin). The vocabulary is read in
    chunks of CHUNK columns: within the CHUNKS chunks with the highest bf16 maxima, the
    CANDIDATES best bf16 logits are scored again in fp32. Every other token's bf16 logit is at
    most the lowest candidate's or the next chunk's maximum, so its exact logit is at most ε
    above the larger of the two: where the best fp32 candidate beats that, it is the row's
    answer. Where it does not (near-ties), every token whose bf16 logit is within ε of that
    best candidate's fp32 logit is scored in fp32 (`settle`). The tokens are
    therefore those of the fp32 head, up to ties within fp32 rounding (which the fp32 product's
    own summation order decides), for a fraction of its time: the bf16 product, then work on
    (rows × vocabulary / CHUNK) maxima and (rows × CANDIDATES) logits
    (bench/results/2026-11-27-argmax-head.json).

    For an LM head without bias (the model's is; tied to the embeddings). It reads the head's
    weight at every call and makes its bf16 copy again when that weight changed (in place, or
    replaced as by `.to()`); a weight that is no longer an fp32 CPU tensor gets the plain
    product and max. Equal fp32 logits go to the lowest id, as `max()` does.
    """

    CHUNK = 128  # columns per chunk: vectorised maxima over contiguous fp32 runs
    CHUNKS = 3  # chunks searched for candidates; the next one's maximum bounds the rest
    CANDIDATES = 4  # logits rescored in fp32 per row

    def __init__(self, head: nn.Module):
        """head: the LM head (a module with an fp32 `weight` (V, d) and no bias), read, not copied."""
        self.head = head
        if head.weight.size(0) < (self.CHUNKS + 1) * self.CHUNK:
            raise ValueError(f"ArgmaxHead needs a vocabulary of at least {(self.CHUNKS + 1) * self.CHUNK} tokens, "
                             f"got {head.weight.size(0)}")
        self.prepared_for: WeightStamp | None = None
        self.prepare()

    def prepare(self) -> None:
        """The bf16 copy of the head's weight, padded with zero rows to whole chunks, and ε per
        unit of ‖y‖ for it."""
        weight = self.head.weight.detach()
        vocab, d = weight.shape
        self.vocab = vocab
        padded = -(-vocab // self.CHUNK) * self.CHUNK  # zero rows up to whole chunks, masked in __call__
        self.weight_bf16 = weight.new_zeros(padded, d, dtype=torch.bfloat16)
        self.weight_bf16[:vocab] = weight
        # Its product, packed for oneDNN where that works (PackedLinear; at 64 x 256 -> 8,000, 1.35-1.40x the
        # unpacked one here: bench/results/2026-11-28-packed-bf16-{1,2}.json)
        carrier = nn.Linear(d, padded, bias=False, device="meta")
        carrier.weight = nn.Parameter(self.weight_bf16, requires_grad=False)
        self.product = PackedLinear(carrier) if packing_works(torch.bfloat16) else carrier
        # ε per unit of ‖y‖: rounding y and w (2u) and the bf16 result (u), u = 2⁻⁸, with a
        # margin for the products of roundings (3u + 3u² + u³ < 3.1u), plus the fp32 sums'
        # d·2⁻²⁴ on each side (the bf16 product's accumulation and the candidates' rescoring).
        unit = 2.0 ** -8
        self.error_per_norm = (3.1 * unit + 2 * d * 2.0 ** -24) * float(torch.linalg.vector_norm(weight, dim=1).max())
        self.prepared_for = WeightStamp(self.head.weight)

    def __call__(self, states: Tensor, banned: tuple[int, ...] = ()) -> Tensor:
        """(b, d) final decoder states -> (b,) each row's highest-logit token id, `banned` ids
        excluded."""
        weight = self.head.weight.detach()
        if not (weight.is_cpu and weight.dtype == torch.float32 and states.is_cpu and states.dtype == torch.float32):
            logits = F.linear(states, weight)
            logits[:, list(banned)] = float("-inf")
            return logits.max(-1).indices
        if not self.prepared_for.matches(self.head.weight):
            self.prepare()
        b = states.size(0)
        approx = self.product(states.to(torch.bfloat16)).float()  # (b, V padded)
        approx[:, self.vocab:] = float("-inf")
        approx[:, list(banned)] = float("-inf")
        n_chunks = self.weight_bf16.size(0) // self.CHUNK
        chunk_max, chunks = approx.view(b, n_chunks, self.CHUNK).amax(-1).topk(self.CHUNKS + 1, dim=1)  # (b, CHUNKS+1)
        columns = (chunks[:, :self.CHUNKS, None] * self.CHUNK
                   + torch.arange(self.CHUNK, device=states.device)).view(b, self.CHUNKS * self.CHUNK)
        approx_top, pick = approx.gather(1, columns).topk(self.CANDIDATES, dim=1)  # (b, c) best first
        candidates = columns.gather(1, pick)  # (b, c) token ids
        exact = (weight[candidates] * states[:, None, :]).sum(-1)  # (b, c) fp32
        best = exact.amax(1)
        # the lowest id among equal best candidates (max()'s rule; topk orders equals arbitrarily)
        tokens = torch.where(exact == best[:, None], candidates, self.vocab).amin(1)
        tokens = torch.where(tokens < self.vocab, tokens, candidates[:, 0])  # (NaN states: no id past the vocabulary)
        others = torch.maximum(approx_top[:, -1], chunk_max[:, -1])  # no other token's bf16 logit is higher
        error = self.error_per_norm * torch.linalg.vector_norm(states, dim=1)  # (b,) ε of each row
        unsure = (best <= others + error).nonzero().squeeze(1)
        if unsure.numel():  # near-ties: rescore every token whose bf16 logit is within ε of `best`
            self.settle(unsure, approx, weight, states, best - error, tokens)
        return tokens

    def settle(self, rows: Tensor, approx: Tensor, weight: Tensor, states: Tensor, floor: Tensor,
               tokens: Tensor) -> None:
        """For `rows` (n,) whose candidates did not settle the best token: every token whose bf16
        logit (approx: (b, V padded)) reaches the row's floor (b,) (the best candidate's fp32
        logit minus ε: the best token's bf16 logit is at least that) is scored in fp32, and the
        best, the lowest id among equals as in max(), goes into tokens (b,)."""
        floor = floor.index_select(0, rows).clamp(min=torch.finfo(floor.dtype).min)  # banned (-inf) never qualify
        member_row, columns = (approx.index_select(0, rows) >= floor[:, None]).nonzero().unbind(1)
        scores = (weight[columns] * states.index_select(0, rows.index_select(0, member_row))).sum(-1)
        n = rows.numel()
        top = scores.new_full((n,), float("-inf")).scatter_reduce_(0, member_row, scores, "amax")
        hit = scores == top.index_select(0, member_row)
        first = columns.new_full((n,), self.vocab).scatter_reduce_(0, member_row[hit], columns[hit], "amin")
        # A row with no member keeps its candidates' pick rather than an id past the vocabulary (cannot
        # happen with finite states: the best token's bf16 logit reaches the floor).
        tokens.index_copy_(0, rows, torch.where(first < self.vocab, first, tokens.index_select(0, rows)))

    @classmethod
    def where_it_pays(cls, head: nn.Module) -> "ArgmaxHead | None":
        """An ArgmaxHead for `head` (the model's LM head: an fp32 CPU Linear or PackedLinear
        without bias, over at least 4·CHUNKS·CHUNK tokens) on a CPU that multiplies bf16 matrices
        in hardware (`native_bf16_products`), else None. Decided by the CPU's features, not timed:
        the same machine always decodes through the same code (tokens could otherwise differ
        between runs at a tie within fp32 rounding)."""
        weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
        if (weight is None or bias is not None or weight.dtype != torch.float32 or not weight.is_cpu
                or weight.size(0) < 4 * cls.CHUNKS * cls.CHUNK or not native_bf16_products()):
            return None  # (a narrow vocabulary has little to gain)
        return cls(head)


def native_bf16_products() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 bf16 or AMX), with which torch's
    bf16 products run about 2-7x faster than fp32 ones (bench/results/2026-11-27-argmax-head.json;
    the README's bench peaks). Elsewhere bf16 is emulated and slower than fp32."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                        "_is_amx_tile_supported"))


# glibc's mallopt parameters, and the environment settings of them that keep_freed_memory leaves alone
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
FREED_MEMORY_KEPT = 1 << 30  # both thresholds: blocks up to 1 GiB come from the heap and stay there
OLD_GLIBC_MMAP_MAX = 32 << 20  # glibc before 2.36 refuses an mmap threshold above this (64-bit)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc, once per process, to keep freed blocks for reuse instead of handing
    them back to the operating system (mallopt: M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB;
    32 MiB for the mmap threshold where an older glibc refuses more).

    Decoding allocates blocks of the same few sizes batch after batch (KV caches, logits,
    unpacked rows: tens of MB at beam 4 x 128 sentences). By default glibc maps each large block
    afresh and unmaps it when freed, so every batch page-faults its memory in again: about
    200,000 minor faults in `evaluate` on test2016 at beam 4, a tenth of its CPU time spent in
    the kernel (bench/results/2026-11-27-allocator.json). Kept, the blocks are reused; the cost
    is resident memory that stays at its peak (about 85 MB more there). In a thread other than
    the main one (`serve` decodes in one) glibc's arena still maps blocks above 64 MB afresh.
    Training does not call it (its batches change shape every step; `fit` returns freed memory
    every 50 steps instead, callbacks.ReleaseFreedMemory, whose malloc_trim ignores these
    thresholds). A no-op off glibc and where the environment sets malloc's thresholds
    (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or glibc.malloc tunables in GLIBC_TUNABLES:
    the user's choice wins). Returns whether it was set."""
    if any(name in os.environ for name in ALLOCATOR_ENV) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mapped = mallopt(M_MMAP_THRESHOLD, FREED_MEMORY_KEPT) or mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_MAX)
    trimmed = mallopt(M_TRIM_THRESHOLD, FREED_MEMORY_KEPT)
    return bool(mapped and trimmed)


def inference_model(model: nn.Module, quantize: str | None = None) -> nn.Module:
    """A copy of `model` prepared for decoding: eval mode and each attention's projections
    merged into one product; then either, in fp32 on the CPU, the linear layers' weights packed
    for MKL (PackedLinear) and, where it is faster, greedy decoding's best tokens picked by an
    ArgmaxHead (the same tokens), or with quantize="int8", every linear layer (the LM head
    included) dynamically quantized (int8 weights per output channel; activations quantized on
    the fly with one scale per tensor, so a sentence's translation can depend on the other
    sentences of its batch; CPU only: torch's fbgemm/oneDNN kernels), or with quantize="bf16",
    weights and activations in bfloat16, logits included, on the CPU packed for oneDNN
    (PackedLinear; fast on GPUs and on CPUs with bf16 matrix instructions; the beam search sums
    log-probabilities in fp32, but near-ties are decided on bf16 logits).
    What each costs in validation BLEU: bench/evaluate.py."""
    if quantize is not None and quantize not in QUANTIZE:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    device = next(model.parameters()).device
    if quantize == "int8" and device.type != "cpu":
        raise UserError(f"--quantize int8 runs on the CPU only: drop it (or use --quantize bf16) on {device.type}")
    model = copy.deepcopy(model).eval().merge_projections()
    model.argmax_head = None  # (a copy of a prepared model may carry one for fp32 weights)
    if quantize == "bf16":
        model = model.to(torch.bfloat16)
        if device.type == "cpu":
            model = pack_linear_layers(model)
    elif quantize == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao, still the CPU path
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    elif device.type == "cpu":
        model = pack_linear_layers(model)
        model.argmax_head = ArgmaxHead.where_it_pays(model.lm_head)
    return model


class Translator:
    """Translate lists of sentences with a loaded checkpoint, in length-sorted batches.

    Sources longer than the model allows are cut (counted in `truncated`); empty or
    whitespace-only lines translate to empty lines.

    Args:
        checkpoint: a loaded checkpoint (`load_checkpoint`); its model is left as it is.
        beam: beam size (1 = greedy); None takes the run's decoding.beam.
        length_penalty: beam score = log p / length^length_penalty; None takes the run's.
        max_tokens: source tokens per batch (sentences × longest).
        batch_size: sentences per batch.
        quantize: "int8" (CPU) or "bf16": decode in lower precision (see `inference_model`).
        workers: processes that decode `translate`'s batches side by side, each on one thread
            (pipeline.workers says why); None: one per CPU thread torch uses, 1 on a GPU. The
            batches are the same whatever the count (so are the translations; a call with one
            batch decodes here); `workers_used` says how many the last call used.
    """

    def __init__(self, checkpoint: Checkpoint, beam: int | None = None, length_penalty: float | None = None,
                 max_tokens: int = 8192, batch_size: int = 128, quantize: Literal["int8", "bf16"] | None = None,
                 workers: int | None = None):
        beam = checkpoint.decoding.beam if beam is None else beam
        device = next(checkpoint.model.parameters()).device
        workers = default_workers(device) if workers is None else workers
        for name, value in (("beam", beam), ("max_tokens", max_tokens), ("batch_size", batch_size),
                            ("workers", workers)):
            if value < 1:
                raise UserError(f"--{name} must be >= 1, got {value}")
        if workers > 1 and device.type != "cpu":
            raise UserError(f"--workers {workers}: decoding workers run on the CPU only (the model is on "
                            f"{device.type}); drop --workers")
        if length_penalty is not None and length_penalty < 0:
            raise UserError(f"--length_penalty must be >= 0 (0: raw log-probability), got {length_penalty}")
        if workers > 1 and not can_fork():
            raise UserError(f"--workers {workers}: decoding workers are forked processes, which need Linux; "
                            "drop --workers")
        self.workers, self.workers_used = workers, 1
        self.checkpoint = checkpoint
        self.decoding = replace(checkpoint.decoding, beam=beam,
                                **({} if length_penalty is None else {"length_penalty": length_penalty}))
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.max_src_tokens = min(MAX_SOURCE_TOKENS, checkpoint.config.max_positions)
        self.truncated = 0
        self.quantize = quantize
        self.model = inference_model(checkpoint.model, quantize)
        if self.device.type == "cpu":
            keep_freed_memory()

    @classmethod
    def from_checkpoint(cls, path: str | Path, beam: int | None = None, device: str = "auto",
                        **kwargs) -> "Translator":
        """Load a checkpoint file (device "auto": CUDA when available, but the CPU for
        quantize="int8", which has CPU kernels only) and wrap it."""
        if device == "auto" and kwargs.get("quantize") == "int8":
            device = "cpu"
        return cls(load_checkpoint(path, device), beam=beam, **kwargs)

    def with_beam(self, beam: int) -> "Translator":
        """The same translator (same prepared model, not copied) at another beam size."""
        if beam < 1:
            raise UserError(f"--beam must be >= 1, got {beam}")
        other = copy.copy(self)
        other.decoding, other.truncated = replace(self.decoding, beam=beam), 0
        return other

    @property
    def tokenizer(self):
        return self.checkpoint.tokenizer

    @property
    def languages(self) -> tuple[str, str]:
        return self.checkpoint.languages

    @property
    def device(self) -> torch.device:
        return next(self.checkpoint.model.parameters()).device

    @staticmethod
    def checked_sentences(sentences) -> list[str]:
        """`sentences` as a list of str, or a TypeError/ValueError naming the first bad one: a
        lone string (which would otherwise be translated character by character), a non-string
        item, or text that is not valid Unicode (a lone surrogate, which no tokenizer takes)."""
        if isinstance(sentences, (str, bytes)):
            raise TypeError("translate takes a list of sentences, got one string: use translate([text])")
        try:
            sentences = list(sentences)
        except TypeError:
            raise TypeError(f"translate takes a list of sentences, got {type(sentences).__name__}") from None
        for i, sentence in enumerate(sentences):
            Translator.checked_sentence(sentence, f"sentence {i}")
        return sentences

    @staticmethod
    def checked_sentence(sentence, what: str = "the sentence") -> str:
        """`sentence` if it is a str of valid Unicode, else a TypeError or ValueError naming it."""
        if not isinstance(sentence, str):
            raise TypeError(f"{what} is {type(sentence).__name__}, not str")
        try:
            sentence.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} is not valid Unicode text ({e.reason} at character {e.start})") from None
        return sentence

    def source_ids(self, sentences: list[str]) -> list[list[int]]:
        """Token ids + EOS of each sentence, cut (and counted) if longer than max_src_tokens."""
        ids, cut = encode_sources(self.tokenizer, sentences, self.max_src_tokens)
        self.truncated += cut
        return ids

    @torch.inference_mode()
    def nbest(self, sentence: str, k: int | None = None) -> list[tuple[str, float]]:
        """The k best beam hypotheses for one sentence (k defaults to the beam size; the beam
        widens to k if needed), best first, with their scores (log p / length^length_penalty).
        An empty or blank sentence has one hypothesis whatever k is: ("", 0.0), nothing decoded."""
        self.checked_sentence(sentence)
        k = self.decoding.beam if k is None else k
        if k < 1:
            raise UserError(f"nbest k must be >= 1, got {k}")
        if not sentence.strip():
            return [("", 0.0)]
        src = pad(self.source_ids([sentence])).to(self.device)
        out = generate(self.model, src, self.decoding, beam=max(k, self.decoding.beam), nbest=k, return_scores=True)
        return list(zip(decode(self.tokenizer, out.tokens[0].tolist()), out.scores[0].tolist()))

    def attention(self, sentence: str, target: str | None = None):
        """Attention weights of the model on one sentence (and its greedy translation, or
        `target`): an `AttentionMaps` with tokens and, per layer, (heads, queries, keys) weights
        of encoder self-, decoder self- and cross-attention."""
        from pipeline.attention_maps import compute_attention

        self.checked_sentence(sentence)
        if target is not None:
            self.checked_sentence(target, "the target")
        return compute_attention(self.model, self.tokenizer, sentence, target, self.decoding)

    @torch.inference_mode()
    def translate(self, sentences: list[str]) -> list[str]:
        """One translation per sentence, in order: length-sorted batches, decoded side by side
        by the workers when there are several. `sentences`: a list (or any iterable) of str."""
        sentences = self.checked_sentences(sentences)
        out = [""] * len(sentences)
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        ids = dict(zip(todo, self.source_ids([sentences[i] for i in todo])))
        todo.sort(key=lambda i: len(ids[i]))
        chunks, start = [], 0
        while start < len(todo):
            # The longest sentence of a batch is its last; grow while the budget allows.
            end = start + 1
            while (end < len(todo) and end - start < self.batch_size
                   and (end - start + 1) * len(ids[todo[end]]) <= self.max_tokens):
                end += 1
            chunks.append(todo[start:end])
            start = end
        chunks.reverse()  # longest first: no worker is left with the longest batch at the end
        sources = [pad([ids[i] for i in chunk]).numpy() for chunk in chunks]
        self.workers_used = min(self.workers, len(chunks)) or 1
        if self.workers_used > 1:
            # One sentence decoded here first packs the weights this decoding reads (PackedLinear
            # packs at its first call), so that the workers share them instead of each packing
            # its own copy in every call.
            self._best_tokens(sources[-1][:1])
        # closing: an error or Ctrl-C here stops the workers at once (pipeline.workers.fork_map)
        with contextlib.closing(fork_map(self._best_tokens, sources, self.workers_used)) as results:
            for chunk, tokens in zip(chunks, results, strict=True):
                for i, h in zip(chunk, decode(self.tokenizer, tokens)):
                    out[i] = h
        return out

    def _best_tokens(self, src) -> list[list[int]]:
        """(B, S) numpy source ids (what travels to a worker) -> the best hypothesis' ids per row."""
        return generate(self.model, torch.from_numpy(src).to(self.device), self.decoding).tokens[:, 0].tolist()
