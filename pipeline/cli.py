"""Command line: `python -m pipeline fit|validate|test` (LightningCLI) and
`python -m pipeline evaluate|translate` (a trained checkpoint on new text)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pipeline.errors import UserError

USAGE = """usage: python -m pipeline COMMAND ...

commands:
  fit | validate | test   train or check a model (LightningCLI: --config configs/NAME.yaml, --help)
  evaluate                BLEU/chrF of a checkpoint on a dataset split
  translate               translate stdin (one sentence a line) or --text
  average                 average the weights of several checkpoints
  attention               attention heatmaps (PNG) of a checkpoint on one sentence
  export                  write a Hugging Face MarianMT directory
"""


def lightning_cli(args: list[str]) -> None:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger, WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    from pipeline.attention_maps import AttentionImageCallback
    from pipeline.checkpoints import AtomicCheckpointIO

    from pipeline.datamodule import TranslationDataModule
    from pipeline.module import TranslationModule

    class TranslationCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run.name", type=str | None, default=None,
                                help="run directory runs/<name> (default: the config file's name)")
            parser.add_argument("--run.root", type=str, default="runs", help="folder that holds the runs")
            parser.add_argument("--run.overwrite", type=bool, default=False,
                                help="replace an existing run directory instead of refusing")
            parser.add_argument("--run.logger", type=Literal["wandb", "csv"], default="wandb",
                                help="wandb (offline unless WANDB_MODE says otherwise) or csv")
            parser.add_argument("--run.wandb_project", type=str, default="pipeline-nmt", help="W&B project")
            parser.add_argument("--checkpoint.every_n_train_steps", type=int | None, default=None,
                                help="also write last.ckpt every N steps (mid-epoch resume points)")
            parser.add_argument("--checkpoint.keep_epochs", type=int, default=0,
                                help="keep the checkpoints of the last K epochs (for `average`)")
            parser.add_argument("--checkpoint.early_stop_patience", type=int | None, default=None,
                                help="stop after this many validations without a better val/bleu")
            parser.add_argument("--run.attention_text", type=str | None, default=None,
                                help="W&B runs: sentence whose cross-attention image is logged after each "
                                     "validation (default: one from the first validation batch)")
            parser.link_arguments("data.vocab_size", "model.vocab_size")

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand]
            configs = cfg.get("config") or []
            name = cfg.run.name or (Path(str(configs[-1])).stem if configs else "default")
            self.run_dir = Path(cfg.run.root) / name
            cfg.data.tokenizer_file = str(self.run_dir / "tokenizer.json")
            if rank_zero_only.rank != 0:  # DDP workers re-run this CLI; rank 0 owns the run directory
                return
            if self.subcommand == "fit" and self.run_dir.exists() and cfg.get("ckpt_path") is None:
                if not cfg.run.overwrite:
                    raise UserError(f"run directory {self.run_dir} already exists: resume with --ckpt_path last, "
                                    "pick another --run.name, or pass --run.overwrite true")
                shutil.rmtree(self.run_dir)
            if self.subcommand == "fit" and cfg.get("ckpt_path") == "last" and not \
                    (self.run_dir / "checkpoints" / "last.ckpt").exists():
                raise UserError(f"--ckpt_path last: no {self.run_dir}/checkpoints/last.ckpt to resume from")
            self.run_dir.mkdir(parents=True, exist_ok=True)
            print(f"run directory: {self.run_dir}", flush=True)

        def instantiate_trainer(self, **kwargs):
            cfg = self.config_init[self.subcommand]
            ckpt_dir = self.run_dir / "checkpoints"
            callbacks = list(cfg.trainer.get("callbacks") or [])
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/bleu", mode="max",
                                             save_top_k=1, save_last=True, auto_insert_metric_name=False,
                                             enable_version_counter=False))
            if cfg.checkpoint.every_n_train_steps:
                callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                                 every_n_train_steps=cfg.checkpoint.every_n_train_steps))
            if cfg.checkpoint.keep_epochs:
                callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", monitor="epoch",
                                                 mode="max", save_top_k=cfg.checkpoint.keep_epochs,
                                                 auto_insert_metric_name=False))
            if cfg.checkpoint.early_stop_patience is not None:
                callbacks.append(EarlyStopping(monitor="val/bleu", mode="max",
                                               patience=cfg.checkpoint.early_stop_patience))
            if cfg.run.logger == "wandb":
                callbacks.append(AttentionImageCallback(text=cfg.run.attention_text))
                logger = WandbLogger(project=cfg.run.wandb_project, name=self.run_dir.name,
                                     save_dir=str(self.run_dir))
            else:
                logger = CSVLogger(save_dir=str(self.run_dir), name="", version="")
            plugins = list(cfg.trainer.get("plugins") or []) + [AtomicCheckpointIO()]
            return super().instantiate_trainer(callbacks=callbacks, logger=logger, plugins=plugins, **kwargs)

    cli = TranslationCLI(TranslationModule, TranslationDataModule, args=args, save_config_kwargs={"overwrite": True},
                         trainer_defaults={"use_distributed_sampler": False})
    if rank_zero_only.rank == 0:
        print(f"run directory: {cli.run_dir}", flush=True)


def evaluate(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline evaluate",
                                description="Translate a dataset split and score it with sacreBLEU.")
    p.add_argument("--ckpt", required=True, help="checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt")
    p.add_argument("--data", required=True, help="dataset directory, hub id, or .jsonl file")
    p.add_argument("--split", default=None, help="split name (not needed for a .jsonl file)")
    p.add_argument("--out", required=True, help="output directory for metrics.json and hypotheses.txt")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--length-penalty", type=float, default=None, help="beam length penalty (default: the model's)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per batch")
    p.add_argument("--max-tokens", type=int, default=8192, help="source tokens per batch")
    args = p.parse_args(argv)
    from pipeline.data import load_split
    from pipeline.metrics import corpus_scores
    from pipeline.translator import Translator, load_module

    module = load_module(args.ckpt)
    if args.length_penalty is not None:
        module.hparams.length_penalty = args.length_penalty
    src_lang, tgt_lang = module.languages
    if args.split is None and not args.data.endswith(".jsonl"):
        raise UserError(f"--split is required for {args.data} (e.g. --split test)")
    pairs = load_split(args.data, args.split, src_lang, tgt_lang)
    translator = Translator(module, args.beam, args.max_tokens, batch_size=args.batch_size)
    start = time.perf_counter()
    hyps = translator.translate(pairs["src"])
    seconds = time.perf_counter() - start
    scores = corpus_scores(hyps, pairs["tgt"])
    lower = corpus_scores(hyps, pairs["tgt"], lowercase=True)
    metrics = {
        "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2), "signature": scores["bleu_signature"],
        "chrf_signature": scores["chrf_signature"], "bleu_lowercase": round(lower["bleu"], 2),
        "n": len(hyps), "data": args.data, "split": args.split, "src_lang": src_lang, "tgt_lang": tgt_lang,
        "beam": args.beam, "length_penalty": module.hparams.length_penalty, "ckpt": args.ckpt,
        "truncated": translator.truncated, "seconds": round(seconds, 2),
        "sentences_per_sec": round(len(hyps) / seconds, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypotheses.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  (lowercased BLEU {metrics['bleu_lowercase']:.2f}) "
          f"on {metrics['n']} sentences, beam {args.beam}; {metrics['signature']}")
    print(f"wrote {out / 'metrics.json'} and {out / 'hypotheses.txt'}")


def translate(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline translate",
                                description="Translate sentences from stdin (one a line) or --text.")
    p.add_argument("--ckpt", required=True, help="checkpoint, e.g. runs/multi30k/checkpoints/best.ckpt")
    p.add_argument("--text", default=None, help="one sentence to translate instead of stdin")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per batch")
    p.add_argument("--show-beams", action="store_true",
                   help="print every beam hypothesis as 'score<TAB>text' (best first), then a blank line")
    args = p.parse_args(argv)
    from pipeline.data import read_lines
    from pipeline.translator import Translator, load_module

    translator = Translator(load_module(args.ckpt), args.beam, batch_size=args.batch_size)

    def show(lines: list[str]) -> None:
        if not args.show_beams:
            for hyp in translator.translate(lines):
                print(hyp, flush=True)
            return
        for line in lines:
            for hyp, score in translator.nbest(line) if line.strip() else [("", 0.0)]:
                print(f"{score:.4f}\t{hyp}")
            print(flush=True)

    if args.text is not None:
        show([args.text])
    elif sys.stdin.isatty():
        print("type a sentence and press Enter (Ctrl-D to quit)", file=sys.stderr)
        for line in sys.stdin:
            show([line.rstrip("\n")])
    else:
        show(read_lines("/dev/stdin"))
    if translator.truncated:
        print(f"warning: {translator.truncated} input line(s) longer than {translator.max_src_tokens} tokens "
              "were truncated", file=sys.stderr)


COMMANDS = {"evaluate": evaluate, "translate": translate}
# Commands that live in their own module, each with a `main(argv)`; imported only when used.
MODULE_COMMANDS = {
    "average": "pipeline.checkpoints",
    "attention": "pipeline.attention_maps",
    "export": "pipeline.export",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_MODE", "offline")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        if argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        elif argv[0] in MODULE_COMMANDS:
            importlib.import_module(MODULE_COMMANDS[argv[0]]).main(argv[1:])
        else:
            lightning_cli(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
