"""Loading parallel data (directories, .jsonl, parallel text, TSV/CSV, Parquet shards, glob
patterns, dataset configs) and its errors."""

from __future__ import annotations

import shutil

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import FIXTURES, jsonl_rows

from pipeline import data as data_module
from pipeline.data import load_split, single_split
from pipeline.errors import UserError

FORMATS = FIXTURES / "formats"
# The pairs every fixture in tests/fixtures/formats/ holds (the hub folder: the first three,
# nested): quotes and a comma, a number, "NA"/"null" (text, not missing values), an empty side.
PAIRS = [
    ("Ein Hund rennt durch den Schnee.", "A dog runs through the snow."),
    ('Sie sagt "Hallo", dann geht sie.', 'She says "hello", then she leaves.'),
    ("42", "42"),
    ("NA", "null"),
    ("Zwei Männer, ein Boot.", ""),
]
VALID = [("Eine Katze schläft.", "A cat sleeps."), ("Kinder spielen im Park.", "Children play in the park.")]


def pairs_of(ds) -> list[tuple[str, str]]:
    assert ds.column_names == ["src", "tgt"]
    rows = ds[:]
    assert all(isinstance(t, str) for t in rows["src"] + rows["tgt"])
    return list(zip(rows["src"], rows["tgt"]))


def write_parquet_shards(folder, pairs, sizes, columns=("de", "en")):
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, size in enumerate(sizes):
        chunk = pairs[start: start + size]
        pq.write_table(pa.table({columns[0]: [a for a, _ in chunk], columns[1]: [b for _, b in chunk]}),
                       folder / f"train-{i:05d}.parquet")
        start += size


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


def test_a_file_of_another_format_is_named_as_such(tmp_path):
    (tmp_path / "pairs.txt").write_text("Hallo\tHello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\.txt is not a data format this reads.*PREFIX\.de \+ PREFIX\.en"):
        load_split(str(tmp_path / "pairs.txt"), "train", "de", "en")


@pytest.mark.parametrize("rows", [['{"de": "Hallo", "en": 42}'],  # a whole column of numbers
                                  ['{"de": "Hallo", "en": "Hello"}', '{"de": "Zahl", "en": 42}']])
def test_a_number_where_a_sentence_belongs_is_named(tmp_path, rows):
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"'en' (holds int64 values|is int \(42\)), not text: write every sentence"):
        load_split(str(tmp_path / "pairs.jsonl"), None, "de", "en")


def test_a_byte_order_mark_is_not_part_of_a_column_name_or_a_sentence(tmp_path):
    bom = "\ufeff"
    (tmp_path / "pairs.csv").write_text(f"{bom}de,en\nHallo,Hello\n", encoding="utf-8")
    (tmp_path / "pairs.tsv").write_text(f"{bom}de\ten\nHallo\tHello\n", encoding="utf-8")
    (tmp_path / "train.de").write_text(f"{bom}Hallo\nZwei\n", encoding="utf-8")
    (tmp_path / "train.en").write_text(f"{bom}Hello\nTwo\n", encoding="utf-8")
    for path in ("pairs.csv", "pairs.tsv"):
        assert load_split(str(tmp_path / path), None, "de", "en")[:] == {"src": ["Hallo"], "tgt": ["Hello"]}
    assert load_split(str(tmp_path / "train"), None, "de", "en")[:] == {"src": ["Hallo", "Zwei"],
                                                                          "tgt": ["Hello", "Two"]}


def test_a_missing_split_names_the_options_of_each_command(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"de": "Hallo", "en": "Hello"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"it has \['train'\].*--data.val_split.*--data.validation_path"):
        load_split(str(tmp_path), "validation", "de", "en")


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


# --- formats ------------------------------------------------------------------------------

def test_parallel_text_by_prefix(tmp_path):
    ds = load_split(str(FORMATS / "moses" / "train"), None, "de", "en", cache_dir=str(tmp_path))
    assert pairs_of(ds) == PAIRS
    back = load_split(str(FORMATS / "moses" / "train"), "ignored", "en", "de", cache_dir=str(tmp_path))
    assert pairs_of(back) == [(b, a) for a, b in PAIRS]
    assert single_split(str(FORMATS / "moses" / "train"), "de", "en")


def test_parallel_text_directory_splits_by_file_name(tmp_path):
    folder = str(FORMATS / "moses")
    assert pairs_of(load_split(folder, "train", "de", "en", cache_dir=str(tmp_path))) == PAIRS
    assert pairs_of(load_split(folder, "valid", "de", "en", cache_dir=str(tmp_path))) == VALID
    assert not single_split(folder, "de", "en")
    with pytest.raises(UserError) as err:
        load_split(folder, "validation", "de", "en")
    assert "'validation'" in str(err.value) and "['train', 'valid']" in str(err.value)


@pytest.mark.parametrize("name", ["pairs.tsv", "pairs.csv"])
def test_tsv_and_csv_with_named_columns(tmp_path, name):
    ds = load_split(str(FORMATS / name), None, "de", "en", cache_dir=str(tmp_path))
    assert pairs_of(ds) == PAIRS  # quotes kept, "42" and "NA" are text, the empty field is ""
    assert single_split(str(FORMATS / name), "de", "en")


def test_parquet_shards_by_glob_pattern_in_order(tmp_path):
    write_parquet_shards(tmp_path / "data", PAIRS, [2, 3])
    pattern = str(tmp_path / "data" / "train-*.parquet")
    assert single_split(pattern, "de", "en")
    assert pairs_of(load_split(pattern, None, "de", "en", cache_dir=str(tmp_path / "cache"))) == PAIRS
    one = load_split(str(tmp_path / "data" / "train-00001.parquet"), None, "de", "en")
    assert pairs_of(one) == PAIRS[2:]


def test_glob_pattern_of_jsonl_and_tsv_shards(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"de": "Hallo", "en": "Hello"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"de": "Welt", "en": "World"}\n', encoding="utf-8")
    assert pairs_of(load_split(str(tmp_path / "*.jsonl"), None, "de", "en")) == [("Hallo", "Hello"),
                                                                                 ("Welt", "World")]
    shutil.copy(FORMATS / "pairs.tsv", tmp_path / "part-1.tsv")
    shutil.copy(FORMATS / "pairs.tsv", tmp_path / "part-2.tsv")
    assert pairs_of(load_split(str(tmp_path / "part-?.tsv"), None, "de", "en")) == PAIRS + PAIRS


def test_local_folder_with_dataset_configs(tmp_path):
    folder = str(FORMATS / "hub")
    ds = load_split(folder, "train", "de", "en", name="de-en", cache_dir=str(tmp_path))
    assert pairs_of(ds) == PAIRS[:3]
    assert pairs_of(load_split(folder, "validation", "de", "en", name="de-en", cache_dir=str(tmp_path))) == VALID
    fr = load_split(folder, "train", "fr", "en", name="fr-en", cache_dir=str(tmp_path))
    assert pairs_of(fr) == [("Un chien court.", "A dog runs."), ("Bonjour.", "Hello.")]
    with pytest.raises(UserError) as err:  # nested rows: the message lists the language keys
        load_split(folder, "train", "de", "en", name="fr-en", cache_dir=str(tmp_path))
    assert "'de'" in str(err.value) and "['en', 'fr']" in str(err.value)


def test_hub_id_with_config_name_goes_to_load_dataset(monkeypatch, tmp_path):
    """Online, `owner/name` and its config go to datasets.load_dataset(path, name); here the
    Hub is replaced by the local folder of the same layout."""
    calls = []
    real = datasets.load_dataset

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return real(str(FORMATS / "hub"), name, cache_dir=str(tmp_path))

    monkeypatch.setattr(data_module.datasets, "load_dataset", fake_load_dataset)
    ds = load_split("someone/wmt-mini", "train", "de", "en", name="de-en")
    assert calls == [("someone/wmt-mini", "de-en")]
    assert pairs_of(ds) == PAIRS[:3]
    assert not single_split("someone/wmt-mini", "de", "en")


# --- malformed input: one line that names the problem ---------------------------------------

def one_line_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        load_split(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_parallel_files_with_different_line_counts(tmp_path):
    (tmp_path / "train.de").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("one\ntwo\n", encoding="utf-8")
    message = one_line_error(str(tmp_path / "train"), None, "de", "en")
    assert f"{tmp_path / 'train.de'} has 3 lines" in message and f"{tmp_path / 'train.en'} has 2" in message
    message = one_line_error(str(tmp_path), "train", "de", "en")  # the same files as a directory's split
    assert "has 3 lines" in message and "has 2" in message


def test_missing_language_file_is_named(tmp_path):
    (tmp_path / "train.de").write_text("eins\n", encoding="utf-8")
    message = one_line_error(str(tmp_path / "train"), None, "de", "en")
    assert f"{tmp_path / 'train.en'} not found" in message
    message = one_line_error(str(tmp_path), "train", "de", "en")
    assert f"{tmp_path / 'train.en'} not found" in message


@pytest.mark.parametrize("fixture", ["pairs.tsv", "pairs.csv", "parquet"])
def test_missing_column_lists_the_columns(tmp_path, fixture):
    if fixture == "parquet":
        write_parquet_shards(tmp_path, PAIRS, [5])
        path = str(tmp_path / "train-00000.parquet")
    else:
        path = str(FORMATS / fixture)
    message = one_line_error(path, None, "fr", "en")
    columns = "['de', 'en', 'id']" if fixture == "pairs.tsv" else "['de', 'en']"
    assert "'fr'" in message and columns in message


def test_glob_errors(tmp_path):
    assert "no files match" in one_line_error(str(tmp_path / "train-*.parquet"), None, "de", "en")
    (tmp_path / "a.jsonl").write_text('{"de": "a", "en": "b"}\n', encoding="utf-8")
    (tmp_path / "b.tsv").write_text("de\ten\na\tb\n", encoding="utf-8")
    message = one_line_error(str(tmp_path / "*"), None, "de", "en")
    assert "['.jsonl', '.tsv']" in message


@pytest.mark.parametrize("name", ["empty.tsv", "empty.de"])
def test_empty_files(tmp_path, name):
    (tmp_path / name).write_text("", encoding="utf-8")
    (tmp_path / "empty.en").write_text("", encoding="utf-8")
    path = tmp_path / name if name.endswith(".tsv") else tmp_path / "empty"
    assert "is empty" in one_line_error(str(path), None, "de", "en")


def test_tsv_row_with_a_stray_tab(tmp_path):
    (tmp_path / "bad.tsv").write_text("de\ten\nHallo\tHello\nzu\tviele\tSpalten\n", encoding="utf-8")
    assert "cannot load data" in one_line_error(str(tmp_path / "bad.tsv"), None, "de", "en")


def test_a_carriage_return_inside_a_line_is_named_not_read_as_a_line_end(tmp_path):
    # Read with universal newlines, "Ein Hund\rläuft." would become two lines and pair every later
    # German sentence with the wrong English one; "\r\n" line ends are fine.
    (tmp_path / "train.de").write_bytes("Ein Hund läuft.\r\nZwei\rKatzen.\r\nDrei Vögel.\r\n".encode())
    (tmp_path / "train.en").write_bytes(b"A dog runs.\nTwo cats.\nThree birds.\n")
    message = one_line_error(str(tmp_path / "train"), None, "de", "en")
    assert f"{tmp_path / 'train.de'} line 2" in message and "carriage return" in message
    (tmp_path / "train.de").write_bytes("Ein Hund läuft.\r\nZwei Katzen.\r\nDrei Vögel.\r\n".encode())
    assert pairs_of(load_split(str(tmp_path / "train"), None, "de", "en", cache_dir=str(tmp_path / "c")))[1] == \
        ("Zwei Katzen.", "Two cats.")
    (tmp_path / "pairs.tsv").write_bytes(b"de\ten\nEin Hund\tA dog\nZwei\rKatzen\tTwo cats\n")
    assert "pairs.tsv line 3" in one_line_error(str(tmp_path / "pairs.tsv"), None, "de", "en")


def test_line_end_check_across_read_blocks(tmp_path, monkeypatch):
    # A "\r\n" split between two blocks is a line end; a lone "\r" at a block's end is not.
    path = tmp_path / "a.de"
    path.write_bytes(b"abc\r\nde\rf\n")

    class SmallBlocks:
        def __init__(self, f):
            self.f = f

        def read(self, n):
            return self.f.read(4 if n > 1 else n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open
    monkeypatch.setattr(data_module, "open", lambda p, mode="r", **kw: SmallBlocks(real_open(p, mode, **kw)),
                        raising=False)
    with pytest.raises(UserError, match="line 2"):
        data_module.check_line_ends(path)
    path.write_bytes(b"abc\r\nde\r\nf\r")  # the last "\r" ends the last line
    data_module.check_line_ends(path)
