"""`python -m pipeline export --format hf-marian`: transformers loads the directory and its
MarianMTModel computes the same logits and greedy translations as our model."""

from __future__ import annotations


import pytest
import torch

from pipeline.batching import pad
from pipeline.cli import main as cli_main
from pipeline.decoding import greedy_decode, max_new_tokens
from pipeline.tokenizer import BOS, EOS, PAD, decode, encode
from pipeline.checkpoints import load_checkpoint

import transformers  # the reference implementation (dev extra)
from helpers import tiny_checkpoint



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
    cli_main(["export", "--ckpt", str(ckpt), "--out", str(out), "--overwrite"])
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
