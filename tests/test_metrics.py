"""Corpus BLEU and chrF through the shipped `evaluate` module equal sacreBLEU's own."""

import pytest
import sacrebleu

from pipeline.metrics import corpus_scores

HYPS = ["The cat sat on the mat.", "A dog runs through the snow!", "two men , playing chess"]
REFS = ["The cat is sitting on the mat.", "A dog is running through the snow.", "Two men are playing chess."]


def test_scores_equal_sacrebleu():
    scores = corpus_scores(HYPS, REFS)
    bleu = sacrebleu.corpus_bleu(HYPS, [REFS])
    chrf = sacrebleu.corpus_chrf(HYPS, [REFS])
    assert scores["bleu"] == pytest.approx(bleu.score) and scores["chrf"] == pytest.approx(chrf.score)
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert 0 < scores["bleu"] < 100


def test_lowercase_and_perfect_and_mismatched_lengths():
    lower = corpus_scores(HYPS, REFS, lowercase=True)
    assert lower["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True).score)
    assert lower["bleu"] > corpus_scores(HYPS, REFS)["bleu"]  # "two men" now matches "Two men"
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="3 hypotheses for 2 references"):
        corpus_scores(HYPS, REFS[:2])
