"""TranslationDataModule: splits -> tokenizer -> token ids -> loaders, held-out validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import FIXTURES, jsonl_rows

from pipeline import datamodule as datamodule_module
from pipeline.batching import Batch, padding_efficiency
from pipeline.data import load_split
from pipeline.datamodule import TranslationDataModule
from pipeline.errors import UserError
from pipeline.tokenizer import EOS, decode, normalize, train_tokenizer


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


# --- formats through the DataModule -----------------------------------------------------------

FORMATS = FIXTURES / "formats"


def test_parallel_text_directory_with_its_own_split_names(tmp_path, messages):
    dm = make_dm(FORMATS / "moses", tmp_path, val_split="valid", max_len=64)
    dm.setup("fit")
    assert not dm.path_is_file
    assert len(dm.splits["train"]) == 4  # the pair with an empty side is dropped
    assert dm.texts("validation")[1] == ["A cat sleeps.", "Children play in the park."]


def test_prefix_of_parallel_text_holds_out_validation(tmp_path, messages):
    lines = [(f"Satz Nummer {i}.", f"Sentence number {i}.") for i in range(40)]
    for k, lang in enumerate(("de", "en")):
        (tmp_path / f"corpus.{lang}").write_text("".join(p[k] + "\n" for p in lines), encoding="utf-8")
    dm = make_dm(tmp_path / "corpus", tmp_path, vocab_size=300, max_len=64)
    assert dm.path_is_file
    dm.setup("fit")
    sources, _ = dm.texts("validation")
    assert len(sources) == 2 and len(dm.splits["train"]) == 38  # 5% held out
    assert not set(sources) & set(dm.load("train")["src"])


def test_holdout_matches_train_test_split(multi30k_dir, tmp_path):
    """The held-out slice is the one `train_test_split` draws, its index files written from
    numpy first (no Python list of every row)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join((multi30k_dir / "train.jsonl").open(encoding="utf-8").readlines()[:300]),
                    encoding="utf-8")
    dm = make_dm(path, tmp_path, seed=3)
    ds = load_split(str(path), None, "de", "en")
    expected = ds.train_test_split(test_size=15, seed=3, shuffle=True)
    parts = dm.holdout(load_split(str(path), None, "de", "en", cache_dir=str(dm.cache_root() / "datasets")))
    assert parts["validation"]["src"] == expected["test"]["src"]
    assert parts["train"]["src"] == expected["train"]["src"]
    assert list((dm.cache_root()).glob("holdout-*-train.arrow"))


# --- filters ----------------------------------------------------------------------------------

def filter_fixture(tmp_path):
    rows = [("Ein Hund rennt.", "A dog runs."),                        # 0 kept
            ("Ein Hund rennt.", "A dog runs."),                        # 1 duplicate of 0
            (" Ein Hund rennt. ", "A dog runs.  "),                    # 2 duplicate after stripping
            ("Ja.", "Yes, this is a much longer sentence than its source, by far."),  # 3 unbalanced
            ("", "Empty source."),                                     # 4 empty
            (" ".join(["sehr"] * 60), " ".join(["very"] * 60)),          # 5 too long
            ("Zwei Katzen.", "Two cats."),                             # 6 kept
            ("Zwei Katzen.", "Two cats!")]                             # 7 not a duplicate
    path = tmp_path / "filter.jsonl"
    path.write_text("".join(json.dumps({"de": a, "en": b}) + "\n" for a, b in rows), encoding="utf-8")
    return path, rows


def test_default_filters_keep_duplicates_and_unbalanced_pairs(tmp_path, messages):
    path, rows = filter_fixture(tmp_path)
    dm = make_dm(path, tmp_path, validation_path=str(path), max_len=32)
    dm.setup("fit")
    assert list(dm.splits["train"]["index"]) == [0, 1, 2, 3, 6, 7]
    report = [m for m in messages if m.startswith("train:")]
    assert report == [f"train: 6 of 8 pairs kept (1 empty, 1 longer than 32 tokens dropped) from {path}"]


def test_ratio_and_duplicate_filters_counted_in_one_line(tmp_path, messages):
    path, rows = filter_fixture(tmp_path)
    dm = make_dm(path, tmp_path, validation_path=str(path), max_len=32, max_ratio=3.0, dedup=True)
    dm.setup("fit")
    tok = dm.tokenizer
    src, tgt = (len(tok.encode(rows[3][k].strip()).ids) for k in (0, 1))
    assert tgt > 3 * src, "the fixture's row 3 must be unbalanced"
    assert list(dm.splits["train"]["index"]) == [0, 6, 7]
    report = [m for m in messages if m.startswith("train:")]
    assert report == [f"train: 3 of 8 pairs kept (1 empty, 1 longer than 32 tokens, 1 with a length ratio above 3, "
                      f"2 duplicates dropped) from {path}"]
    # Validation keeps every pair.
    assert sorted(dm.splits["validation"]["index"]) == list(range(8))
    # The lengths the sampler reads are those of the kept rows.
    src_lens, tgt_lens = dm.lengths("train")
    assert list(src_lens) == [len(s) + 1 for s in dm.splits["train"]["src_ids"]]
    assert list(tgt_lens) == [len(t) + 1 for t in dm.splits["train"]["tgt_ids"]]


@pytest.mark.parametrize("kwargs", [{"max_ratio": 0.5}, {"val_max_pairs": 0}, {"tokenizer_sample": 0},
                                    {"num_proc": 0}, {"train_limit": 0}, {"val_limit": -1},
                                    {"max_tokens": 100, "max_len": 128}])
def test_datamodule_rejects_bad_new_settings(kwargs):
    with pytest.raises(UserError, match=list(kwargs)[0]):
        TranslationDataModule(**kwargs)


# --- tokenizer sample, validation cap ---------------------------------------------------------

def capture_tokenizer_texts(monkeypatch):
    """Replace train_tokenizer by one that records the batches of texts it is fed."""
    fed = []
    real = datamodule_module.train_tokenizer

    def recording(texts, vocab_size):
        batches = list(texts)
        assert all(isinstance(b, list) for b in batches), "texts come in batches (lists), not one by one"
        fed.append([t for b in batches for t in b])
        return real(iter(batches), vocab_size)

    monkeypatch.setattr(datamodule_module, "train_tokenizer", recording)
    return fed


def test_tokenizer_sample_is_seeded_in_file_order(multi30k_dir, tmp_path, messages, monkeypatch):
    fed = capture_tokenizer_texts(monkeypatch)
    rows = jsonl_rows(multi30k_dir / "train.jsonl")[:500]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_dm(multi30k_dir, tmp_path / name, vocab_size=300, train_limit=500, tokenizer_sample=100,
                seed=seed).prepare_data()
    first, again, other = fed
    assert len(first) == 200 and first == again and first != other
    positions = [next(i for i, r in enumerate(rows) if r["de"] == src) for src in first[::2]]
    assert positions == sorted(positions)  # file order
    assert all(rows[i]["en"] == tgt for i, tgt in zip(positions, first[1::2]))  # source, target, source, ...
    assert any("a seeded sample of 100 of the 500 training pairs" in m for m in messages)


def test_tokenizer_sample_above_the_split_uses_every_pair_as_before(multi30k_dir, tmp_path, messages,
                                                                     monkeypatch):
    """Multi30k (29k pairs < the 1M default): the tokenizer sees every pair in file order, so
    it is the tokenizer of before (trained on one text at a time)."""
    fed = capture_tokenizer_texts(monkeypatch)
    dm = make_dm(multi30k_dir, tmp_path, vocab_size=1000, train_limit=3000)
    dm.prepare_data()
    rows = jsonl_rows(multi30k_dir / "train.jsonl")[:3000]
    assert fed[0] == [t for r in rows for t in (r["de"], r["en"])]
    before = train_tokenizer((t for r in rows for t in (r["de"], r["en"])), 1000)
    assert dm.tokenizer.to_str() == before.to_str()


def test_val_max_pairs_is_a_seeded_sample_in_file_order(multi30k_dir, tmp_path, messages):
    dm = make_dm(multi30k_dir, tmp_path, vocab_size=400, train_limit=200, val_max_pairs=50)
    dm.setup("fit")
    sources, references = dm.texts("validation")
    rows = jsonl_rows(multi30k_dir / "validation.jsonl")
    positions = [next(i for i, r in enumerate(rows) if r["de"] == s) for s in sources]
    assert len(sources) == 50 and positions == sorted(positions) and positions[-1] > 100  # not the first 50
    assert references == [rows[i]["en"] for i in positions]
    assert len(dm.splits["validation"]) == 50
    again = make_dm(multi30k_dir, tmp_path / "again", vocab_size=400, train_limit=200, val_max_pairs=50)
    assert again.load("validation")["src"] == sources
    assert any("a seeded sample of 50 of 1014" in m for m in messages if m.startswith("validation:"))
    whole = make_dm(multi30k_dir, tmp_path / "whole", vocab_size=400, train_limit=200, val_max_pairs=5000)
    assert len(whole.load("validation")) == 1014


# --- the cache --------------------------------------------------------------------------------

def test_cache_is_built_once_and_reused(multi30k_dir, tmp_path, messages, monkeypatch):
    built = []
    monkeypatch.setattr(datamodule_module, "log_every_rank", built.append)
    kwargs = dict(vocab_size=400, max_len=24, train_limit=400, val_limit=30)
    first = make_dm(multi30k_dir, tmp_path, **kwargs)
    first.setup("fit")
    assert [m.split(":")[0] for m in built] == ["train", "validation"]
    cache = tmp_path / "run" / "data-cache"
    assert cache.is_dir() and list(cache.glob("train-*.arrow"))
    second = make_dm(multi30k_dir, tmp_path, **kwargs)
    second.setup("fit")
    assert len(built) == 2, "the second run maps the cache"
    assert list(second.splits["train"]["src_ids"]) == list(first.splits["train"]["src_ids"])
    assert list(second.splits["train"]["index"]) == list(first.splits["train"]["index"])
    # Other filter settings reuse the tokenized cache.
    third = make_dm(multi30k_dir, tmp_path, **{**kwargs, "max_len": 64})
    third.setup("fit")
    assert len(built) == 2 and len(third.splits["train"]) > len(first.splits["train"])


def test_num_proc_gives_the_same_rows(multi30k_dir, tmp_path, messages):
    kwargs = dict(vocab_size=400, max_len=24, train_limit=600, val_limit=30)
    one = make_dm(multi30k_dir, tmp_path / "one", **kwargs)
    two = make_dm(multi30k_dir, tmp_path / "two", num_proc=2, **kwargs)
    for dm in (one, two):
        dm.setup("fit")
    assert list(two.splits["train"]["index"]) == list(one.splits["train"]["index"])
    assert list(two.splits["train"]["src_ids"]) == list(one.splits["train"]["src_ids"])
    assert list(two.splits["validation"]["tgt_ids"]) == list(one.splits["validation"]["tgt_ids"])
    assert [len(f) for f in (one.splits["train"].cache_files, two.splits["train"].cache_files)][1] >= 2


def test_lengths_are_numpy_arrays_and_the_sampler_reads_them(tiny_jsonl, tmp_path, messages):
    dm = make_dm(tiny_jsonl, tmp_path)
    dm.setup("fit")
    src_lens, tgt_lens = dm.lengths("train")
    assert isinstance(src_lens, np.ndarray) and isinstance(tgt_lens, np.ndarray)
    sampler = dm.sampler("train", dm.max_tokens, True)
    assert sampler.padding_efficiency(src_lens, tgt_lens) == pytest.approx(
        padding_efficiency(sampler.batches(), src_lens, tgt_lens))
    # A split replaced by a slice of it (as bench/run.py does) gets its own lengths.
    dm.splits["train"] = dm.splits["train"].select(range(3))
    assert list(dm.lengths("train")[0]) == list(src_lens[:3])
    assert sorted(i for b in dm.sampler("train", dm.max_tokens, True) for i in b) == [0, 1, 2]
