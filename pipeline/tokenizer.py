"""Joint BPE tokenizer (Hugging Face `tokenizers`), lossless on any NFC Unicode text.

Text is normalized to NFC only: canonical composition, which changes no character a reader
sees. NFKC (used before) folded compatibility characters — Hangul compatibility jamo "ㅋㅋ"
into conjoining jamo, "…" into "...", a no-break space into a space — so decoded text
differed from the input. Special ids are fixed so that the model, the batches and the decoders agree without
passing them around: <pad>=0, <s>=1 (BOS), </s>=2 (EOS), <unk>=3. Byte fallback makes
unseen characters (rare Hangul syllables, emoji) decode back exactly instead of to <unk>.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = 0, 1, 2, 3
# Longest source (tokens, EOS included) that translation reads; longer inputs are cut here,
# with a warning, wherever a source is encoded (translator, validation, attention maps).
MAX_SOURCE_TOKENS = 256
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a BPE tokenizer on `texts` (source and target sentences together)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + BYTE_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer registers the byte tokens as special added tokens, which would make
    # decode(skip_special_tokens=True) drop them and make literal "<0x41>" in text match
    # one; they only need to be in the BPE vocabulary, so unregister them.
    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    return load_tokenizer(json.dumps(data))


def check_special_ids(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless the tokenizer maps the special tokens to the fixed ids."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected:
            raise ValueError(f"tokenizer maps {token} to {tokenizer.token_to_id(token)}, expected {expected}: "
                             "it was not made by pipeline.tokenizer.train_tokenizer")


def load_tokenizer(json_str: str) -> Tokenizer:
    """Rebuild a tokenizer from its JSON (as stored in `tokenizer.json` or a checkpoint)."""
    tokenizer = Tokenizer.from_str(json_str)
    check_special_ids(tokenizer)
    # Literal "<s>", "</s>", "<pad>" or "<unk>" in a sentence is text, not a control token
    # (otherwise "</s>" in the input would end it). Not saved in the JSON, so set on every load.
    tokenizer.encode_special_tokens = True
    return tokenizer


def normalize(tokenizer: Tokenizer, text: str) -> str:
    """The text as the tokenizer sees it (its normalizer, NFC for tokenizers trained here, and
    outer whitespace stripped): the round trip decode(encode(x)) == normalize(x) holds for any x."""
    return tokenizer.normalizer.normalize_str(text.strip())


def encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without BOS/EOS; the batch collator adds them where each side needs them."""
    return [e.ids for e in tokenizer.encode_batch([t.strip() for t in texts], add_special_tokens=False)]


def encode_sources(tokenizer: Tokenizer, texts: list[str], max_tokens: int = MAX_SOURCE_TOKENS
                   ) -> tuple[list[list[int]], int]:
    """Source ids with EOS appended, each cut to at most `max_tokens` (EOS included).

    Returns the id lists and how many texts were cut."""
    cut = 0
    out = []
    for ids in encode(tokenizer, texts):
        if len(ids) >= max_tokens:
            cut, ids = cut + 1, ids[: max_tokens - 1]
        out.append(ids + [EOS])
    return out, cut


def decode(tokenizer: Tokenizer, ids: list[list[int]]) -> list[str]:
    """Detokenized text; ids may include specials (they are skipped) and stop at the first EOS."""
    cut = [row[: row.index(EOS)] if EOS in row else row for row in ids]
    return tokenizer.decode_batch(cut, skip_special_tokens=True)
