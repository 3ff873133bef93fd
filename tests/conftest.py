"""Shared fixtures: data paths, a tiny model config, a small joint tokenizer, seeding.

The corpora live outside the tree in ../shared/data (relative to the project root) and are
only read, never copied; the two small .jsonl fixtures are in tests/fixtures/.
"""

from __future__ import annotations

import json
import random
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch

from pipeline.batching import collate
from pipeline.model import Transformer, TransformerConfig
from pipeline.module import TranslationModule
from pipeline.tokenizer import encode, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MULTI30K = DATA / "multi30k"
TATOEBA = DATA / "tatoeba-ko-en"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# The models under test are tiny: one thread is faster than two fighting over small matmuls
# (and than fighting a training run on a small machine).
torch.set_num_threads(1)


def read_jsonl(path: Path, keys: tuple[str, ...], n: int | None = None) -> list[str]:
    """The texts under `keys` of the first `n` rows of a .jsonl file, row by row."""
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in islice(f, n)]
    return [row[k] for row in rows for k in keys]


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


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def config() -> TransformerConfig:
    return tiny_config()


@pytest.fixture
def model() -> Transformer:
    return make_model()


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    assert MULTI30K.is_dir(), f"shared data missing: {MULTI30K}"
    return MULTI30K


@pytest.fixture(scope="session")
def tatoeba_dir() -> Path:
    assert TATOEBA.is_dir(), f"shared data missing: {TATOEBA}"
    return TATOEBA


@pytest.fixture(scope="session")
def tiny_jsonl() -> Path:
    """Flat {"de": .., "en": ..} rows, including empty, null and over-long pairs."""
    return FIXTURES / "tiny.jsonl"


@pytest.fixture(scope="session")
def nested_jsonl() -> Path:
    """Hugging Face style {"translation": {"de": .., "en": ..}} rows."""
    return FIXTURES / "nested.jsonl"


@pytest.fixture(scope="session")
def tokenizer(multi30k_dir, tatoeba_dir):
    """A joint BPE tokenizer (vocab 2000) trained on slices of multi30k de-en and tatoeba ko-en."""
    texts = read_jsonl(multi30k_dir / "train.jsonl", ("de", "en"), 2000)
    texts += read_jsonl(tatoeba_dir / "train.jsonl", ("ko", "en"), 1000)
    return train_tokenizer(texts, vocab_size=2000)


SEED = ("안녕하세요, 만나서 반가워요", "hey, good to know you")


def tiny_checkpoint(path: Path, n_pairs: int = 12, steps: int = 150, **model_kwargs) -> list[tuple[str, str]]:
    """Overfit a 2-layer model on the seed pair and a few short Tatoeba pairs and save it as
    the checkpoint `fit` would write (hyper-parameters, weights, tokenizer, languages)."""
    rows = [json.loads(line) for line in (TATOEBA / "train.jsonl").open(encoding="utf-8")]
    pairs = [SEED] + [(r["ko"], r["en"]) for r in rows if len(r["ko"]) < 16][: n_pairs - 1]
    tokenizer = train_tokenizer([t for p in pairs for t in p], 600)
    torch.manual_seed(0)
    hp = dict(vocab_size=600, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=64, dropout=0.0)
    module = TranslationModule(**(hp | model_kwargs))
    module.tokenizer, module.languages = tokenizer, ("ko", "en")
    src, tgt = encode(tokenizer, [p[0] for p in pairs]), encode(tokenizer, [p[1] for p in pairs])
    batch = collate([{"src_ids": s, "tgt_ids": t, "index": i} for i, (s, t) in enumerate(zip(src, tgt))])
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and much faster on a busy CPU
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            module.loss(batch, 0.0).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": L.__version__}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return pairs
