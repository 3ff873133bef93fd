"""The LightningDataModule: splits -> tokenizer -> token ids (cached `Dataset.map`) -> batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from pipeline.batching import TokenBucketSampler, collate, padding_efficiency
from pipeline.data import load_split
from pipeline.errors import UserError
from pipeline.tokenizer import encode, load_tokenizer, train_tokenizer


class TranslationDataModule(L.LightningDataModule):
    """Sentence pairs from `path` for training and validation.

    Args:
        path: dataset directory (splits train/validation), .jsonl file for both, or hub id.
        src_lang: source language key in the rows, e.g. "de".
        tgt_lang: target language key, e.g. "en".
        vocab_size: joint BPE vocabulary size, trained on the training split.
        max_len: pairs with a side longer than this many tokens (with BOS/EOS) are dropped.
        max_tokens: token budget of a training batch (sentences × longest sentence).
        eval_max_tokens: token budget of a validation batch (decoding is lighter on memory).
        train_split: name of the training split.
        val_split: name of the validation split.
        train_limit: keep only the first N training pairs (quick runs); None keeps all.
        val_limit: keep only the first N validation pairs; None keeps all.
        num_workers: DataLoader worker processes.
        seed: seed of the batch shuffling (the rest of the run is seeded by seed_everything).
        tokenizer_file: where the tokenizer is saved; an existing file is reused, not retrained
            (set by the CLI to runs/<name>/tokenizer.json).
    """

    def __init__(self, path: str = "../shared/data/multi30k", src_lang: str = "de", tgt_lang: str = "en",
                 vocab_size: int = 8000, max_len: int = 128, max_tokens: int = 4096, eval_max_tokens: int = 8192,
                 train_split: str = "train", val_split: str = "validation", train_limit: int | None = None,
                 val_limit: int | None = None, num_workers: int = 0, seed: int = 0,
                 tokenizer_file: str | None = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("max_tokens", max_tokens)):
            if value <= 0:
                raise UserError(f"data.{name} must be positive, got {value}")
        self.path, self.src_lang, self.tgt_lang = path, src_lang, tgt_lang
        self.vocab_size, self.max_len, self.max_tokens, self.eval_max_tokens = vocab_size, max_len, max_tokens, eval_max_tokens
        self.train_split, self.val_split = train_split, val_split
        self.train_limit, self.val_limit = train_limit, val_limit
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer_file = tokenizer_file
        self.tokenizer = None
        self.splits = {}

    def load(self, split: str, limit: int | None):
        path_is_file = self.path.endswith(".jsonl")
        ds = load_split(self.path, None if path_is_file else split, self.src_lang, self.tgt_lang)
        return ds.select(range(min(limit, len(ds)))) if limit else ds

    def prepare_data(self) -> None:
        """Train the tokenizer on the training split once (rank 0) unless the run has one."""
        if self.tokenizer_file and Path(self.tokenizer_file).exists():
            return
        train = self.load(self.train_split, self.train_limit)
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
            self.splits["train"] = self.tokenize(self.train_split, self.train_limit)
        self.splits["validation"] = self.tokenize(self.val_split, self.val_limit)

    def tokenize(self, split: str, limit: int | None):
        """Pairs -> columns src_ids, tgt_ids, index; empty and over-long pairs dropped (and reported)."""
        ds = self.load(split, limit)
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
            raise UserError(f"no usable pairs in split {split!r} of {self.path} (all {n} empty or longer than "
                            f"data.max_len={self.max_len})")
        rank_zero_info(f"{split}: {len(ds)} of {n} pairs kept ({n_empty} empty, {n_long} longer than "
                       f"{self.max_len} tokens dropped)")
        return ds.with_format(columns=["src_ids", "tgt_ids", "index"])

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

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["validation"], batch_sampler=self.sampler("validation", self.eval_max_tokens,
                                                                                 False),
                          collate_fn=collate, num_workers=self.num_workers)


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
