"""Recipe search: `python -m pipeline sweep --sweep configs/sweeps/NAME.yaml` (or `make sweep`).

Optuna samples the search space, each trial is an ordinary `fit` of the base config with the
sampled values as command-line overrides (so a trial is reproducible by hand), a run directory
per trial logged as the base config says (an offline W&B run grouped under the sweep, or
metrics.csv), pruned on validation BLEU through Optuna's Lightning callback. The study lives
in runs/sweeps/<name>/study.db (SQLite), so an interrupted sweep resumes where it stopped (a
trial whose process was killed is marked failed once its heartbeat is STALE_AFTER_S old);
the leaderboard is printed and written to runs/sweeps/<name>/leaderboard.json. (W&B's own
sweeps need an online account: `wandb sweep` is the online alternative.)

A sweep file:

    name: multi30k-lr            # study name: runs/sweeps/<name>/
    base: configs/multi30k.yaml  # the config every trial starts from
    trials: 8                    # trials in all (a resumed sweep runs only the missing ones)
    args: [--trainer.max_time, "00:00:30:00"]   # the same for every trial: the per-trial budget
    space:                       # dotted config key -> distribution
      train.lr: {low: 0.0005, high: 0.003, log: true}      # float (int if low/high are ints)
      model.dropout: {choices: [0.1, 0.2, 0.3]}            # categorical
    seed: 0                      # the sampler's seed: the same file samples the same values

The sampler is Optuna's TPE, seeded: a fresh study of the same file proposes the same values in
the same order (the trials' training keeps its own seed, the base config's). A resumed study
samples from its finished trials and the seed, so it may continue differently from an
uninterrupted one.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

# A running trial writes a heartbeat to study.db every HEARTBEAT_S; one silent for STALE_AFTER_S
# (its process was killed) is marked failed when a sweep of the study starts or starts a trial,
# instead of showing as running for good.
HEARTBEAT_S, STALE_AFTER_S = 30, 120


@dataclass
class SweepConfig:
    """A sweep file (see the module docstring)."""

    name: str
    base: str
    trials: int = 8
    args: list[str] = field(default_factory=list)
    space: dict[str, dict] = field(default_factory=dict)
    monitor: str = "val/bleu"
    seed: int = 0


def read_sweep(path: str | Path) -> SweepConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path} (see configs/sweeps/ for examples)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        config = SweepConfig(**raw)
    except TypeError as e:
        raise UserError(f"{path}: {e} (keys: name, base, trials, args, space, monitor, seed)") from None
    if not config.space:
        raise UserError(f"{path} has an empty space: give at least one key to search")
    if not Path(config.base).is_file():
        raise UserError(f"{path}: base config {config.base} not found (a path such as configs/multi30k.yaml)")
    for key, spec in config.space.items():
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise UserError(f"{path}: space.{key} needs either choices: [...] or low: and high:")
        if "choices" not in spec:
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
                raise UserError(f"{path}: space.{key} needs numbers low <= high, got low: {low!r}, high: {high!r}")
    return config


def suggest(trial, key: str, spec: dict):
    """The trial's value for one key of the space."""
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if isinstance(spec["low"], int) and isinstance(spec["high"], int):
        return trial.suggest_int(key, spec["low"], spec["high"], log=spec.get("log", False))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec.get("log", False))


def leaderboard(study) -> list[dict]:
    """Finished and pruned trials, best validation score first."""
    rows = []
    for t in study.trials:
        value = t.value if t.value is not None else max(t.intermediate_values.values(), default=None)
        rows.append({"trial": t.number, "state": t.state.name.lower(), "val_bleu": value, "params": t.params,
                     "run": t.user_attrs.get("run"), "seconds": t.user_attrs.get("seconds")})
    return sorted(rows, key=lambda r: (r["val_bleu"] is None, -(r["val_bleu"] or 0.0)))


def open_study(config: SweepConfig, sweep_dir: Path):
    """The sweep's Optuna study in sweep_dir/study.db, created or loaded, with its seeded TPE
    sampler and median pruner; trials of a killed process are marked failed."""
    import optuna

    # (Optuna calls heartbeats experimental; they have worked since its 2.9)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'study.db'}", heartbeat_interval=HEARTBEAT_S,
                                         grace_period=STALE_AFTER_S)
    study = optuna.create_study(study_name=config.name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=config.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    optuna.storages.fail_stale_trials(study)
    return study


def run_sweep(sweep_file: str, trials: int | None = None, root: str = "runs/sweeps") -> list[dict]:
    """Run (or resume) the study of a sweep file; returns the leaderboard."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from pipeline.training import lightning_cli

    config = read_sweep(sweep_file)
    total = trials or config.trials
    sweep_dir = Path(root) / config.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(config, sweep_dir)

    def objective(trial) -> float:
        values = {key: suggest(trial, key, spec) for key, spec in config.space.items()}
        name = f"trial{trial.number:03d}"
        trial.set_user_attr("run", str(sweep_dir / name))
        args = ["fit", "--config", config.base, *map(str, config.args), "--run.root", str(sweep_dir),
                "--run.name", name, "--run.overwrite", "true", "--run.wandb_group", config.name,
                "--final.enabled", "false"]
        for key, value in values.items():
            args += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
        print(f"sweep {config.name}: {name} " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)
        start = time.monotonic()
        try:
            cli = lightning_cli(args, extra_callbacks=[PyTorchLightningPruningCallback(trial, monitor=config.monitor)])
        except UserError as e:  # a bad key or value: a failed trial, not one left running, and the study
            # stops; returned as NaN (a failed trial) so that Optuna logs no traceback of it.
            stopped.append(UserError(f"{name} stopped before training: {e} (a setting of {sweep_file})"))
            trial.study.stop()
            return float("nan")
        except SystemExit as e:  # Lightning's exit on Ctrl-C, or --help among the sweep's args
            raise UserError(f"{name} stopped (exit {e.code}): interrupted, or the message above names the setting "
                            f"of {sweep_file} to fix") from None
        trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
        score = cli.trainer.checkpoint_callback.best_model_score
        if score is None:
            raise optuna.TrialPruned(f"{name} never validated")
        return float(score)

    stopped: list[UserError] = []
    # Failed trials (a bad setting, a killed process) do not count: a rerun tries them again.
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len([t for t in study.trials if t.state in counted])
    if done < total:
        study.optimize(objective, n_trials=total - done, catch=())
    if stopped:
        raise stopped[0]
    board = leaderboard(study)
    (sweep_dir / "leaderboard.json").write_text(json.dumps(board, indent=2) + "\n", encoding="utf-8")
    print(f"sweep {config.name}: {len(board)} trials (study {sweep_dir / 'study.db'})")
    for row in board:
        bleu = "   -  " if row["val_bleu"] is None else f"{row['val_bleu']:6.2f}"
        print(f"  trial {row['trial']:3d}  {row['state']:8s}  val BLEU {bleu}  "
              + " ".join(f"{k}={v}" for k, v in row["params"].items()))
    print(f"wrote {sweep_dir / 'leaderboard.json'}")
    return board
