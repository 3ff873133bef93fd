"""Helpers the tests share: paths, tiny models, a tiny trained checkpoint, running the CLI.

The corpora live outside the tree in ../shared/data (relative to the project root) and are
only read, never copied; the small .jsonl fixtures are in tests/fixtures/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import torch

from pipeline.batching import collate
from pipeline.checkpoints import save_checkpoint
from pipeline.model import Transformer, TransformerConfig
from pipeline.module import TrainConfig, TranslationModule
from pipeline.tokenizer import encode, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MULTI30K = DATA / "multi30k"
TATOEBA = DATA / "tatoeba-ko-en"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED = ("안녕하세요, 만나서 반가워요", "hey, good to know you")


def read_jsonl(path: Path, keys: tuple[str, ...], n: int | None = None) -> list[str]:
    """The texts under `keys` of the first `n` rows of a .jsonl file, row by row."""
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in islice(f, n)]
    return [row[k] for row in rows for k in keys]


def jsonl_rows(path: Path) -> list[dict]:
    """Every row of a .jsonl file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tiny_config(**overrides) -> TransformerConfig:
    """A Transformer small enough to run many times per test on a CPU."""
    kwargs = dict(vocab_size=24, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=64,
                  dropout=0.0, max_positions=64)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def make_model(seed: int = 0, **overrides) -> Transformer:
    """A seeded, randomly initialised tiny model in eval mode."""
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides)).eval()


def tiny_checkpoint(path: Path, n_pairs: int = 12, steps: int = 150, **model_kwargs) -> list[tuple[str, str]]:
    """Overfit a 2-layer model on the seed pair and a few short Tatoeba pairs and save it with
    the project's checkpoint writer, as `fit` would (config, weights, tokenizer, languages)."""
    rows = [json.loads(line) for line in (TATOEBA / "train.jsonl").open(encoding="utf-8")]
    pairs = [SEED] + [(r["ko"], r["en"]) for r in rows if len(r["ko"]) < 16][: n_pairs - 1]
    tokenizer = train_tokenizer([t for p in pairs for t in p], 600)
    torch.manual_seed(0)
    config = TransformerConfig(**(dict(vocab_size=600, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2,
                                       d_ff=64, dropout=0.0) | model_kwargs))
    module = TranslationModule(config, TrainConfig(label_smoothing=0.0))
    src, tgt = encode(tokenizer, [p[0] for p in pairs]), encode(tokenizer, [p[1] for p in pairs])
    batch = collate([{"src_ids": s, "tgt_ids": t, "index": i} for i, (s, t) in enumerate(zip(src, tgt))])
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and much faster on a busy CPU
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            module.loss(batch).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(path, module.state_dict(), dict(module.hparams), tokenizer, ("ko", "en"))
    return pairs


def missing_glyph_warnings(caught) -> list[str]:
    """matplotlib's warnings (from warnings.catch_warnings(record=True)) about glyphs a font lacks."""
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def run_cli(*args, input: str | bytes | None = None, check: bool = True, timeout: int = 600,
            **env) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ...` from the repository root as a user would; with check=True a
    non-zero exit fails the test with the output shown."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, input=input,
                          capture_output=True, text=not isinstance(input, bytes), timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline", **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def smoke_fit(root: Path, *extra, final: bool = False) -> subprocess.CompletedProcess:
    """A few seconds of training of the smoke config on a slice of Multi30k (without the
    final selection and test, unless final=True)."""
    return run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", root, "--trainer.enable_progress_bar",
                   "false", "--final.enabled", str(final).lower(), *extra)
