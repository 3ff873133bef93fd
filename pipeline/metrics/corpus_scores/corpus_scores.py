"""Corpus BLEU and chrF from sacreBLEU, as an `evaluate` module shipped with the project.

The hub's "sacrebleu" module cannot be downloaded offline, so this one is loaded by path.
Scores are computed on detokenized, cased text unless lowercase=True.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "sacreBLEU corpus BLEU and chrF with their signatures (one reference per hypothesis)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of hypothesis strings.
    references: list of reference strings, one per prediction.
    lowercase: score case-insensitively (default False).
Returns:
    bleu, chrf, bleu_signature, chrf_signature, and BLEU's precisions, bp, sys_len, ref_len.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CorpusScores(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, lowercase=False):
        bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
        chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
        bleu_score = bleu.corpus_score(predictions, [references])
        chrf_score = chrf.corpus_score(predictions, [references])
        return {
            "bleu": bleu_score.score,
            "chrf": chrf_score.score,
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()),
            "precisions": bleu_score.precisions,
            "bp": bleu_score.bp,
            "sys_len": bleu_score.sys_len,
            "ref_len": bleu_score.ref_len,
        }
