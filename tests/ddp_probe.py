"""A test-only callback that records what each DDP rank trained on and ended with.

Loaded by the distributed tests through a config file (trainer.callbacks), so the real
`python -m pipeline fit|validate` command line runs unchanged.
"""

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class RankProbe(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.seen: dict[int, list[int]] = {}

    def on_train_start(self, trainer, pl_module):
        # The Arrow files each rank's training split is mapped from (the cache built once).
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = [f["filename"] for f in trainer.datamodule.splits["train"].cache_files]
        (self.out_dir / f"cache-rank{trainer.global_rank}.json").write_text(json.dumps(files))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(batch.index.tolist())

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.model.state_dict(), self.out_dir / f"weights-rank{trainer.global_rank}.pt")
        (self.out_dir / f"seen-rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))

    def on_validation_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        (self.out_dir / f"val-rank{trainer.global_rank}.json").write_text(json.dumps(metrics))
