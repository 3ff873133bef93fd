# The script behind bench/results/2026-11-27-evaluate-split.json: where evaluate's time goes on test2016
# (fp32, beam 4, the AMD recipe model): Translator.translate in 2 forked workers (3 runs), then in one
# single-threaded process with each length-sorted batch timed.
#   .venv/bin/python bench/results/2026-11-27-evaluate-split.py > bench/results/2026-11-27-evaluate-split.json
import json, os, subprocess, sys, time
sys.path.insert(0, os.getcwd())
import torch
from pipeline.data import load_split
from pipeline.translator import Translator

CKPT = "runs/multi30k-amd-idle/checkpoints/final.ckpt"
load = os.getloadavg()[0]
tr = Translator.from_checkpoint(CKPT, beam=4, device="cpu")
src = load_split("../shared/data/multi30k", "test", "de", "en")["src"]
walls = []
for _ in range(3):
    start = time.perf_counter()
    tr.translate(src)
    walls.append(round(time.perf_counter() - start, 3))
workers = tr.workers_used
original, batches = Translator._best_tokens, []


def timed(self, s):
    start = time.perf_counter()
    out = original(self, s)
    batches.append({"shape": list(s.shape), "s": round(time.perf_counter() - start, 3)})
    return out


Translator._best_tokens = timed
tr.workers = 1
torch.set_num_threads(1)
start = time.perf_counter()
tr.translate(src)
one = round(time.perf_counter() - start, 3)
print(json.dumps({"what": __doc__ if __doc__ else "evaluate's translation time on test2016, beam 4, fp32: 2 workers vs one single-threaded process, per batch",
                  "ckpt": CKPT, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                  "cpu": "AMD EPYC", "torch": torch.__version__, "load_at_start": load, "sentences": len(src),
                  "workers": workers, "wall_s_workers": walls, "wall_s_one_thread": one,
                  "one_thread_batches": batches, "sum_of_batches_s": round(sum(b["s"] for b in batches), 3),
                  "split_efficiency": round(one / 2 / min(walls), 3)}, indent=1))
