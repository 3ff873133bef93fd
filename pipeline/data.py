"""Parallel data: load with `datasets`, check the language keys and columns.

`load_split(path, split, src_lang, tgt_lang, name)` is the one entry point (training,
validation, `evaluate --data`); whatever the format, the result is a Dataset with string
columns `src`, `tgt` in file order, memory-mapped from `datasets`' Arrow cache. `path` is:

  a dataset directory   ../shared/data/multi30k: splits from the file names (train*.jsonl,
                        validation*.parquet, ...) or a README `configs:` section (`name`
                        picks a config)
  a Moses directory     DIR/train.de + DIR/train.en, DIR/valid.de + DIR/valid.en, ...: one
                        sentence a line; the split is the file name before the language key
  a file prefix         corpus/train: reads corpus/train.de and corpus/train.en (one split)
  one file              pairs.jsonl / .json, pairs.tsv / .csv (a header row naming the
                        columns), pairs.parquet (one split)
  a glob pattern        'data/train-*.parquet' (several shards of one split, any format above)
  a hub id              wmt/wmt14 with name de-en (online)

Rows may be flat (`{"de": ..., "en": ...}`, columns de and en) or nested
(`{"translation": {"de": ..., "en": ...}}`). Every file is read by a `datasets` builder
("json", "csv", "parquet", "text"); the two sides of parallel text are read separately and
joined column-wise after their line counts are checked.
"""

from __future__ import annotations

import csv
import ctypes
import glob
import os
import re
import sys
from pathlib import Path

import datasets

from pipeline.errors import UserError

datasets.disable_progress_bars()

# Rows per record batch of the Arrow files `datasets` writes. Opening a file touches the start
# of every record batch, and the kernel maps the 64 KB around each touch: with `datasets`'
# default of 1,000 rows that is the whole file (its size in resident memory, growing with the
# corpus); with large batches, a few MB.
WRITER_BATCH = 100_000

# `datasets` builder and options for each file suffix. Text columns are read as strings
# (a sentence "42" stays "42"), nothing is turned into a missing value ("NA", "null" and
# empty fields are text), and a TSV has no quoting: a quote in a sentence is a character.
FORMATS = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, "na_filter": False, "keep_default_na": False}),
    ".csv": ("csv", {"sep": ",", "na_filter": False, "keep_default_na": False}),
}


def _is_hub_id(path: str) -> bool:
    """`owner/name` with no local meaning, e.g. bentrevett/multi30k (if the `owner` folder
    exists here, `path` is a mistyped local path, not worth a slow trip to the Hub)."""
    return re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", path) is not None and not Path(path).parent.is_dir()


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _suffix(path: str) -> str:
    return Path(path).suffix.lower()


def _parallel_files(prefix: str, src_lang: str, tgt_lang: str) -> list[Path]:
    return [Path(f"{prefix}.{lang}") for lang in (src_lang, tgt_lang)]


def _is_prefix(path: str, src_lang: str, tgt_lang: str) -> bool:
    """corpus/train with corpus/train.de or corpus/train.en beside it (and no corpus/train itself)."""
    p = Path(path).expanduser()
    return not p.exists() and any(f.is_file() for f in _parallel_files(str(p), src_lang, tgt_lang))


def _moses_splits(directory: Path, src_lang: str, tgt_lang: str) -> set[str]:
    """Split names of a directory of parallel text (train.de, train.en, valid.de, ...)."""
    return {f.name[: -len(lang) - 1] for lang in (src_lang, tgt_lang) for f in directory.glob(f"*.{glob.escape(lang)}")
            if f.is_file()}


def single_split(path: str, src_lang: str, tgt_lang: str) -> bool:
    """True when `path` holds one split only (a file, a glob pattern, a file prefix): it has
    no split names, and validation is held out of it or given separately."""
    p = Path(path).expanduser()
    if p.is_dir():
        return False
    return _is_glob(path) or _suffix(path) in FORMATS or _is_prefix(path, src_lang, tgt_lang)


def load_split(path: str, split: str | None, src_lang: str, tgt_lang: str, name: str | None = None,
               cache_dir: str | None = None) -> datasets.Dataset:
    """Load one split as a Dataset with string columns `src` and `tgt` (in file order).

    `split` is ignored for single-split sources (see `single_split`); `name` is the dataset
    config (`datasets.load_dataset(path, name)`: a hub dataset's language pair, or a config of
    a local directory's README); `cache_dir` is where `datasets` writes its Arrow copy of
    local files (default: its own cache)."""
    p = Path(path).expanduser()
    where = path + (f" [{split}]" if split and not single_split(path, src_lang, tgt_lang) else "")
    if _is_glob(path):
        ds = _load_files(path, sorted(glob.glob(str(p))), cache_dir)
    elif p.is_dir():
        moses = _moses_splits(p, src_lang, tgt_lang)
        if moses:
            if split not in moses:
                raise UserError(f"split {split!r} not in {path}; it has {sorted(moses)} (files SPLIT.{src_lang} and "
                                f"SPLIT.{tgt_lang}; choose one: evaluate --split, fit --data.train_split / --data.val_split / "
                                "--data.test_split, or --data.validation_path FILE)")
            ds = _load_parallel_text(str(p / split), src_lang, tgt_lang, cache_dir)
        else:
            dd = _load(lambda: datasets.load_dataset(str(p), name, cache_dir=cache_dir,
                                                     writer_batch_size=WRITER_BATCH), path)
            ds = _pick_split(dd, split, path)
    elif _is_prefix(path, src_lang, tgt_lang):
        ds = _load_parallel_text(str(p), src_lang, tgt_lang, cache_dir)
    elif _suffix(path) in FORMATS:
        if not p.is_file():
            raise UserError(f"data file not found: {path} (pass an existing .jsonl/.tsv/.csv/.parquet file, a "
                            "dataset directory, or a prefix such as corpus/train for corpus/train.de + corpus/train.en)")
        ds = _load_files(path, [str(p)], cache_dir)
    elif p.is_file():
        raise UserError(f"{path}: {_suffix(path) or 'a file without an extension'} is not a data format this reads: "
                        "use a .jsonl/.tsv/.csv/.parquet file, or parallel text as PREFIX.{src} + PREFIX.{tgt} "
                        "(e.g. corpus/train.de + corpus/train.en, --data.path corpus/train)".replace(
                            "{src}", src_lang).replace("{tgt}", tgt_lang))
    elif not _is_hub_id(path):
        raise UserError(f"data directory not found: {path} (--data.path in fit, --data in evaluate: a dataset "
                        "folder such as ../shared/data/multi30k, a .jsonl/.tsv/.csv/.parquet file, a glob pattern, "
                        f"or a prefix such as corpus/train for corpus/train.{src_lang} + corpus/train.{tgt_lang})")
    else:  # the Hub (online); its own cache, shared by every run
        dd = _load(lambda: datasets.load_dataset(path, name, writer_batch_size=WRITER_BATCH), path)
        ds = _pick_split(dd, split, path)
    pairs = _to_pairs(ds, src_lang, tgt_lang, where)
    release_pages(dataset_files(pairs))  # opening the Arrow files read them through: see release_pages
    return pairs


def _load(loader, path: str):
    try:
        return loader()
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the path and the cause
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
        cause = e.__cause__ or e.__context__  # DatasetGenerationError hides the parser's message
        if cause is not None and str(cause).strip() and type(e).__name__ == "DatasetGenerationError":
            detail = f"{detail}: {type(cause).__name__}: {str(cause).strip().splitlines()[0]}"
        raise UserError(f"cannot load data from {path}: {type(e).__name__}: {detail}") from e


def _load_files(path: str, files: list[str], cache_dir: str | None) -> datasets.Dataset:
    """One split from files of one format (a file, or the shards a glob pattern matches)."""
    if not files:
        raise UserError(f"no files match {path} (a glob pattern such as 'data/train-*.parquet'; quote it in the shell)")
    suffixes = sorted({_suffix(f) for f in files})
    if len(suffixes) > 1 or suffixes[0] not in FORMATS:
        raise UserError(f"{path} matches files of type(s) {suffixes}: the shards of one split must all be one of "
                        f"{sorted(FORMATS)}")
    builder, options = FORMATS[suffixes[0]]
    for f in files:
        if builder != "parquet" and not _has_text(f):  # `datasets` fails on it with a bare StopIteration
            raise UserError(f"{f} is empty: point to a file with sentence pairs")
        if suffixes[0] == ".tsv":  # (CSV may quote a field with line breaks in it; TSV here has no quoting)
            check_line_ends(f)
    kwargs = dict(options)
    if builder == "csv":
        kwargs["features"] = _csv_features(files[0], options)
        kwargs["encoding"] = "utf-8-sig"  # Excel's "CSV UTF-8" starts with a byte-order mark: not a column name
    return _load(lambda: datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir,
                                               writer_batch_size=WRITER_BATCH, **kwargs), path)


def _has_text(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(line.strip() for line in f)


_LONE_CR = re.compile(rb"\r(?!\n)")


def check_line_ends(path: str | Path) -> None:
    """A UserError naming the line of `path` with a carriage return that does not end the line.

    `datasets` reads line-based files with universal newlines (and its TSV reader likewise), so
    a stray "\\r" inside a sentence would end a line there: every later sentence of that file
    would be paired with the wrong one of the other side, silently. (A file's "\\r\\n" line ends
    are fine.) Reads the file in blocks of 16 MB."""
    line = 1
    with open(path, "rb") as f:
        while data := f.read(1 << 24):
            if data.endswith(b"\r"):  # its "\n" may start the next block
                data += f.read(1)
            match = _LONE_CR.search(data)
            if match and match.end() < len(data):  # (a "\r" that ends the file ends its last line)
                line += data.count(b"\n", 0, match.start())
                raise UserError(f"{path} line {line} has a carriage return (\\r) inside it, which would split it "
                                f"in two and shift every later pair: remove them, e.g. tr -d '\\r' < {path} > fixed")
            line += data.count(b"\n")


def _csv_features(path: str, options: dict) -> datasets.Features:
    """Every column of the header row as a string column (so no sentence is read as a number)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        header = next(csv.reader(f, delimiter=options["sep"], quoting=options.get("quoting", csv.QUOTE_MINIMAL)), [])
    return datasets.Features({column: datasets.Value("string") for column in header})


def _load_parallel_text(prefix: str, src_lang: str, tgt_lang: str, cache_dir: str | None) -> datasets.Dataset:
    """PREFIX.src + PREFIX.tgt, one sentence a line, read by the "text" builder and joined."""
    files = _parallel_files(prefix, src_lang, tgt_lang)
    for f in files:
        if not f.is_file():
            raise UserError(f"{f} not found: parallel text needs both {files[0]} and {files[1]} (one sentence a line)")
        if f.stat().st_size == 0:
            raise UserError(f"{f} is empty: point to files with one sentence a line")
        check_line_ends(f)
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first sentence
    sides = [_load(lambda f=f: datasets.load_dataset("text", data_files=str(f), split="train", cache_dir=cache_dir,
                                                     encoding="utf-8-sig", writer_batch_size=WRITER_BATCH), str(f))
             for f in files]
    if len(sides[0]) != len(sides[1]):
        raise UserError(f"{files[0]} has {len(sides[0])} lines but {files[1]} has {len(sides[1])}: parallel files "
                        "need one sentence a line, line for line")
    return datasets.concatenate_datasets([side.rename_column("text", lang) for side, lang in
                                          zip(sides, (src_lang, tgt_lang))], axis=1)


def _pick_split(dd: datasets.DatasetDict, split: str | None, path: str) -> datasets.Dataset:
    if split is None or split not in dd:
        raise UserError(f"split {split!r} not in {path}; it has {sorted(dd)} (choose one: evaluate --split, fit "
                        "--data.train_split / --data.val_split / --data.test_split, or --data.validation_path FILE)")
    return dd[split]


def _language_keys(ds: datasets.Dataset) -> list[str]:
    """The language keys of a nested `translation` column."""
    feature = ds.features["translation"]
    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    return list(ds[0]["translation"])


def _plain_strings(ds: datasets.Dataset, column: str) -> bool:
    feature = ds.features.get(column)
    return (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
            and ds.data.column(column).null_count == 0)


def _to_pairs(ds: datasets.Dataset, src_lang: str, tgt_lang: str, where: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise UserError(f"{where} is empty: point to a split with sentence pairs")
    nested = "translation" in ds.column_names
    keys = _language_keys(ds) if nested else ds.column_names
    missing = [k for k in (src_lang, tgt_lang) if k not in keys]
    if missing:
        what = "language keys" if nested else "columns"
        raise UserError(f"language key(s) {missing} not in {where}; it has {what} {sorted(keys)} "
                        "(fit reads the keys data.src_lang / data.tgt_lang; evaluate, the checkpoint's languages)")
    if nested:  # struct fields as columns "translation.de", ...: no copy
        ds = ds.select_columns(["translation"]).flatten()
    columns = [f"translation.{k}" if nested else k for k in (src_lang, tgt_lang)]
    if src_lang != tgt_lang and all(_plain_strings(ds, c) for c in columns) and not {"src", "tgt"} & set(columns):
        # Strings without missing values: the columns themselves, renamed (no copy of the text).
        return ds.select_columns(columns).rename_columns({columns[0]: "src", columns[1]: "tgt"})

    for column in columns:  # a sentence written as a number (42, not "42") would reach the tokenizer
        feature = ds.features[column]
        if isinstance(feature, datasets.Value) and feature.dtype not in ("string", "large_string", "null"):
            raise UserError(f"{where}: {column.split('.')[-1]!r} holds {feature.dtype} values, not text: write every "
                            "sentence as a string (in JSON with quotes: \"42\", not 42)")

    def text(value, column):
        if value is None or isinstance(value, str):
            return value or ""
        raise UserError(f"{where}: a value of {column.split('.')[-1]!r} is {type(value).__name__} ({value!r}), not text: "
                        "write every sentence as a string (in JSON with quotes)")

    def flatten(batch):
        return {"src": [text(s, columns[0]) for s in batch[columns[0]]],
                "tgt": [text(t, columns[1]) for t in batch[columns[1]]]}

    fingerprint = datasets.fingerprint.Hasher.hash([ds._fingerprint, "pairs", columns])
    return ds.map(flatten, batched=True, batch_size=10_000, writer_batch_size=WRITER_BATCH,
                  remove_columns=ds.column_names, desc="pairs", new_fingerprint=fingerprint)


# -- resident memory of memory-mapped files --------------------------------------------------------
_MADV_DONTNEED = 4
_libc = None


def dataset_files(ds: datasets.Dataset) -> frozenset[str]:
    """The Arrow files behind `ds` (memory-mapped), as real paths."""
    return frozenset(os.path.realpath(f["filename"]) for f in ds.cache_files)


def release_pages(files: frozenset[str]) -> None:
    """Let go of the pages of these Arrow files (`dataset_files`) that this process has read.

    Reading a memory-mapped file maps its pages into the process, and they count as its
    resident memory until the mapping is closed: opening an Arrow file (`datasets` reads the
    whole stream through `pyarrow`) or one pass over a 4.5M-pair split would leave the whole
    file resident, hundreds of MB that grow with the corpus. So after a split is opened, and
    after each batch of a pass over a whole split (tokenizer sample, tokenization), this asks
    the kernel to drop those pages from this process (madvise MADV_DONTNEED: they stay in the
    page cache, and a later read maps them again). Only read-only mappings of the dataset's
    own files are touched. Linux only; elsewhere it does nothing."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if not files:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and "w" not in parts[1] and parts[5].rstrip("\n") in files:
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    _libc.madvise(start, end - start, _MADV_DONTNEED)
    except (OSError, AttributeError, ValueError):
        return
