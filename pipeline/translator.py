"""A trained checkpoint as a sentence-in, sentence-out translator (used by the CLI)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from pipeline.batching import pad
from pipeline.decoding import beam_search, max_new_tokens
from pipeline.errors import UserError
from pipeline.module import TranslationModule
from pipeline.tokenizer import EOS, decode, encode


def load_module(ckpt: str, map_location: str = "cpu") -> TranslationModule:
    """Load a self-contained checkpoint (weights, model config, tokenizer) or fail clearly."""
    path = Path(ckpt)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {ckpt} (train one with `make train`; runs write "
                        "runs/<name>/checkpoints/best.ckpt and last.ckpt)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = TranslationModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{ckpt} is not a readable checkpoint of this project (truncated, corrupt or foreign: "
                        f"{type(e).__name__}); use another .ckpt from runs/<name>/checkpoints/") from None
    if module.tokenizer is None:
        raise UserError(f"{ckpt} holds no tokenizer: it was not written by `python -m pipeline fit`")
    return module.eval()


class Translator:
    """Translate lists of sentences with a loaded module, in length-sorted batches.

    Sources longer than the model allows are truncated with a warning (max_src_tokens);
    empty or whitespace-only lines translate to empty lines.
    """

    def __init__(self, module: TranslationModule, beam: int = 1, max_tokens: int = 8192, batch_size: int = 128,
                 max_src_tokens: int = 256):
        for name, value in (("--beam", beam), ("--max-tokens", max_tokens), ("--batch-size", batch_size)):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        self.module, self.beam, self.max_tokens, self.batch_size = module, beam, max_tokens, batch_size
        self.max_src_tokens = min(max_src_tokens, module.config.max_positions // 2)
        self.truncated = 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def source_ids(self, sentence: str) -> list[int]:
        """Token ids + EOS, truncated (and counted) if longer than max_src_tokens."""
        ids = encode(self.module.tokenizer, [sentence])[0]
        if len(ids) >= self.max_src_tokens:
            self.truncated += 1
            ids = ids[: self.max_src_tokens - 1]
        return ids + [EOS]

    @torch.inference_mode()
    def nbest(self, sentence: str) -> list[tuple[str, float]]:
        """The beam's finished hypotheses for one sentence, best first, with their scores
        (log-probability / length^length_penalty)."""
        src = pad([self.source_ids(sentence)]).to(self.device)
        hp = self.module.hparams
        tokens, scores = beam_search(self.module.model, src, self.beam,
                                     max_new_tokens(src, hp.max_len_ratio, hp.max_len_extra), hp.length_penalty)
        return list(zip(decode(self.module.tokenizer, tokens[0].tolist()), scores[0].tolist()))

    @torch.inference_mode()
    def translate(self, sentences: list[str]) -> list[str]:
        out = [""] * len(sentences)
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        ids = {i: self.source_ids(sentences[i]) for i in todo}
        todo.sort(key=lambda i: len(ids[i]))
        start = 0
        while start < len(todo):
            # The longest sentence of a batch is its last; grow while the budget allows.
            end = start + 1
            while (end < len(todo) and end - start < self.batch_size
                   and (end - start + 1) * len(ids[todo[end]]) <= self.max_tokens):
                end += 1
            chunk = todo[start:end]
            src = pad([ids[i] for i in chunk]).to(self.device)
            hyps = decode(self.module.tokenizer, self.module.generate(src, self.beam).tolist())
            for i, h in zip(chunk, hyps):
                out[i] = h
            start = end
        return out
