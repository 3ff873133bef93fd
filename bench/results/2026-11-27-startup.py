# The script behind bench/results/2026-11-27-startup.json: how long `python -m pipeline translate`
# takes for one sentence, start to finish (what a user waits for), before and after translate
# stopped importing Lightning and `datasets` (commit 3837399; its parent imported both through
# pipeline.checkpoints and pipeline.data; "after" is the commit this runs at). Each commit is checked out in a git worktree and run
# from there with this repository's .venv, interleaved, REPEATS times each, after one untimed run
# each (warm file caches, as for a user's second command).
#   .venv/bin/python bench/results/2026-11-27-startup.py CKPT OUT
import json, os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, os.getcwd())
from pipeline.provenance import cpu_name

ckpt, out = os.path.abspath(sys.argv[1]), sys.argv[2]
REPEATS = 7
root = subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip()
head = subprocess.check_output(["git", "-C", root, "rev-parse", "--short", "HEAD"], text=True).strip()
commits = {"before": "3837399~1", "after": head}  # 3837399 took the imports out; HEAD: as committed now
python = os.path.join(root, ".venv", "bin", "python")
probe = ("import sys; import pipeline.cli as c; c.main(sys.argv[1:]); "
         "print('LOADED', sorted(m for m in ('lightning', 'datasets') if m in sys.modules))")
with tempfile.TemporaryDirectory() as tmp:
    trees = {}
    for name, rev in commits.items():
        trees[name] = os.path.join(tmp, name)
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", trees[name], rev], check=True,
                       capture_output=True)
    try:
        def run(name):
            cmd = [python, "-m", "pipeline", "translate", "--ckpt", ckpt, "--text", "Ein Mann fährt Fahrrad."]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=trees[name], capture_output=True, text=True, check=True)
            return time.perf_counter() - start, done.stdout.strip()

        loaded = {name: subprocess.run([python, "-c", probe, "translate", "--ckpt", ckpt, "--text", "Hallo."],
                                       cwd=trees[name], capture_output=True, text=True, check=True
                                       ).stdout.strip().splitlines()[-1] for name in commits}
        outputs = {name: run(name)[1] for name in commits}  # untimed warm-up, and the translations
        times = {name: [] for name in commits}
        load = os.getloadavg()[0]
        for _ in range(REPEATS):
            for name in commits:
                times[name].append(round(run(name)[0], 3))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", tree], capture_output=True)
result = {"what": "wall time of `python -m pipeline translate --ckpt CKPT --text 'Ein Mann fährt Fahrrad.'` "
                  "(one sentence, start to finish), before and after translate stopped importing Lightning and "
                  "datasets",
          "command": f".venv/bin/python bench/results/2026-11-27-startup.py {sys.argv[1]} {out}",
          "commits": commits, "cpu": cpu_name(),
          "loadavg_1min_at_start": round(load, 2), "repeats": REPEATS, "seconds": times,
          "median_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
          "modules_loaded": loaded, "translations": outputs}
result["speedup"] = round(result["median_s"]["before"] / result["median_s"]["after"], 2)
json.dump(result, open(out, "w"), indent=1, ensure_ascii=False)
print(json.dumps(result, ensure_ascii=False))
