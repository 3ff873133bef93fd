# The script behind bench/results/2026-11-27-train-malloc.json: the recipe's bf16-mixed training step
# (bench.run Side.train_step, R-Drop, 6 token-bucket batches, 10 timed passes after one warm-up) with glibc's
# default malloc against keep_freed_memory() (mmap/trim thresholds at 1 GiB), malloc_trim every 50 steps as
# fit's ReleaseFreedMemory does. One process per variant, alternated: argv[1] = default | kept, argv[2] = passes.
#   for i in 1 2 3; do for v in default kept; do .venv/bin/python bench/results/2026-11-27-train-malloc.py $v 10; done; done
import ctypes, json, os, resource, statistics, sys, time
import torch
sys.path.insert(0, os.getcwd())
from bench.run import record_training_setup
from pipeline.translator import keep_freed_memory

variant = sys.argv[1]
passes = int(sys.argv[2]) if len(sys.argv) > 2 else 10
if variant == "kept":
    assert keep_freed_memory()
trim = ctypes.CDLL("libc.so.6").malloc_trim
batches, recipe, model, loss, side = record_training_setup(6)
step = 0
seconds, faults = [], []
for p in range(passes + 1):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for b in batches:
        side.train_step(b, True, recipe["label_smoothing"])
        step += 1
        if step % 50 == 0:
            trim(0)
    if p:  # the first pass warms up
        seconds.append(round(time.perf_counter() - start, 4))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"variant": variant, "load": os.getloadavg()[0], "seconds_per_pass": seconds,
                  "median": statistics.median(seconds), "minor_faults_per_pass": faults, "peak_rss_mb": round(rss)}))
