"""Parallel data: load with `datasets`, check the language keys, drop empty pairs.

A source is a Hugging Face dataset directory (`../shared/data/multi30k`), a single
`.jsonl` file, or a hub id. Rows may be flat `{"de": ..., "en": ...}` or nested
`{"translation": {"de": ..., "en": ...}}`; either way the result has columns `src`, `tgt`.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from pipeline.errors import UserError

datasets.disable_progress_bars()


def _is_hub_id(path: str) -> bool:
    """`owner/name` with no local meaning, e.g. bentrevett/multi30k (if the `owner` folder
    exists here, `path` is a mistyped local path, not worth a slow trip to the Hub)."""
    return re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", path) is not None and not Path(path).parent.is_dir()


def load_split(path: str, split: str | None, src_lang: str, tgt_lang: str) -> datasets.Dataset:
    """Load one split as a Dataset with string columns `src` and `tgt` (in file order)."""
    p = Path(path).expanduser()
    if p.suffix == ".jsonl":
        if not p.is_file():
            raise UserError(f"data file not found: {path} (pass an existing .jsonl file or dataset directory)")
        with p.open(encoding="utf-8", errors="replace") as f:
            if not any(line.strip() for line in f):  # `datasets` fails on it with a bare StopIteration
                raise UserError(f"{path} is empty: point to a .jsonl file with sentence pairs")
        ds = _load(lambda: datasets.load_dataset("json", data_files=str(p), split="train"), path)
    elif p.is_dir():
        dd = _load(lambda: datasets.load_dataset(str(p)), path)
        ds = _pick_split(dd, split, path)
    elif not _is_hub_id(path):
        raise UserError(f"data directory not found: {path} (pass --data.path DIR with a dataset folder such as "
                        "../shared/data/multi30k, or a .jsonl file)")
    else:
        dd = _load(lambda: datasets.load_dataset(path), path)
        ds = _pick_split(dd, split, path)
    return _to_pairs(ds, src_lang, tgt_lang, f"{path}" + (f" [{split}]" if split else ""))


def _load(loader, path: str):
    try:
        return loader()
    except Exception as e:  # datasets raises many types; the user needs the path and the cause
        detail = str(e).strip().splitlines()[0] if str(e).strip() else "(no message)"
        raise UserError(f"cannot load data from {path}: {type(e).__name__}: {detail}") from e


def _pick_split(dd: datasets.DatasetDict, split: str | None, path: str) -> datasets.Dataset:
    if split is None or split not in dd:
        raise UserError(f"split {split!r} not in {path}; it has {sorted(dd)} (choose one with --split)")
    return dd[split]


def _to_pairs(ds: datasets.Dataset, src_lang: str, tgt_lang: str, where: str) -> datasets.Dataset:
    if len(ds) == 0:
        raise UserError(f"{where} is empty: point to a split with sentence pairs")
    nested = "translation" in ds.column_names
    keys = set(ds[0]["translation"]) if nested else set(ds.column_names)
    missing = [k for k in (src_lang, tgt_lang) if k not in keys]
    if missing:
        raise UserError(f"language key(s) {missing} not in {where}; it has {sorted(keys)} "
                        "(set data.src_lang / data.tgt_lang to keys that exist)")

    def flatten(batch):
        rows = batch["translation"] if nested else None
        src = [r[src_lang] for r in rows] if nested else batch[src_lang]
        tgt = [r[tgt_lang] for r in rows] if nested else batch[tgt_lang]
        return {"src": [s or "" for s in src], "tgt": [t or "" for t in tgt]}

    return ds.map(flatten, batched=True, remove_columns=ds.column_names, desc="pairs")


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file, or a clear error if it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"input file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): convert it, e.g. iconv -t UTF-8") from None
