# The script behind bench/results/2026-11-27-{openmp-wait-policy,huge-pages}.json: one process decodes the
# bench's batches (4 x 64 validation sentences, 30 new tokens, EOS forbidden, random weights, the model as
# Translator prepares it), greedy and beam 4, ms per batch (median of 3 passes after a warm-up pass), and
# reports the environment it ran under and its transparent huge pages. Run once per setting, alternated:
#   for i in 1 2; do for p in unset ACTIVE PASSIVE; do ...OMP_WAIT_POLICY=$p... .venv/bin/python bench/results/2026-11-27-decode-env.py; done; done
#   for i in 1 2 3 4; do for v in "" "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" \
#       "THP_MEM_ALLOC_ENABLE=1 GLIBC_TUNABLES=glibc.malloc.hugetlb=1"; do env $v .venv/bin/python bench/results/2026-11-27-decode-env.py; done; done
import json, os, statistics, sys, time
import torch
sys.path.insert(0, os.getcwd())
from bench.run import FixedLength, record_decoding_setup
from pipeline.decoding import generate
from pipeline.translator import inference_model

settings, srcs, config, model = record_decoding_setup()
fixed = FixedLength(inference_model(model))
out = {"env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")}}
for beam in (1, 4):
    runs = []
    for p in range(4):
        start = time.perf_counter()
        for src in srcs:
            generate(fixed, src, config, beam=beam)
        if p:
            runs.append((time.perf_counter() - start) / len(srcs) * 1e3)
    out[f"beam{beam}_ms"] = round(statistics.median(runs), 1)
hp = 0
for line in open(f"/proc/{os.getpid()}/smaps_rollup"):
    if line.startswith("AnonHugePages"):
        hp = int(line.split()[1])
out["anon_huge_kb"] = hp
print(json.dumps(out))
