"""After training: choose the checkpoint and the decoding on validation, score test once.

    python -m pipeline finalize --run runs/multi30k      # `fit` runs this itself when it ends

1. Candidates: best.ckpt (best validation BLEU) and the averages of the newest k epoch
   checkpoints (k = 2 .. checkpoint.keep_epochs), each scored greedily on validation.
2. Decoding: the winner is scored on validation at every beam × length penalty of the grid.
3. The chosen weights and decoding are written to checkpoints/final.ckpt (self-contained:
   `evaluate` with no --beam reproduces the test figure from it), then the test split is
   translated once and runs/<name>/results.json written.

Nothing is chosen on test: it is read after every choice is made.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.checkpoints import average_checkpoints, load_checkpoint, read_checkpoint, save_checkpoint
from pipeline.errors import UserError
from pipeline.metrics import corpus_scores
from pipeline.provenance import git_commit
from pipeline.translator import Translator


@dataclass
class FinalConfig:
    """What `fit` does when training ends: the `final:` section.

    Args:
        enabled: choose checkpoint and decoding on validation, then score test (results.json).
        beams: beam sizes tried on validation.
        length_penalties: length penalties tried on validation (for beams > 1).
        max_average: average at most this many of the newest epoch checkpoints (they must be
            kept: checkpoint.keep_epochs); 0: no averages.
    """

    enabled: bool = True
    beams: list[int] = field(default_factory=lambda: [1, 4, 5])
    length_penalties: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0])
    max_average: int = 10

    def __post_init__(self):
        if not self.beams or min(self.beams) < 1:
            raise ValueError(f"final.beams must be beam sizes >= 1, got {self.beams}")
        if not self.length_penalties or min(self.length_penalties) < 0:
            raise ValueError(f"final.length_penalties must be >= 0, got {self.length_penalties}")
        if self.max_average < 0:
            raise ValueError(f"final.max_average must be >= 0 (0: no averages), got {self.max_average}")


def score(translator: Translator, pairs) -> dict:
    """BLEU, chrF and signature of a translator on a split's pairs (columns src, tgt)."""
    scores = corpus_scores(translator.translate(pairs["src"]), pairs["tgt"])
    return {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2), "signature": scores["bleu_signature"]}


def finalize(run_dir: str | Path, validation, test, config: FinalConfig | None = None, log=print,
             **extra) -> dict:
    """Run the selection above for a run directory; `validation` and `test` are pair datasets
    (columns src, tgt; test may be None). Returns what it writes to results.json."""
    config = config or FinalConfig()
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    start = time.perf_counter()
    if not (ckpt_dir / "best.ckpt").is_file():
        raise UserError(f"no {ckpt_dir}/best.ckpt: finalize a run that has validated at least once")
    epochs = sorted(ckpt_dir.glob("epoch*.ckpt"))[-config.max_average:] if config.max_average > 0 else []
    candidates = {"best": ckpt_dir / "best.ckpt"}
    for k in range(2, len(epochs) + 1):
        path = ckpt_dir / f"avg-last{k}.ckpt"
        average_checkpoints(epochs[-k:], path, overwrite=True)  # (a finalize run again redoes them)
        candidates[f"average of the last {k} epochs"] = path
    found = {}
    for name, path in candidates.items():
        # workers=1 here and below: `fit` finalizes in its own process, beside Lightning's, W&B's and
        # perhaps DDP's threads, which forked decoding workers (pipeline.workers) are better kept from.
        found[name] = score(Translator(load_checkpoint(path, "auto"), beam=1, workers=1), validation)
        log(f"final: {name}: validation BLEU {found[name]['bleu']:.2f} (greedy)")
    chosen = max(found, key=lambda n: found[n]["bleu"])  # ties: the first, best.ckpt
    checkpoint = load_checkpoint(candidates[chosen], "auto")
    grid = []
    for beam in config.beams:
        for alpha in (config.length_penalties if beam > 1 else [checkpoint.decoding.length_penalty]):
            scores = found[chosen] if beam == 1 else score(
                Translator(checkpoint, beam=beam, length_penalty=alpha, workers=1), validation)
            grid.append({"beam": beam, "length_penalty": alpha, **scores})
            log(f"final: beam {beam}, length penalty {alpha}: validation BLEU {scores['bleu']:.2f}")
    best = max(grid, key=lambda g: g["bleu"])  # ties: the first (smaller beam)
    decoding = replace(checkpoint.decoding, beam=best["beam"], length_penalty=best["length_penalty"])
    raw = read_checkpoint(candidates[chosen])
    hparams = raw["hyper_parameters"] | {"decoding": {**raw["hyper_parameters"]["decoding"],
                                                      "beam": decoding.beam,
                                                      "length_penalty": decoding.length_penalty}}
    final = save_checkpoint(ckpt_dir / "final.ckpt", raw["state_dict"], hparams, checkpoint.tokenizer,
                            checkpoint.languages, chosen_from=chosen,
                            **{k: raw[k] for k in ("epoch", "global_step") if k in raw})
    for path in candidates.values():
        if path.name.startswith("avg-last"):
            path.unlink()
    test_scores = score(Translator.from_checkpoint(final, workers=1), test) if test is not None else None
    results = {"validation": {k: best[k] for k in ("bleu", "chrf", "signature")}, "test": test_scores,
               "checkpoint": str(final), "chosen_from": chosen, "beam": decoding.beam,
               "length_penalty": decoding.length_penalty, "candidates": found, "grid": grid,
               "commit": git_commit(), "finalize_s": round(time.perf_counter() - start, 1), **extra}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    test_text = f"test BLEU {test_scores['bleu']:.2f} chrF {test_scores['chrf']:.2f}" if test_scores else "no test split"
    log(f"final: {test_text} (validation BLEU {best['bleu']:.2f}) with {final}: {chosen}, beam {decoding.beam}, "
        f"length penalty {decoding.length_penalty}; wrote {run_dir / 'results.json'}")
    return results
