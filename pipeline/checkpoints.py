"""The checkpoint file: its one schema, the one writer, the one reader and loader, averaging.

A checkpoint is self-contained, so `evaluate`, `translate`, `serve` and `export` need
nothing else. Beside what Lightning stores for resuming (optimizer, schedule, loops), it holds:

    format            "pipeline-nmt/2" (files without it are from before the schema was
                      versioned and are upgraded on read, see `upgrade_hparams`)
    state_dict        the LightningModule's weights: "model.<Transformer parameter>"
    hyper_parameters  {"model": TransformerConfig, "train": TrainConfig, "decoding": DecodingConfig}
                      as plain dicts
    tokenizer         the tokenizer's JSON (tokenizers.Tokenizer.to_str())
    languages         [source key, target key], e.g. ["de", "en"]
    rng_states        torch / Python / numpy random states, for resuming bit-exactly (training only)

Lightning writes training checkpoints (TranslationModule.on_save_checkpoint adds the fields
through `schema_fields`); `save_checkpoint` writes the same schema outside a Trainer
(averaging, tests). `read_checkpoint` validates any file with one set of messages, and
`load_checkpoint` rebuilds the model from the config stored beside its weights.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tokenizers import Tokenizer

from pipeline.decoding import DecodingConfig
from pipeline.errors import UserError
from pipeline.model import Transformer, TransformerConfig
from pipeline.tokenizer import load_tokenizer

FORMAT = "pipeline-nmt/2"
REQUIRED = ("state_dict", "hyper_parameters", "tokenizer")
STATE_PREFIX = "model."  # the Transformer is TranslationModule.model


def save_atomically(checkpoint: dict, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, then rename it into place: a process killed
    mid-save leaves the previous checkpoint intact (rename is atomic on POSIX within one
    filesystem) and at worst a stray `*.tmp` file. Every checkpoint is written this way: `fit`'s
    through Lightning's checkpoint plugin (callbacks.AtomicCheckpointIO), the others through
    save_checkpoint.
    (No Lightning import here: loading a checkpoint for `translate`, `evaluate` or `serve` would
    pay about 3.5 s of start-up for it.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise UserError(f"{path} is a directory: name a checkpoint file, e.g. {path}/avg.ckpt")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left where writing or renaming failed


# -- writing -------------------------------------------------------------------------------
def schema_fields(tokenizer: Tokenizer, languages: tuple[str, str]) -> dict:
    """The fields this project adds to Lightning's checkpoint dict (besides rng_states)."""
    if tokenizer is None or languages is None:
        raise UserError("cannot write a checkpoint without a tokenizer and languages: train through "
                        "`python -m pipeline fit` or set module.tokenizer and module.languages")
    return {"format": FORMAT, "tokenizer": tokenizer.to_str(), "languages": list(languages)}


def lightning_version() -> str:
    """The installed Lightning's version, read from its package metadata (importing Lightning
    for it would cost seconds), or from the module where there is no metadata."""
    try:
        return importlib.metadata.version("lightning")
    except importlib.metadata.PackageNotFoundError:
        import lightning

        return lightning.__version__


def save_checkpoint(path: str | Path, state_dict: dict, hparams: dict, tokenizer: Tokenizer,
                    languages: tuple[str, str], **extra) -> Path:
    """Write a weights-only checkpoint of the schema above (atomically); `extra` adds keys."""
    checkpoint = {"state_dict": state_dict, "hyper_parameters": upgrade_hparams(hparams),
                  "pytorch-lightning_version": lightning_version(),
                  **schema_fields(tokenizer, languages), **extra}
    save_atomically(checkpoint, path)
    return Path(path)


# -- reading -------------------------------------------------------------------------------
def upgrade_hparams(hparams: dict) -> dict:
    """Hyper-parameters in the current layout {"model", "train", "decoding"}.

    Checkpoints written before the schema was versioned keep every setting in one flat dict
    (the old TranslationModule arguments, with `val_beam` for the beam); they are split here
    by the field names of TransformerConfig and DecodingConfig, and the rest is `train`.
    """
    hparams = dict(hparams)
    if isinstance(hparams.get("model"), dict):
        return {"model": dict(hparams["model"]), "train": dict(hparams.get("train") or {}),
                "decoding": dict(hparams.get("decoding") or {})}
    if "val_beam" in hparams:
        hparams["beam"] = hparams.pop("val_beam")
    model_keys = {f.name for f in fields(TransformerConfig)}
    decoding_keys = {f.name for f in fields(DecodingConfig)}
    return {"model": {k: v for k, v in hparams.items() if k in model_keys},
            "decoding": {k: v for k, v in hparams.items() if k in decoding_keys},
            "train": {k: v for k, v in hparams.items() if k not in model_keys | decoding_keys}}


def read_checkpoint(path: str | Path) -> dict:
    """torch.load a checkpoint of this project, validated and upgraded to the current schema,
    or a one-line UserError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (train one with `make train`; runs write "
                        "runs/<name>/checkpoints/best.ckpt and last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__}); "
                        "use another .ckpt from runs/<name>/checkpoints/") from None
    if not isinstance(ckpt, dict) or not set(REQUIRED) <= set(ckpt):
        raise UserError(f"{path} is not a checkpoint of this project (it lacks state_dict, hyper_parameters or "
                        "tokenizer): use one written by `python -m pipeline fit`")
    if ckpt.get("format", FORMAT) != FORMAT:
        raise UserError(f"{path} has checkpoint format {ckpt['format']!r}, and this version reads {FORMAT!r}: "
                        "use the version of the pipeline that wrote it")
    kinds = {"state_dict": dict, "hyper_parameters": dict, "tokenizer": str}
    wrong = [key for key, kind in kinds.items() if not isinstance(ckpt[key], kind)]
    if wrong:
        raise UserError(f"{path} is damaged ({', '.join(wrong)} of the wrong type): use another .ckpt from "
                        "runs/<name>/checkpoints/")
    ckpt["hyper_parameters"] = upgrade_hparams(ckpt["hyper_parameters"])
    ckpt.setdefault("languages", None)
    return ckpt


@dataclass
class Checkpoint:
    """A trained model ready to translate, as rebuilt from a checkpoint file."""

    model: Transformer  # in eval mode, on the requested device
    tokenizer: Tokenizer
    languages: tuple[str, str]  # (source key, target key)
    decoding: DecodingConfig  # the run's decoding settings (beam, length penalty, length limit)
    hparams: dict  # {"model", "train", "decoding"}
    path: Path

    @property
    def config(self) -> TransformerConfig:
        return self.model.cfg


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; anything else as torch.device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the Transformer from the config stored beside its weights (the one loader)."""
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    try:
        config = TransformerConfig(**hp["model"])
        decoding = DecodingConfig(**hp["decoding"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} holds a model config this version cannot read ({e}): use a checkpoint "
                        "written by this version of the pipeline") from None
    try:
        tokenizer = load_tokenizer(ckpt["tokenizer"])
    except Exception as e:  # tokenizers raises plain Exception for a malformed JSON
        raise UserError(f"{path} holds a tokenizer that cannot be read ({str(e).splitlines()[0][:80]}): the file "
                        "is damaged or edited") from None
    if not ckpt["languages"]:
        raise UserError(f"{path} records no languages: it was not written by `python -m pipeline fit`")
    model = Transformer(config)
    state = {k[len(STATE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match its model config "
                        f"({str(e).splitlines()[0]}): the file is damaged or edited") from None
    return Checkpoint(model=model.to(resolve_device(device)).eval(), tokenizer=tokenizer,
                      languages=tuple(ckpt["languages"]), decoding=decoding, hparams=hp, path=Path(path))


# -- averaging -----------------------------------------------------------------------------
def average_checkpoints(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write the element-wise mean of the weights of checkpoints of one run to `out`.

    The result is a weights-only checkpoint (no optimizer state) that loads like any other.
    An existing `out` is replaced only with `overwrite` (written over last.ckpt, the average
    would leave the run unable to resume), and never when it is one of `paths`.
    """
    if not paths:
        raise UserError("no checkpoints to average")
    out = Path(out)
    if any(Path(p).resolve() == out.resolve() for p in paths):
        raise UserError(f"--out {out} is one of the checkpoints being averaged: pick another --out")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pick another --out, or pass --overwrite to replace it")
    first = read_checkpoint(paths[0])
    total = {k: v.double() for k, v in first["state_dict"].items()}
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        if ckpt["hyper_parameters"]["model"] != first["hyper_parameters"]["model"] \
                or ckpt["tokenizer"] != first["tokenizer"]:
            raise UserError(f"{path} has a different model config or tokenizer than {paths[0]}: "
                            "average checkpoints of one run only")
        for k, v in ckpt["state_dict"].items():
            total[k] += v.double()
    state = {k: (v / len(paths)).to(first["state_dict"][k].dtype) for k, v in total.items()}
    extra = {k: first[k] for k in ("epoch", "global_step") if k in first}
    return save_checkpoint(out, state, first["hyper_parameters"], load_tokenizer(first["tokenizer"]),
                           tuple(first["languages"]), averaged_from=[str(p) for p in paths], **extra)


def epoch_checkpoints(run_dir: str | Path, last: int) -> list[Path]:
    """The newest `last` epochNNN.ckpt files of a run directory, oldest first."""
    if last < 1:
        raise UserError(f"--last must be >= 1 (how many of the newest epoch checkpoints), got {last}")
    paths = sorted((Path(run_dir) / "checkpoints").glob("epoch*.ckpt"))[-last:]
    if not paths:
        raise UserError(f"no epoch*.ckpt in {run_dir}/checkpoints: train with --checkpoint.keep_epochs K")
    return paths
