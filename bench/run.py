"""Speed of this project's Transformer against Hugging Face MarianMT, both at the same sizes.

    python -m bench.run [--quick] [--out PATH.json]        (`make bench [BENCH_QUICK=1]`)

Both models are built here with random weights: V=8000 joint BPE (pipeline.tokenizer, trained
on the multi30k training split), d_model 256, 3+3 layers, 4 heads, FFN 1024, ReLU, tied
embeddings, the same dropout (TransformerConfig's defaults: 0.1 on embeddings and residual
branches, none on attention weights or inside the FFN; the training recipe uses more, which
costs both sides alike). Ours runs in its default pre-norm layout; MarianMT is post-norm and
uses its SDPA attention. Both see the same batches and the same loss (label-smoothed
cross-entropy, as TranslationModule.loss) and AdamW settings; no gradient clipping.
Hugging Face is imported by this benchmark only, never by pipeline/.

Figures (each the median of several timed repeats after a warm-up; ours and Marian alternate
within every repeat so that drifting background load hits both alike):
  train_fp32, train_bf16  real (non-pad) source+target tokens/s of forward + label-smoothed
                          loss + backward + AdamW step on identical token-bucket batches of
                          about 64 sentences x 24 tokens; bf16 = torch.autocast(bfloat16).
  epoch_real_tokens       the same step end to end over an epoch (DataLoader and collation
                          included): ours with the TranslationDataModule's sampler
                          (TokenBucketSampler, max_tokens=4096) and collate, Marian with random
                          batches of 128 sentences padded to the batch maximum.
  greedy, beam4           sentences/s decoding batches of 64 validation sentences. The weights
                          are random, so to compare equal work EOS is forbidden on both sides
                          and every hypothesis runs exactly max_new_tokens=30 steps: ours =
                          pipeline.decoding with the KV cache and EOS logits set to -inf,
                          Marian = generate(min_new_tokens=max_new_tokens=30, do_sample=False).
Also recorded: padding efficiency (token buckets vs random batches), achieved GFLOP/s of the
training step (analytic matmul FLOPs) against torch.mm peaks measured in this process, peak
resident memory per phase and the resident-memory change across repeated epochs.

Timings are only meaningful on an otherwise idle machine: the 1-minute load average at start
is recorded, and a warning printed when it is high.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.batching import Batch, TokenBucketSampler, collate, padding_efficiency
from pipeline.data import load_split
from pipeline.datamodule import TranslationDataModule
from pipeline.decoding import DecodingConfig, generate, greedy_decode
from pipeline.loss import token_cross_entropy
from pipeline.model import Transformer, TransformerConfig
from pipeline.tokenizer import BOS, EOS, PAD, train_tokenizer

FIGURES = ("train_fp32", "train_bf16", "epoch_real_tokens", "greedy", "beam4")
UNITS = {"train_fp32": "real tokens/s", "train_bf16": "real tokens/s", "epoch_real_tokens": "real tokens/s",
         "greedy": "sentences/s", "beam4": "sentences/s"}
# Issue targets: ours / Marian for the rows, an absolute value for padding efficiency.
TARGETS = {"train_fp32": 1.0, "train_bf16": 1.5, "epoch_real_tokens": 1.5, "greedy": 2.0, "beam4": 2.0,
           "padding_efficiency": 0.95}
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
    seed: int = 0


# --quick (`make bench BENCH_QUICK=1`): a 10k-pair slice for the batches, one train batch, a 512-pair epoch.
QUICK = dict(train_pairs=10000, train_batches=1, repeats=3, epoch_pairs=512, epoch_repeats=2, decode_batches=1,
             sanity_rows=8)
# --tiny (tests only): toy sizes that exercise every code path in seconds; the numbers mean nothing.
TINY = dict(tokenizer_pairs=1500, train_pairs=1500, vocab_size=600, d_model=32, n_heads=2, layers=1, d_ff=64,
            train_batch_sentences=8, train_batch_len=12, train_batches=1, epoch_pairs=48, bucket_max_tokens=256,
            marian_batch_size=16, decode_batch=8, decode_batches=1, max_new_tokens=4, repeats=1, epoch_repeats=2,
            matmul_size=128)


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


def ours_logits(model, b: Batch) -> torch.Tensor:
    return model(b.src, b.tgt_in)


def marian_logits(model, b: Batch) -> torch.Tensor:
    return model(input_ids=b.src, attention_mask=b.src != PAD, decoder_input_ids=b.tgt_in,
                 decoder_attention_mask=b.tgt_in != PAD, use_cache=False).logits


class Side:
    """One contestant: a model, how to get its training logits, its optimiser."""

    def __init__(self, name: str, model, logits_fn, lr: float):
        self.name, self.model, self.logits_fn = name, model, logits_fn
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)

    def train_step(self, batch: Batch, bf16: bool, label_smoothing: float) -> None:
        """Forward, loss (as TranslationModule.loss), backward, optimiser step."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = token_cross_entropy(self.logits_fn(self.model, batch), batch.tgt_out, label_smoothing)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class FixedLength:
    """Our model with EOS forbidden, so that every hypothesis runs all max_len steps: the
    equivalent of Marian's min_new_tokens=max_new_tokens (which sets the EOS score to -inf)."""

    def __init__(self, model: Transformer):
        self.model, self.cfg = model, model.cfg

    def encode(self, src):
        return self.model.encode(src)

    def new_cache(self):
        return self.model.new_cache()

    def decode(self, tgt, memory, src_mask, cache=None):
        logits = self.model.decode(tgt, memory, src_mask, cache)
        logits[..., EOS] = float("-inf")
        return logits


def marian_generate(model, src: torch.Tensor, beams: int, n: int) -> torch.Tensor:
    return model.generate(input_ids=src, attention_mask=src != PAD, num_beams=beams, do_sample=False,
                          max_new_tokens=n, min_new_tokens=n, length_penalty=1.0, use_cache=True)


# -- measuring -------------------------------------------------------------------------------
def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each repeat of each function; the functions alternate within a repeat."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best torch.mm rate for (n, n) @ (n, n) in `dtype`."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    return 2 * n ** 3 / min(timed(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9


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


def epoch_loaders(dm: TranslationDataModule, s: Settings, repeat: int):
    """(ours, Marian) loaders over the epoch-equivalent: token buckets vs random fixed-size batches.
    Ours uses the datamodule's sampler and collation, as `python -m pipeline fit` does."""
    sampler = dm.sampler("train", s.bucket_max_tokens, shuffle=True)
    sampler.set_epoch(repeat)
    ours = DataLoader(dm.splits["train"], batch_sampler=sampler, collate_fn=collate)
    marian = DataLoader(dm.splits["train"], batch_size=s.marian_batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(s.seed + repeat))
    return ours, marian


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def padding_efficiencies(dm: TranslationDataModule, s: Settings) -> dict[str, float]:
    """Real / padded tokens of an epoch: ours (token buckets) and random fixed-size batches."""
    ds = dm.splits["train"]
    src_lens, tgt_lens = [len(a) + 1 for a in ds["src_ids"]], [len(b) + 1 for b in ds["tgt_ids"]]
    lengths = [max(a, b) for a, b in zip(src_lens, tgt_lens)]
    return {
        "ours": padding_efficiency(TokenBucketSampler(lengths, s.bucket_max_tokens, seed=s.seed).batches(),
                                   src_lens, tgt_lens),
        "marian": padding_efficiency(random_batches(len(lengths), s.marian_batch_size, s.seed), src_lens, tgt_lens),
    }


# -- the benchmark ---------------------------------------------------------------------------
def git_commit() -> tuple[str, bool]:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
        return head, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row(figure: str, ours: float, marian: float) -> dict:
    return {"figure": figure, "unit": UNITS[figure], "ours": ours, "marian": marian, "ratio": ours / marian}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(s: Settings) -> dict:
    if s.threads:
        torch.set_num_threads(s.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    peak_mem = {}

    log(f"data: tokenizer (V={s.vocab_size}) and token ids from {s.data}")
    dm = load_data(s)
    batches, sources = train_batches(dm, s), decode_batches(dm, s)
    pad_eff = padding_efficiencies(dm, s)  # on the train_pairs tokenized (all of them by default)
    peak_mem["data"] = peak_rss_mb()

    cfg = our_config(s)
    torch.manual_seed(s.seed)
    ours_model = Transformer(cfg)
    torch.manual_seed(s.seed)
    marian = marian_model(cfg)
    sides = {"ours": Side("ours", ours_model, ours_logits, s.lr), "marian": Side("marian", marian, marian_logits, s.lr)}
    peak_mem["models"] = peak_rss_mb()

    log("torch.mm peaks")
    peak = {"fp32": matmul_gflops(torch.float32, s.matmul_size), "bf16": matmul_gflops(torch.bfloat16, s.matmul_size)}

    rows, gflops = {}, {}
    tokens = sum(real_tokens(b) for b in batches)
    flops = sum(train_flops(cfg, b) for b in batches)
    for figure, bf16 in (("train_fp32", False), ("train_bf16", True)):
        log(f"{figure}: {len(batches)} batches of ~{s.train_batch_sentences} sentences, {s.repeats} repeats")
        for side in sides.values():
            side.model.train()

        def pass_fn(side, bf16=bf16):
            return lambda: [side.train_step(b, bf16, s.label_smoothing) for b in batches]
        times = interleaved({name: pass_fn(side) for name, side in sides.items()}, s.repeats)
        med = {name: statistics.median(t) for name, t in times.items()}
        rows[figure] = row(figure, tokens / med["ours"], tokens / med["marian"])
        precision = "bf16" if bf16 else "fp32"
        for name in sides:  # Marian runs the same matmuls (plus a final-logits bias)
            gflops[f"{name}_{precision}"] = flops / med[name] / 1e9
        gflops[f"ours_{precision}_fraction_of_peak"] = gflops[f"ours_{precision}"] / peak[precision]
    peak_mem["train"] = peak_rss_mb()

    log(f"decoding: {len(sources)} batches of {s.decode_batch} validation sentences, "
        f"{s.max_new_tokens} new tokens each")
    for side in sides.values():
        side.model.eval()
    fixed = FixedLength(ours_model)
    cache_equal = []  # sanity: the cache changes nothing, both sides make the same number of tokens
    for src in sources:
        head = src[: s.sanity_rows]  # uncached decoding is slow (it reruns the whole prefix each step)
        cached = greedy_decode(fixed, head, s.max_new_tokens)
        cache_equal.append(torch.equal(cached, greedy_decode(fixed, head, s.max_new_tokens, use_cache=False)))
        if cached.size(1) != s.max_new_tokens:
            raise AssertionError(f"ours made {cached.size(1)} tokens, not {s.max_new_tokens}")
        if marian_generate(marian, src, 1, s.max_new_tokens).size(1) != s.max_new_tokens + 1:  # + start token
            raise AssertionError(f"Marian did not make exactly {s.max_new_tokens} tokens")
    n_sentences = sum(src.size(0) for src in sources)
    # Through the one decoding entry point, as evaluate/translate use it: ratio 0 + extra n = n new tokens.
    fixed_n = DecodingConfig(max_len_ratio=0.0, max_len_extra=s.max_new_tokens)
    decoders = {
        "greedy": {"ours": lambda: [generate(fixed, src, fixed_n, beam=1) for src in sources],
                   "marian": lambda: [marian_generate(marian, src, 1, s.max_new_tokens) for src in sources]},
        "beam4": {"ours": lambda: [generate(fixed, src, fixed_n, beam=4) for src in sources],
                  "marian": lambda: [marian_generate(marian, src, 4, s.max_new_tokens) for src in sources]},
    }
    for figure, fns in decoders.items():
        times = interleaved(fns, s.repeats)
        rows[figure] = row(figure, n_sentences / statistics.median(times["ours"]),
                           n_sentences / statistics.median(times["marian"]))
    peak_mem["decode"] = peak_rss_mb()

    if s.epoch_pairs:
        dm.splits["train"] = dm.splits["train"].select(range(min(s.epoch_pairs, len(dm.splits["train"]))))
    n_pairs = len(dm.splits["train"])
    log(f"epoch_real_tokens: {n_pairs} pairs, {s.epoch_repeats} repeats")
    for side in sides.values():
        side.model.train()

    def epoch(side: Side, loader, limit: int | None = None) -> int:
        n = 0
        for i, b in enumerate(loader):
            if limit is not None and i >= limit:
                break
            side.train_step(b, False, s.label_smoothing)
            n += real_tokens(b)
        return n

    for name, loader in zip(sides, epoch_loaders(dm, s, -1)):
        epoch(sides[name], loader, limit=1)  # warm-up
    epoch_rates, epoch_rss = {name: [] for name in sides}, {name: [] for name in sides}
    for r in range(s.epoch_repeats):
        for name, loader in zip(sides, epoch_loaders(dm, s, r)):
            start = time.perf_counter()
            n = epoch(sides[name], loader)
            epoch_rates[name].append(n / (time.perf_counter() - start))
            epoch_rss[name].append(rss_mb())
    rows["epoch_real_tokens"] = row("epoch_real_tokens", statistics.median(epoch_rates["ours"]),
                                    statistics.median(epoch_rates["marian"]))
    peak_mem["epoch"] = peak_rss_mb()

    commit, dirty = git_commit()
    n_params = {"ours": sum(p.numel() for p in ours_model.parameters()),
                "marian": sum(p.numel() for p in marian.parameters() if p.requires_grad)}
    return {
        "commit": commit + ("-dirty" if dirty else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**asdict(s), "model": {"ours": {**cfg.to_dict(), "layout": "pre-norm"},
                                            "marian": {"layout": "post-norm",
                                                       "attn_implementation": marian.config._attn_implementation}},
                     "parameters": n_params, "train_batch_shapes": [list(b.src.shape) + [b.tgt_in.size(1)]
                                                                    for b in batches],
                     "train_batch_real_tokens": tokens, "epoch_pairs_used": n_pairs,
                     "decode_sentences": n_sentences, "decode_rule": "EOS forbidden, exactly max_new_tokens steps"},
        "loadavg_1min_at_start": load,
        "padding_efficiency": pad_eff,
        "peak_matmul_gflops": peak,
        "train_gflops": gflops,
        "peak_rss_mb": peak_mem,
        "epoch_rss_mb": epoch_rss,
        "memory_growth_mb_per_epoch": {name: (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else None
                                       for name, v in epoch_rss.items()},
        "sanity": {"greedy_cache_equals_no_cache": all(cache_equal), "batches_checked": len(cache_equal),
                   "rows_checked_per_batch": s.sanity_rows or s.decode_batch,
                   "new_tokens_per_hypothesis": s.max_new_tokens},
        "targets": TARGETS,
        "seconds": time.perf_counter() - started,
        "rows": [rows[f] for f in FIGURES],
    }


def table(result: dict) -> str:
    lines = [f"{'figure':<18} {'unit':<14} {'ours':>10} {'marian':>10} {'ratio':>7} {'target':>7}"]
    for r in result["rows"]:
        target = result["targets"][r["figure"]]
        ok = "ok" if r["ratio"] >= target else "below"
        lines.append(f"{r['figure']:<18} {r['unit']:<14} {r['ours']:>10.1f} {r['marian']:>10.1f} "
                     f"{r['ratio']:>6.2f}x {target:>6.1f}x {ok}")
    pe = result["padding_efficiency"]
    lines.append(f"padding efficiency: ours (token buckets) {pe['ours']:.3f}, random batches {pe['marian']:.3f} "
                 f"(target {result['targets']['padding_efficiency']})")
    peak, g = result["peak_matmul_gflops"], result["train_gflops"]
    lines.append(f"torch.mm peak GFLOP/s: fp32 {peak['fp32']:.1f}, bf16 {peak['bf16']:.1f}; training step "
                 f"GFLOP/s ours fp32 {g['ours_fp32']:.0f} ({g['ours_fp32_fraction_of_peak']:.0%} of peak), "
                 f"bf16 {g['ours_bf16']:.0f} ({g['ours_bf16_fraction_of_peak']:.0%}); "
                 f"Marian fp32 {g['marian_fp32']:.0f}, bf16 {g['marian_bf16']:.0f}")
    growth = result["memory_growth_mb_per_epoch"]
    lines.append(f"peak RSS {max(result['peak_rss_mb'].values()):.0f} MB; RSS change per repeated epoch: "
                 + ", ".join(f"{k} {v:+.1f} MB" if v is not None else f"{k} n/a" for k, v in growth.items()))
    lines.append(f"{result['threads']} threads, {result['cpu']}, torch {result['torch']}, commit {result['commit']}, "
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
    p.add_argument("--repeats", type=int, help="timed repeats of the train and decode figures (default 5, quick 3)")
    p.add_argument("--epoch-repeats", type=int, help="timed epochs per side (default 3, quick 2)")
    p.add_argument("--epoch-pairs", type=int, help="training pairs in the epoch-equivalent (default all, quick 512)")
    args = p.parse_args(argv)
    s = Settings(data=args.data, threads=args.threads)
    if args.quick:
        s = replace(s, **QUICK)
    if args.tiny:
        s = replace(s, **TINY)
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
    out = Path(args.out) if args.out else (
        ROOT / "bench" / "results" / f"{datetime.date.today().isoformat()}-{result['commit']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    if result["loadavg_1min_at_start"] and result["loadavg_1min_at_start"] > 0.5:
        print(f"WARNING: load average {result['loadavg_1min_at_start']:.2f} at start: other processes were "
              "using the CPU, these timings are not valid for reporting", flush=True)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
