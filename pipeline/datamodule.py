"""The LightningDataModule: splits -> tokenizer -> token ids (cached `Dataset.map`) -> batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from pipeline.batching import TokenBucketSampler, collate, padding_efficiency
from pipeline.data import load_split
from pipeline.errors import UserError
from pipeline.tokenizer import MAX_SOURCE_TOKENS, encode, load_tokenizer, train_tokenizer


class TranslationDataModule(L.LightningDataModule):
    """Sentence pairs from `path` for training, validation and test.

    Args:
        path: dataset directory (splits train/validation/test), hub id, or a .jsonl file of
            training pairs.
        src_lang: source language key in the rows, e.g. "de".
        tgt_lang: target language key, e.g. "en".
        vocab_size: joint BPE vocabulary size, trained on the training split.
        max_len: training pairs with a side longer than this many tokens (with BOS/EOS) are
            dropped. Validation and test keep every pair, as `evaluate` does.
        max_tokens: token budget of a training batch (sentences × longest sentence).
        eval_max_tokens: token budget of a validation/test batch (decoding is lighter on memory).
        train_split: name of the training split.
        val_split: name of the validation split.
        test_split: name of the test split (`python -m pipeline test`).
        validation_path: a separate .jsonl file or dataset directory for validation. When
            `path` is a .jsonl file and this is None, a seeded slice of it is held out instead
            (5%, at most 1,000 pairs), so checkpoints are never chosen on training data.
        test_path: a separate .jsonl file or dataset directory for `test`.
        train_limit: keep only the first N training pairs (quick runs); None keeps all.
        val_limit: keep only the first N validation pairs; None keeps all.
        num_workers: DataLoader worker processes.
        seed: seed of the batch shuffling and of the held-out slice (the rest of the run is
            seeded by seed_everything).
        tokenizer_file: where the tokenizer is saved; an existing file is reused, not retrained
            (set by the CLI to runs/<name>/tokenizer.json).
    """

    HOLDOUT_FRACTION, HOLDOUT_MAX = 0.05, 1000

    def __init__(self, path: str = "../shared/data/multi30k", src_lang: str = "de", tgt_lang: str = "en",
                 vocab_size: int = 8000, max_len: int = 128, max_tokens: int = 4096, eval_max_tokens: int = 8192,
                 train_split: str = "train", val_split: str = "validation", test_split: str = "test",
                 validation_path: str | None = None, test_path: str | None = None,
                 train_limit: int | None = None, val_limit: int | None = None, num_workers: int = 0, seed: int = 0,
                 tokenizer_file: str | None = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("max_tokens", max_tokens),
                            ("eval_max_tokens", eval_max_tokens)):
            if value <= 0:
                raise UserError(f"data.{name} must be positive, got {value}")
        if eval_max_tokens < MAX_SOURCE_TOKENS:
            raise UserError(f"data.eval_max_tokens must be at least {MAX_SOURCE_TOKENS} (the longest source "
                            f"validation reads), got {eval_max_tokens}")
        self.path, self.src_lang, self.tgt_lang = path, src_lang, tgt_lang
        self.vocab_size, self.max_len, self.max_tokens, self.eval_max_tokens = vocab_size, max_len, max_tokens, eval_max_tokens
        self.split_names = {"train": train_split, "validation": val_split, "test": test_split}
        self.paths = {"validation": validation_path, "test": test_path}
        self.limits = {"train": train_limit, "validation": val_limit, "test": None}
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer_file = tokenizer_file
        self.tokenizer = None
        self.splits = {}  # split -> tokenized Dataset (src_ids, tgt_ids, index)
        self._texts = {}  # split -> (sources, references) as raw strings, by index

    @property
    def path_is_file(self) -> bool:
        return self.path.endswith(".jsonl")

    def load(self, split: str):
        """Pairs (columns src, tgt) of "train", "validation" or "test", limits applied."""
        if self.paths.get(split):
            other = self.paths[split]
            ds = load_split(other, None if other.endswith(".jsonl") else self.split_names[split], self.src_lang,
                            self.tgt_lang)
        elif self.path_is_file:
            if split == "test":
                raise UserError(f"{self.path} is one file of pairs with no test split: pass --data.test_path FILE")
            ds = load_split(self.path, None, self.src_lang, self.tgt_lang)
            if split == "validation" or not self.paths["validation"]:
                ds = self.holdout(ds)[split]
        else:
            ds = load_split(self.path, self.split_names[split], self.src_lang, self.tgt_lang)
        limit = self.limits[split]
        return ds.select(range(min(limit, len(ds)))) if limit else ds

    def holdout(self, ds) -> dict:
        """A seeded slice of one file for validation, the rest for training."""
        n = min(self.HOLDOUT_MAX, max(1, int(len(ds) * self.HOLDOUT_FRACTION)))
        if len(ds) < 2:
            raise UserError(f"{self.path} has {len(ds)} pair(s): too few to hold out validation pairs; pass "
                            "--data.validation_path FILE")
        parts = ds.train_test_split(test_size=n, seed=self.seed, shuffle=True)
        return {"train": parts["train"], "validation": parts["test"]}

    def prepare_data(self) -> None:
        """Train the tokenizer on the training split once (rank 0) unless the run has one."""
        if self.tokenizer_file and Path(self.tokenizer_file).exists():
            return
        train = self.load("train")
        tokenizer = train_tokenizer((text for row in train for text in (row["src"], row["tgt"])), self.vocab_size)
        if self.tokenizer_file:
            Path(self.tokenizer_file).parent.mkdir(parents=True, exist_ok=True)
            tokenizer.save(self.tokenizer_file)
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            if not (self.tokenizer_file and Path(self.tokenizer_file).exists()):
                self.prepare_data()
            else:
                self.tokenizer = load_tokenizer(Path(self.tokenizer_file).read_text(encoding="utf-8"))
        if stage in ("fit", None):
            self.splits["train"] = self.tokenize_train()
        if stage in ("fit", "validate", None):
            self.splits["validation"] = self.tokenize_eval("validation")
        if stage == "test":
            self.splits["test"] = self.tokenize_eval("test")

    def describe(self, split: str) -> str:
        if self.paths.get(split):
            return self.paths[split]
        if self.path_is_file and split == "train" and self.paths["validation"]:
            return self.path
        if self.path_is_file:
            return f"{self.path} ({'held-out slice' if split == 'validation' else 'without the held-out slice'}, " \
                   f"seed {self.seed}; --data.validation_path sets a separate file)"
        return f"{self.path} [{self.split_names[split]}]"

    def tokenize_train(self):
        """Training pairs -> columns src_ids, tgt_ids, index; empty and over-long pairs dropped (and reported)."""
        ds = self.load("train")
        n = len(ds)
        ds = ds.map(lambda row, i: {"index": i}, with_indices=True, desc="index")
        ds = ds.filter(lambda row: bool(row["src"].strip()) and bool(row["tgt"].strip()), desc="non-empty")
        n_empty = n - len(ds)
        tokenizer = self.tokenizer
        ds = ds.map(lambda b: {"src_ids": encode(tokenizer, b["src"]), "tgt_ids": encode(tokenizer, b["tgt"])},
                    batched=True, desc="tokenize")
        limit_ids = self.max_len - 1  # room for EOS (source) or BOS/EOS (each shifted target side)
        ds = ds.filter(lambda row: len(row["src_ids"]) <= limit_ids and len(row["tgt_ids"]) <= limit_ids,
                       desc="max_len")
        n_long = n - n_empty - len(ds)
        if len(ds) == 0:
            raise UserError(f"no usable pairs in {self.describe('train')} (all {n} empty or longer than "
                            f"data.max_len={self.max_len})")
        rank_zero_info(f"train: {len(ds)} of {n} pairs kept ({n_empty} empty, {n_long} longer than "
                       f"{self.max_len} tokens dropped) from {self.describe('train')}")
        return ds.with_format(columns=["src_ids", "tgt_ids", "index"])

    def tokenize_eval(self, split: str):
        """Validation/test pairs -> src_ids, tgt_ids, index, keeping every pair as `evaluate`
        does: sources cut to MAX_SOURCE_TOKENS like the translator's, hypotheses scored
        against the raw reference strings (see `texts`)."""
        ds = self.load(split)
        if len(ds) == 0:
            raise UserError(f"{self.describe(split)} is empty: point to a split with sentence pairs")
        self._texts[split] = (ds["src"], ds["tgt"])
        tokenizer, cut = self.tokenizer, MAX_SOURCE_TOKENS - 1

        def ids(batch):
            src, tgt = encode(tokenizer, batch["src"]), encode(tokenizer, batch["tgt"])
            return {"src_ids": [s[:cut] for s in src], "tgt_ids": [t[:cut] for t in tgt]}

        ds = ds.map(lambda row, i: {"index": i}, with_indices=True, desc="index").map(ids, batched=True,
                                                                                      desc="tokenize")
        rank_zero_info(f"{split}: {len(ds)} pairs from {self.describe(split)}")
        return ds.with_format(columns=["src_ids", "tgt_ids", "index"])

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (sources, references) of a tokenized validation/test split, by row index."""
        return self._texts[split]

    def sampler(self, split: str, max_tokens: int, shuffle: bool) -> TokenBucketSampler:
        ds = self.splits[split]
        src_lens, tgt_lens = [len(s) + 1 for s in ds["src_ids"]], [len(t) + 1 for t in ds["tgt_ids"]]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return TokenBucketSampler([max(s, t) for s, t in zip(src_lens, tgt_lens)], max_tokens, shuffle, self.seed,
                                  world, rank, sort_keys=list(zip(tgt_lens, src_lens)))

    def padding_efficiency(self, split: str = "train") -> float:
        ds = self.splits[split]
        sampler = self.sampler(split, self.max_tokens, shuffle=True)
        return padding_efficiency(sampler.batches(), [len(s) + 1 for s in ds["src_ids"]],
                                  [len(t) + 1 for t in ds["tgt_ids"]])

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


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning can checkpoint mid-epoch (it has state_dict/load_state_dict).

    The state is the number of batches of the current epoch already trained; on resume the
    sampler skips them, so the run continues with exactly the batches it would have seen.
    """

    def __init__(self, *args, trainer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trainer = trainer

    def __iter__(self):
        # Lightning calls set_epoch on a loader's sampler, not on its batch sampler.
        if self.trainer is not None:
            self.batch_sampler.set_epoch(self.trainer.current_epoch)
        return super().__iter__()

    def state_dict(self) -> dict:
        # Checkpoints are written in on_train_batch_end, after the batch is processed but
        # before Lightning counts it as completed.
        return {"epoch": self.trainer.current_epoch,
                "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.resume(state["epoch"], state["batches_done"])
