"""Fixtures: data paths, a tiny model config, a small joint tokenizer, seeding.
Plain helpers (no fixtures) are in helpers.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, MULTI30K, TATOEBA, make_model, read_jsonl, tiny_checkpoint, tiny_config
from pipeline.checkpoints import Checkpoint, load_checkpoint
from pipeline.model import Transformer, TransformerConfig
from pipeline.tokenizer import train_tokenizer

# The models under test are tiny: one thread is faster than two fighting over small matmuls
# (and than fighting a training run on a small machine).
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A tiny ko->en checkpoint overfitted on the seed pair and a few Tatoeba pairs, and those pairs."""
    path = tmp_path_factory.mktemp("seed") / "tiny.ckpt"
    return path, tiny_checkpoint(path)


@pytest.fixture(scope="session")
def ckpt(seed_run) -> Path:
    return seed_run[0]


@pytest.fixture(scope="session")
def module(ckpt) -> Checkpoint:
    """The seed checkpoint, loaded (it quacks like the LightningModule for the callbacks)."""
    return load_checkpoint(ckpt)
