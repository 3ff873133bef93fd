"""`python -m pipeline export`: with --format hf-marian, transformers loads the directory and its
MarianMTModel computes the same logits and greedy translations as our model; with --format
ctranslate2, CTranslate2 translates (greedy and beam 4) token for token as ours does."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from pipeline.batching import pad
from pipeline.cli import main as cli_main
from pipeline.decoding import generate, greedy_decode, max_new_tokens
from pipeline.errors import UserError
from pipeline.export import export_ctranslate2
from pipeline.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, decode, encode, encode_sources
from pipeline.checkpoints import load_checkpoint
from pipeline.translator import Translator

import transformers  # the reference implementation (dev extra)
from helpers import tiny_checkpoint

try:
    import ctranslate2  # the CTranslate2 runtime (dev extra)
except ImportError:
    ctranslate2 = None
needs_ctranslate2 = pytest.mark.skipif(ctranslate2 is None, reason="ctranslate2 is not installed (pip install "
                                       "ctranslate2, or the dev extra): the CTranslate2 export is not checked")
# Sentences the tiny models never saw (outer spaces, a character outside the vocabulary, literal specials).
UNSEEN = ["  만나서 반가워요 ", "고양이가 좋아요 ☃", "literal </s> and <pad> are text", "오늘 날씨가 정말 좋네요"]


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_marian_export_translates_like_ours(tmp_path, tie):
    ckpt = tmp_path / "post.ckpt"
    pairs = tiny_checkpoint(ckpt, pre_norm=False, tie_embeddings=tie, attention_dropout=0.1, dropout=0.1)
    out = tmp_path / "marian"
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "hf-marian"])
    ours = load_checkpoint(ckpt)

    hf = transformers.MarianMTModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    bare = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))  # tokenizer.json alone
    assert hf.config.decoder_start_token_id == BOS and hf.config.pad_token_id == PAD
    assert (hf.model.encoder.embed_tokens.weight.data_ptr() == hf.lm_head.weight.data_ptr()) == tie

    # Unseen sentences too (with outer spaces and a character outside the vocabulary).
    sources = [p[0] for p in pairs] + ["  만나서 반가워요 ", "고양이가 좋아요 ☃", "literal </s> and <pad> are text"]
    ids = [row + [EOS] for row in encode(ours.tokenizer, sources)]
    src = pad(ids)
    for tok in (tokenizer, fast):
        assert tok(sources)["input_ids"] == ids  # source + </s>, as our collator builds it
    assert bare(sources[:-1])["input_ids"] == ids[:-1]  # (literal specials need split_special_tokens=True)
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    assert torch.equal(batch["input_ids"], src)

    # Teacher-forced logits on the references.
    tgt_in = pad([[BOS] + row for row in encode(ours.tokenizer, [p[1] for p in pairs] + ["hello"] * 3)])
    with torch.no_grad():
        expected = ours.model(src, tgt_in)
        got = hf(input_ids=src, attention_mask=batch["attention_mask"], decoder_input_ids=tgt_in,
                 decoder_attention_mask=(tgt_in != PAD).long()).logits
    real = tgt_in != PAD
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)

    # Greedy decoding, token for token.
    limit = int(max_new_tokens(src, ours.decoding.max_len_ratio, ours.decoding.max_len_extra).max())
    mine = greedy_decode(ours.model, src, limit).tolist()
    theirs = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=limit).tolist()

    def until_eos(row):
        return row[: row.index(EOS) + 1] if EOS in row else row

    assert [until_eos(r) for r in mine] == [until_eos(r[1:]) for r in theirs]
    assert all(r[0] == BOS for r in theirs)
    texts = decode(ours.tokenizer, mine)
    assert tokenizer.batch_decode(theirs, skip_special_tokens=True) == texts
    # The model is not degenerate: it reproduces what it was trained on.
    assert texts[: len(pairs)] == [p[1] for p in pairs]


def test_pre_norm_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "pre.ckpt"
    tiny_checkpoint(ckpt, steps=0)  # the default architecture: pre-norm
    out = tmp_path / "marian"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--model.pre_norm false" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_non_empty_output_needs_overwrite(tmp_path, capsys):
    ckpt = tmp_path / "post.ckpt"
    tiny_checkpoint(ckpt, steps=0, pre_norm=False)
    out = tmp_path / "marian"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    # --overwrite replaces an earlier export, never a directory with other files in it (a run
    # directory or `--out .` given by mistake).
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"])
    assert exit_info.value.code == 2 and "keep.txt" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out)])
    (out / "model.safetensors").write_bytes(b"stale")
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"])
    assert (out / "model.safetensors").read_bytes() != b"stale"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt", str(ckpt), "--out", str(out / "config.json")])
    assert exit_info.value.code == 2 and "is a file" in capsys.readouterr().err


def ctranslate2_tokens(checkpoint, sentences: list[str]) -> list[list[str]]:
    """What a CTranslate2 user passes: our subword tokens, without </s> (the model adds it)."""
    return [checkpoint.tokenizer.encode(s.strip(), add_special_tokens=False).tokens for s in sentences]


def ctranslate2_ids(checkpoint, result) -> list[int]:
    return [checkpoint.tokenizer.token_to_id(t) for t in result.hypotheses[0]]


def without_eos(row: list[int]) -> list[int]:
    """Our decoder's row without EOS and the padding after it (CTranslate2 returns neither)."""
    return [t for t in (row[: row.index(EOS)] if EOS in row else row) if t != PAD]


@needs_ctranslate2
@pytest.mark.parametrize("pre_norm, tie", [(True, True), (False, False)], ids=["pre-norm-tied", "post-norm-untied"])
def test_ctranslate2_export_translates_like_ours(tmp_path, pre_norm, tie):
    ckpt = tmp_path / "model.ckpt"
    pairs = tiny_checkpoint(ckpt, pre_norm=pre_norm, tie_embeddings=tie, attention_dropout=0.1, dropout=0.1)
    out = tmp_path / "ct2"
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--format", "ctranslate2"])
    ours = load_checkpoint(ckpt)

    vocab = json.loads((out / "shared_vocabulary.json").read_text(encoding="utf-8"))
    assert vocab[:4] == SPECIAL_TOKENS and len(vocab) == ours.config.vocab_size
    assert all(ours.tokenizer.token_to_id(token) == i for i, token in enumerate(vocab))  # ids unchanged
    sources = [p[0] for p in pairs[:6]] + UNSEEN
    tokens = ctranslate2_tokens(ours, sources)
    ids, _ = encode_sources(ours.tokenizer, sources)
    assert [[ours.tokenizer.token_to_id(t) for t in row] + [EOS] for row in tokens] == ids
    src = pad(ids)
    limits = max_new_tokens(src, ours.decoding.max_len_ratio, ours.decoding.max_len_extra).tolist()

    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    for beam in (1, 4):
        mine = generate(ours.model, src, ours.decoding, beam=beam, return_scores=True)
        # One sentence per call: CTranslate2 has one length limit per batch, ours one per sentence.
        theirs = [translator.translate_batch([row], beam_size=beam, max_decoding_length=limit, min_decoding_length=0,
                                             suppress_sequences=[["<pad>"], ["<s>"]],
                                             length_penalty=ours.decoding.length_penalty, return_scores=True)[0]
                  for row, limit in zip(tokens, limits)]
        assert [ctranslate2_ids(ours, r) for r in theirs] == [without_eos(row) for row in mine.tokens[:, 0].tolist()], \
            f"beam {beam}"
        torch.testing.assert_close(torch.tensor([r.scores[0] for r in theirs]), mine.scores[:, 0], atol=1e-4,
                                   rtol=1e-4)
        if beam == 1:
            texts = decode(ours.tokenizer, [ctranslate2_ids(ours, r) for r in theirs])
            assert texts == Translator(ours, beam=1).translate(sources)
            assert texts[:6] == [p[1] for p in pairs[:6]]  # not degenerate: it reproduces its training pairs
            # The README's use of an export: its own tokenizer.json, text in and text out.
            import tokenizers

            tokenizer = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
            tokenizer.encode_special_tokens = True
            assert [tokenizer.encode(s.strip()).tokens for s in sources] == tokens
            assert [tokenizer.decode([tokenizer.token_to_id(t) for t in r.hypotheses[0]]) for r in theirs] == texts

    # Weights stored as int8: smaller, and this overfitted model still translates its training pairs.
    out8 = tmp_path / "ct2-int8"
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out8), "--format", "ctranslate2", "--quantization", "int8"])
    assert (out8 / "model.bin").stat().st_size < 0.7 * (out / "model.bin").stat().st_size  # (positions, norms: fp32)
    int8 = ctranslate2.Translator(str(out8), device="cpu", intra_threads=1)
    results = int8.translate_batch(tokens[:6], beam_size=1, min_decoding_length=0,
                                   suppress_sequences=[["<pad>"], ["<s>"]])
    assert decode(ours.tokenizer, [ctranslate2_ids(ours, r) for r in results]) == [p[1] for p in pairs[:6]]


@needs_ctranslate2
def test_ctranslate2_stops_at_our_length_limit(tmp_path):
    """An untrained model rarely ends a sentence, so every row runs to its limit: CTranslate2's
    max_decoding_length counts what ours counts (greedy, per sentence)."""
    ckpt = tmp_path / "random.ckpt"
    tiny_checkpoint(ckpt, steps=0)
    ours = load_checkpoint(ckpt)
    out = tmp_path / "ct2"
    export_ctranslate2(ours, out)
    sources = UNSEEN + ["안녕하세요, 만나서 반가워요"]
    ids, _ = encode_sources(ours.tokenizer, sources)
    src = pad(ids)
    limits = max_new_tokens(src, ours.decoding.max_len_ratio, ours.decoding.max_len_extra).tolist()
    mine = [without_eos(row) for row in greedy_decode(ours.model, src, torch.tensor(limits)).tolist()]
    assert sum(len(row) == limit for row, limit in zip(mine, limits)) >= len(sources) - 1, "rows must hit the limit"
    translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
    theirs = [ctranslate2_ids(ours, translator.translate_batch([row], beam_size=1, max_decoding_length=limit,
                                                              min_decoding_length=0,
                                                              suppress_sequences=[["<pad>"], ["<s>"]])[0])
              for row, limit in zip(ctranslate2_tokens(ours, sources), limits)]
    assert theirs == mine


def test_ctranslate2_export_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    ckpt = tmp_path / "model.ckpt"
    tiny_checkpoint(ckpt, steps=0)
    for name in [m for m in sys.modules if m == "ctranslate2" or m.startswith("ctranslate2.")] + ["ctranslate2"]:
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install ctranslate2"):
        export_ctranslate2(load_checkpoint(ckpt), tmp_path / "out")
    assert not (tmp_path / "out").exists()
