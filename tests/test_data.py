"""Loading parallel data (directories, flat and nested .jsonl), its errors, and the DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import datamodule as datamodule_module
from pipeline.batching import Batch
from pipeline.data import load_split, read_lines
from pipeline.datamodule import TranslationDataModule
from pipeline.errors import UserError
from pipeline.tokenizer import EOS, decode, normalize


def jsonl_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- load_split ---------------------------------------------------------------------------

def test_load_flat_jsonl(tiny_jsonl):
    rows = jsonl_rows(tiny_jsonl)
    ds = load_split(str(tiny_jsonl), None, "de", "en")
    assert ds.column_names == ["src", "tgt"]
    assert len(ds) == len(rows)
    assert ds["src"] == [r["de"] or "" for r in rows]  # file order; null becomes ""
    assert ds["tgt"] == [r["en"] or "" for r in rows]
    assert all(isinstance(t, str) for t in ds["tgt"])


def test_load_nested_jsonl_either_direction(nested_jsonl):
    rows = jsonl_rows(nested_jsonl)
    ds = load_split(str(nested_jsonl), None, "de", "en")
    assert ds.column_names == ["src", "tgt"]
    assert list(zip(ds["src"], ds["tgt"])) == [(r["translation"]["de"], r["translation"]["en"]) for r in rows]
    back = load_split(str(nested_jsonl), None, "en", "de")
    assert back["src"] == ds["tgt"] and back["tgt"] == ds["src"]


def test_load_multi30k_splits(multi30k_dir):
    sizes = {split: len(load_split(str(multi30k_dir), split, "de", "en"))
             for split in ("train", "validation", "test")}
    assert sizes == {"train": 29000, "validation": 1014, "test": 1000}
    first = jsonl_rows(multi30k_dir / "validation.jsonl")[0]
    ds = load_split(str(multi30k_dir), "validation", "de", "en")
    assert ds[0] == {"src": first["de"], "tgt": first["en"]}


def test_load_tatoeba_drops_other_columns(tatoeba_dir):
    ds = load_split(str(tatoeba_dir), "validation", "ko", "en")
    assert ds.column_names == ["src", "tgt"]
    assert len(ds) == 300
    first = jsonl_rows(tatoeba_dir / "validation.jsonl")[0]
    assert ds[0] == {"src": first["ko"], "tgt": first["en"]}


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="data directory not found"):
        load_split(str(tmp_path / "no-such-dir"), "train", "de", "en")


def test_mistyped_relative_directory_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    # "data/multi30K" looks like a hub id (owner/name), but "data" is a local folder.
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="data directory not found"):
        load_split("data/multi30K", "train", "de", "en")


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        load_split(str(tmp_path / "missing.jsonl"), None, "de", "en")


@pytest.mark.parametrize("split", ["dev", None])
def test_missing_split_lists_the_splits(multi30k_dir, split):
    with pytest.raises(UserError) as err:
        load_split(str(multi30k_dir), split, "de", "en")
    message = str(err.value)
    assert repr(split) in message
    for name in ("train", "validation", "test"):
        assert name in message


@pytest.mark.parametrize("fixture, split", [("tiny_jsonl", None), ("nested_jsonl", None),
                                            ("multi30k_dir", "validation")])
def test_wrong_language_keys_name_the_existing_ones(request, fixture, split):
    path = request.getfixturevalue(fixture)
    with pytest.raises(UserError) as err:
        load_split(str(path), split, "fr", "en")
    message = str(err.value)
    assert "'fr'" in message and "['de', 'en']" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_jsonl(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match="empty"):
        load_split(str(path), None, "de", "en")


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"de": "Hallo", "en": \n')
    with pytest.raises(UserError, match="cannot load data"):
        load_split(str(path), None, "de", "en")


def test_read_lines(tmp_path):
    good = tmp_path / "in.txt"
    good.write_text("Ein Hund.\n안녕하세요\n", encoding="utf-8")
    assert read_lines(str(good)) == ["Ein Hund.", "안녕하세요"]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Grüße\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_lines(str(latin))
    with pytest.raises(UserError, match="not found"):
        read_lines(str(tmp_path / "nope.txt"))


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
