# The script behind bench/results/2026-11-27-evaluate-batch-size.json: evaluate (fp32, beam 4, test2016, default
# workers) at several --batch_size values, interleaved; "128r512" is batch 128 with PackedLinear.MAX_ROWS = 512.
#   .venv/bin/python bench/results/2026-11-27-evaluate-batch-size.py 128,64,128r512 3 > OUT.json
import contextlib, io, json, os, statistics, subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, os.getcwd())
from pipeline.commands import evaluate
from pipeline.translator import PackedLinear

CKPT = "runs/multi30k-amd-idle/checkpoints/final.ckpt"
LOAD = os.getloadavg()[0]
sizes = [int(s) if s.isdigit() else s for s in sys.argv[1].split(",")] if len(sys.argv) > 1 else [128, 64]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}


def one(bs):
    if isinstance(bs, str):  # "128r512": batch 128 with packed products up to 512 rows
        bs, rows = (int(x) for x in bs.split("r"))
    else:
        rows = 256
    PackedLinear.MAX_ROWS = rows
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        evaluate(CKPT, "../shared/data/multi30k", out, split="test", beam=4, batch_size=bs, **extra)
        m = json.loads((Path(out) / "metrics.json").read_text())
        return m["sentences_per_sec"], m["bleu"], (Path(out) / "hypotheses.txt").read_text()


found = {bs: [] for bs in sizes}
hyps = {}
for bs in sizes:
    one(bs)
for r in range(repeats):
    for bs in (sizes if r % 2 == 0 else sizes[::-1]):
        sps, bleu, h = one(bs)
        found[bs].append(sps)
        hyps[bs] = (bleu, h)
base = hyps[sizes[0]][1]
print(json.dumps({"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                  text=True).stdout.strip(), "load_at_start": LOAD, "extra": extra,
                  "sentences_per_sec": {bs: {"runs": v, "median": statistics.median(v)} for bs, v in found.items()},
                  "bleu": {bs: hyps[bs][0] for bs in sizes},
                  "same_hypotheses_as_first": {bs: hyps[bs][1] == base for bs in sizes}}, indent=1))
