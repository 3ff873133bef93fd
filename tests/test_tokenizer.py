"""The joint BPE tokenizer: fixed special ids, lossless round trip, byte fallback, reload."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from helpers import read_jsonl
from pipeline.tokenizer import (BOS, EOS, PAD, SPECIAL_TOKENS, UNK, decode, encode, load_tokenizer, normalize,
                                train_tokenizer)


def assert_round_trip(tokenizer, texts):
    ids = encode(tokenizer, texts)
    assert all(UNK not in row for row in ids), "byte fallback should make <unk> unnecessary"
    assert decode(tokenizer, ids) == [normalize(tokenizer, t) for t in texts]


def test_special_ids_are_fixed(tokenizer):
    assert (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD, BOS, EOS, UNK]
    assert [tokenizer.id_to_token(i) for i in (PAD, BOS, EOS, UNK)] == SPECIAL_TOKENS


def test_round_trip_german_english(tokenizer, multi30k_dir):
    # Validation lines: not in the training slice, so rarer words are split into pieces.
    texts = read_jsonl(multi30k_dir / "validation.jsonl", ("de", "en"), 200)
    assert_round_trip(tokenizer, texts)
    # A real joint BPE: common words take few tokens, far fewer than characters.
    ids = encode(tokenizer, texts)
    assert sum(map(len, ids)) < 0.5 * sum(map(len, texts))


def test_round_trip_korean(tokenizer, tatoeba_dir):
    texts = read_jsonl(tatoeba_dir / "validation.jsonl", ("ko", "en"), 150)
    texts.append("안녕하세요, 만나서 반가워요")
    assert_round_trip(tokenizer, texts)
    assert decode(tokenizer, encode(tokenizer, ["안녕하세요, 만나서 반가워요"])) == ["안녕하세요, 만나서 반가워요"]


@pytest.mark.parametrize("text", [
    "똠방각하 뷁 쀍",  # rare Hangul syllables
    "emoji 🦜🚀 and 龘",  # 4-byte UTF-8 and a rare CJK ideograph
    "Ωμέγα Ελληνικά, ☃ ∮",
])
def test_round_trip_unseen_characters_use_byte_fallback(tokenizer, text):
    unseen = [c for c in text if not c.isspace() and tokenizer.token_to_id(c) is None]
    assert unseen, "the case needs characters the tokenizer never saw"
    ids = encode(tokenizer, [text])[0]
    assert UNK not in ids
    assert decode(tokenizer, [ids]) == [normalize(tokenizer, text)] == [text]
    byte_ids = {tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    assert byte_ids & set(ids), "an unseen character must be spelled in byte tokens"


def test_round_trip_keeps_inner_whitespace(tokenizer):
    text = "tab\tand  double  space"
    assert decode(tokenizer, encode(tokenizer, [text])) == [text]


@pytest.mark.parametrize("text", [
    "ㅋㅋ 진짜요",  # Hangul compatibility jamo (NFKC would turn them into conjoining jamo)
    "Warte…",  # one ellipsis character (NFKC: three full stops)
    "100\u00a0km",  # a no-break space (NFKC: a plain space)
    "ＡＢＣ ﬁsh ①",  # full-width letters, a ligature, a circled digit
])
def test_round_trip_keeps_compatibility_characters(tokenizer, text):
    assert decode(tokenizer, encode(tokenizer, [text])) == [text]


def test_round_trip_is_up_to_nfc_and_outer_blanks(tokenizer):
    decomposed = "  Cafe\u0301 "  # e + combining acute: NFC composes it into one "é"
    assert normalize(tokenizer, decomposed) == "Café"
    assert decode(tokenizer, encode(tokenizer, [decomposed])) == ["Café"]


def test_literal_special_token_text_is_plain_text(tokenizer):
    text = "a </s> b <s> <pad> <unk> <0x41>"
    ids = encode(tokenizer, [text])[0]
    assert not {PAD, BOS, EOS, UNK} & set(ids)
    assert decode(tokenizer, [ids]) == [text]


def test_encode_adds_no_specials_and_decode_stops_at_eos(tokenizer):
    a, b = encode(tokenizer, ["Ein Hund.", "A dog."])
    assert not {PAD, BOS, EOS, UNK} & set(a + b)
    assert decode(tokenizer, [[BOS] + a + [EOS] + b + [PAD, PAD]]) == ["Ein Hund."]
    assert decode(tokenizer, [a + [PAD]]) == ["Ein Hund."]
    assert decode(tokenizer, [[EOS] + a]) == [""]


def test_load_tokenizer_round_trip(tokenizer, multi30k_dir):
    reloaded = load_tokenizer(tokenizer.to_str())
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    texts = read_jsonl(multi30k_dir / "test.jsonl", ("de", "en"), 50) + ["안녕하세요, 만나서 반가워요 🦜 </s>"]
    assert encode(reloaded, texts) == encode(tokenizer, texts)
    assert decode(reloaded, encode(reloaded, texts)) == [normalize(tokenizer, t) for t in texts]
    # Byte tokens are plain vocabulary, not special added tokens.
    added = [t["content"] for t in json.loads(reloaded.to_str())["added_tokens"]]
    assert added == SPECIAL_TOKENS


def test_trained_vocab_size_and_determinism(multi30k_dir, tokenizer):
    texts = read_jsonl(multi30k_dir / "train.jsonl", ("de", "en"), 300)
    a, b = train_tokenizer(texts, 400), train_tokenizer(texts, 400)
    assert a.get_vocab_size() == 400
    assert a.get_vocab() == b.get_vocab()
    assert tokenizer.get_vocab_size() == 2000


def test_load_tokenizer_rejects_foreign_special_ids():
    foreign = Tokenizer(models.BPE(unk_token="<unk>"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.train_from_iterator(["ein hund", "a dog"], trainers.BpeTrainer(
        vocab_size=50, special_tokens=["<unk>", "<pad>", "<s>", "</s>"], show_progress=False))
    with pytest.raises(ValueError, match="expected 0"):
        load_tokenizer(foreign.to_str())
