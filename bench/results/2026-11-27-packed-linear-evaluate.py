# The A/B script behind bench/results/2026-11-27-packed-linear-evaluate.json: what the packed fp32
# weights (pipeline.translator.PackedLinear) do to the speed of `evaluate`-style translation (the
# 1,000 test2016 sources (length-sorted batches of up to 128 sentences / 8,192 tokens) with the
# trained recipe model, greedy and beam 4, three prepared models interleaved run by run (5 runs
# each after a warm-up): unpacked, packed up to PackedLinear.MAX_ROWS rows (as shipped), and
# packed at every row count (as first committed). Run from the repository root:
#   .venv/bin/python bench/results/2026-11-27-packed-linear-evaluate.py CKPT > out.json
import json, os, subprocess, sys, time
import torch
sys.path.insert(0, os.getcwd())
import pipeline.translator as translator
from pipeline.data import load_split

ckpt = sys.argv[1]
sources = [row["src"] for row in load_split("../shared/data/multi30k", "test", "de", "en")]
load = os.getloadavg()[0]
result = {}
for beam in (1, 4):
    pack = translator.pack_linear_layers
    translator.pack_linear_layers = lambda m: m
    models = {"unpacked": translator.Translator.from_checkpoint(ckpt, beam=beam, device="cpu")}
    translator.pack_linear_layers = pack
    models["packed_up_to_256_rows"] = translator.Translator.from_checkpoint(ckpt, beam=beam, device="cpu")
    models["packed_at_every_row_count"] = translator.Translator.from_checkpoint(ckpt, beam=beam, device="cpu")
    limit = translator.PackedLinear.MAX_ROWS
    limits = {"unpacked": limit, "packed_up_to_256_rows": limit, "packed_at_every_row_count": 10 ** 9}

    def run(name):
        translator.PackedLinear.MAX_ROWS = limits[name]
        try:
            return models[name].translate(sources)
        finally:
            translator.PackedLinear.MAX_ROWS = limit

    outputs = {name: run(name) for name in models}
    rates = {name: [] for name in models}
    for i in range(5):
        for name in (list(models) if i % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            run(name)
            rates[name].append(len(sources) / (time.perf_counter() - start))
    result["greedy" if beam == 1 else f"beam{beam}"] = {
        "sentences_per_s": {name: {"median": round(sorted(r)[2], 1), "min": round(min(r), 1), "max": round(max(r), 1)}
                            for name, r in rates.items()},
        "translations_equal_to_unpacked": {name: out == outputs["unpacked"] for name, out in outputs.items()}}
print(json.dumps({
    "what": "Translator.translate of test2016 (1,000 sentences) with the trained recipe model: unpacked fp32 "
            "linear layers against PackedLinear with and without its 256-row limit, interleaved",
    "command": f".venv/bin/python bench/results/2026-11-27-packed-linear-evaluate.py {ckpt}",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "cpu": f"{torch.get_num_threads()} threads, torch {torch.__version__}", "loadavg_1min_at_start": load,
    "decoding": result}, indent=1))
