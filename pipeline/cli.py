"""The command line: one table of commands drives dispatch, `--help` and `COMMAND --help`.

    python -m pipeline fit --config configs/multi30k.yaml [--trainer.max_epochs 2 --model.d_model 512 ...]
    python -m pipeline evaluate --ckpt runs/multi30k/checkpoints/best.ckpt --data ../shared/data/multi30k \\
        --split test --out runs/multi30k/eval-test

Flag style, everywhere: config groups are dotted (--trainer.*, --model.*, --train.*,
--decoding.*, --data.*, --run.*, --checkpoint.*, --final.*) and every name is spelled with underscores
(--ckpt_path, --batch_size, --length_penalty). fit/validate/test are LightningCLI commands
over the typed config classes; the others are typed functions in commands.py, whose signatures and
docstrings jsonargparse turns into their options and help. Old spellings (--batch-size,
--model.lr, `model: {lr: ...}` in a YAML file) still work, with a deprecation message.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import sys
import tempfile
import typing
from argparse import ArgumentError
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from pipeline.commands import attention, average, evaluate, export, finalize, sweep, translate
from pipeline.errors import UserError, option_error
from pipeline.server import serve
from pipeline.training import lightning_cli


# -- the command table ---------------------------------------------------------------------
@dataclass
class Command:
    summary: str
    function: Callable | None = None  # None: a LightningCLI subcommand


COMMANDS: dict[str, Command] = {
    "fit": Command("train a model: --config configs/NAME.yaml, then --group.key value overrides"),
    "validate": Command("BLEU/chrF of a checkpoint on the validation split: --config ... --ckpt_path CKPT"),
    "test": Command("BLEU/chrF of a checkpoint on the test split: --config ... --ckpt_path CKPT"),
    "finalize": Command("choose checkpoint and decoding on validation, score test once (fit does it)", finalize),
    "sweep": Command("recipe search with Optuna over a sweep file; resumable, with a leaderboard", sweep),
    "evaluate": Command("translate any dataset split with a checkpoint and score it", evaluate),
    "translate": Command("translate stdin (one sentence a line) or --text", translate),
    "average": Command("average the weights of several checkpoints", average),
    "attention": Command("attention heatmaps (PNG) of a checkpoint on one sentence", attention),
    "export": Command("write a checkpoint as a MarianMT (transformers) or CTranslate2 model directory", export),
    "serve": Command("serve a checkpoint: HTTP API and a web page with live attention", serve),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m pipeline COMMAND [options]   (python -m pipeline COMMAND --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "Options are --group.key for config groups (--trainer.max_epochs, --model.d_model, --train.lr,",
              "--data.path, --run.name) and --snake_case otherwise (--ckpt_path, --batch_size)."]
    return "\n".join(lines)


# Old spellings still accepted: flag -> new flag.
DEPRECATED_FLAGS = {"--length-penalty": "--length_penalty", "--batch-size": "--batch_size",
                    "--max-tokens": "--max_tokens", "--show-beams": "--show_beams"}


def upgrade_args(argv: list[str]) -> list[str]:
    """Rewrite deprecated spellings with a message on stderr: dashed flags, and the training
    settings that moved from --model.* to --train.* / --decoding.* (also inside --config files)."""
    from pipeline.checkpoints import upgrade_hparams

    out = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        new = DEPRECATED_FLAGS.get(flag)
        if new is None and flag.startswith("--model.") and flag[len("--model."):] in moved_model_keys():
            moved = upgrade_hparams({flag[len("--model."):]: None})
            group = next(g for g in ("train", "decoding") if moved[g])
            new = f"--{group}.{next(iter(moved[group]))}"
        if new is not None:
            print(f"deprecated: {flag} is now spelled {new}", file=sys.stderr)
            arg = new + eq + value
        elif i > 0 and argv[i - 1] == "--config" or flag == "--config" and eq:
            arg = (flag + eq if eq else "") + upgrade_config_file(value if eq else arg)
        out.append(arg)
    return out


def moved_model_keys() -> set[str]:
    """The settings that `model:` held before `train:` and `decoding:` existed: those fields of
    TrainConfig and DecodingConfig, and val_beam (now decoding.beam). Other --model.* keys are
    left for the parser to reject as unknown, not renamed into another group."""
    from pipeline.decoding import DecodingConfig
    from pipeline.model import TransformerConfig
    from pipeline.module import TrainConfig  # (imports Lightning: only asked for with --model.* flags)

    names = {f.name for f in fields(DecodingConfig)} | {f.name for f in fields(TrainConfig)} | {"val_beam"}
    return names - {f.name for f in fields(TransformerConfig)}


def upgrade_config_file(path: str) -> str:
    """A YAML config whose `model:` section holds training settings (the layout before
    `train:` and `decoding:` existed) is rewritten to a temporary copy (same file name, so
    the run name is unchanged); other files are returned as they are."""
    import yaml

    from pipeline.checkpoints import upgrade_hparams
    from pipeline.model import TransformerConfig

    p = Path(path)
    if p.suffix not in (".yaml", ".yml") or not p.is_file():
        return path
    try:
        config = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise UserError(f"{path} is not valid YAML ({problem}{where}): fix the file "
                        "(configs/smoke.yaml shows the layout)") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a YAML {type(config).__name__}, not sections such as model: and data: "
                        "(configs/smoke.yaml shows the layout)")
    section = config.get("model")
    model_keys = {f.name for f in fields(TransformerConfig)}
    if not isinstance(section, dict) or set(section) <= model_keys:
        return path
    stale = [k for k in section if k in moved_model_keys()]  # other unknown keys: the parser names them
    if not stale:
        return path
    moved = upgrade_hparams({k: section[k] for k in stale})
    print(f"deprecated: {path} keeps training settings under model:; they now live under train: and decoding: "
          f"({', '.join(stale)})", file=sys.stderr)
    config["model"] = {k: v for k, v in section.items() if k not in stale}
    for group in ("train", "decoding"):
        if moved[group]:
            config[group] = {**moved[group], **(config.get(group) or {})}
    copy = Path(tempfile.mkdtemp(prefix="pipeline-config-")) / p.name
    copy.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(copy)


def run_function(name: str, function: Callable, argv: list[str]) -> None:
    """Parse argv against the function's typed signature (help from its docstring) and call it."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=f"python -m pipeline {name}", description=function.__doc__.split("\n\n")[0],
                            env_prefix=None, default_env=False, exit_on_error=False, allow_abbrev=False)
    parser.add_function_arguments(function, as_group=False)
    # A boolean option may be given bare (--show_beams), as argparse users expect.
    flags = {f"--{name}" for name, p in inspect.signature(function).parameters.items() if p.annotation in (bool, "bool")}
    argv = [a for i, arg in enumerate(argv)
            for a in ([arg, "true"] if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")) else [arg])]
    try:
        cfg = parser.parse_args(list_values(function, argv))
    except ArgumentError as e:  # one line instead of the usage and a tip
        raise option_error(name, str(e), parser._option_string_actions) from None
    function(**cfg.as_dict())


def list_values(function: Callable, argv: list[str]) -> list[str]:
    """A list option given as the shell spells it (--ckpts A B C), rewritten to the one value
    the parser reads (--ckpts '["A", "B", "C"]'); a value already written as a list is kept."""
    hints = typing.get_type_hints(function)
    lists = {f"--{name}" for name, hint in hints.items()
             if list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint)))}
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if eq and flag in lists:  # --ckpts=A: one value
            out += [flag, value if value.lstrip().startswith("[") else json.dumps([value])]
            i += 1
            continue
        if arg not in lists or i + 1 < len(argv) and argv[i + 1].lstrip().startswith("["):
            out.append(arg)
            i += 1
            continue
        values = []
        while i + 1 + len(values) < len(argv) and not argv[i + 1 + len(values)].startswith("--"):
            values.append(argv[i + 1 + len(values)])
        if not values:
            raise UserError(f"{arg} needs at least one value, e.g. {arg} A B C")
        out += [arg, json.dumps(values)]
        i += 1 + len(values)
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("WANDB_MODE", "offline")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name = argv[0]
    try:
        if name not in COMMANDS:
            close = difflib.get_close_matches(name, COMMANDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)}")
        args = upgrade_args(argv[1:])
        command = COMMANDS[name]
        if command.function is None:
            lightning_cli([name, *args])
        else:
            run_function(name, command.function, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
