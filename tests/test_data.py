"""Loading parallel data (directories, flat and nested .jsonl) and its errors."""

from __future__ import annotations


import pytest

from helpers import jsonl_rows

from pipeline.data import load_split, read_lines
from pipeline.errors import UserError


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
