"""Speed of this project's Transformer against its strongest peers at the same sizes: Hugging
Face MarianMT (training and decoding) and CTranslate2 (decoding our own weights, converted).

    python -m bench.run [--quick] [--out PATH.json]        (`make bench [BENCH_QUICK=1]`)

Both PyTorch models are built here with random weights: V=8000 joint BPE (pipeline.tokenizer,
trained on the multi30k training split), d_model 256, 3+3 layers, 4 heads, FFN 1024, ReLU, tied
embeddings. The bare rows use TransformerConfig's default dropout (0.1 on embeddings and
residual branches, none on attention weights or inside the FFN); `train_recipe` uses the
recipe's (configs/multi30k.yaml). Ours runs in its default pre-norm layout; MarianMT is
post-norm and uses its SDPA attention. Both see the same batches and AdamW settings. Our loss is
computed as TranslationModule computes it: the LM head fused into the label-smoothed
cross-entropy (pipeline.loss.translation_loss on the final decoder states); Marian's is
token_cross_entropy on its logits (with the recipe's R-Drop, both run each batch twice).
Hugging Face and CTranslate2 are imported by this benchmark only, never by pipeline/ (except
`export --format ctranslate2`, which the CTranslate2 rows use).

Figures (each a median over timed repeats after a warm-up, with min and max beside it; the
contestants alternate within every repeat so that drifting background load hits all alike):
  train_fp32, train_bf16  real (non-pad) source+target tokens/s of forward + label-smoothed
                          loss + backward + AdamW step on identical token-bucket batches of
                          about 64 sentences x 24 tokens; bf16 = torch.autocast(bfloat16).
  train_recipe            the same step with the recipe's settings: its dropouts (Marian gets the
                          same), its R-Drop (both sides run each batch twice and add the KL
                          term; tokens counted once), gradient clipping, AdamW as
                          TranslationModule builds it (fused in fp32) and the precision the
                          recipe trains in (precision null: the step probe
                          pipeline.hardware.choose_precision picks).
  epoch_real_tokens       the step end to end over an epoch (DataLoader and collation
                          included): ours with the TranslationDataModule's sampler
                          (TokenBucketSampler, max_tokens=4096) and collate, Marian with random
                          batches of 128 sentences padded to the batch maximum.
  epoch_same_batches      Marian over the same epoch with OUR token-bucket batches (ours: the same
                          runs as above): the model's share of the epoch gain, without batching.
  greedy, beam4           sentences/s decoding batches of 64 validation sentences. The weights
                          are random, so to compare equal work EOS is forbidden on both sides
                          and every hypothesis runs exactly max_new_tokens=30 steps: ours =
                          pipeline.decoding with the KV cache and EOS logits set to -inf,
                          Marian = generate(min_new_tokens=max_new_tokens=30, do_sample=False).
                          Both in the bench's process, on torch's threads.
  greedy_workers,         the same with each batch decoded whole by one of the decoding workers
  beam4_workers           (pipeline.workers: forked single-threaded processes, one per thread,
                          as `evaluate`/`translate` use them), ours and Marian alike.
  ct2_greedy, ct2_beam4,  the same batches decoded by CTranslate2 from our weights (exported by
  ct2_int8_beam4          pipeline.export.export_ctranslate2), fp32 and int8 (compute_type at
                          load), min_decoding_length = max_decoding_length = 30; our figure is
                          our fp32 decoding (the same runs as greedy / beam4), and for
                          ct2_int8_beam4 our int8 decoding (`--quantize int8`). CTranslate2
                          runs in a process of its own (bench.ct2_worker: loaded into ours it
                          slowed our decoding 1.31x) and times its own calls.
  ct2_beam4_workers       ours as in beam4_workers against CTranslate2 fp32 beam 4 as one replica
                          per worker (inter_threads), the threads shared out (intra_threads).
  greedy_bf16, beam4_bf16 greedy and beam 4 with weights and activations in bfloat16 on both sides
                          (ours: `--quantize bf16`; Marian: the model cast with .to(bfloat16)).
Our decoding runs the model as `Translator` prepares it (pipeline.translator.inference_model:
projections merged; on CPUs fp32 weights packed for MKL's GEMM where a product has at most 256
rows; int8 linear layers for the int8 row).
Also recorded: padding efficiency (token buckets vs random batches), achieved GFLOP/s of the
training step (analytic matmul FLOPs) against torch.mm peaks measured in this process, peak
resident memory per phase and the resident-memory change across repeated epochs.

Timings are only meaningful on an otherwise idle machine: the 1-minute load average at start
is recorded, and a warning printed when it is high.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import yaml

from bench.ct2_worker import COMPUTE_TYPES, REPLICATED, CT2Worker
from bench.report import write_result
from pipeline.batching import Batch, TokenBucketSampler, collate, padding_efficiency
from pipeline.checkpoints import Checkpoint
from pipeline.data import load_split
from pipeline.datamodule import TranslationDataModule
from pipeline.decoding import DecodingConfig, generate, greedy_decode
from pipeline.export import export_ctranslate2, vocabulary
from pipeline.hardware import ENV as PRECISION_ENV, choose_precision
from pipeline.loss import token_cross_entropy, translation_loss
from pipeline.model import Transformer, TransformerConfig
from pipeline.provenance import cpu_name, git_commit
from pipeline.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, train_tokenizer
from pipeline.translator import inference_model
from pipeline.workers import default_workers, fork_map

# Each row compares ours with one peer: MarianMT (training and decoding) or CTranslate2 (decoding).
PEERS = {"train_fp32": "marian", "train_bf16": "marian", "train_recipe": "marian", "epoch_real_tokens": "marian",
         "epoch_same_batches": "marian", "greedy": "marian", "beam4": "marian", "greedy_workers": "marian",
         "beam4_workers": "marian", "ct2_greedy": "ctranslate2", "ct2_beam4": "ctranslate2",
         "ct2_int8_beam4": "ctranslate2", "ct2_beam4_workers": "ctranslate2", "greedy_bf16": "marian",
         "beam4_bf16": "marian"}
FIGURES = tuple(PEERS)
UNITS = {f: "real tokens/s" if f.startswith(("train", "epoch")) else "sentences/s" for f in FIGURES}
# The speed issue's targets: ours / peer for the rows that have one; padding efficiency and the
# training step's share of the measured matmul peak (in the recipe's precision) are absolute.
TARGETS = {"train_recipe": 1.3, "greedy": 2.0, "beam4": 2.0, "ct2_beam4": 1.0, "ct2_int8_beam4": 1.0,
           "padding_efficiency": 0.95, "matmul_peak_share": 0.8}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    """Everything that fixes the workload; saved in the JSON."""

    data: str = "../shared/data/multi30k"
    tokenizer_pairs: int | None = None  # training pairs the BPE is trained on; None: all
    train_pairs: int | None = None  # training pairs tokenized (batches, padding, epoch); None: all
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    layers: int = 3  # encoder and decoder each
    d_ff: int = 1024
    dropout: float = 0.1  # TransformerConfig defaults: attention and activation dropout 0
    recipe: str = "configs/multi30k.yaml"  # train_recipe: its dropouts, clipping, precision, label smoothing
    label_smoothing: float = 0.1
    lr: float = 1e-4  # AdamW, betas (0.9, 0.98), eps 1e-9, no weight decay (as module.py)
    train_batch_sentences: int = 64
    train_batch_len: int = 24  # train batches: token buckets of max_tokens = sentences x len
    train_batches: int = 4  # distinct batches per timed repeat
    epoch_pairs: int | None = None  # epoch-equivalent: first N training pairs; None: all
    bucket_max_tokens: int = 4096
    marian_batch_size: int = 128
    decode_batch: int = 64
    decode_batches: int = 4
    max_new_tokens: int = 30
    repeats: int = 5  # timed repeats (after one warm-up) of the train and decode figures
    epoch_repeats: int = 3
    matmul_size: int = 2048
    sanity_rows: int | None = None  # rows per decode batch checked cached == uncached; None: all
    threads: int = 0  # 0: torch's default
    settle_s: float = 0.3  # pause before each timed call (idle threads of the previous one stop spinning)
    device: str = "cpu"  # cuda: every model and batch on the GPU, CUDA-synchronised timers, no CTranslate2/int8 rows
    ct2_threads: int = 0  # CTranslate2 intra_threads (inter_threads 1); 0: as many as torch uses
    decode_workers: int = 0  # the *_workers rows: processes decoding side by side (pipeline.workers); 0: as Translator picks
    seed: int = 0


# --quick (`make bench BENCH_QUICK=1`): a 10k-pair slice for the batches, one train batch, a 512-pair epoch.
QUICK = dict(train_pairs=10000, train_batches=1, repeats=3, epoch_pairs=512, epoch_repeats=2, decode_batches=1,
             sanity_rows=8)
# --tiny (tests only): toy sizes that exercise every code path in seconds; the numbers mean nothing.
TINY = dict(tokenizer_pairs=1500, train_pairs=1500, vocab_size=600, d_model=32, n_heads=2, layers=1, d_ff=64,
            train_batch_sentences=8, train_batch_len=12, train_batches=1, epoch_pairs=48, bucket_max_tokens=256,
            marian_batch_size=16, decode_batch=8, decode_batches=2, max_new_tokens=4, repeats=1, epoch_repeats=2,
            matmul_size=128, settle_s=0.0)


# -- models ----------------------------------------------------------------------------------
def our_config(s: Settings) -> TransformerConfig:
    return TransformerConfig(vocab_size=s.vocab_size, d_model=s.d_model, n_heads=s.n_heads, encoder_layers=s.layers,
                             decoder_layers=s.layers, d_ff=s.d_ff, dropout=s.dropout)  # pre-norm, tied: defaults


def marian_model(cfg: TransformerConfig):
    """MarianMTModel with the sizes of `cfg` (post-norm, sinusoidal positions, tied embeddings)."""
    from transformers import MarianConfig, MarianMTModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    mc = MarianConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function="relu", dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        max_position_embeddings=cfg.max_positions, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
        decoder_start_token_id=BOS, forced_eos_token_id=None)
    return MarianMTModel(mc)


def recipe_settings(s: Settings) -> dict:
    """What the recipe config trains with, beside the sizes (the bench's own, so --tiny stays tiny):
    dropouts and layout, label smoothing, gradient clipping and precision (null: probed here)."""
    config = yaml.safe_load((ROOT / s.recipe).read_text(encoding="utf-8"))
    model, train, trainer = config.get("model") or {}, config.get("train") or {}, config.get("trainer") or {}
    layout = {k: model[k] for k in ("dropout", "attention_dropout", "activation_dropout", "pre_norm", "tie_embeddings")
              if k in model}
    precision, reason = trainer.get("precision"), "set in the recipe"
    if precision is None:  # as `fit` does (cli.py); the probe's environment variable must not leak
        saved = os.environ.pop(PRECISION_ENV, None)
        try:
            probed = {**{k: v for k, v in model.items() if k in TransformerConfig.__dataclass_fields__},
                      **{k: getattr(s, k) for k in ("vocab_size", "d_model", "n_heads", "d_ff")},
                      "encoder_layers": s.layers, "decoder_layers": s.layers}
            precision, reason = choose_precision(s.device, probed, s.train_batch_sentences * s.train_batch_len)
        finally:
            os.environ.pop(PRECISION_ENV, None)
            if saved is not None:
                os.environ[PRECISION_ENV] = saved
    return {"path": s.recipe, "model": layout, "label_smoothing": train.get("label_smoothing", s.label_smoothing),
            "rdrop_alpha": float(train.get("rdrop_alpha") or 0.0),
            "gradient_clip_val": trainer.get("gradient_clip_val"), "precision": str(precision),
            "precision_reason": reason}


def ours_loss(model: Transformer, b: Batch, label_smoothing: float, rdrop_alpha: float = 0.0) -> torch.Tensor:
    """As TranslationModule.loss: pipeline.loss.translation_loss (the LM head fused into the
    loss, on the real target positions; R-Drop's two passes where the recipe sets it)."""
    return translation_loss(model, b, label_smoothing, rdrop_alpha)


def marian_loss(model, b: Batch, label_smoothing: float, rdrop_alpha: float = 0.0) -> torch.Tensor:
    """Cross-entropy on Marian's logits; with rdrop_alpha > 0 the batch runs twice and the loss
    is R-Drop's as ours defines it (the mean of both passes' losses + α/4 x the symmetric KL per
    real token), written the plain way: full log-softmaxes of both passes."""
    runs = 2 if rdrop_alpha > 0 else 1
    src, tgt_in = (b.src.repeat(2, 1), b.tgt_in.repeat(2, 1)) if runs == 2 else (b.src, b.tgt_in)
    logits = model(input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt_in,
                   decoder_attention_mask=tgt_in != PAD, use_cache=False).logits
    if runs == 1:
        return token_cross_entropy(logits, b.tgt_out, label_smoothing)
    first, second = logits.chunk(2)
    ce = (token_cross_entropy(first, b.tgt_out, label_smoothing) + token_cross_entropy(second, b.tgt_out,
                                                                                       label_smoothing)) / 2
    real = b.tgt_out != PAD
    logp1, logp2 = first[real].float().log_softmax(-1), second[real].float().log_softmax(-1)
    symmetric_kl = ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1).mean()
    return ce + rdrop_alpha * symmetric_kl / 4


class Side:
    """One contestant: a model, its training loss, its optimiser (and gradient clipping)."""

    def __init__(self, name: str, model, loss_fn, lr: float, fused: bool = False, clip: float | None = None):
        self.name, self.model, self.loss_fn, self.clip = name, model, loss_fn, clip
        self.device_type = next(model.parameters()).device.type
        params = [p for p in model.parameters() if p.requires_grad]
        kind = {"fused": True} if fused else {"foreach": True}  # as TranslationModule: fused in fp32, else foreach
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, **kind)

    def train_step(self, batch: Batch, bf16: bool, label_smoothing: float) -> None:
        """Forward, loss, backward, (clipping,) optimiser step."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = self.loss_fn(self.model, batch, label_smoothing)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class FixedLength:
    """Our model with EOS forbidden, so that every hypothesis runs all max_len steps: the
    equivalent of Marian's min_new_tokens=max_new_tokens (which sets the EOS score to -inf)."""

    def __init__(self, model: Transformer):
        self.model, self.cfg = model, model.cfg

    def encode(self, src):
        return self.model.encode(src)

    def new_cache(self, reuse_logits=False):
        return self.model.new_cache(reuse_logits)

    def decode(self, tgt, memory, src_mask, cache=None, project=True):
        out = self.model.decode(tgt, memory, src_mask, cache, project=project)
        if project:
            out[..., EOS] = float("-inf")
        return out

    @property
    def argmax_head(self):
        head = getattr(self.model, "argmax_head", None)
        return None if head is None else lambda states, banned: head(states, (*banned, EOS))


def marian_generate(model, src: torch.Tensor, beams: int, n: int) -> torch.Tensor:
    return model.generate(input_ids=src, attention_mask=src != PAD, num_beams=beams, do_sample=False,
                          max_new_tokens=n, min_new_tokens=n, length_penalty=1.0, use_cache=True)


def ct2_worker(model: Transformer, tokenizer, threads: int, replicas: int = 1) -> CT2Worker:
    """Our model converted by pipeline.export.export_ctranslate2 and loaded by CTranslate2 in fp32
    and int8 (quantized at load, compute_type="int8"), each on `threads` threads, and with
    replicas > 1 in fp32 as that many replicas sharing the threads (ct2_worker.REPLICATED), in a
    worker process of its own (bench.ct2_worker says why)."""
    checkpoint = Checkpoint(model=model, tokenizer=tokenizer, languages=("de", "en"), decoding=DecodingConfig(),
                            hparams={}, path=Path("bench"))
    with tempfile.TemporaryDirectory() as tmp:  # the worker holds the model in memory once loaded
        # The converter imports ctranslate2 too: convert in a short-lived process of its own.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as converter:
            converter.submit(export_ctranslate2, checkpoint, tmp, True).result()
        return CT2Worker(tmp, threads, suppress=[[SPECIAL_TOKENS[PAD]], [SPECIAL_TOKENS[BOS]]], replicas=replicas)


def ct2_tokens(src: torch.Tensor, vocab: list[str]) -> list[list[str]]:
    """(B, S) ids + EOS -> CTranslate2's input: token strings without EOS and padding (it appends EOS)."""
    return [[vocab[i] for i in row if i not in (PAD, EOS)] for row in src.tolist()]


# -- measuring -------------------------------------------------------------------------------
def synchronize() -> None:
    """Wait for queued GPU work, so that a timer measures it (CUDA kernels run asynchronously)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class MeasuredElsewhere:
    """What a timed function returns when its work ran in another process (CTranslate2's
    worker): the seconds measured there, which count instead of the pipe's round trip."""

    seconds: float


def record_decoding_setup(cache: str = "/tmp/exp/srcs.pt") -> tuple[Settings, list[torch.Tensor], DecodingConfig,
                                                                     Transformer]:
    """For the record scripts under bench/results/: the --quick slice's settings, the bench's
    decoding batches (64 validation sentences each; tokenized once, then read from `cache`), the
    decode rows' rule (exactly max_new_tokens new tokens where FixedLength forbids EOS) and the
    bench's model with random weights (seed 0) in eval mode, not yet prepared for inference."""
    settings = replace(Settings(), train_pairs=QUICK["train_pairs"], train_batches=1)
    if not os.path.exists(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        torch.save(decode_batches(load_data(settings), settings), cache)
    torch.manual_seed(0)
    model = Transformer(our_config(settings)).eval()
    return settings, torch.load(cache), DecodingConfig(max_len_ratio=0.0, max_len_extra=settings.max_new_tokens), model


def record_training_setup(n_batches: int = 6) -> tuple[list[Batch], dict, Transformer, functools.partial, Side]:
    """For the record scripts under bench/results/: `n_batches` token-bucket batches of the --quick
    slice and the recipe's training step as the train_recipe row runs it (the bench's model with the
    recipe's dropouts, seed 0; R-Drop loss; AdamW as bf16-mixed training builds it; clipping):
    (batches, recipe settings, model, loss function, Side). `side.train_step(batch, True,
    recipe["label_smoothing"])` runs one bf16-mixed step."""
    s = replace(Settings(), train_pairs=QUICK["train_pairs"], train_batches=n_batches, decode_batches=1)
    batches = train_batches(load_data(s), s)
    recipe = recipe_settings(s)
    torch.manual_seed(0)
    model = Transformer(replace(our_config(s), **recipe["model"])).train()
    loss = functools.partial(ours_loss, rdrop_alpha=recipe["rdrop_alpha"])
    return batches, recipe, model, loss, Side("ours", model, loss, s.lr, fused=False, clip=recipe["gradient_clip_val"])


def bf16_loss_and_gradients(model, loss_fn, batch: Batch, label_smoothing: float) -> tuple[float, list[torch.Tensor]]:
    """For the record scripts: one bf16-autocast loss of `batch` and the gradients it leaves, with
    the dropout masks seeded (seed 1), so that two code variants can be compared exactly."""
    model.zero_grad()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss_fn(model, batch, label_smoothing)
    value.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return value.item(), grads


def alternating_passes(run_pass, names: list[str], passes: int) -> dict[str, list[float]]:
    """For the record scripts: seconds of `passes` calls of run_pass(name) per variant name, after
    one untimed call each; the order of the variants alternates from pass to pass."""
    for name in names:
        run_pass(name)
    seconds = {name: [] for name in names}
    for i in range(passes):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            run_pass(name)
            seconds[name].append(round(time.perf_counter() - start, 4))
    return seconds


def per_call_us(fn, calls: int = 300, warmup: int = 20) -> float:
    """Micro-benchmark: the median over 5 runs of fn's mean time a call (µs), each run `calls`
    calls after `warmup` untimed ones (CPU; the record scripts under bench/results/ use it)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return sorted(runs)[2]


def timed(fn) -> float:
    """Seconds fn takes (or, if it returns MeasuredElsewhere, the seconds it reports)."""
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return result.seconds if isinstance(result, MeasuredElsewhere) else time.perf_counter() - start


def interleaved(fns: dict, repeats: int, warmup: int = 1, settle_s: float = 0.0) -> dict[str, list[float]]:
    """Seconds of each repeat of each function; the functions alternate within a repeat. Each
    timed call starts after a pause of settle_s, so that the threads of the call before it
    (another process's too: CTranslate2's worker) have stopped spinning."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle_s)
            times[name].append(timed(fn))
    return times


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int = 5, device: str = "cpu") -> float:
    """Best torch.mm rate for (n, n) @ (n, n) in `dtype` on `device`."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    return 2 * n ** 3 / min(timed(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9


def step_products(cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> list[tuple[int, int, int, int]]:
    """(batches, M, K, N) of every matrix product of one training step on a padded (B, S) -> (B, T)
    batch, forward then backward: exactly the products forward_flops counts (tested)."""
    d, f, V, h, B, S, T = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads, batch, src_len, tgt_len
    dk = d // h
    forward = []
    for _ in range(cfg.encoder_layers):  # Q|K|V, W_O, FFN; scores and their weighted sum per head
        forward += [(1, B * S, d, 3 * d), (1, B * S, d, d), (1, B * S, d, f), (1, B * S, f, d),
                    (B * h, S, dk, S), (B * h, S, S, dk)]
    for _ in range(cfg.decoder_layers):  # self-attention, cross-attention (Q, K|V of memory, W_O), FFN
        forward += [(1, B * T, d, 3 * d), (1, B * T, d, d), (B * h, T, dk, T), (B * h, T, T, dk),
                    (1, B * T, d, d), (1, B * S, d, 2 * d), (1, B * T, d, d), (B * h, T, dk, S), (B * h, T, S, dk),
                    (1, B * T, d, f), (1, B * T, f, d)]
    forward.append((1, B * T, d, V))  # LM head
    # Y = X @ W (M×K @ K×N) needs dX = dY @ Wᵀ (M×N @ N×K) and dW = Xᵀ @ dY (K×M @ M×N) backward.
    return forward + [(b, m, n, k) for b, m, k, n in forward] + [(b, k, m, n) for b, m, k, n in forward]


def products_gflops(groups: list[list[tuple[int, int, int, int]]], dtype: torch.dtype, repeats: int = 3,
                    device: str = "cpu") -> float:
    """Rate of torch.mm/bmm running each group of `products` (one training step's, step_products)
    back to back in `dtype`, into preallocated outputs: what the matrix products of the steps could
    reach at their own shapes, with nothing else in the step. Products of the same shape share
    operands, and one group's are held at a time (one set per product would hold about 1 GB)."""
    g = torch.Generator().manual_seed(0)
    flops = seconds = 0.0
    for products in groups:
        by_shape = {p: tuple(torch.randn(shape, generator=g).to(device=device, dtype=dtype)
                             for shape in ((p[0], p[1], p[2]), (p[0], p[2], p[3]), (p[0], p[1], p[3])))
                    for p in set(products)}
        operands = [by_shape[p] for p in products]

        def run():
            for a, w, out in operands:
                torch.bmm(a, w, out=out) if a.size(0) > 1 else torch.mm(a[0], w[0], out=out[0])

        run()
        seconds += min(timed(run) for _ in range(repeats))
        flops += sum(2 * b * m * k * n for b, m, k, n in products)
        del operands, by_shape
    return flops / seconds / 1e9


def forward_flops(cfg: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one teacher-forced forward pass on padded shapes;
    a training step costs 3x this (the backward pass computes two matmuls per forward one)."""
    d, f, V, B, S, T = cfg.d_model, cfg.d_ff, cfg.vocab_size, batch, src_len, tgt_len
    encoder = cfg.encoder_layers * (B * S * (4 * d * d + 2 * d * f) + 2 * B * S * S * d)
    decoder = cfg.decoder_layers * (B * T * (4 * d * d + 2 * d * f) + 2 * B * T * T * d  # self-attn, FFN
                                    + B * T * 2 * d * d + B * S * 2 * d * d + 2 * B * T * S * d)  # cross-attn
    return 2 * (encoder + decoder + B * T * d * V)


def train_flops(cfg: TransformerConfig, b: Batch) -> int:
    return 3 * forward_flops(cfg, b.src.size(0), b.src.size(1), b.tgt_in.size(1))


def real_tokens(b: Batch) -> int:
    return int((b.src != PAD).sum()) + b.n_tokens


def rss_mb() -> float:
    """Current resident set size."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2 ** 20


# -- data ------------------------------------------------------------------------------------
def load_data(s: Settings) -> TranslationDataModule:
    """Tokenizer trained on the training split, both splits tokenized by the project's datamodule."""
    train = load_split(s.data, "train", "de", "en")
    if s.tokenizer_pairs:
        train = train.select(range(min(s.tokenizer_pairs, len(train))))
    dm = TranslationDataModule(s.data, vocab_size=s.vocab_size, max_tokens=s.bucket_max_tokens,
                               train_limit=s.train_pairs, seed=s.seed)
    dm.tokenizer = train_tokenizer((text for row in train for text in (row["src"], row["tgt"])), s.vocab_size)
    dm.setup("fit")
    return dm


def train_batches(dm: TranslationDataModule, s: Settings) -> list[Batch]:
    """Token-bucket batches (max_tokens = sentences x len) holding about `sentences` pairs each."""
    ds = dm.splits["train"]
    lengths = [max(len(a), len(b)) + 1 for a, b in zip(ds["src_ids"], ds["tgt_ids"])]
    buckets = TokenBucketSampler(lengths, s.train_batch_sentences * s.train_batch_len, shuffle=False).batches()
    buckets.sort(key=lambda b: (abs(len(b) - s.train_batch_sentences), -len(b)))
    return [collate([ds[i] for i in b]) for b in buckets[: s.train_batches]]


def decode_batches(dm: TranslationDataModule, s: Settings) -> list[torch.Tensor]:
    """Sources (with EOS) of consecutive validation sentences, `decode_batch` per batch."""
    ds = dm.splits["validation"]
    n = s.decode_batch
    return [collate([ds[i] for i in range(k * n, (k + 1) * n)]).src for k in range(s.decode_batches)
            if (k + 1) * n <= len(ds)]


EPOCH_RUNS = {"ours": "ours", "marian": "marian", "marian_same_batches": "marian"}  # loader -> side


def epoch_loaders(dm: TranslationDataModule, s: Settings, repeat: int) -> dict[str, DataLoader]:
    """Loaders over the epoch-equivalent, one per EPOCH_RUNS entry: ours with token buckets (the
    datamodule's sampler and collation, as `python -m pipeline fit` does), Marian with random
    fixed-size batches, and Marian with the very same token-bucket batches as ours."""
    def buckets():
        sampler = dm.sampler("train", s.bucket_max_tokens, shuffle=True)
        sampler.set_epoch(repeat)  # deterministic: both samplers give the same batches in the same order
        return DataLoader(dm.splits["train"], batch_sampler=sampler, collate_fn=collate)

    marian = DataLoader(dm.splits["train"], batch_size=s.marian_batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(s.seed + repeat))
    return {"ours": buckets(), "marian": marian, "marian_same_batches": buckets()}


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def padding_efficiencies(dm: TranslationDataModule, s: Settings, recipe_max_tokens: int) -> dict[str, float]:
    """Real / padded tokens of an epoch, source and target together: ours = the batches `fit`
    trains on (the datamodule's sampler: token buckets, pairs of equal length ordered by target
    then source length) at the bench's bucket size and at the recipe's data.max_tokens; marian =
    random fixed-size batches."""
    src_lens, tgt_lens = dm.lengths("train")
    return {
        "ours": dm.sampler("train", s.bucket_max_tokens, shuffle=True).padding_efficiency(src_lens, tgt_lens),
        "ours_recipe_max_tokens": dm.sampler("train", recipe_max_tokens, shuffle=True).padding_efficiency(
            src_lens, tgt_lens),
        "marian": padding_efficiency(random_batches(len(src_lens), s.marian_batch_size, s.seed), src_lens, tgt_lens),
    }


# -- the benchmark ---------------------------------------------------------------------------
def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def rates(work: float, seconds: dict[str, list[float]]) -> dict[str, list[float]]:
    """Work per second of every repeat."""
    return {name: [work / t for t in times] for name, times in seconds.items()}


def row(figure: str, ours: list[float], peer: list[float]) -> dict:
    """A figure: ours and the peer's median over the repeats (min and max under `spread`), ratio
    of the medians."""
    name = PEERS[figure]
    o, p = statistics.median(ours), statistics.median(peer)
    return {"figure": figure, "unit": UNITS[figure], "peer": name, "ours": o, name: p, "ratio": o / p,
            "repeats": len(ours), "spread": {"ours": spread(ours), name: spread(peer)}}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(s: Settings) -> dict:
    if s.threads:
        torch.set_num_threads(s.threads)
    gpu = s.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here (run without --device for the CPU bench)")
    if gpu and s.decode_workers > 1:
        raise SystemExit("--decode-workers: decoding workers are CPU processes (a forked child cannot use CUDA)")
    if s.decode_workers < 0 or s.ct2_threads < 0:
        raise SystemExit("--decode-workers and --ct2-threads must be >= 0 (0: the default)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    peak_mem = {}

    log(f"data: tokenizer (V={s.vocab_size}) and token ids from {s.data}")
    dm = load_data(s)
    batches = [b.to(s.device) for b in train_batches(dm, s)]
    sources = [src.to(s.device) for src in decode_batches(dm, s)]
    recipe_data = yaml.safe_load((ROOT / s.recipe).read_text(encoding="utf-8")).get("data") or {}
    # on the train_pairs tokenized (all of them by default)
    pad_eff = padding_efficiencies(dm, s, recipe_data.get("max_tokens", s.bucket_max_tokens))
    peak_mem["data"] = peak_rss_mb()

    cfg = our_config(s)
    torch.manual_seed(s.seed)
    ours_model = Transformer(cfg).to(s.device)
    torch.manual_seed(s.seed)
    marian = marian_model(cfg).to(s.device)
    sides = {"ours": Side("ours", ours_model, ours_loss, s.lr), "marian": Side("marian", marian, marian_loss, s.lr)}
    peak_mem["models"] = peak_rss_mb()

    log("torch.mm peaks")
    peak = {name: matmul_gflops(dtype, s.matmul_size, device=s.device)
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    rows, gflops = {}, {}
    tokens = sum(real_tokens(b) for b in batches)
    flops = sum(train_flops(cfg, b) for b in batches)
    log("the training step's own products")
    products = [step_products(cfg, b.src.size(0), b.src.size(1), b.tgt_in.size(1)) for b in batches]
    shape_peak = {name: products_gflops(products, dtype, device=s.device)
                  for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}

    def train_pass(side: Side, bf16: bool, label_smoothing: float):
        return lambda: [side.train_step(b, bf16, label_smoothing) for b in batches]

    for figure, bf16 in (("train_fp32", False), ("train_bf16", True)):
        log(f"{figure}: {len(batches)} batches of ~{s.train_batch_sentences} sentences, {s.repeats} repeats")
        for side in sides.values():
            side.model.train()
        times = interleaved({name: train_pass(side, bf16, s.label_smoothing) for name, side in sides.items()},
                            s.repeats, settle_s=s.settle_s)
        r = rates(tokens, times)
        rows[figure] = row(figure, r["ours"], r["marian"])
        precision = "bf16" if bf16 else "fp32"
        for name in sides:  # Marian runs the same matmuls (plus a final-logits bias)
            gflops[f"{name}_{precision}"] = flops / statistics.median(times[name]) / 1e9
        gflops[f"ours_{precision}_fraction_of_peak"] = gflops[f"ours_{precision}"] / peak[precision]
        gflops[f"ours_{precision}_fraction_of_shape_peak"] = gflops[f"ours_{precision}"] / shape_peak[precision]
    peak_mem["train"] = peak_rss_mb()

    recipe = recipe_settings(s)
    recipe_cfg = replace(cfg, **recipe["model"])
    recipe_bf16 = "bf16" in recipe["precision"]
    log(f"train_recipe: {s.recipe} settings {recipe['model']}, clip {recipe['gradient_clip_val']}, "
        f"R-Drop alpha {recipe['rdrop_alpha']}, precision {recipe['precision']} ({recipe['precision_reason']})")
    torch.manual_seed(s.seed)
    ours_recipe = Transformer(recipe_cfg).to(s.device).train()
    torch.manual_seed(s.seed)
    marian_recipe = marian_model(recipe_cfg).to(s.device).train()
    # AdamW as TranslationModule.configure_optimizers builds it: fused unless mixed precision.
    # With R-Drop each step runs the batch twice on both sides; tokens/s counts the batch once, as fit logs it.
    recipe_sides = {name: Side(name, model, functools.partial(loss, rdrop_alpha=recipe["rdrop_alpha"]), s.lr,
                               fused=not recipe_bf16, clip=recipe["gradient_clip_val"])
                    for name, model, loss in (("ours", ours_recipe, ours_loss), ("marian", marian_recipe, marian_loss))}
    times = interleaved({name: train_pass(side, recipe_bf16, recipe["label_smoothing"])
                         for name, side in recipe_sides.items()}, s.repeats, settle_s=s.settle_s)
    r = rates(tokens, times)
    rows["train_recipe"] = row("train_recipe", r["ours"], r["marian"])
    del recipe_sides, ours_recipe, marian_recipe
    peak_mem["train_recipe"] = peak_rss_mb()

    # The *_workers rows: each batch decoded whole by one of `workers` forked single-threaded
    # processes (at most one per batch), ours and Marian's; CTranslate2 as as many replicas.
    workers = min(s.decode_workers or default_workers(s.device), len(sources))
    ct2_threads = s.ct2_threads or torch.get_num_threads()
    replicas = workers  # as many as our workers, whatever the threads (as ours)
    log(f"decoding: {len(sources)} batches of {s.decode_batch} validation sentences, "
        f"{s.max_new_tokens} new tokens each" + (f"; the *_workers rows in {workers} worker processes"
                                                 if workers > 1 else "")
        + ("" if gpu else f"; CTranslate2 on {ct2_threads} threads" + (
            f" (ct2_beam4_workers: {replicas} replicas of {max(1, ct2_threads // replicas)})" if workers > 1 else "")))
    for side in sides.values():
        side.model.eval()
    fixed = FixedLength(inference_model(ours_model))  # as Translator decodes
    # On a GPU: no int8 (torch's dynamic quantization is CPU-only) and no CTranslate2 rows (its
    # PyPI wheel is built for one CUDA major version; the CPU bench compares with it).
    fixed_int8 = None if gpu else FixedLength(inference_model(ours_model, "int8"))
    ct2 = None if gpu else ct2_worker(ours_model, dm.tokenizer, ct2_threads, replicas)
    try:  # the worker process ends however this part ends
        # The exported token list: CTranslate2's token i is our id i.
        vocab = vocabulary(Checkpoint(ours_model, dm.tokenizer, ("de", "en"), DecodingConfig(), {}, Path("bench")))
        token_id = {t: i for i, t in enumerate(vocab)}
        ct2_sources = [ct2_tokens(src, vocab) for src in sources]
        cache_equal, ct2_equal = [], []  # sanity: the cache changes nothing, every side makes the same number of tokens
        for src, toks in zip(sources, ct2_sources):
            head = src[: s.sanity_rows]  # uncached decoding is slow (it reruns the whole prefix each step)
            cached = greedy_decode(fixed, head, s.max_new_tokens)
            cache_equal.append(torch.equal(cached, greedy_decode(fixed, head, s.max_new_tokens, use_cache=False)))
            if cached.size(1) != s.max_new_tokens:
                raise AssertionError(f"ours made {cached.size(1)} tokens, not {s.max_new_tokens}")
            if marian_generate(marian, src, 1, s.max_new_tokens).size(1) != s.max_new_tokens + 1:  # + start token
                raise AssertionError(f"Marian did not make exactly {s.max_new_tokens} tokens")
            if ct2 is None:
                continue
            for compute in COMPUTE_TYPES:
                for beams in (1, 4):
                    _, (theirs,) = ct2.translate(compute, [toks[: s.sanity_rows]], beams, s.max_new_tokens, keep=True)
                    lengths = {len(hypothesis) for hypothesis in theirs}
                    if lengths != {s.max_new_tokens}:
                        raise AssertionError(f"CTranslate2 ({compute}, beam {beams}) made {lengths} tokens, "
                                             f"not {s.max_new_tokens}")
                    if compute == "float32" and beams == 1:
                        ct2_equal += [[token_id[t] for t in hypothesis] == row_ids
                                      for hypothesis, row_ids in zip(theirs, cached.tolist())]
        n_sentences = sum(src.size(0) for src in sources)
        # Through the one decoding entry point, as evaluate/translate use it: ratio 0 + extra n = n new tokens.
        fixed_n = DecodingConfig(max_len_ratio=0.0, max_len_extra=s.max_new_tokens)
        n = s.max_new_tokens

        # Numpy ids in and tokens out, in one process or in `workers` (pipeline.workers), as Translator decodes.
        source_ids = [src.cpu().numpy() for src in sources]

        def ours_fn(beams, model=fixed, workers=1):
            def decode(src):
                return generate(model, torch.from_numpy(src).to(s.device), fixed_n, beam=beams).tokens.cpu().numpy()
            return lambda: list(fork_map(decode, source_ids, workers))

        def marian_fn(beams, model=marian, workers=1):
            def decode(src):
                return marian_generate(model, torch.from_numpy(src).to(s.device), beams, n).cpu().numpy()
            return lambda: list(fork_map(decode, source_ids, workers))

        def ct2_fn(compute, beams):
            return lambda: MeasuredElsewhere(ct2.translate(compute, ct2_sources, beams, n)[0])

        greedy_fns = {"ours": ours_fn(1), "marian": marian_fn(1)}
        beam_fns = {"ours": ours_fn(4), "marian": marian_fn(4)}
        if workers > 1:  # both sides in the same workers
            greedy_fns.update(ours_workers=ours_fn(1, workers=workers), marian_workers=marian_fn(1, workers=workers))
            beam_fns.update(ours_workers=ours_fn(4, workers=workers), marian_workers=marian_fn(4, workers=workers))
            if ct2 is not None:
                beam_fns["ct2_workers"] = ct2_fn(REPLICATED, 4)
        if ct2 is not None:
            greedy_fns["ct2"] = ct2_fn("float32", 1)
            beam_fns.update(ct2=ct2_fn("float32", 4), ours_int8=ours_fn(4, fixed_int8), ct2_int8=ct2_fn("int8", 4))
        greedy = rates(n_sentences, interleaved(greedy_fns, s.repeats, settle_s=s.settle_s))
        rows["greedy"] = row("greedy", greedy["ours"], greedy["marian"])
        beam = rates(n_sentences, interleaved(beam_fns, s.repeats, settle_s=s.settle_s))
        rows["beam4"] = row("beam4", beam["ours"], beam["marian"])
        if workers > 1:
            rows["greedy_workers"] = row("greedy_workers", greedy["ours_workers"], greedy["marian_workers"])
            rows["beam4_workers"] = row("beam4_workers", beam["ours_workers"], beam["marian_workers"])
    finally:
        if ct2 is not None:
            ct2.close()
    if ct2 is not None:
        rows["ct2_greedy"] = row("ct2_greedy", greedy["ours"], greedy["ct2"])
        rows["ct2_beam4"] = row("ct2_beam4", beam["ours"], beam["ct2"])
        rows["ct2_int8_beam4"] = row("ct2_int8_beam4", beam["ours_int8"], beam["ct2_int8"])
        if workers > 1:
            rows["ct2_beam4_workers"] = row("ct2_beam4_workers", beam["ours_workers"], beam["ct2_workers"])
    fixed_bf16 = FixedLength(inference_model(ours_model, "bf16"))
    marian_bf16 = copy.deepcopy(marian).to(torch.bfloat16)
    half = rates(n_sentences, interleaved({
        "ours_greedy": ours_fn(1, fixed_bf16), "marian_greedy": marian_fn(1, marian_bf16),
        "ours_beam4": ours_fn(4, fixed_bf16), "marian_beam4": marian_fn(4, marian_bf16)}, s.repeats,
        settle_s=s.settle_s))
    rows["greedy_bf16"] = row("greedy_bf16", half["ours_greedy"], half["marian_greedy"])
    rows["beam4_bf16"] = row("beam4_bf16", half["ours_beam4"], half["marian_beam4"])
    del fixed_bf16, marian_bf16
    peak_mem["decode"] = peak_rss_mb()

    if s.epoch_pairs:
        dm.splits["train"] = dm.splits["train"].select(range(min(s.epoch_pairs, len(dm.splits["train"]))))
    n_pairs = len(dm.splits["train"])
    log(f"epoch_real_tokens, epoch_same_batches: {n_pairs} pairs, {s.epoch_repeats} repeats")
    for side in sides.values():
        side.model.train()

    def epoch(side: Side, loader, limit: int | None = None) -> int:
        n = 0
        for i, b in enumerate(loader):
            if limit is not None and i >= limit:
                break
            n += real_tokens(b)  # counted on the CPU batch: no GPU wait inside the timed epoch
            side.train_step(b.to(s.device), False, s.label_smoothing)
        return n

    for name, loader in epoch_loaders(dm, s, -1).items():
        epoch(sides[EPOCH_RUNS[name]], loader, limit=1)  # warm-up
    epoch_rates, epoch_rss = {name: [] for name in EPOCH_RUNS}, {name: [] for name in EPOCH_RUNS}
    for r in range(s.epoch_repeats):
        for name, loader in epoch_loaders(dm, s, r).items():
            synchronize()
            start = time.perf_counter()
            n = epoch(sides[EPOCH_RUNS[name]], loader)
            synchronize()
            epoch_rates[name].append(n / (time.perf_counter() - start))
            epoch_rss[name].append(rss_mb())
    rows["epoch_real_tokens"] = row("epoch_real_tokens", epoch_rates["ours"], epoch_rates["marian"])
    rows["epoch_same_batches"] = row("epoch_same_batches", epoch_rates["ours"], epoch_rates["marian_same_batches"])
    peak_mem["epoch"] = peak_rss_mb()

    commit = git_commit()
    n_params = {"ours": sum(p.numel() for p in ours_model.parameters()),
                "marian": sum(p.numel() for p in marian.parameters() if p.requires_grad)}
    return {
        "commit": commit,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(s), "model": {"ours": {**cfg.to_dict(), "layout": "pre-norm"},
                                            "marian": {"layout": "post-norm",
                                                       "attn_implementation": marian.config._attn_implementation}},
                     "recipe": recipe,
                     "decode_workers_used": workers,
                     "ctranslate2": None if gpu else {"version": ct2.version, "intra_threads": ct2_threads,
                                                      "inter_threads": 1, "compute_types": list(COMPUTE_TYPES),
                                                      "workers_row": {"inter_threads": replicas,
                                                                      "intra_threads": max(1, ct2_threads // replicas)}
                                                      if workers > 1 else None,
                                                      "process": "its own (bench.ct2_worker)"},
                     "parameters": n_params, "train_batch_shapes": [list(b.src.shape) + [b.tgt_in.size(1)]
                                                                    for b in batches],
                     "train_batch_real_tokens": tokens, "epoch_pairs_used": n_pairs,
                     "decode_sentences": n_sentences, "decode_rule": "EOS forbidden, exactly max_new_tokens steps"},
        "loadavg_1min_at_start": load,
        "padding_efficiency": pad_eff,
        "peak_matmul_gflops": peak,
        "step_products_gflops": shape_peak,
        "train_gflops": gflops,
        "peak_rss_mb": peak_mem,
        "epoch_rss_mb": epoch_rss,
        "memory_growth_mb_per_epoch": {name: (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else None
                                       for name, v in epoch_rss.items()},
        "sanity": {"greedy_cache_equals_no_cache": all(cache_equal), "batches_checked": len(cache_equal),
                   "rows_checked_per_batch": s.sanity_rows or s.decode_batch,
                   "new_tokens_per_hypothesis": s.max_new_tokens,
                   "ct2_greedy_rows_equal_ours": sum(ct2_equal) / len(ct2_equal) if ct2_equal else None},
        "targets": TARGETS,
        "seconds": time.perf_counter() - started,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if gpu else None,
        "rows": [rows[f] for f in FIGURES if f in rows],
    }


def table(result: dict) -> str:
    lines = [f"{'figure':<19} {'unit':<14} {'ours':>10} {'peer':<12} {'peer value':>10} {'ratio':>7} "
             f"{'min-max ratio':>14} {'target':>7}"]
    for r in result["rows"]:
        peer, sp = r["peer"], r["spread"]
        worst, best = sp["ours"]["min"] / sp[peer]["max"], sp["ours"]["max"] / sp[peer]["min"]
        target = result["targets"].get(r["figure"])
        verdict = "" if target is None else f"{target:>6.1f}x {'ok' if r['ratio'] >= target else 'below'}"
        lines.append(f"{r['figure']:<19} {r['unit']:<14} {r['ours']:>10.1f} {peer:<12} {r[peer]:>10.1f} "
                     f"{r['ratio']:>6.2f}x {worst:>6.2f}-{best:<6.2f} {verdict}")
    recipe = result["settings"]["recipe"]
    lines.append(f"train_recipe: {recipe['path']} {recipe['model']}, clip {recipe['gradient_clip_val']}, precision "
                 f"{recipe['precision']} ({recipe['precision_reason']}); epoch_same_batches: Marian on our batches")
    pe = result["padding_efficiency"]
    at_recipe = (f" (at the recipe's max_tokens {pe['ours_recipe_max_tokens']:.3f})"
                 if "ours_recipe_max_tokens" in pe else "")  # older JSON files lack it
    lines.append(f"padding efficiency: ours (token buckets) {pe['ours']:.3f}{at_recipe}, random batches "
                 f"{pe['marian']:.3f} (target {result['targets']['padding_efficiency']})")
    peak, g = result["peak_matmul_gflops"], result["train_gflops"]
    lines.append(f"torch.mm peak GFLOP/s: fp32 {peak['fp32']:.1f}, bf16 {peak['bf16']:.1f}; training step "
                 f"GFLOP/s ours fp32 {g['ours_fp32']:.0f} ({g['ours_fp32_fraction_of_peak']:.0%} of peak), "
                 f"bf16 {g['ours_bf16']:.0f} ({g['ours_bf16_fraction_of_peak']:.0%}); "
                 f"Marian fp32 {g['marian_fp32']:.0f}, bf16 {g['marian_bf16']:.0f}; target "
                 f"{result['targets']['matmul_peak_share']:.0%} of the peak in the recipe's precision")
    if "step_products_gflops" in result:  # older JSON files lack it
        sp = result["step_products_gflops"]
        lines.append(f"the step's own matrix products alone (torch.mm/bmm at their shapes, back to back) GFLOP/s: "
                     f"fp32 {sp['fp32']:.0f} ({sp['fp32'] / peak['fp32']:.0%} of the peak), bf16 {sp['bf16']:.0f} "
                     f"({sp['bf16'] / peak['bf16']:.0%}); ours reaches {g['ours_fp32_fraction_of_shape_peak']:.0%} "
                     f"and {g['ours_bf16_fraction_of_shape_peak']:.0%} of that")
    growth = result["memory_growth_mb_per_epoch"]
    lines.append(f"peak RSS {max(result['peak_rss_mb'].values()):.0f} MB; RSS change per repeated epoch: "
                 + ", ".join(f"{k} {v:+.1f} MB" if v is not None else f"{k} n/a" for k, v in growth.items()))
    ct2 = result["settings"]["ctranslate2"]
    if ct2:
        replicated = ct2.get("workers_row")
        lines.append(f"CTranslate2 {ct2['version']} on {ct2['intra_threads']} threads"
                     + (f" (ct2_beam4_workers: {replicated['inter_threads']} replicas of {replicated['intra_threads']})"
                        if replicated else "")
                     + (f"; the *_workers rows decode in {replicated['inter_threads']} worker processes"
                        if replicated else "")
                     + "; its greedy tokens equal ours "
                     f"on {result['sanity']['ct2_greedy_rows_equal_ours']:.0%} of the rows checked")
    where = result["device"] if result.get("device", "cpu") != "cpu" else result["cpu"]
    lines.append(f"{result['threads']} threads, {where}, torch {result['torch']}, commit {result['commit']}, "
                 f"load average at start {result['loadavg_1min_at_start']}, {result['seconds']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer batches and repeats, a 512-pair epoch (aimed at < 2 min on 2 idle cores)")
    p.add_argument("--tiny", action="store_true", help="toy sizes, for the test suite only (numbers meaningless)")
    p.add_argument("--out", help="JSON path (default bench/results/<date>-<commit>.json)")
    p.add_argument("--data", default=Settings.data, help="dataset directory (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where both models run (default cpu; cuda: no CTranslate2 or int8 rows)")
    p.add_argument("--recipe", default=Settings.recipe,
                   help="config whose training settings train_recipe times (default %(default)s)")
    p.add_argument("--ct2-threads", type=int, default=0,
                   help="CTranslate2 intra_threads (default: as many as torch uses; ct2_beam4_workers shares "
                        "them out among its replicas)")
    p.add_argument("--decode-workers", type=int, default=0,
                   help="processes of the *_workers rows (default: as Translator picks, one per thread on the "
                        "CPU; at most one per batch; 1 leaves those rows out)")
    p.add_argument("--repeats", type=int, help="timed repeats of the train and decode figures (default 5, quick 3)")
    p.add_argument("--epoch-repeats", type=int, help="timed epochs per side (default 3, quick 2)")
    p.add_argument("--epoch-pairs", type=int, help="training pairs in the epoch-equivalent (default all, quick 512)")
    args = p.parse_args(argv)
    s = Settings(data=args.data, recipe=args.recipe, threads=args.threads, ct2_threads=args.ct2_threads,
                 decode_workers=args.decode_workers,
                 device=args.device)
    if args.quick:
        s = replace(s, **QUICK)
    if args.tiny:
        s = replace(s, **TINY)
    elif s.device == "cuda":  # a 2048 product is too small to reach a GPU's peak
        s = replace(s, matmul_size=8192)
    overrides = {"repeats": args.repeats, "epoch_repeats": args.epoch_repeats, "epoch_pairs": args.epoch_pairs}
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    if min(s.repeats, s.epoch_repeats) < 1 or (s.epoch_pairs is not None and s.epoch_pairs < 1):
        p.error("--repeats, --epoch-repeats and --epoch-pairs must be >= 1")
    return s, args


def main(argv: list[str] | None = None) -> dict:
    s, args = parse_args(argv)
    if not Path(s.data).exists():
        raise SystemExit(f"data not found: {s.data} (pass --data DIR)")
    warnings.filterwarnings("ignore")
    result = run(s)
    write_result(result, args.out, "", table(result))
    return result


if __name__ == "__main__":
    main()
