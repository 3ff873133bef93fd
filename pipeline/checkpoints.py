"""Checkpoint files: atomic writes, and averaging the weights of several checkpoints."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pipeline.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, then rename it into place.

    A process killed mid-save leaves the previous checkpoint intact (rename is atomic on
    POSIX within one filesystem) and at worst a stray `*.tmp` file.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def read_checkpoint(path: str | Path) -> dict:
    """torch.load a checkpoint of this project, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters", "tokenizer"} <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (no state_dict/hyper_parameters/tokenizer)")
    return ckpt


def average_checkpoints(paths: list[str | Path]) -> dict:
    """Element-wise mean of the weights of checkpoints of the same model and tokenizer.

    Returns a weights-only checkpoint (no optimizer state) that loads like any other.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    first = read_checkpoint(paths[0])
    total = {k: v.double() for k, v in first["state_dict"].items()}
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        if ckpt["hyper_parameters"] != first["hyper_parameters"] or ckpt["tokenizer"] != first["tokenizer"]:
            raise UserError(f"{path} has a different model config or tokenizer than {paths[0]}: "
                            "average checkpoints of one run only")
        for k, v in ckpt["state_dict"].items():
            total[k] += v.double()
    state = {k: (v / len(paths)).to(first["state_dict"][k].dtype) for k, v in total.items()}
    keep = ("hyper_parameters", "tokenizer", "languages", "pytorch-lightning_version", "epoch", "global_step")
    return {**{k: first[k] for k in keep if k in first}, "state_dict": state, "averaged_from": [str(p) for p in paths]}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline average",
                                description="Average the weights of several checkpoints of one run.")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--ckpts", nargs="+", help="checkpoint files to average")
    group.add_argument("--run", help="run directory: average its last --last epoch checkpoints")
    p.add_argument("--last", type=int, default=5, help="with --run: how many of the newest epoch checkpoints")
    p.add_argument("--out", required=True, help="output checkpoint, e.g. runs/multi30k/checkpoints/avg.ckpt")
    args = p.parse_args(argv)
    paths = args.ckpts
    if args.run:
        paths = sorted((Path(args.run) / "checkpoints").glob("epoch*.ckpt"))[-args.last:]
        if not paths:
            raise UserError(f"no epoch*.ckpt in {args.run}/checkpoints: train with --checkpoint.keep_epochs K")
    averaged = average_checkpoints(paths)
    AtomicCheckpointIO().save_checkpoint(averaged, args.out)
    print(f"averaged {len(paths)} checkpoints -> {args.out}")
