"""TranslationDataModule: splits -> tokenizer -> token ids -> loaders, held-out validation."""

from __future__ import annotations

import json

import pytest

from helpers import jsonl_rows

from pipeline import datamodule as datamodule_module
from pipeline.batching import Batch
from pipeline.datamodule import TranslationDataModule
from pipeline.errors import UserError
from pipeline.tokenizer import EOS, decode, normalize


# --- TranslationDataModule ----------------------------------------------------------------

@pytest.fixture
def messages(monkeypatch):
    """What the DataModule reports (rank_zero_info), as a list of strings."""
    seen = []
    monkeypatch.setattr(datamodule_module, "rank_zero_info", lambda msg, *a, **k: seen.append(msg))
    return seen


def make_dm(path, tmp_path, **kwargs):
    args = dict(vocab_size=400, max_len=32, max_tokens=256, eval_max_tokens=256,
                tokenizer_file=str(tmp_path / "run" / "tokenizer.json"))
    args.update(kwargs)
    return TranslationDataModule(path=str(path), **args)


def test_datamodule_drops_empty_and_long_training_pairs_only(tiny_jsonl, tmp_path, messages):
    rows = jsonl_rows(tiny_jsonl)
    dm = make_dm(tiny_jsonl, tmp_path, validation_path=str(tiny_jsonl))
    dm.setup("fit")
    tok = dm.tokenizer
    empty = [i for i, r in enumerate(rows) if not (r["de"] or "").strip() or not (r["en"] or "").strip()]
    too_long = [i for i, r in enumerate(rows) if i not in empty
                and max(len(tok.encode(r["de"].strip()).ids), len(tok.encode(r["en"].strip()).ids)) > 31]
    kept = [i for i in range(len(rows)) if i not in empty + too_long]
    assert empty and too_long and kept, "the fixture needs all three kinds of rows"
    train = dm.splits["train"]
    assert train["index"] == kept
    assert all(len(s) <= 31 and len(t) <= 31 for s, t in zip(train["src_ids"], train["tgt_ids"]))
    assert decode(tok, train["src_ids"]) == [normalize(tok, rows[i]["de"]) for i in kept]
    assert decode(tok, train["tgt_ids"]) == [normalize(tok, rows[i]["en"]) for i in kept]
    # Validation keeps every pair, as `evaluate` does, and scores against the raw strings.
    val = dm.splits["validation"]
    assert sorted(val["index"]) == list(range(len(rows)))
    sources, references = dm.texts("validation")
    assert references == [r["en"] or "" for r in rows] and sources == [r["de"] or "" for r in rows]
    report = [m for m in messages if m.startswith("train:")]
    assert len(report) == 1 and report[0].startswith(
        f"train: {len(kept)} of {len(rows)} pairs kept ({len(empty)} empty, {len(too_long)} longer than 32 tokens "
        "dropped)")


def test_single_file_holds_out_a_seeded_validation_slice(multi30k_dir, tmp_path, messages):
    """With one .jsonl file and no validation_path, checkpoints must not be chosen on training data."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((multi30k_dir / "train.jsonl").open(encoding="utf-8").readlines()[:200]),
                    encoding="utf-8")
    first, second = (make_dm(path, tmp_path / name, vocab_size=300, max_len=64) for name in ("a", "b"))
    first.setup("fit")
    second.setup("fit")
    val_sources, _ = first.texts("validation")
    assert len(val_sources) == 10  # 5% of 200
    train_sources = set(first.load("train")["src"])
    assert len(train_sources) == 190 and not train_sources & set(val_sources)
    assert second.texts("validation") == first.texts("validation")  # seeded: the same slice every time
    assert any("held-out slice" in m for m in messages if m.startswith("validation:"))
    with pytest.raises(UserError, match="--data.test_path"):
        first.load("test")


def test_datamodule_loaders(tiny_jsonl, tmp_path, messages):
    dm = make_dm(tiny_jsonl, tmp_path, max_tokens=64)
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        assert isinstance(batch, Batch)
        assert batch.src.numel() <= 64 and batch.tgt_in.numel() <= 64
        assert (batch.src == EOS).sum() == batch.src.size(0)
        seen += batch.index.tolist()
    assert sorted(seen) == sorted(dm.splits["train"]["index"])
    val = [i for batch in dm.val_dataloader() for i in batch.index.tolist()]
    assert sorted(val) == sorted(dm.splits["validation"]["index"])
    assert 0 < dm.padding_efficiency() <= 1


def test_datamodule_saves_and_reuses_tokenizer(tiny_jsonl, tmp_path, messages, monkeypatch):
    first = make_dm(tiny_jsonl, tmp_path)
    first.setup("fit")
    saved = tmp_path / "run" / "tokenizer.json"
    assert saved.is_file()
    assert json.loads(saved.read_text(encoding="utf-8")) == json.loads(first.tokenizer.to_str())

    def no_training(*args, **kwargs):
        raise AssertionError("an existing tokenizer_file must be reused, not retrained")

    monkeypatch.setattr(datamodule_module, "train_tokenizer", no_training)
    second = make_dm(tiny_jsonl, tmp_path, vocab_size=1234)
    second.prepare_data()
    second.setup("fit")
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert second.splits["train"]["src_ids"] == first.splits["train"]["src_ids"]


def test_datamodule_without_tokenizer_file(tiny_jsonl, messages):
    dm = TranslationDataModule(path=str(tiny_jsonl), vocab_size=400, max_len=32)
    dm.setup("validate")
    assert dm.tokenizer is not None
    assert "train" not in dm.splits and len(dm.splits["validation"]) > 0


def test_datamodule_on_multi30k_with_limits(multi30k_dir, tmp_path, messages):
    dm = make_dm(multi30k_dir, tmp_path, vocab_size=600, max_len=64, train_limit=300, val_limit=50)
    dm.setup("fit")
    train, val = dm.splits["train"], dm.splits["validation"]
    assert 0 < len(train) <= 300 and max(train["index"]) < 300
    assert 0 < len(val) <= 50 and max(val["index"]) < 50
    assert dm.tokenizer.get_vocab_size() == 600


def test_datamodule_all_pairs_too_long(tiny_jsonl, tmp_path, messages):
    dm = make_dm(tiny_jsonl, tmp_path, max_len=2)
    with pytest.raises(UserError, match="no usable pairs"):
        dm.setup("fit")


@pytest.mark.parametrize("name", ["vocab_size", "max_len", "max_tokens"])
def test_datamodule_rejects_non_positive_sizes(name):
    with pytest.raises(UserError, match=name):
        TranslationDataModule(**{name: 0})
