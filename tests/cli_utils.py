"""Run `python -m pipeline ...` as a user would, from the repository root."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def run_cli(*args, input: str | bytes | None = None, check: bool = True, timeout: int = 600,
            **env) -> subprocess.CompletedProcess:
    """Run the CLI; with check=True a non-zero exit fails the test with the output shown."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, input=input,
                          capture_output=True, text=not isinstance(input, bytes), timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline", **env})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def smoke_fit(root: Path, *extra) -> subprocess.CompletedProcess:
    """A few seconds of training of the smoke config on a slice of Multi30k."""
    return run_cli("fit", "--config", "configs/smoke.yaml", "--run.root", root, "--trainer.enable_progress_bar",
                   "false", *extra)
