"""Training through LightningCLI: `fit`, `validate` and `test` over the typed config groups
(model, train, decoding, data, run, checkpoint, final), and the `final:` step that ends a fit.

The command table in cli.py dispatches here; the sweep (sweep.py) runs its trials through
`lightning_cli` too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
import warnings
from argparse import ArgumentError
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import UserError, option_error

STARTED = time.monotonic()  # the run's wall time in results.json counts from here


# -- typed groups of the training commands --------------------------------------------------
@dataclass
class RunConfig:
    """Where a training run writes: the `run:` section.

    Args:
        name: run directory runs/<name> (default: the config file's name).
        root: folder that holds the runs.
        overwrite: replace an existing run directory instead of refusing.
        logger: wandb (offline unless WANDB_MODE says otherwise) or csv.
        wandb_project: W&B project.
        wandb_group: W&B group (a sweep groups its trials under its name).
        attention_text: W&B runs: sentence whose cross-attention image is logged after each
            validation (default: one from the first validation batch).
    """

    name: str | None = None
    root: str = "runs"
    overwrite: bool = False
    logger: Literal["wandb", "csv"] = "wandb"
    wandb_project: str = "pipeline-nmt"
    wandb_group: str | None = None
    attention_text: str | None = None


@dataclass
class CheckpointConfig:
    """Which checkpoints a training run keeps: the `checkpoint:` section (best.ckpt by
    validation BLEU and last.ckpt are always written).

    Args:
        every_n_train_steps: also write last.ckpt every N steps (mid-epoch resume points).
        keep_epochs: keep the checkpoints of the last K epochs (for `average`).
        early_stop_patience: stop after this many validations without a better val/bleu.
    """

    every_n_train_steps: int | None = None
    keep_epochs: int = 0
    early_stop_patience: int | None = None


CKPT_PATH_HELP = {  # [fit?]: --ckpt_path's help (TranslationCLI.parse_arguments)
    False: "the checkpoint to score: a .ckpt file, or best / last for runs/NAME/checkpoints/{best,last}.ckpt of the "
           "run --config (and --run.name) name",
    True: "resume this run from a checkpoint: last (runs/NAME/checkpoints/last.ckpt) or a .ckpt file; the data and "
          "model settings must be the run's own (--config runs/NAME/config.yaml)",
}

# What a resumed run must share with its first part: the data it reads (its tokenizer was trained
# on that data, and the checkpoint's languages are these) and the whole model: section.
RESUME_DATA_KEYS = ("path", "name", "src_lang", "tgt_lang", "vocab_size", "train_split")


def check_resume_settings(run_dir: Path, cfg) -> None:
    """A one-line UserError where `fit --ckpt_path ...` into an existing run directory would train
    on other data or another model than the run's own config.yaml says (a resume without the
    first part's --data.* flags would otherwise train a ko→en model on the default de→en data)."""
    import yaml

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}

    def same(a, b) -> bool:
        if isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):
            return Path(a).resolve() == Path(b).resolve()
        return a == b

    changed = []
    for section, keys in (("data", RESUME_DATA_KEYS), ("model", tuple((saved.get("model") or {})))):
        for key in keys:
            if key in (saved.get(section) or {}) and key in cfg[section] \
                    and not same(saved[section][key], cfg[section][key]):
                changed.append(f"{section}.{key} {saved[section][key]} -> {cfg[section].get(key)}")
    if changed:
        raise UserError(f"resuming {run_dir} with other settings than it was trained with ({', '.join(changed)}): "
                        f"resume with --config {saved_file} --ckpt_path last, adding only what should change "
                        "(such as --trainer.max_epochs)")


def lightning_cli(args: list[str], extra_callbacks: list | None = None):
    """fit / validate / test through LightningCLI, with the typed groups above; returns the
    LightningCLI (its trainer and model). `extra_callbacks` join fit's (the sweep's pruner)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    from pipeline.callbacks import (AtomicCheckpointIO, AttentionImageCallback, LastCheckpoint, ProgressLog,
                                    ReleaseFreedMemory, ResumableCSVLogger)
    from pipeline.checkpoints import read_checkpoint
    from pipeline.datamodule import TranslationDataModule
    from pipeline.decoding import DecodingConfig
    from pipeline.finalize import FinalConfig
    from pipeline.hardware import choose_precision
    from pipeline.model import TransformerConfig
    from pipeline.module import TrainConfig, TranslationModule

    class TranslationCLI(LightningCLI):
        def add_core_arguments_to_parser(self, parser) -> None:
            parser.add_lightning_class_args(self.trainer_class, "trainer")
            parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
            parser.add_class_arguments(TransformerConfig, "model", help="the architecture (TransformerConfig)")
            parser.add_class_arguments(TrainConfig, "train", help="loss, optimiser and schedule (TrainConfig)")
            parser.add_class_arguments(DecodingConfig, "decoding", help="how validation/test translate")
            parser.add_lightning_class_args(TranslationDataModule, "data")

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_class_arguments(RunConfig, "run", help="where the run writes (RunConfig)")
            parser.add_class_arguments(CheckpointConfig, "checkpoint", help="checkpoints kept (CheckpointConfig)")
            parser.add_class_arguments(FinalConfig, "final", help="after fit: choose on validation, score test")
            parser.link_arguments("data.vocab_size", "model.vocab_size")

        def parse_arguments(self, parser, args) -> None:
            # Lightning's help for --ckpt_path speaks of its model registry and of a model passed in
            # Python; here it names a file of a run, or best / last of the run --config names.
            for name, subparser in parser._subcommands_action._name_parser_map.items():
                action = subparser._option_string_actions.get("--ckpt_path")
                if action is not None:
                    action.help = CKPT_PATH_HELP[name == "fit"]
            try:
                super().parse_arguments(parser, args)
            except ArgumentError as e:  # one line instead of the usage and a tip (exit_on_error=False)
                subcommand = next((a for a in args if a in self.subcommands()), "fit")
                subparser = parser._subcommands_action._name_parser_map.get(subcommand, parser)
                raise option_error(subcommand, str(e), subparser._option_string_actions) from None

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand]
            configs = cfg.get("config") or []
            name = cfg.run.name or (Path(str(configs[-1])).stem if configs else "default")
            self.run_dir = Path(cfg.run.root) / name
            if cfg.trainer.get("precision") is None and self.subcommand != "fit":
                cfg.trainer.precision = "32-true"  # validate/test score as evaluate does: in fp32
            if cfg.trainer.get("precision") is None:  # null: measured on this machine (hardware.py)
                model = {**cfg.model.as_dict(), "vocab_size": cfg.data.vocab_size}
                cfg.trainer.precision, reason = choose_precision(str(cfg.trainer.get("accelerator") or "auto"), model,
                                                                 cfg.data.max_tokens)
                if rank_zero_only.rank == 0:
                    print(f"precision: {cfg.trainer.precision} ({reason}; --trainer.precision sets it)", flush=True)
            if self.subcommand != "fit":
                self.save_config_callback = None  # validate/test write nothing (no config.yaml in the cwd)
                self.use_checkpoint_config(cfg)
                return
            cfg.data.tokenizer_file = str(self.run_dir / "tokenizer.json")
            if rank_zero_only.rank != 0:  # DDP workers re-run this CLI; rank 0 owns the run directory
                return
            if self.run_dir.exists() and cfg.get("ckpt_path") is None:
                if not cfg.run.overwrite:
                    raise UserError(f"run directory {self.run_dir} already exists: resume with --ckpt_path last, "
                                    "pick another --run.name, or pass --run.overwrite true")
                run_directory.set_aside(self.run_dir)
            if cfg.get("ckpt_path") == "last" and not (self.run_dir / "checkpoints" / "last.ckpt").exists():
                raise UserError(f"--ckpt_path last: no {self.run_dir}/checkpoints/last.ckpt to resume from")
            if cfg.get("ckpt_path") is not None:
                check_resume_settings(self.run_dir, cfg)
            if not self.run_dir.exists():
                run_directory.created = self.run_dir
            self.run_dir.mkdir(parents=True, exist_ok=True)
            print(f"run directory: {self.run_dir}", flush=True)

        def use_checkpoint_config(self, cfg) -> None:
            """validate/test score a checkpoint: its architecture, tokenizer and languages come
            from the file (a config file can only change the data and --decoding.* flags)."""
            ckpt_path = cfg.get("ckpt_path")
            if ckpt_path in ("last", "best"):
                ckpt_path = cfg.ckpt_path = str(self.run_dir / "checkpoints" / f"{ckpt_path}.ckpt")
            if not ckpt_path:
                raise UserError(f"{self.subcommand} scores a trained model: pass --ckpt_path "
                                "runs/<name>/checkpoints/best.ckpt (or best / last with --config of the run)")
            ckpt = read_checkpoint(ckpt_path)
            hp = ckpt["hyper_parameters"]
            for key, value in hp["model"].items():
                cfg.model[key] = value
            cfg.data.vocab_size = hp["model"]["vocab_size"]
            for key, value in hp["decoding"].items():
                if f"--decoding.{key}" not in args:
                    cfg.decoding[key] = value
            if ckpt["languages"]:
                cfg.data.src_lang, cfg.data.tgt_lang = ckpt["languages"]
            tokenizer_file = Path(tempfile.mkdtemp(prefix="pipeline-")) / "tokenizer.json"
            tokenizer_file.write_text(ckpt["tokenizer"], encoding="utf-8")
            cfg.data.tokenizer_file = str(tokenizer_file)

        def _parse_ckpt_path(self) -> None:
            """LightningCLI would copy a checkpoint's hyper-parameters into the parser as flat
            `model.*` keys; this project's checkpoints nest them ({"model", "train", "decoding"})
            and validate/test read them in `use_checkpoint_config` instead."""

        def instantiate_classes(self) -> None:
            try:  # the config classes check their values in __post_init__ (ValueError)
                self.config_init = self.parser.instantiate_classes(self.config)
            except ValueError as e:
                raise UserError(str(e).strip().splitlines()[-1]) from None
            self.datamodule = self._get(self.config_init, "data")
            self.model = TranslationModule(self._get(self.config_init, "model"), self._get(self.config_init, "train"),
                                           self._get(self.config_init, "decoding"))
            try:  # Lightning's checks of --trainer.* (accelerator, devices, strategy, precision)
                self.trainer = self.instantiate_trainer()
            except (ValueError, MisconfigurationException) as e:
                raise UserError(f"trainer: {str(e).strip().splitlines()[0]}") from None

        def instantiate_trainer(self, **kwargs):
            cfg = self.config_init[self.subcommand]
            if self.subcommand != "fit":
                return super().instantiate_trainer(logger=False, **kwargs)
            ckpt_dir = self.run_dir / "checkpoints"
            callbacks = list(cfg.trainer.get("callbacks") or []) + [ProgressLog(), ReleaseFreedMemory(),
                                                                  run_directory.callback(), *(extra_callbacks or [])]
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/bleu", mode="max",
                                             save_top_k=1, auto_insert_metric_name=False,
                                             enable_version_counter=False))
            if cfg.checkpoint.every_n_train_steps:
                callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                                 every_n_train_steps=cfg.checkpoint.every_n_train_steps))
            if cfg.checkpoint.keep_epochs:
                callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", monitor="epoch",
                                                 mode="max", save_top_k=cfg.checkpoint.keep_epochs,
                                                 auto_insert_metric_name=False))
            # Last of the checkpoint callbacks, so that last.ckpt holds the others' state after
            # this epoch's files (keep_epochs prunes the right one after a resume).
            callbacks.append(LastCheckpoint(ckpt_dir))
            if cfg.checkpoint.early_stop_patience is not None:
                callbacks.append(EarlyStopping(monitor="val/bleu", mode="max",
                                               patience=cfg.checkpoint.early_stop_patience))
            if cfg.run.logger == "wandb":
                callbacks.append(AttentionImageCallback(text=cfg.run.attention_text))
                logger = WandbLogger(project=cfg.run.wandb_project, name=self.run_dir.name,
                                     save_dir=str(self.run_dir), group=cfg.run.wandb_group)
            else:
                logger = ResumableCSVLogger(save_dir=str(self.run_dir), name="", version="")
            plugins = list(cfg.trainer.get("plugins") or []) + [AtomicCheckpointIO()]
            return super().instantiate_trainer(callbacks=callbacks, logger=logger, plugins=plugins, **kwargs)

        def after_fit(self) -> None:
            """Choose checkpoint and decoding on validation, score test once, write results.json."""
            cfg = self.config_init["fit"]
            if not cfg.final.enabled or not self.trainer.is_global_zero or self.trainer.interrupted:
                return
            if not (self.run_dir / "checkpoints" / "best.ckpt").is_file():
                # stopped (max_steps, max_time) before its first validation: nothing to choose from
                print(f"final: skipped, the run never validated (no {self.run_dir}/checkpoints/best.ckpt); "
                      "train at least one epoch, or validate more often with --trainer.val_check_interval",
                      file=sys.stderr, flush=True)
                return
            run_finalize(self.run_dir, self.datamodule, cfg.final, self.trainer, args)

        def after_validate(self) -> None:
            self.print_scores("validation")

        def after_test(self) -> None:
            self.print_scores("test")

        def print_scores(self, split: str) -> None:
            scores = getattr(self.model, "last_scores", None)
            if scores and self.trainer.is_global_zero:
                prefix = "val" if split == "validation" else "test"
                print(f"{split} BLEU {scores[f'{prefix}/bleu']:.2f}  chrF {scores[f'{prefix}/chrf']:.2f}  "
                      f"on {scores['n']} sentences, beam {self.model.decoding.beam}; {scores['signature']}", flush=True)

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated")  # Lightning's own
    warnings.filterwarnings("ignore", message="Precision .* is not supported by the model summary")  # (its size column)
    # Under DDP the validation metrics come from every rank's gathered rows (module.eval_epoch_end),
    # the same on each rank: Lightning's advice to average them across ranks does not apply.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level in distributed")
    # A resume writes into its own checkpoint directory on purpose; validate/test build the model
    # from the checkpoint's own settings (use_checkpoint_config) and need none of fit's callbacks
    # (for fit that warning stays: a resume without a callback of the first part loses its state).
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    if "fit" not in args:
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used to create")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(no_advertisement)
    run_directory = RunDirectory()
    try:
        cli = TranslationCLI(None, TranslationDataModule, args=args, save_config_kwargs={"overwrite": True},
                             trainer_defaults={"use_distributed_sampler": False}, auto_configure_optimizers=False,
                             parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": "python -m pipeline",
                                            **{name: {"allow_abbrev": False} for name in ("fit", "validate", "test")}})
    except BaseException:
        run_directory.undo()
        raise
    run_directory.keep()
    if cli.subcommand == "fit" and rank_zero_only.rank == 0:
        print(f"run directory: {cli.run_dir}", flush=True)
    return cli


class RunDirectory:
    """What one `fit` does to its run directory (rank 0; DDP's other ranks leave it alone).

    A fit that stops before its first training step (bad input, found in the set-up; a
    crash; Ctrl-C) takes back the directory it made, so that the corrected command is not
    refused as "already exists", and puts back the run that --run.overwrite was to replace:
    that one is set aside (renamed .NAME.replaced) until the new run has trained a step, and
    deleted then."""

    def __init__(self):
        self.created: Path | None = None  # the run directory, where this fit made it
        self.aside: tuple[Path, Path] | None = None  # (the replaced run, set aside; where it was)
        self.trained = False

    def set_aside(self, run_dir: Path) -> None:
        aside = run_dir.with_name(f".{run_dir.name}.replaced")
        shutil.rmtree(aside, ignore_errors=True)  # (one a killed fit left)
        run_dir.rename(aside)
        self.aside = (aside, run_dir)

    def callback(self):
        """The Lightning callback that tells this fit's first training step."""
        from lightning.pytorch.callbacks import LambdaCallback

        def first_step(trainer, *_) -> None:
            if not self.trained and trainer.is_global_zero:
                self.trained = True
                self.keep()

        return LambdaCallback(on_train_batch_end=first_step)

    def keep(self) -> None:
        """The new run stands: the replaced one goes."""
        if self.aside is not None:
            shutil.rmtree(self.aside[0], ignore_errors=True)
            self.aside = None

    def undo(self) -> None:
        if self.trained:
            return
        wandb = sys.modules.get("wandb")
        if self.created is not None and wandb is not None and getattr(wandb, "run", None) is not None:
            with contextlib.suppress(Exception):  # else its exit hook writes into the directory once it is gone
                wandb.finish(exit_code=2)
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        if self.aside is not None:
            aside, run_dir = self.aside
            try:
                aside.rename(run_dir)
            except OSError as e:
                print(f"warning: the run that --run.overwrite was to replace is still at {aside} ({e})",
                      file=sys.stderr, flush=True)


def no_advertisement(record: logging.LogRecord) -> bool:
    """Drops Lightning's start-up "Tip" that recommends a cloud logging service."""
    return not str(record.msg).startswith("💡 Tip")


# -- the `final:` step ---------------------------------------------------------------------
def training_facts(run_dir: Path) -> dict:
    """results.json's record of the training for a `finalize` run on its own (fit writes it from
    its trainer): epochs, global_step and training_time_s (the max_time Timer's count when
    last.ckpt was written) from the run's last.ckpt (or best.ckpt), precision from its
    config.yaml, and the fit's command, wall time, training time and precision from an earlier
    results.json that describes the same step (else the command is finalize's own and the wall
    time null)."""
    import json

    import yaml

    from pipeline.checkpoints import read_checkpoint

    ckpt = {}
    for name in ("last.ckpt", "best.ckpt"):  # (finalize itself needs only best.ckpt)
        with contextlib.suppress(UserError):
            ckpt = read_checkpoint(run_dir / "checkpoints" / name)
            break
    timer = (ckpt.get("callbacks") or {}).get("Timer") or {}
    facts = {"epochs": ckpt["epoch"] + 1 if "epoch" in ckpt else None, "global_step": ckpt.get("global_step"),
             "precision": None, "wall_time_s": None,
             "training_time_s": round(timer["time_elapsed"]["train"], 1) if "time_elapsed" in timer else None}
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        precision = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["trainer"]["precision"]
        facts["precision"] = None if precision is None else str(precision)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        earlier = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        if earlier.get("global_step") == facts["global_step"] and earlier.get("command"):
            facts |= {k: earlier[k] for k in ("command", "wall_time_s", "training_time_s", "precision") if k in earlier}
    return facts


def run_finalize(run_dir: Path, datamodule, final_config, trainer=None, argv: list[str] | None = None) -> dict:
    """`finalize` on the validation and test pairs of a datamodule; the summary goes to W&B too."""
    from lightning.pytorch.loggers import WandbLogger

    from pipeline.finalize import finalize

    validation = datamodule.load("validation")
    try:
        test = datamodule.load("test")
    except UserError as e:
        print(f"final: no test split ({e})", flush=True)
        test = None
    extra = {"command": "python -m pipeline " + " ".join(argv or sys.argv[1:])}
    if trainer is None:  # `finalize` on its own: what fit knew about the training, read back
        extra = extra | training_facts(run_dir) | {"finalize_command": extra["command"]}
    else:
        from lightning.pytorch.callbacks import Timer

        # wall_time_s: this process (set-up to here; a resumed run counts its own part only);
        # training_time_s: the max_time Timer's count, which a resumed run restores.
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        extra |= {"epochs": trainer.current_epoch, "global_step": trainer.global_step,
                  "precision": str(trainer.precision), "wall_time_s": round(time.monotonic() - STARTED, 1),
                  "training_time_s": round(timer.time_elapsed("train"), 1) if timer is not None else None}
    results = finalize(run_dir, validation, test, final_config, log=lambda m: print(m, flush=True), **extra)
    for logger in (trainer.loggers if trainer is not None else []):
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(
                {"final/val_bleu": results["validation"]["bleu"], "final/beam": results["beam"],
                 "final/length_penalty": results["length_penalty"], "final/chosen_from": results["chosen_from"],
                 **({"final/test_bleu": results["test"]["bleu"], "final/test_chrf": results["test"]["chrf"]}
                    if results["test"] else {})})
    return results
