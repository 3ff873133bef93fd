"""The LightningDataModule: splits -> tokenizer -> token ids (cached `Dataset.map`) -> batches.

Built for corpora of millions of pairs as well as Multi30k: the tokenizer is trained on a
capped, seeded sample through a batched iterator; every split is tokenized once by a batched
`Dataset.map` (optionally in `num_proc` processes) into Arrow files in the cache folder
(runs/<name>/data-cache), which every later run, resume and DDP rank memory-maps instead of
tokenizing again; filtering and batching work on numpy arrays of lengths, so no Python
object per pair is ever held.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch.utils.data import DataLoader

from pipeline.batching import TokenBucketSampler, collate
from pipeline.data import WRITER_BATCH, dataset_files, load_split, release_pages, single_split
from pipeline.errors import UserError
from pipeline.tokenizer import MAX_SOURCE_TOKENS, encode, load_tokenizer, train_tokenizer

CACHE_VERSION = 1  # bump when what the tokenized cache files hold changes
BATCH = 10_000  # pairs per batch of the tokenization map (and record batch of its Arrow file) and of the
# tokenizer's text iterator: large enough for encode_batch to use every core and for opening
# the file to touch little of it (see pipeline.data.WRITER_BATCH)


def log_every_rank(message: str) -> None:
    """A line printed by whichever process does the work (not only rank 0): the cache builds,
    which must happen once per run, not once per rank."""
    print(message, flush=True)


class TranslationDataModule(L.LightningDataModule):
    """Sentence pairs from `path` for training, validation and test.

    Args:
        path: where the pairs are (see `pipeline.data`): a dataset directory (splits
            train/validation/test), a directory of parallel text (train.de, train.en, ...), a
            prefix of parallel text (corpus/train for corpus/train.de + corpus/train.en), a
            .jsonl/.tsv/.csv/.parquet file or a glob pattern of shards (data/train-*.parquet)
            of training pairs, or a hub id (online).
        name: the config of the dataset at `path`, e.g. de-en for a hub dataset with one config
            per language pair (datasets.load_dataset(path, name)); None for none.
        src_lang: source language key in the rows, e.g. "de".
        tgt_lang: target language key, e.g. "en".
        vocab_size: joint BPE vocabulary size, trained on the training split.
        max_len: training pairs with a side longer than this many tokens (with BOS/EOS) are
            dropped. Validation and test keep every pair, as `evaluate` does.
        max_ratio: training pairs whose longer side has more than this many times the tokens
            of the shorter one are dropped (e.g. 3.0: misaligned pairs); None keeps them.
        dedup: drop exact duplicate training pairs (same source and target after stripping
            outer spaces), keeping the first.
        max_tokens: token budget of a training batch (sentences × longest sentence).
        eval_max_tokens: token budget of a validation/test batch (decoding is lighter on memory).
        train_split: name of the training split.
        val_split: name of the validation split.
        test_split: name of the test split (`python -m pipeline test`).
        validation_path: a separate file, prefix or dataset directory for validation. When
            `path` holds one split (a file, prefix or pattern) and this is None, a seeded slice
            of it is held out instead (5%, at most 1,000 pairs), so checkpoints are never
            chosen on training data.
        test_path: a separate file, prefix or dataset directory for `test`.
        train_limit: keep only the first N training pairs (quick runs); None keeps all. (From a
            single file, the first N of the pairs the held-out split leaves for training: a random N.)
        val_limit: keep only the first N validation pairs; None keeps all.
        val_max_pairs: validate on a seeded sample of at most N validation pairs (in file
            order), so that decoding a large validation set does not dominate an epoch; None
            uses every pair. The final checkpoint and decoding choice use the same pairs.
        tokenizer_sample: train the tokenizer on a seeded sample of at most N training pairs
            (in file order); a split with fewer pairs is used whole. None: always all.
        num_proc: processes that tokenize (`Dataset.map(num_proc=...)`); None: one process
            (the tokenizer itself still uses every core).
        num_workers: DataLoader worker processes.
        seed: seed of the batch shuffling, the held-out slice and the samples (the rest of the
            run is seeded by seed_everything).
        tokenizer_file: where the tokenizer is saved; an existing file is reused, not retrained
            (set by the CLI to runs/<name>/tokenizer.json).
        cache_dir: where the Arrow copies of local data files and the tokenized splits are
            cached; None: data-cache/ beside tokenizer_file (runs/<name>/data-cache), or the
            `datasets` cache without a tokenizer_file.
    """

    HOLDOUT_FRACTION, HOLDOUT_MAX = 0.05, 1000
    STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}

    def __init__(self, path: str = "../shared/data/multi30k", name: str | None = None, src_lang: str = "de",
                 tgt_lang: str = "en", vocab_size: int = 8000, max_len: int = 128, max_ratio: float | None = None,
                 dedup: bool = False, max_tokens: int = 4096, eval_max_tokens: int = 8192, train_split: str = "train",
                 val_split: str = "validation", test_split: str = "test", validation_path: str | None = None,
                 test_path: str | None = None, train_limit: int | None = None, val_limit: int | None = None,
                 val_max_pairs: int | None = None, tokenizer_sample: int | None = 1_000_000,
                 num_proc: int | None = None, num_workers: int = 0, seed: int = 0, tokenizer_file: str | None = None,
                 cache_dir: str | None = None):
        super().__init__()
        for key, value in (("vocab_size", vocab_size), ("max_len", max_len), ("max_tokens", max_tokens),
                           ("eval_max_tokens", eval_max_tokens), ("val_max_pairs", val_max_pairs),
                           ("tokenizer_sample", tokenizer_sample), ("num_proc", num_proc),
                           ("train_limit", train_limit), ("val_limit", val_limit)):
            if value is not None and value <= 0:
                raise UserError(f"data.{key} must be positive, got {value}")
        if max_ratio is not None and max_ratio < 1:
            raise UserError(f"data.max_ratio must be at least 1 (longer side / shorter side), got {max_ratio}")
        if max_tokens < max_len:
            raise UserError(f"data.max_tokens={max_tokens} is smaller than data.max_len={max_len}: a batch could not "
                            "hold the longest pair; raise data.max_tokens or lower data.max_len")
        if eval_max_tokens < MAX_SOURCE_TOKENS:
            raise UserError(f"data.eval_max_tokens must be at least {MAX_SOURCE_TOKENS} (the longest source "
                            f"validation reads), got {eval_max_tokens}")
        self.path, self.name, self.src_lang, self.tgt_lang = path, name, src_lang, tgt_lang
        self.vocab_size, self.max_len, self.max_tokens, self.eval_max_tokens = vocab_size, max_len, max_tokens, eval_max_tokens
        self.max_ratio, self.dedup = max_ratio, dedup
        self.split_names = {"train": train_split, "validation": val_split, "test": test_split}
        self.paths = {"validation": validation_path, "test": test_path}
        self.limits = {"train": train_limit, "validation": val_limit, "test": None}
        self.val_max_pairs, self.tokenizer_sample, self.num_proc = val_max_pairs, tokenizer_sample, num_proc
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer_file, self.cache_dir = tokenizer_file, cache_dir
        self.tokenizer = None
        self.splits = {}  # split -> tokenized Dataset (src_ids, tgt_ids, index)
        self._lengths = {}  # split -> (dataset, source lengths, target lengths): see `lengths`
        self._texts = {}  # split -> (sources, references) as raw strings, by index
        self._prepared = {}  # split -> (dataset, lengths) tokenized by this process
        self.timings = {}  # seconds of the data steps this process ran (tokenizer, tokenize train, ...)
        self._val_sampled_from = None  # validation pairs before the val_max_pairs sample

    # -- loading -------------------------------------------------------------------------------
    @property
    def path_is_file(self) -> bool:
        """`path` holds one split (a file, a prefix of parallel text, a glob pattern)."""
        return single_split(self.path, self.src_lang, self.tgt_lang)

    def cache_root(self) -> Path | None:
        if self.cache_dir:
            return Path(self.cache_dir)
        if self.tokenizer_file:
            return Path(self.tokenizer_file).parent / "data-cache"
        return None

    def _load_split(self, path: str, split: str | None, name: str | None = None):
        root = self.cache_root()
        return load_split(path, split, self.src_lang, self.tgt_lang, name, str(root / "datasets") if root else None)

    def load(self, split: str):
        """Pairs (columns src, tgt) of "train", "validation" or "test", limits applied."""
        if self.paths.get(split):
            other = self.paths[split]
            single = single_split(other, self.src_lang, self.tgt_lang)
            ds = self._load_split(other, None if single else self.split_names[split])
        elif self.path_is_file:
            if split == "test":
                raise UserError(f"{self.path} is one split of pairs with no test split: pass --data.test_path FILE")
            ds = self._load_split(self.path, None, self.name)
            if split == "validation" or not self.paths["validation"]:
                ds = self.holdout(ds)[split]
        else:
            ds = self._load_split(self.path, self.split_names[split], self.name)
        limit = self.limits[split]
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        if split == "validation" and self.val_max_pairs and len(ds) > self.val_max_pairs:
            self._val_sampled_from = len(ds)
            chosen = np.random.default_rng(self.seed).choice(len(ds), self.val_max_pairs, replace=False)
            ds = ds.select(np.sort(chosen).tolist())
        return ds

    def holdout(self, ds) -> dict:
        """A seeded slice of one file for validation, the rest for training (`train_test_split`;
        for a split on disk its index files are written here from numpy arrays first, which
        `train_test_split` then reads, so that no Python list of every row is built)."""
        n = min(self.HOLDOUT_MAX, max(1, int(len(ds) * self.HOLDOUT_FRACTION)))
        if len(ds) < 2:
            raise UserError(f"{self.path} has {len(ds)} pair(s): too few to hold out validation pairs; pass "
                            "--data.validation_path FILE")
        names = {}
        if ds.cache_files:
            stem = self._cache(ds) / f"holdout-{_hash(ds._fingerprint, n, self.seed)}"
            names = {"train_indices_cache_file_name": f"{stem}-train.arrow",
                     "test_indices_cache_file_name": f"{stem}-validation.arrow"}
            if not all(Path(f).exists() for f in names.values()):
                permutation = np.random.default_rng(self.seed).permutation(len(ds))  # what train_test_split draws
                _write_indices(names["test_indices_cache_file_name"], permutation[:n])
                _write_indices(names["train_indices_cache_file_name"], permutation[n:])
        parts = ds.train_test_split(test_size=n, seed=self.seed, shuffle=True, **names)
        return {"train": parts["train"], "validation": parts["test"]}

    def describe(self, split: str) -> str:
        if self.paths.get(split):
            return self.paths[split]
        if self.path_is_file and split == "train" and self.paths["validation"]:
            return self.path
        if self.path_is_file:
            return f"{self.path} ({'held-out slice' if split == 'validation' else 'without the held-out slice'}, " \
                   f"seed {self.seed}; --data.validation_path sets a separate file)"
        return f"{self.path} [{self.split_names[split]}]"

    # -- tokenizer and cache -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Train the tokenizer unless the run has one, then, inside a fit/validate/test, tokenize
        the splits that stage reads into the cache. Lightning runs this on one process per node
        while the other ranks wait, so the cache is built once and every rank's `setup` maps it."""
        if self.tokenizer is None:
            if self.tokenizer_file and Path(self.tokenizer_file).exists():
                self.tokenizer = load_tokenizer(Path(self.tokenizer_file).read_text(encoding="utf-8"))
            else:
                self.tokenizer = self.fit_tokenizer()
        stage = self.trainer.state.fn.value if self.trainer is not None and self.trainer.state.fn else None
        for split in self.STAGE_SPLITS.get(stage, ()):
            self.tokenized(split)

    def fit_tokenizer(self):
        """BPE on the training split, or on a seeded sample of `tokenizer_sample` pairs of it (in
        file order), fed to `tokenizers` in batches of texts (source, target, source, ...)."""
        start = time.perf_counter()
        train = self.load("train")
        n = len(train)
        chosen = None
        if self.tokenizer_sample and n > self.tokenizer_sample:
            chosen = np.zeros(n, dtype=bool)
            chosen[np.random.default_rng(self.seed).choice(n, self.tokenizer_sample, replace=False)] = True
        files, table = dataset_files(train), train.with_format("arrow")

        def texts():
            for begin in range(0, n, BATCH):
                batch = table[begin: begin + BATCH]
                if chosen is not None:
                    batch = batch.filter(pa.array(chosen[begin: begin + BATCH]))
                pairs = zip(batch.column("src").to_pylist(), batch.column("tgt").to_pylist())
                release_pages(files)
                yield [text for pair in pairs for text in pair]

        tokenizer = train_tokenizer(texts(), self.vocab_size)
        if self.tokenizer_file:
            Path(self.tokenizer_file).parent.mkdir(parents=True, exist_ok=True)
            tokenizer.save(self.tokenizer_file)
        self.timings["tokenizer_s"] = time.perf_counter() - start
        used = f"a seeded sample of {self.tokenizer_sample} of the {n}" if chosen is not None else f"all {n}"
        rank_zero_info(f"tokenizer: BPE of {tokenizer.get_vocab_size()} tokens trained on {used} training pairs "
                       f"in {self.timings['tokenizer_s']:.1f} s")
        return tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            if not (self.tokenizer_file and Path(self.tokenizer_file).exists()):
                self.prepare_data()
            else:
                self.tokenizer = load_tokenizer(Path(self.tokenizer_file).read_text(encoding="utf-8"))
        for split in self.STAGE_SPLITS.get(stage or "fit", ()):
            ds, (src_lens, tgt_lens) = self.tokenized(split)
            self.splits[split], self._lengths[split] = ds, (ds, src_lens, tgt_lens)

    def tokenized(self, split: str):
        """(dataset with columns src_ids, tgt_ids, index; (source, target) length arrays) of a
        split: read from the cache when it holds them, else tokenized into it. Once per process."""
        if split not in self._prepared:
            self._prepared[split] = self.tokenize_train() if split == "train" else self.tokenize_eval(split)
        return self._prepared[split]

    def _cache(self, pairs) -> Path:
        root = self.cache_root()
        if root is None:  # beside the split's own Arrow files, as `datasets` would
            root = Path(pairs.cache_files[0]["filename"]).parent if pairs.cache_files else \
                Path(tempfile.gettempdir()) / "pipeline-data-cache"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _map_tokens(self, pairs, split: str, cut: int | None, pair_hash: bool):
        """The batched tokenization map of a split into the cache (or the cached result)."""
        key = _hash(CACHE_VERSION, pairs._fingerprint, self.tokenizer.to_str(), cut, pair_hash)
        path = self._cache(pairs) / f"{split}-{key}.arrow"
        if not _cached(path):
            rank = self.trainer.global_rank if self.trainer is not None else 0
            log_every_rank(f"{split}: tokenizing {len(pairs)} pairs into {path.parent} (rank {rank}"
                           + (f", {self.num_proc} processes)" if self.num_proc else ")"))
        start = time.perf_counter()
        features = datasets.Features({"src_ids": datasets.List(datasets.Value("int32")),
                                      "tgt_ids": datasets.List(datasets.Value("int32")),
                                      "index": datasets.Value("int64"), "src_len": datasets.Value("int32"),
                                      "tgt_len": datasets.Value("int32"),
                                      **({"pair_hash": datasets.Value("int64")} if pair_hash else {})})
        ds = pairs.map(Encode(self.tokenizer.to_str(), cut, pair_hash, dataset_files(pairs)), batched=True,
                       batch_size=BATCH, writer_batch_size=BATCH, with_indices=True,
                       remove_columns=pairs.column_names, features=features,
                       num_proc=self.num_proc if self.num_proc and self.num_proc > 1 else None,
                       cache_file_name=str(path), load_from_cache_file=True, new_fingerprint=key,
                       desc=f"tokenize {split}")
        release_pages(dataset_files(ds))  # opening the result read it through
        self.timings[f"tokenize_{split}_s"] = time.perf_counter() - start
        return ds, key

    def tokenize_train(self):
        """Training pairs -> columns src_ids, tgt_ids, index; empty, over-long, (with max_ratio)
        unbalanced and (with dedup) duplicate pairs dropped, and counted in one line."""
        pairs = self.load("train")
        n = len(pairs)
        full, key = self._map_tokens(pairs, "train", None, pair_hash=True)
        start = time.perf_counter()
        src = _column(full, "src_len")
        tgt = _column(full, "tgt_len")
        keep = (src > 0) & (tgt > 0)
        n_empty = n - int(keep.sum())
        limit_ids = self.max_len - 1  # room for EOS (source) or BOS/EOS (each shifted target side)
        too_long = keep & ((src > limit_ids) | (tgt > limit_ids))
        keep &= ~too_long
        counts = [f"{n_empty} empty", f"{int(too_long.sum())} longer than {self.max_len} tokens"]
        if self.max_ratio is not None:
            unbalanced = keep & (np.maximum(src, tgt) > self.max_ratio * np.minimum(src, tgt))
            keep &= ~unbalanced
            counts.append(f"{int(unbalanced.sum())} with a length ratio above {self.max_ratio:g}")
        if self.dedup:
            candidates = np.flatnonzero(keep)
            _, first = np.unique(_column(full, "pair_hash")[candidates], return_index=True)
            keep[:] = False
            keep[candidates[first]] = True
            counts.append(f"{len(candidates) - len(first)} duplicates")
        kept = np.flatnonzero(keep)
        release_pages(dataset_files(full))  # the pages around the length columns
        if len(kept) == 0:
            raise UserError(f"no usable pairs in {self.describe('train')} (all {n} empty, longer than "
                            f"data.max_len={self.max_len}" + (", unbalanced" if self.max_ratio else "")
                            + (" or duplicates" if self.dedup else "") + ")")
        ds = full
        if len(kept) < n:
            filter_key = _hash(key, self.max_len, self.max_ratio, self.dedup)
            ds = full.filter(lambda indices: keep[np.asarray(indices, dtype=np.int64)], with_indices=True,
                             batched=True, batch_size=WRITER_BATCH, writer_batch_size=WRITER_BATCH, input_columns=[],
                             load_from_cache_file=True,
                             cache_file_name=str(Path(full.cache_files[0]["filename"]).parent
                                                 / f"train-{key}-kept-{filter_key}.arrow"),
                             new_fingerprint=filter_key, desc="filter train")
            release_pages(dataset_files(ds))
        self.timings["filter_train_s"] = time.perf_counter() - start
        rank_zero_info(f"train: {len(kept)} of {n} pairs kept ({', '.join(counts)} dropped) from "
                       f"{self.describe('train')}")
        lengths = (src[kept] + 1, tgt[kept] + 1)
        return ds.with_format(columns=["src_ids", "tgt_ids", "index"]), lengths

    def tokenize_eval(self, split: str):
        """Validation/test pairs -> src_ids, tgt_ids, index, keeping every pair as `evaluate`
        does: sources cut to MAX_SOURCE_TOKENS like the translator's, hypotheses scored
        against the raw reference strings (see `texts`)."""
        pairs = self.load(split)
        if len(pairs) == 0:
            raise UserError(f"{self.describe(split)} is empty: point to a split with sentence pairs")
        rows = pairs[:]
        self._texts[split] = (rows["src"], rows["tgt"])
        ds, _ = self._map_tokens(pairs, split, MAX_SOURCE_TOKENS - 1, pair_hash=False)
        sample = f" (a seeded sample of {len(pairs)} of {self._val_sampled_from}, data.val_max_pairs)" \
            if split == "validation" and self._val_sampled_from else ""
        rank_zero_info(f"{split}: {len(ds)} pairs{sample} from {self.describe(split)}")
        lengths = (_column(ds, "src_len") + 1, _column(ds, "tgt_len") + 1)
        release_pages(dataset_files(ds))
        return ds.with_format(columns=["src_ids", "tgt_ids", "index"]), lengths

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (sources, references) of a tokenized validation/test split, by row index."""
        return self._texts[split]

    # -- batches -------------------------------------------------------------------------------
    def lengths(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) lengths, EOS included, of the rows of `splits[split]` as numpy arrays:
        kept from tokenization, or read from the dataset if it was replaced (e.g. by a slice)."""
        ds = self.splits[split]
        if split not in self._lengths or self._lengths[split][0] is not ds:
            table = ds.with_format("arrow", columns=["src_ids", "tgt_ids"])[:]
            src, tgt = (pc.list_value_length(table[c]).to_numpy(zero_copy_only=False).astype(np.int32) + 1
                        for c in ("src_ids", "tgt_ids"))
            self._lengths[split] = (ds, src, tgt)
        return self._lengths[split][1], self._lengths[split][2]

    def sampler(self, split: str, max_tokens: int, shuffle: bool) -> TokenBucketSampler:
        src_lens, tgt_lens = self.lengths(split)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return TokenBucketSampler(np.maximum(src_lens, tgt_lens), max_tokens, shuffle, self.seed, world, rank,
                                  sort_keys=np.column_stack([tgt_lens, src_lens]))

    def padding_efficiency(self, split: str = "train") -> float:
        return self.sampler(split, self.max_tokens, shuffle=True).padding_efficiency(*self.lengths(split))

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.splits["train"], batch_sampler=self.sampler("train", self.max_tokens, True),
                               collate_fn=collate, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0, trainer=self.trainer)

    def eval_dataloader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_sampler=self.sampler(split, self.eval_max_tokens, False),
                          collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


class Encode:
    """The batched map function that tokenizes pairs: ids (without BOS/EOS, each side cut to
    `cut` ids for validation/test), their lengths, the row index and, for deduplication, a
    64-bit hash of the stripped pair. A class, not a closure: worker processes (num_proc)
    rebuild the tokenizer from its JSON with `load_tokenizer` (a pickled Tokenizer would lose
    its settings), and it lets go of the pages of the input it has read (`release_pages`)."""

    def __init__(self, tokenizer_json: str, cut: int | None, pair_hash: bool, files: frozenset[str]):
        self.tokenizer_json, self.cut, self.pair_hash, self.files = tokenizer_json, cut, pair_hash, files
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_json)
        src_texts, tgt_texts = batch["src"], batch["tgt"]
        src, tgt = encode(self._tokenizer, src_texts), encode(self._tokenizer, tgt_texts)
        if self.cut is not None:
            src, tgt = [s[: self.cut] for s in src], [t[: self.cut] for t in tgt]
        out = {"src_ids": src, "tgt_ids": tgt, "index": list(indices), "src_len": [len(s) for s in src],
               "tgt_len": [len(t) for t in tgt]}
        if self.pair_hash:
            out["pair_hash"] = [int.from_bytes(hashlib.blake2b(s.strip().encode() + b"\0" + t.strip().encode(),
                                                               digest_size=8).digest(), "little", signed=True)
                                for s, t in zip(src_texts, tgt_texts)]
        release_pages(self.files)
        return out


def _hash(*parts) -> str:
    return datasets.fingerprint.Hasher.hash(list(parts))[:16]


def _column(ds, name: str) -> np.ndarray:
    """A numeric column of a dataset without an indices mapping, as one numpy array."""
    return ds.data.column(name).to_numpy()


def _cached(path: Path) -> bool:
    """Whether `Dataset.map` will read `path` from the cache: the file, or every shard of a map
    in N processes (PATH_00000_of_0000N.arrow, ...)."""
    if path.exists():
        return True
    shards = {}
    for f in path.parent.glob(f"{path.stem}_*_of_*{path.suffix}"):
        match = re.fullmatch(re.escape(path.stem) + r"_(\d+)_of_(\d+)" + re.escape(path.suffix), f.name)
        if match:
            shards.setdefault(int(match[2]), set()).add(int(match[1]))
    return any(ranks == set(range(total)) for total, ranks in shards.items())


def _write_indices(path: str, indices: np.ndarray) -> None:
    """An indices file as `datasets` writes them (one uint64 column "indices", Arrow stream),
    written to a temporary name and renamed, so a reader never sees half of it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"indices": pa.array(indices.astype(np.uint64))})
    tmp = f"{path}.tmp{np.random.default_rng().integers(1 << 30)}"
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)
    Path(tmp).replace(path)


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning can checkpoint mid-epoch (it has state_dict/load_state_dict).

    The state is the epoch and the number of its batches already trained; on resume the
    sampler skips them, so the run continues with exactly the batches it would have seen. Its
    iterator draws nothing from torch's global random generator (it has a generator of its
    own), so the random states a checkpoint restores are the ones the next step would have used.
    """

    def __init__(self, *args, trainer=None, **kwargs):
        # iter(DataLoader) draws a worker seed from `generator`, by default the global one: once
        # per epoch in a run, but not at the resume point of a restarted one (Lightning makes the
        # iterator before the module restores the random states).
        super().__init__(*args, generator=torch.Generator().manual_seed(0), **kwargs)
        self.trainer = trainer
        self._resumed_epoch: int | None = None

    def __iter__(self):
        # Lightning calls set_epoch on a loader's sampler, not on its batch sampler, so this does,
        # with the count Lightning gives samplers (epochs processed: the one about to run). A
        # resumed run makes its first iterator before Lightning moves `current_epoch` past an
        # epoch the checkpoint finished, and from a checkpoint written after an epoch's last
        # batch but before its end, the restored state (load_state_dict) says which epoch is next.
        if self._resumed_epoch is not None:
            self.batch_sampler.set_epoch(self._resumed_epoch)
            self._resumed_epoch = None
        elif self.trainer is not None:
            self.batch_sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return super().__iter__()

    def state_dict(self) -> dict:
        # Checkpoints are written in on_train_batch_end, after the batch is processed but
        # before Lightning counts it as completed, or after an epoch's validation. An epoch is
        # over after its last batch, or after trainer.limit_train_batches of them.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.trainer.current_epoch, "batches_done": done,
                "epoch_over": done >= self.trainer.num_training_batches}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        self.batch_sampler.set_epoch(epoch)
        if state.get("epoch_over", done >= len(self.batch_sampler)):  # the next epoch starts from its first batch
            epoch, done = epoch + 1, 0
        self.batch_sampler.resume(epoch, done)
        self._resumed_epoch = epoch
