"""The commands that work on a trained run or checkpoint, as typed functions: their signatures
and docstrings are their command-line options and help (the table in cli.py dispatches here).
Heavy imports happen inside each command, so `python -m pipeline --help` stays fast."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pipeline.errors import UserError

def finalize(run: str) -> None:
    """Choose the checkpoint (best, or an average of the newest epochs) and the decoding (beam,
    length penalty) on validation, score the test split once, write RUN/results.json and
    RUN/checkpoints/final.ckpt. `fit` does this itself when it ends; run it again for a run
    that was resumed or cut short.

    Args:
        run: run directory, e.g. runs/multi30k (uses its config.yaml for the data and final sections).
    """
    import yaml

    from pipeline.datamodule import TranslationDataModule
    from pipeline.finalize import FinalConfig
    from pipeline.training import run_finalize

    config_file = Path(run) / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"no {config_file}: pass a run directory written by `python -m pipeline fit`")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise UserError(f"{config_file} has no data: section: pass a run directory written by `python -m pipeline fit`")
    try:
        datamodule = TranslationDataModule(**config["data"])
        final = FinalConfig(**(config.get("final") or {}))
    except (TypeError, ValueError) as e:  # a key this version does not know, a value out of range
        raise UserError(f"{config_file}: {e}: fix that setting") from None
    run_finalize(Path(run), datamodule, final, argv=["finalize", "--run", run])


def output_directory(out: str | Path) -> Path:
    """`out`, checked before any work (so that a wrong --out fails in a second, not after a
    whole split has been decoded) but made only when there is something to write into it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a directory for the results")
    return out


def evaluate(ckpt: str, data: str, out: str, split: str | None = None, name: str | None = None,
             beam: int | None = None, length_penalty: float | None = None, batch_size: int = 128,
             max_tokens: int = 8192, quantize: str | None = None, workers: int | None = None) -> None:
    """Translate a dataset split and score it with sacreBLEU (BLEU, chrF); writes
    OUT/metrics.json and OUT/hypotheses.txt.

    Args:
        ckpt: checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt.
        data: dataset directory, hub id, parallel text prefix (corpus/test for test.de + test.en), or a
            .jsonl/.tsv/.csv/.parquet file or glob pattern.
        out: output directory for metrics.json and hypotheses.txt.
        split: split name, e.g. test (not needed for a file, prefix or pattern).
        name: dataset config name of a hub id (e.g. de-en for wmt/wmt14).
        beam: beam size (1 = greedy; default: the run's decoding.beam).
        length_penalty: beam length penalty (default: the run's decoding.length_penalty).
        batch_size: sentences per batch.
        max_tokens: source tokens per batch.
        quantize: decode in lower precision: int8 (linear layers; CPU only) or bf16 (README, Speed).
        workers: processes decoding batches side by side, one thread each (default: one per CPU
            thread; 1 on a GPU); the translations are the same.
    """
    from pipeline.data import load_split, single_split
    from pipeline.metrics import corpus_scores
    from pipeline.translator import Translator

    out_dir = output_directory(out)
    translator = Translator.from_checkpoint(ckpt, beam=beam, length_penalty=length_penalty, device="auto",
                                            batch_size=batch_size, max_tokens=max_tokens, quantize=quantize,
                                            workers=workers)
    src_lang, tgt_lang = translator.languages
    if single_split(data, src_lang, tgt_lang):
        if split is not None:  # (make evaluate always passes one)
            print(f"note: --split {split} ignored: {data} is one split", file=sys.stderr)
        split = None  # a file, prefix or pattern is its own split
    elif split is None:
        raise UserError(f"--split is required for {data} (e.g. --split test)")
    pairs = load_split(data, split, src_lang, tgt_lang, name=name)
    empty = [i for i, reference in enumerate(pairs["tgt"]) if not reference.strip()]
    if empty:  # (a missing field reads as ""): scored, it would lower BLEU for nothing the model did
        raise UserError(f"{len(empty)} of {len(pairs)} references in {data}{f' [{split}]' if split else ''} are empty "
                        f"or missing (the first: row {empty[0] + 1}): drop those pairs or fix the data")
    start = time.perf_counter()
    hyps = translator.translate(pairs["src"])
    seconds = time.perf_counter() - start
    scores = corpus_scores(hyps, pairs["tgt"])
    lower = corpus_scores(hyps, pairs["tgt"], lowercase=True)
    decoding = translator.decoding
    metrics = {
        "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2), "signature": scores["bleu_signature"],
        "chrf_signature": scores["chrf_signature"], "bleu_lowercase": round(lower["bleu"], 2),
        "n": len(hyps), "data": data, "split": split, "src_lang": src_lang, "tgt_lang": tgt_lang,
        "beam": decoding.beam, "length_penalty": decoding.length_penalty, "quantize": quantize, "ckpt": ckpt,
        "workers": translator.workers_used,
        "truncated": translator.truncated, "seconds": round(seconds, 2),
        "sentences_per_sec": round(len(hyps) / seconds, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "hypotheses.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  (lowercased BLEU {metrics['bleu_lowercase']:.2f}) "
          f"on {metrics['n']} sentences, beam {decoding.beam}; {metrics['signature']}")
    print(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'hypotheses.txt'}")


def translate(ckpt: str, text: str | None = None, beam: int | None = None, length_penalty: float | None = None,
              batch_size: int = 128, max_tokens: int = 8192, show_beams: bool = False, quantize: str | None = None,
              workers: int | None = None, buffer_size: int = 10000) -> None:
    """Translate sentences from stdin (one a line; a prompt when stdin is a terminal) or --text.

    Args:
        ckpt: checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt.
        text: one sentence to translate instead of stdin.
        beam: beam size (1 = greedy; default: the run's decoding.beam).
        length_penalty: beam score = log p / length^length_penalty (default: the run's).
        batch_size: sentences per batch.
        max_tokens: source tokens per batch (longest sentence x batch size).
        show_beams: print every beam hypothesis as 'score<TAB>text' (best first), then a blank line.
        quantize: decode in lower precision: int8 (linear layers; CPU only) or bf16.
        workers: processes decoding batches side by side, one thread each (default: one per CPU
            thread; 1 on a GPU); used when the input makes more than one batch.
        buffer_size: lines of piped input read, sorted into batches and translated together; their
            translations are printed before the next lines are read (a large file streams through
            in bounded memory, its first lines come out early).
    """
    if buffer_size < 1:
        raise UserError(f"--buffer_size must be >= 1, got {buffer_size}")
    from pipeline.translator import Translator

    translator = Translator.from_checkpoint(ckpt, beam=beam, device="auto", batch_size=batch_size,
                                            max_tokens=max_tokens, length_penalty=length_penalty, quantize=quantize,
                                            workers=workers)

    def show(lines: list[str]) -> None:
        if not show_beams:
            for hyp in translator.translate(lines):
                print(hyp, flush=True)
            return
        for line in lines:
            for hyp, score in translator.nbest(line):
                print(f"{score:.4f}\t{hyp}")
            print(flush=True)

    if text is not None:
        show([text])
    elif sys.stdin.isatty():
        print("type a sentence and press Enter (Ctrl-D to quit)", file=sys.stderr)
        for line in sys.stdin:
            show([line.rstrip("\n")])
    else:
        # The bytes, so that a line that is not UTF-8 gets a clear error (a replaced sys.stdin may
        # be text only: its lines are read as they are)
        stream = getattr(sys.stdin, "buffer", None) or (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        for lines in read_chunks(stream, buffer_size):
            show(lines)
    if translator.truncated:
        print(f"warning: {translator.truncated} input line(s) longer than {translator.max_src_tokens} tokens "
              "were truncated", file=sys.stderr)


def read_chunks(stream: Iterable[bytes], lines: int, name: str = "stdin") -> Iterator[list[str]]:
    """The lines of a UTF-8 byte stream, `lines` at a time as they arrive, or a clear error at
    the first line that is not UTF-8 (the chunks before it have been handed out by then).

    One sentence a line: split at "\\n" only, a "\\r" before it dropped (Windows files; a file
    of old Mac line ends, "\\r" alone, is one line), a UTF-8 byte-order mark at the start dropped."""
    chunk = []
    for number, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            chunk.append(line.removesuffix("\n").removesuffix("\r"))
        except UnicodeDecodeError as e:
            raise UserError(f"{name} line {number} is not UTF-8 text (byte {e.start}): convert it, "
                            "e.g. iconv -t UTF-8") from None
        if len(chunk) == lines:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def average(out: str, ckpts: list[str] | None = None, run: str | None = None, last: int = 5,
            overwrite: bool = False) -> None:
    """Average the weights of several checkpoints of one run into one checkpoint.

    Args:
        out: output checkpoint, e.g. runs/multi30k/checkpoints/avg.ckpt.
        ckpts: checkpoint files to average (or --run).
        run: run directory: average its newest --last epoch checkpoints.
        last: with --run: how many of the newest epoch checkpoints.
        overwrite: replace an existing --out file.
    """
    from pipeline.checkpoints import average_checkpoints, epoch_checkpoints

    if (not ckpts) == (run is None):
        raise UserError("pass exactly one of --ckpts A B C or --run runs/NAME")
    paths = ckpts if ckpts else epoch_checkpoints(run, last)
    average_checkpoints(paths, out, overwrite)
    print(f"averaged {len(paths)} checkpoints -> {out}")


def attention(ckpt: str, text: str, out: str, target: str | None = None, dpi: int = 100) -> None:
    """Draw the attention weights of a checkpoint on one sentence as PNG heatmaps: encoder
    self-attention, decoder (causal) self-attention and cross-attention, per layer with every
    head and the head average.

    Args:
        ckpt: checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt.
        text: source sentence.
        out: output directory for the PNG files and tokens.json.
        target: target sentence to feed the decoder (default: the model's own greedy translation).
        dpi: PNG resolution.
    """
    from pipeline.attention_maps import compute_attention
    from pipeline.checkpoints import load_checkpoint
    from pipeline.plotting import write_heatmaps

    if target is not None and not target.strip():
        raise UserError("--target is empty: pass a target sentence or leave --target out to use the translation")
    if not 10 <= dpi <= 1000:
        raise UserError(f"--dpi must be between 10 and 1000, got {dpi}")
    output_directory(out)
    checkpoint = load_checkpoint(ckpt)
    maps = compute_attention(checkpoint.model, checkpoint.tokenizer, text, target, checkpoint.decoding)
    written = write_heatmaps(maps, out, dpi)
    print(f"source: {' '.join(maps.src_tokens)}")
    print(f"target: {maps.target}" + ("" if target is not None else "  (greedy translation)"))
    print(f"wrote {len(written)} PNG files and tokens.json to {out}")


def export(ckpt: str, out: str, format: Literal["hf-marian", "ctranslate2"] = "hf-marian", overwrite: bool = False,
           quantization: Literal["int8", "int8_float32", "int16", "float16", "bfloat16", "float32"] | None = None
           ) -> None:
    """Write a checkpoint in another framework's format. hf-marian: a Hugging Face
    MarianMTModel directory (post-norm checkpoints only, i.e. trained with --model.pre_norm false).
    ctranslate2: a CTranslate2 model directory (pre- and post-norm; needs pip install ctranslate2).

    Args:
        ckpt: checkpoint, e.g. runs/NAME/checkpoints/best.ckpt.
        out: output directory.
        format: export format.
        overwrite: replace a non-empty output directory.
        quantization: ctranslate2 only: store the weights in this type (default float32).
    """
    from pipeline.checkpoints import load_checkpoint
    from pipeline.export import export_ctranslate2, export_hf_marian

    if format == "ctranslate2":
        written = export_ctranslate2(load_checkpoint(ckpt), out, overwrite, quantization)
        print(f"wrote {', '.join(p.name for p in written)} to {out}")
        print(f"load with: ctranslate2.Translator({out!r}); give it subword tokens from {out}/tokenizer.json "
              "(README: Export), it appends </s> itself")
        return
    if quantization is not None:
        raise UserError("--quantization applies to --format ctranslate2 only")
    written = export_hf_marian(load_checkpoint(ckpt), out, overwrite)
    print(f"wrote {', '.join(p.name for p in written)} to {out}")
    print(f"load with: MarianMTModel.from_pretrained({out!r}), AutoTokenizer.from_pretrained({out!r})")




def sweep(sweep: str, trials: int | None = None, root: str = "runs/sweeps") -> None:
    """Search a recipe with Optuna: trials sampled from a sweep file's space, each a `fit`
    of its base config, pruned on validation BLEU, resumable; prints and writes a leaderboard.

    Args:
        sweep: sweep file, e.g. configs/sweeps/multi30k.yaml.
        trials: trials in all (default: the file's); a resumed sweep runs only the missing ones.
        root: folder of the sweeps (each in <root>/<name>/ with study.db and leaderboard.json).
    """
    from pipeline.sweep import run_sweep

    run_sweep(sweep, trials, root)
