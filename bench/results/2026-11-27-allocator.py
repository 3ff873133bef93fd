# The script behind bench/results/2026-11-27-allocator.json: `evaluate`-style decoding (Translator
# over the 1,000 test2016 sentences, length-sorted batches of up to 128, beam 4 and greedy) with
# glibc's malloc keeping freed blocks (pipeline.translator.keep_freed_memory, which Translator
# calls on the CPU) against glibc's defaults (the call replaced by a no-op). One process per
# variant, 3 alternating pairs; each process translates the test set once to warm up, then twice
# per beam, and reports the median sentences/s, the minor page faults, the kernel (sys) and user
# CPU seconds of one translation, and its peak resident memory. Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-allocator.py CHECKPOINT > out.json
import json, os, resource, subprocess, sys, time
sys.path.insert(0, os.getcwd())

if sys.argv[1:2] == ["--variant"]:
    import pipeline.translator as translator
    from pipeline.data import load_split
    if sys.argv[2] == "default":
        translator.keep_freed_memory = lambda: False
    test = list(load_split("../shared/data/multi30k", "test", "de", "en")["src"])
    found = {}
    for beam in (4, 1):
        t = translator.Translator.from_checkpoint(sys.argv[3], beam=beam, device="cpu")
        t.translate(test)
        runs = []
        for _ in range(2):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            t.translate(test)
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            runs.append({"sentences_per_s": round(len(test) / seconds, 1), "minor_faults": after.ru_minflt - before.ru_minflt,
                         "sys_s": round(after.ru_stime - before.ru_stime, 2), "user_s": round(after.ru_utime - before.ru_utime, 2)})
        found[f"beam{beam}"] = min(runs, key=lambda r: r["sentences_per_s"])  # the slower of two: a median of 2
    found["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(found))
    sys.exit()

LOAD_AT_START = os.getloadavg()[0]
results = {"default": [], "kept": []}
for _ in range(3):
    for variant in results:
        out = subprocess.run([sys.executable, __file__, "--variant", variant, sys.argv[1]], capture_output=True,
                             text=True, check=True)
        results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
print(json.dumps({
    "script": "bench/results/2026-11-27-allocator.py", "checkpoint": sys.argv[1],
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "load_at_start": LOAD_AT_START, "results": results}, indent=1))
