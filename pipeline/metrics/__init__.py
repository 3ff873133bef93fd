"""Translation quality: sacreBLEU BLEU and chrF through the local `evaluate` module."""

from __future__ import annotations

from functools import cache
from pathlib import Path

MODULE_DIR = Path(__file__).parent / "corpus_scores"


@cache
def _metric():
    import evaluate  # slow import; only commands that score pay for it

    return evaluate.load(str(MODULE_DIR))


def corpus_scores(hypotheses: list[str], references: list[str], lowercase: bool = False) -> dict:
    """Corpus BLEU / chrF (0-100) and signatures of detokenized hypotheses against references."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return _metric().compute(predictions=hypotheses, references=references, lowercase=lowercase)
